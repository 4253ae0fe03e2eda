"""`python -m serving.keys`: making a key and its entry, adding it to a keys file, hashing a key."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from serving_helpers import REPO

from bhashaflow.config import ServingConfig
from bhashaflow.core.settings import Settings
from serving.auth import hash_key, load_key_ring
from serving.deps import identify_key


def _keys(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.keys", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_new_prints_a_key_once_and_adds_only_its_hash_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    made: dict[str, str] = {}
    for name, scopes in (("web", "translate"), ("annotators", "translate,feedback"), ("ops", "admin")):
        out = _keys("new", name, "--scopes", scopes, "--file", str(path))
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith(f"# the key of client '{name}'") and lines[2] == f"# its entry was added to {path}"
        made[name] = lines[1]
        assert made[name].startswith("bf_") and len(made[name]) >= 40
    text = path.read_text()
    assert not any(key in text for key in made.values())
    assert all(hash_key(key) in text for key in made.values())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = load_key_ring(Settings(), ServingConfig(api_keys_file=str(path)))
    assert {name: sorted(identify_key(keys, key).scopes) for name, key in made.items()} == {  # type: ignore[union-attr]
        "web": ["translate"],
        "annotators": ["feedback", "translate"],
        "ops": ["admin"],
    }
    again = _keys("new", "web", "--file", str(path))
    assert again.returncode == 1 and "'web' is listed twice" in again.stderr and path.read_text() == text


def test_new_without_a_file_prints_the_entry_and_bad_input_is_named(tmp_path: Path) -> None:
    out = _keys("new", "web", "--scopes", "translate,feedback")
    assert out.returncode == 0, out.stderr
    key, entry = out.stdout.splitlines()[1], out.stdout.splitlines()[3]
    assert entry == f"- {{name: web, scopes: [translate, feedback], sha256: {hash_key(key)}}}"
    keys = load_key_ring(Settings(api_keys=entry), ServingConfig())  # type: ignore[call-arg]
    assert identify_key(keys, key) is not None and identify_key(keys, key).name == "web"  # type: ignore[union-attr]
    bad = _keys("new", "web", "--scopes", "translate,read")
    assert bad.returncode == 1 and "scopes.1: Input should be" in bad.stderr
    assert _keys("new", "../web").returncode == 1


def test_hash_reads_the_key_from_stdin() -> None:
    out = _keys("hash", stdin="bf_some-key\n")
    assert out.returncode == 0 and out.stdout == hash_key("bf_some-key") + "\n"
    empty = _keys("hash", stdin="\n")
    assert empty.returncode == 1 and "no key given" in empty.stderr
