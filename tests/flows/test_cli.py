"""The `bhashaflow` console script, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BHASHAFLOW = str(Path(sys.executable).parent / "bhashaflow")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BHASHAFLOW, *args], cwd=ROOT, env=env or dict(os.environ), capture_output=True,
                          text=True, timeout=300)


def test_config_error_is_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("directions: [eng_Latn-hin_Deva]\ningest: {max_char: 10}\n")
    out = run_cli("ingest", str(bad), "--json")
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.splitlines()[0] == f"bhashaflow ingest: error: {bad}: ingest.max_char: unknown key"
    assert "Traceback" not in out.stderr


def test_bad_override_is_named(tmp_path):
    out = run_cli("ingest", "configs/demo.yaml", "--set", "ingest.shard_rows=lots")
    assert out.returncode == 1
    assert "ingest.shard_rows" in out.stderr.splitlines()[0]


def test_ingest_demo_config_prints_json_summary(cli_env, tmp_path):
    out = run_cli("ingest", "configs/demo.yaml", "--json", "--set", f"workdir={tmp_path / 'runs'}", env=cli_env)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == {
        "eng_Latn-hin_Deva": {"accepted": 997, "duplicates": 0, "rejected": 0},
        "eng_Latn-tam_Taml": {"accepted": 997, "duplicates": 0, "rejected": 0},
    }
    assert summary["sources"] == {
        "flores-dev": {"read": 1994, "accepted": 1994, "duplicates": 0, "rejected": 0, "skipped": 0}
    }
    manifest = json.loads(Path(summary["manifest"]).read_text())
    assert manifest["run_id"] == summary["run_id"]
    shard = tmp_path / "runs" / "demo" / summary["run_id"] / manifest["directions"]["eng_Latn-hin_Deva"]["shards"][0]["path"]
    assert shard.is_file()


def test_failure_at_run_time_exits_non_zero_with_reason_first(cli_env, tmp_path):
    out = run_cli(
        "ingest", "configs/demo.yaml", "--set", f"workdir={tmp_path / 'runs'}",
        "--set", f"sources.flores-dev.uri={tmp_path / 'missing'}", env=cli_env,
    )
    assert out.returncode == 1
    error_lines = [line for line in out.stderr.splitlines() if line.startswith("bhashaflow ingest: error:")]
    assert len(error_lines) == 1 and "eng_Latn.dev does not exist" in error_lines[0]
    assert "Traceback" not in out.stderr
