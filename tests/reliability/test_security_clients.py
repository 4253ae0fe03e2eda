"""Named API clients with scopes, against `bhashaflow serve` in its own process, over real HTTP.

- every endpoint x {no key, an unknown key, a key without the scope, a key with it};
- feedback on another client's episode: refused (403) unless the client holds admin; both names in the
  episodes database and in the exported RL records (folder and moto S3 sinks);
- a non-loopback bind without auth refuses to start; with serving.allow_anonymous it starts and warns;
- the per-client feedback rate limit: 429 with Retry-After, counted by client in /metrics;
- no key, nor its hash, in the server's logs, its answers, the episodes database or the RL logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _knobs import count
from prometheus_client.parser import text_string_to_metric_families
from servers import S3Server
from serving_helpers import EN_HI, REPO, make_adapter, register, serving_config

from bhashaflow.config import PipelineConfig, config_from_dict
from bhashaflow.core.settings import Settings
from bhashaflow.episodes.export import decode_part, export_rl_logs
from bhashaflow.episodes.store import EpisodeStore
from connectors.sinks import open_sink
from serving.auth import hash_key

# The clients of the keys file, and one more in BHASHAFLOW_API_KEYS; BHASHAFLOW_API_TOKEN is `token`.
CLIENTS: dict[str, list[str]] = {
    "translator": ["translate"],
    "annotator": ["feedback"],
    "app": ["translate", "feedback"],
    "ops": ["admin"],
    "lead": ["feedback", "admin"],
    "partner": ["translate", "feedback"],  # from the environment
}
SCOPES_OF = {**{name: set(scopes) for name, scopes in CLIENTS.items()}, "token": {"translate", "feedback", "admin"}}
STEM = uuid.uuid4().hex
KEYS = {name: f"bf_{name}-{STEM}" for name in CLIENTS} | {"token": f"tok-{STEM}"}
Endpoint = tuple[str, str]
# What each endpoint needs; a new endpoint must be added here, saying so.
NEEDS: dict[Endpoint, str | None] = {
    ("POST", "/v1/translate"): "translate",
    ("POST", "/v1/feedback"): "feedback",
    ("POST", "/v1/adapters/reload"): "admin",
    ("GET", "/health"): None,
    ("GET", "/v1/adapters"): None,
    ("GET", "/metrics"): None,
    # LibreTranslate's API (serving/routes/libretranslate.py)
    ("POST", "/translate"): "translate",
    ("POST", "/suggest"): "feedback",
    ("POST", "/detect"): None,
    ("GET", "/languages"): None,
    ("GET", "/frontend/settings"): None,
}
LIBRE_PATHS = {"/translate", "/suggest", "/detect", "/languages", "/frontend/settings"}  # errors: {"error": ...}
LIBRE_BODIES: dict[str, dict[str, str]] = {
    "/translate": {"q": "hi", "source": "en", "target": "hi"},
    "/suggest": {"q": "hello", "s": "नमस्ते", "source": "en", "target": "hi"},  # on the client's episode of hello
    "/detect": {"q": "hello"},
}
RATE_PER_MINUTE, BURST = 30, 5


def _auth(name: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"} if name else {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    log: Path
    db: Path
    config: PipelineConfig

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _keys_file(folder: Path) -> Path:
    path = folder / "api-keys.yaml"
    entries = [{"name": n, "scopes": s, "sha256": hash_key(KEYS[n])} for n, s in CLIENTS.items() if n != "partner"]
    path.write_text(yaml.safe_dump(entries))
    return path


def _env() -> dict[str, str]:
    partner = [{"name": "partner", "scopes": CLIENTS["partner"], "sha256": hash_key(KEYS["partner"])}]
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BHASHAFLOW_API_TOKEN": KEYS["token"],
        "BHASHAFLOW_API_KEYS": json.dumps(partner),
    }


def _serve_command(config: PipelineConfig, folder: Path, host: str | None, port: int) -> list[str]:
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    cmd = [sys.executable, "-m", "flows.cli", "serve", str(path), "--port", str(port)]
    return cmd + (["--host", host] if host is not None else [])


@contextlib.contextmanager
def bhashaflow_serve(folder: Path, config: PipelineConfig, host: str) -> Iterator[Server]:
    """`bhashaflow serve CONFIG --host H` in its own process, its stdout and stderr in one log file."""
    port = _free_port()
    log_path = folder / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            _serve_command(config, folder, host, port), cwd=folder, env=_env(), stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(f"http://127.0.0.1:{port}", log_path, Path(config.serving.episodes_db), config)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, server.log_text()[-3000:]
            assert time.monotonic() < deadline, "the server never became ready"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/health", headers=_auth("token"), timeout=5).status_code == 200:
                    break
            time.sleep(0.1)
        yield server
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def served_registry(tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("clients")
    adapter = make_adapter(tiny_base, folder / "adapter", seed=1)
    registry = str(folder / "registry")
    register(registry, EN_HI, adapter, tiny_base)
    return folder, registry


@pytest.fixture(scope="module")
def keyed(served_registry: tuple[Path, str], tiny_base: str) -> Iterator[Server]:
    """require_auth on 0.0.0.0 (allowed: nobody gets in without a key), no rate limit."""
    folder = served_registry[0] / "keyed"
    folder.mkdir()
    config = serving_config(
        folder,
        tiny_base,
        served_registry[1],
        require_auth=True,
        api_keys_file=str(_keys_file(folder)),
        feedback_per_minute=0,
    )
    with bhashaflow_serve(folder, config, "0.0.0.0") as server:
        yield server


@pytest.fixture(scope="module")
def anonymous(served_registry: tuple[Path, str], tiny_base: str) -> Iterator[Server]:
    """No require_auth on 0.0.0.0, allowed by serving.allow_anonymous; keys still work; a tight feedback limit."""
    folder = served_registry[0] / "anonymous"
    folder.mkdir()
    config = serving_config(
        folder,
        tiny_base,
        served_registry[1],
        allow_anonymous=True,
        api_keys_file=str(_keys_file(folder)),
        feedback_per_minute=RATE_PER_MINUTE,
        feedback_burst=BURST,
    )
    with bhashaflow_serve(folder, config, "0.0.0.0") as server:
        yield server


def _translate(http: httpx.Client, client: str | None, text: str = "hello") -> int:
    resp = http.post(
        "/v1/translate", json={"texts": [text], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}, headers=_auth(client)
    )
    assert resp.status_code == 200, (client, resp.text)
    return int(resp.json()["episode_ids"][0])


def _feedback(http: httpx.Client, headers: dict[str, str], episode: int, reward: float = 0.5) -> httpx.Response:
    return http.post("/v1/feedback", json={"episode_id": episode, "reward": reward}, headers=headers)


def _call(
    http: httpx.Client, endpoint: Endpoint, headers: dict[str, str], episode: int, query: str = ""
) -> httpx.Response:
    method, path = endpoint
    body: dict[str, Any] | None = None
    if path == "/v1/translate":
        body = {"texts": ["hi"], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
    elif path == "/v1/feedback":
        body = {"episode_id": episode, "reward": 0.5}
    body = LIBRE_BODIES.get(path, body)
    return http.request(method, path + query, json=body, headers=headers)


def _near_miss(rng: random.Random) -> str:
    """A key that is no client's: a real one edited, another's hash, or random."""
    key = KEYS[rng.choice(sorted(KEYS))]
    i = rng.randrange(len(key))
    out = rng.choice(
        [
            key[:i] + chr(ord(key[i]) ^ 1) + key[i + 1 :],
            key[:i] + key[i + 1 :],
            key + rng.choice("x=-_"),
            "x" + key,
            key.upper(),
            key[: rng.randrange(1, len(key))],
            hash_key(key),
            f"bf_{rng.randbytes(16).hex()}",
            key.replace("-", "_"),
        ]
    )
    # Surrounding whitespace is stripped (and a client cannot send it): a near miss differs inside.
    return out if out.strip() == out and out not in KEYS.values() else "x" + out.strip() + "x"


def _metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=_auth("token"), timeout=10).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


# --- every endpoint x every kind of key ------------------------------------------------------------------


@dataclass
class Tally:
    tried: int = 0
    escaped: int = 0

    def check(self, ok: bool, where: str) -> None:
        self.tried += 1
        self.escaped += not ok
        assert ok, where


def _expect(resp: httpx.Response, kind: str, scope: str | None, client: str | None) -> bool:
    if kind == "with the scope":
        return resp.status_code == 200
    body = resp.json()
    message = "error" if resp.request.url.path in LIBRE_PATHS else "detail"
    if kind in ("no key", "unknown key"):
        return resp.status_code == 401 and resp.headers.get("WWW-Authenticate") == "Bearer" and set(body) == {message}
    if kind == "without the scope":
        return (
            resp.status_code == 403
            and body.get("missing_scope") == scope
            and f"'{scope}'" in body[message]
            and f"'{client}'" in body[message]
        )
    raise AssertionError(kind)


def test_every_endpoint_refuses_what_the_key_does_not_allow(keyed: Server, seed: int, record: Any) -> None:
    endpoints = sorted(
        (m.upper(), p) for p, ops in httpx.get(f"{keyed.url}/openapi.json").json()["paths"].items() for m in ops
    )
    assert set(endpoints) == set(NEEDS), "an endpoint without a say in NEEDS"
    assert "allow_anonymous" not in keyed.log_text()  # require_auth on 0.0.0.0: nothing to warn about
    n = count("client_unknown_keys", 100, 1000)
    tally, refused = Tally(), {401: 0, 403: 0}
    reloads_before = _metric(keyed, "bhashaflow_requests_total", route="/v1/adapters/reload", status="200")
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        own = {name: _translate(http, name) for name in ("translator", "app")}
        episodes_before = EpisodeStore(keyed.db).count()
        for endpoint in endpoints:
            scope = NEEDS[endpoint]
            lacking = next((c for c, s in SCOPES_OF.items() if scope and scope not in s), None)
            holding = {"translate": "app", "feedback": "app", "admin": "ops"}.get(scope or "", "translator")
            cases: list[tuple[str, str | None, dict[str, str]]] = [
                ("no key", None, {}),
                ("with the scope", holding, _auth(holding)),
                *[
                    ("unknown key", None, {"Authorization": f"Bearer {_near_miss(random.Random(seed + i))}"})
                    for i in range(n // len(endpoints))
                ],
            ]
            if lacking is not None:
                cases.append(("without the scope", lacking, _auth(lacking)))
            for kind, client, headers in cases:
                resp = _call(http, endpoint, headers, own.get(client or "", own["app"]))
                refused[resp.status_code] = refused.get(resp.status_code, 0) + 1
                tally.check(
                    _expect(resp, kind, scope, client),
                    f"seed {seed}: {endpoint} {kind} ({client}): {resp.status_code} {resp.text[:300]}",
                )
                assert all(key not in resp.text for key in KEYS.values())
        # Nothing refused ran: two episodes more (the translates "with", /v1 and LibreTranslate's), one feedback
        # (app's, on its own episode: its suggestion, then replaced by its /v1/feedback).
        with EpisodeStore(keyed.db) as store:
            assert store.count() == episodes_before + 2
            assert [store.get(e).feedback_client for e in own.values()] == [None, "app"]
    assert _metric(keyed, "bhashaflow_requests_total", route="/v1/adapters/reload", status="200") == reloads_before + 1
    record(
        "API clients: every endpoint x {no key, unknown key, key without the scope, key with it} (real server)",
        area="security",
        tried=tally.tried,
        lost=tally.escaped,
        endpoints=len(endpoints),
        clients=len(KEYS),
        unknown_keys=n // len(endpoints) * len(endpoints),
        refused_401=refused[401],
        refused_403=refused[403],
    )


# --- whose episode is it -------------------------------------------------------------------------------------


def _rate_others(http: httpx.Client, rng: random.Random, expected: dict[int, tuple[str, str | None]]) -> str:
    """One episode of a random client, rated by another (and maybe by its owner); returns how it went."""
    owner = rng.choice([c for c, s in SCOPES_OF.items() if "translate" in s])
    episode = _translate(http, owner, f"text {rng.randrange(10**6)}")
    expected[episode] = (owner, None)
    rater = rng.choice([c for c, s in SCOPES_OF.items() if "feedback" in s and c != owner])
    resp = _feedback(http, _auth(rater), episode)
    if "admin" in SCOPES_OF[rater]:
        assert resp.status_code == 200 and resp.json()["client"] == rater, resp.text
        expected[episode] = (owner, rater)
        outcome = "allowed_admin"
    else:
        body = resp.json()
        assert resp.status_code == 403 and body["missing_scope"] == "admin", resp.text
        assert "requested by another client" in body["detail"] and f"'{owner}'" not in body["detail"], body
        outcome = "refused_403"
    if "feedback" in SCOPES_OF[owner] and rng.random() < 0.5:
        assert _feedback(http, _auth(owner), episode, -1.0).json()["client"] == owner
        expected[episode] = (owner, owner)
    return outcome


def _export_and_read(server: Server, target: str, read: Any) -> list[dict[str, Any]]:
    config = config_from_dict(
        {"directions": [EN_HI], "serving": {"episodes_db": str(server.db)}, "rl_export": {"target": target}}
    )
    settings = Settings()
    parts = export_rl_logs(config, settings, sink=open_sink(target, settings))["parts"]
    return [r for name in parts for r in decode_part(read(name), "jsonl")]


def test_feedback_on_another_clients_episode_is_refused_unless_admin_and_exported_with_both_names(
    keyed: Server, tmp_path: Path, s3_server: S3Server, seed: int, record: Any
) -> None:
    n = count("foreign_feedback_runs", 40, 400)
    expected: dict[int, tuple[str, str | None]] = {}
    outcomes: dict[str, int] = {}
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        for i in range(n):
            outcome = _rate_others(http, random.Random(seed + i), expected)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    with EpisodeStore(keyed.db) as store:
        stored = {e: (store.get(e).client, store.get(e).feedback_client) for e in expected}
    lost = sum(stored[e] != expected[e] for e in expected)
    record(
        "feedback on another client's episode: 403 unless admin (real server)",
        area="security",
        tried=n,
        lost=lost,
        **outcomes,
    )
    assert stored == expected, f"seed {seed}"

    s3_server.create_bucket("rl-logs")
    sinks = {
        "folder": (str(tmp_path / "rl"), lambda name: (tmp_path / "rl" / name).read_bytes()),
        "s3": (
            "s3://rl-logs/clients",
            lambda name: s3_server.client.get_object(Bucket="rl-logs", Key=f"clients/{name}")["Body"].read(),
        ),
    }
    checked = wrong = 0
    for kind, (target, read) in sinks.items():
        records = {r["episode_id"]: r for r in _export_and_read(keyed, target, read)}
        assert set(expected) <= set(records), kind
        for episode_id, r in records.items():
            checked += 1
            # Every record names who asked; every rated one names who rated, and only rated ones do.
            ok = r["client"] in SCOPES_OF and (r["feedback_client"] is None) == (r["reward"] is None)
            ok = ok and (episode_id not in expected or (r["client"], r["feedback_client"]) == expected[episode_id])
            wrong += not ok
            assert ok, (kind, r)
    record(
        "RL records name the client and the feedback client, folder and s3 sinks",
        area="rl-logs",
        tried=checked,
        lost=wrong,
        sinks=len(sinks),
        episodes=checked // len(sinks),
    )


# --- no anonymous public service by accident ----------------------------------------------------------------


def test_a_public_bind_without_auth_refuses_to_start(tmp_path: Path, record: Any) -> None:
    """Before anything loads (the base does not even exist): one error line saying how to enable keys."""
    keys = _keys_file(tmp_path)
    runs = [
        ("0.0.0.0", {}),
        ("::", {}),
        ("192.0.2.7", {}),
        ("no-such-host.invalid", {}),
        ("0.0.0.0", {"api_keys_file": str(keys)}),  # keys alone do not lock anonymous callers out
        (None, {"host": "0.0.0.0"}),
    ]  # the config's own host
    started = 0
    for i, (host, serving) in enumerate(runs):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        config = serving_config(folder, str(tmp_path / "no-such-base"), str(tmp_path / "registry"), **serving)
        port = _free_port()
        out = subprocess.run(
            _serve_command(config, folder, host, port),
            cwd=folder,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        shown = host if host is not None else "0.0.0.0"
        errors = [line for line in out.stderr.splitlines() if line.startswith("bhashaflow serve: error:")]
        ok = out.returncode == 1 and len(errors) == 1 and "could not load" not in out.stderr
        ok = ok and all(
            needle in errors[0]
            for needle in (
                f"refusing to serve on '{shown}' without authentication",
                "serving.require_auth: true",
                "python -m serving.keys new",
                "serving.allow_anonymous: true",
            )
        )
        started += not ok
        assert ok, (host, serving, out.returncode, out.stderr[-2000:])
    record(
        "start-up refused: non-loopback bind without auth",
        area="security",
        tried=len(runs),
        lost=started,
        hosts=len({h for h, _ in runs}),
    )


def test_an_anonymous_public_service_warns_attributes_and_limits_feedback(
    anonymous: Server, seed: int, record: Any
) -> None:
    log = anonymous.log_text()
    assert "serving.allow_anonymous: serving on '0.0.0.0' without authentication" in log, log[-2000:]
    with httpx.Client(base_url=anonymous.url, timeout=30) as http:
        mine = _translate(http, None)
        rated = _feedback(http, {}, mine)
        assert rated.status_code == 200 and rated.json()["client"] == "anonymous", rated.text
        theirs = _translate(http, "app")
        foreign = _feedback(http, {}, theirs)
        assert foreign.status_code == 403 and foreign.json()["missing_scope"] == "admin", foreign.text
        assert http.post("/v1/adapters/reload").status_code == 401
        assert (
            http.get("/health", headers={"Authorization": f"Bearer {_near_miss(random.Random(seed))}"}).status_code
            == 401
        )
        with EpisodeStore(anonymous.db) as store:
            assert (store.get(mine).client, store.get(mine).feedback_client, store.get(theirs).client) == (
                "anonymous",
                "anonymous",
                "app",
            )
        tried, over = _flood(http, anonymous, theirs, count("rate_limit_requests", 20, 200))
        # Another client has a bucket of its own; the limited one may go on after Retry-After.
        assert _feedback(http, _auth("partner"), _translate(http, "partner")).status_code == 200
        time.sleep(math.ceil(60 / RATE_PER_MINUTE))
        assert _feedback(http, _auth("app"), theirs).status_code == 200
    record(
        "feedback rate limit per client: 429 with Retry-After, counted by client",
        area="security",
        tried=tried,
        lost=over,
        per_minute=RATE_PER_MINUTE,
        burst=BURST,
    )


def _flood(http: httpx.Client, server: Server, episode: int, extra: int) -> tuple[int, int]:
    """BURST + extra feedbacks by `app` at once: BURST (plus what the bucket refilled meanwhile) pass, the rest
    get 429 with Retry-After; returns (requests over the burst, over-limit ones that passed)."""
    limited_before = _metric(server, "bhashaflow_feedback_rate_limited_total", client="app")
    given_before = _metric(server, "bhashaflow_feedback_total", client="app")
    started = time.monotonic()
    answers = [_feedback(http, _auth("app"), episode) for _ in range(BURST + extra)]
    refill = int((time.monotonic() - started) * RATE_PER_MINUTE / 60)
    passed = sum(r.status_code == 200 for r in answers)
    limited = [r for r in answers if r.status_code == 429]
    assert passed + len(limited) == len(answers), {r.status_code for r in answers}
    # The limit holds: beyond the burst and what refilled while flooding, requests were refused (so the checks of
    # each refusal below have refusals to check).
    assert limited and passed <= BURST + refill + 1, (passed, len(limited), refill)
    for r in limited:
        assert 1 <= int(r.headers["Retry-After"]) <= math.ceil(60 / RATE_PER_MINUTE), r.headers
        assert "client 'app' is over its feedback rate limit" in r.json()["detail"]
    assert _metric(server, "bhashaflow_feedback_rate_limited_total", client="app") == limited_before + len(limited)
    assert _metric(server, "bhashaflow_feedback_total", client="app") == given_before + passed
    assert passed >= BURST
    return extra, max(0, passed - BURST - refill)


# --- keys stay secret ----------------------------------------------------------------------------------------


def _probe_with_keys(server: Server) -> list[str]:
    """Every key, right and wrong, in every place a client might put one; the answers, headers included."""
    answers = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for key in KEYS.values():
            for headers, query in (
                ({"Authorization": f"Bearer {key}"}, ""),
                ({"Authorization": f"Bearer {key}x"}, ""),
                ({"Authorization": f"Basic {key}"}, ""),
                ({"X-API-Key": key}, ""),
                ({"Cookie": f"key={key}"}, ""),
                ({}, f"?token={key}"),
                ({}, f"?api_key={key}&x=1"),
            ):
                for endpoint in (
                    ("POST", "/v1/translate"),
                    ("POST", "/v1/feedback"),
                    ("GET", "/health"),
                    ("POST", "/v1/adapters/reload"),
                ):
                    resp = _call(http, endpoint, headers, 1, query)
                    answers.append(resp.text + json.dumps(dict(resp.headers)))
    return answers


def test_keys_never_appear_in_logs_answers_the_database_or_the_rl_logs(
    keyed: Server, anonymous: Server, tmp_path: Path, record: Any
) -> None:
    needles = [k.encode() for k in KEYS.values()] + [hash_key(k).encode() for k in KEYS.values()]
    places: dict[str, bytes] = {}
    for name, server in (("keyed", keyed), ("anonymous", anonymous)):
        answers = _probe_with_keys(server)
        places[f"{name} answers"] = "\n".join(answers).encode()
        out = tmp_path / name
        records = _export_and_read(server, str(out), lambda part, out=out: (out / part).read_bytes())
        assert records and all(r["client"] for r in records)
        for path in [*server.db.parent.glob(server.db.name + "*"), *out.iterdir(), server.log]:
            places[str(path)] = path.read_bytes()
    log = keyed.log_text()
    assert '"GET /health?... HTTP/1.1" 401' in log, log[-2000:]  # the access log ran, without the query
    found = sorted(place for place, data in places.items() if any(n in data for n in needles))
    record(
        "API keys (and their hashes) in logs, answers, the episodes database and RL logs",
        area="security",
        tried=len(places),
        lost=len(found),
        requests=2 * len(KEYS) * 7 * 4,
        needles=len(needles),
    )
    assert found == []
