"""The `bhashaflow` console script, run as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import local_run, run_cli, sets


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
    shard = (
        tmp_path
        / "runs"
        / "demo"
        / summary["run_id"]
        / manifest["directions"]["eng_Latn-hin_Deva"]["shards"][0]["path"]
    )
    assert shard.is_file()


def test_failure_at_run_time_exits_non_zero_with_reason_first(cli_env, tmp_path):
    out = run_cli(
        "ingest",
        "configs/demo.yaml",
        "--set",
        f"workdir={tmp_path / 'runs'}",
        "--set",
        f"sources.flores-dev.uri={tmp_path / 'missing'}",
        env=cli_env,
    )
    assert out.returncode == 1
    error_lines = [line for line in out.stderr.splitlines() if line.startswith("bhashaflow ingest: error:")]
    assert len(error_lines) == 1 and "eng_Latn.dev does not exist" in error_lines[0]
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_pipeline_and_evaluate_json_and_files(cli_env, tiny_base, tmp_path):
    overrides = local_run(tmp_path, tiny_base) + sets(
        training__max_steps=3,
        training__checkpoint_every=2,
        evaluation__max_sentences=6,
        evaluation__max_new_tokens=8,
        promotion__min_gain=0.0,
        training__validation="{pairs: 4}",
    )
    out = run_cli("pipeline", "configs/smoke.yaml", "--json", *overrides, env=cli_env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    d = result["directions"]["eng_Latn-hin_Deva"]
    for key in (
        "base_chrf_pp",
        "incumbent_chrf_pp",
        "candidate_chrf_pp",
        "script_valid",
        "decontaminated",
        "promoted",
        "version",
        "adapter_uri",
    ):
        assert key in d, key
    assert d["incumbent_chrf_pp"] is None and d["version"] == "v0001"
    assert d["promoted"] == (d["candidate_chrf_pp"] >= d["base_chrf_pp"])
    assert d["decontaminated"] == 0  # FLORES dev and devtest share no sentence
    assert d["validation_pairs"] == 4 and d["best_step"] in (2, 3) and d["steps"] == 3 and d["stopped_early"] is False
    run = tmp_path / "runs" / "smoke" / result["run_id"]
    adapter = run / "adapters" / "eng_Latn-hin_Deva" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.json", "tokenizer.json"} <= {
        p.name for p in adapter.iterdir()
    }
    assert not [p for p in adapter.rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]
    assert sorted(p.name for p in (run / "adapters" / "eng_Latn-hin_Deva" / "checkpoints").iterdir()) == [
        "step-2",
        "step-3",
    ]
    for label in ("base", "candidate"):
        scores = json.loads((run / "eval" / "eng_Latn-hin_Deva" / label / "scores.json").read_text())
        assert scores["n"] == 6 and scores["signature_chrf_pp"].startswith("nrefs:1|")
        assert len((run / "eval" / "eng_Latn-hin_Deva" / label / "hypotheses.txt").read_text().splitlines()) == 6
    assert (run / "report.md").is_file() and (run / "chrf.png").read_bytes()[:4] == b"\x89PNG"
    assert f"| {d['best_step']} of 3 | 4 |" in (run / "report.md").read_text()  # candidate step, validation pairs
    logged = [
        json.loads(line)
        for line in (run / "adapters" / "eng_Latn-hin_Deva" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [e["step"] for e in logged if "val_chrf_pp" in e] == [2, 3]
    manifest = json.loads(
        (tmp_path / "registry" / "eng_Latn-hin_Deva" / "versions" / "v0001" / "manifest.json").read_text()
    )
    assert manifest["base_model"] == tiny_base and manifest["files"]["adapter_model.safetensors"]

    out = run_cli("evaluate", "configs/smoke.yaml", "--adapter", "none", "--json", *overrides, env=cli_env)
    assert out.returncode == 0, out.stderr[-3000:]
    scored = json.loads(out.stdout.strip().splitlines()[-1])["directions"]["eng_Latn-hin_Deva"]
    assert scored["version"] is None and scored["n"] == 6
    assert abs(scored["chrf_pp"] - d["base_chrf_pp"]) < 0.01  # the same base, the same settings


def test_fit_check_reports_json_and_says_what_a_cpu_cannot_measure(tiny_base, tmp_path):
    config = tmp_path / "fit.yaml"
    config.write_text(
        f"directions: [eng_Latn-hin_Deva]\nbase_model: {tiny_base}\n"
        "training: {max_length: 32, batch_tokens: 256, grad_accum_steps: 2}\n"
    )
    out = run_cli("fit", str(config), "--json", "--steps", "2", "--device", "cpu")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["device"] == "cpu" and report["steps"] == 2
    assert report["micro_batch_pairs"] == 2 and report["micro_batch_tokens"] == 128 and report["grad_accum_steps"] == 2
    assert report["gpu_memory_measured"] is False and report["peak_reserved_gib"] is None
    assert report["batch_tokens_max"] is None and report["tokens_per_s"] > 0
    assert "GPU memory cannot be measured on cpu" in out.stderr
