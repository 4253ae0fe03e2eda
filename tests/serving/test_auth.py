"""API clients: the keys file and BHASHAFLOW_API_KEYS, the constant-time key check, loopback, the exposure rule."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

import serving.deps
from bhashaflow.config import ConfigError, ServingConfig
from bhashaflow.core.settings import Settings
from serving.auth import ANONYMOUS, SCOPES, TOKEN_CLIENT, exposure_warning, hash_key, is_loopback, load_key_ring
from serving.deps import identify_key

KEY = "bf_the-web-apps-key"


def _entry(name: str, scopes: list[str], key: str) -> dict[str, Any]:
    return {"name": name, "scopes": scopes, "sha256": hash_key(key)}


def _ring(tmp_path: Path, entries: Any, *, token: str | None = None, env: Any = None) -> Any:
    path = tmp_path / "keys.yaml"
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    settings = Settings(api_token=token, api_keys=None if env is None else json.dumps(env))  # type: ignore[call-arg]
    return load_key_ring(settings, ServingConfig(api_keys_file=str(path)))


def test_hash_key_is_the_hex_sha256_of_the_utf8_key() -> None:
    assert hash_key("héllo") == hashlib.sha256("héllo".encode()).hexdigest()


def test_clients_come_from_the_file_the_environment_and_the_token(tmp_path: Path) -> None:
    keys = _ring(
        tmp_path,
        [_entry("web", ["translate"], KEY)],
        token="tok",
        env=[_entry("annotators", ["translate", "feedback"], "bf_other")],
    )
    assert [(c.name, sorted(c.scopes)) for c in keys.clients()] == [
        (TOKEN_CLIENT, sorted(SCOPES)),
        ("annotators", ["feedback", "translate"]),
        ("web", ["translate"]),
    ]
    assert identify_key(keys, KEY).name == "web"
    assert identify_key(keys, "bf_other").name == "annotators"
    assert identify_key(keys, "tok").name == TOKEN_CLIENT
    for wrong in ("", KEY[:-1], KEY + "x", KEY.upper(), hash_key(KEY), "tok ", "bf_"):
        assert identify_key(keys, wrong) is None, wrong
    # YAML, as `python -m serving.keys new` writes it, reads the same.
    yaml_text = f"# clients\n- {{name: web, scopes: [translate, feedback], sha256: {hash_key(KEY)}}}\n"
    assert sorted(identify_key(_ring(tmp_path, yaml_text), KEY).scopes) == ["feedback", "translate"]
    assert not _ring(tmp_path, "").configured and not _ring(tmp_path, "[]").configured


def test_every_key_is_compared_in_constant_time_whichever_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = _ring(tmp_path, [_entry("a", ["translate"], "bf_a"), _entry("b", ["translate"], "bf_b")], token="tok")
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(serving.deps.hmac, "compare_digest", spy)
    for given in ("tok", "bf_a", "bf_b", "nope"):
        calls.clear()
        identify_key(keys, given)
        digest = hash_key(given).encode()
        assert calls == [
            (given.encode(), b"tok"),
            (digest, hash_key("bf_a").encode()),
            (digest, hash_key("bf_b").encode()),
        ], given


@pytest.mark.parametrize(
    ("entries", "needle"),
    [
        ([{"name": "web", "scopes": ["translate"], "sha256": KEY}], "client 1: sha256: String should match pattern"),
        (
            [{"name": "web", "scopes": ["translate"], "key": KEY, "sha256": hash_key(KEY)}],
            "client 1: key: Extra inputs",
        ),
        ([{"name": "web", "scopes": ["read"], "sha256": hash_key(KEY)}], "client 1: scopes.0: Input should be"),
        ([{"name": "web", "scopes": [], "sha256": hash_key(KEY)}], "client 1: scopes: List should have at least 1"),
        ([{"name": "../x", "scopes": ["translate"], "sha256": hash_key(KEY)}], "client 1: name: String should match"),
        ([_entry("anonymous", ["translate"], KEY)], "name 'anonymous' is reserved"),
        ([_entry("token", ["translate"], KEY)], "name 'token' is reserved"),
        ([_entry("web", ["translate"], KEY), _entry("web", ["feedback"], "bf_2")], "'web' is listed twice"),
        ([_entry("web", ["translate"], KEY), _entry("app", ["feedback"], KEY)], "'app' has the key of another"),
        ([_entry("web", ["translate"], "tok")], "'web' has the key of another client (or of BHASHAFLOW_API_TOKEN)"),
        ({"web": KEY}, "expected a list of clients"),
        (f"- {{name: web, sha256: {KEY}", "not valid YAML or JSON at line 1"),
    ],
)
def test_malformed_keys_files_fail_naming_the_field_never_the_value(tmp_path: Path, entries: Any, needle: str) -> None:
    """A key pasted where its hash belongs must not end up in an error message (which is logged and printed)."""
    with pytest.raises(ConfigError) as err:
        _ring(tmp_path, entries, token="tok")
    assert needle in str(err.value)
    assert KEY not in str(err.value) and hash_key(KEY) not in str(err.value)


def test_a_missing_keys_file_and_bad_environment_keys_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"serving.api_keys_file .*missing.yaml: cannot read it"):
        load_key_ring(Settings(), ServingConfig(api_keys_file=str(tmp_path / "missing.yaml")))
    with pytest.raises(ConfigError, match="BHASHAFLOW_API_KEYS: client 1: sha256"):
        load_key_ring(
            Settings(api_keys=json.dumps([{"name": "x", "scopes": ["admin"], "sha256": KEY}])),  # type: ignore[call-arg]
            ServingConfig(),
        )
    assert Settings(api_keys="  ").api_keys is None  # type: ignore[call-arg]


def test_anonymous_may_translate_and_rate_never_reload() -> None:
    assert ANONYMOUS.can("translate") and ANONYMOUS.can("feedback") and not ANONYMOUS.can("admin")
    assert ANONYMOUS.anonymous


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("192.168.0.7", False),
        ("::ffff:10.0.0.1", False),
        ("no-such-host.invalid", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_public_address_without_auth_is_refused_unless_anonymous_is_allowed() -> None:
    assert exposure_warning(ServingConfig(), "127.0.0.1") is None
    assert exposure_warning(ServingConfig(require_auth=True), "0.0.0.0") is None
    with pytest.raises(ConfigError) as refused:
        exposure_warning(ServingConfig(), "0.0.0.0")
    message = str(refused.value)
    for needle in (
        "refusing to serve on '0.0.0.0' without authentication",
        "serving.require_auth: true",
        "python -m serving.keys new",
        "serving.api_keys_file",
        "BHASHAFLOW_API_KEYS",
        "serving.allow_anonymous: true",
    ):
        assert needle in message
    warning = exposure_warning(ServingConfig(allow_anonymous=True), "0.0.0.0")
    assert warning is not None and "without authentication" in warning and "'anonymous'" in warning
    with pytest.raises(ValueError, match="allow_anonymous and serving.require_auth contradict"):
        ServingConfig(require_auth=True, allow_anonymous=True)
