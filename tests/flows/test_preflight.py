"""Preflight (`bhashaflow check`, and the pipeline's cheap part): each failure fast, named, before any work."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from cli_helpers import local_run, run_cli

from bhashaflow.config import PipelineConfig
from bhashaflow.core.settings import Settings
from flows.preflight import Check, PreflightError, preflight, require_preflight

ROOT = Path(__file__).resolve().parents[2]
FLORES = str(ROOT / "data/flores200")
FLORES_SOURCE = {"name": "flores-dev", "kind": "flores", "uri": FLORES, "split": "dev"}


def make_config(tmp_path: Path, **changes: object) -> PipelineConfig:
    data: dict[str, object] = {
        "run_name": "preflight",
        "workdir": str(tmp_path / "runs"),
        "registry": str(tmp_path / "registry"),
        "directions": ["eng_Latn-hin_Deva"],
        "base_model": "builtin:tiny-seq2seq",
        "sources": [FLORES_SOURCE],
        "evaluation": {"flores_dir": FLORES},
    }
    data.update(changes)
    return PipelineConfig.model_validate(data)


def checked(config: PipelineConfig) -> tuple[dict[str, Check], float]:
    started = time.monotonic()
    checks = preflight(config, thorough=False, settings=Settings(hf_hub_offline=True))
    return {c.name: c for c in checks}, time.monotonic() - started


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


def test_a_sound_config_passes_every_check(tmp_path):
    checks, _ = checked(make_config(tmp_path))
    assert list(checks) == ["base model", "FLORES eng_Latn-hin_Deva", "workdir", "registry", "source flores-dev"]
    assert all(c.ok for c in checks.values()), checks
    assert "5 of the first 5 rows" in checks["source flores-dev"].message
    assert not (tmp_path / "runs").exists() and not (tmp_path / "registry").exists()  # probed, nothing left behind


def test_missing_base_directory_is_named(tmp_path):
    missing = tmp_path / "no-such-base"
    checks, seconds = checked(make_config(tmp_path, base_model=str(missing)))
    assert not checks["base model"].ok
    assert checks["base model"].message == f"base model directory {missing} does not exist"
    assert seconds < 10


def test_base_directory_without_safetensors_is_named(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    checks, _ = checked(make_config(tmp_path, base_model=str(base)))
    assert checks["base model"].message == f"base model directory {base} has no safetensors weights"


def test_unreachable_http_source_fails_in_seconds_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/pairs.jsonl"
    source = {"name": "web", "kind": "http", "uri": url, "format": "jsonl"}
    checks, seconds = checked(make_config(tmp_path, sources=[source]))
    assert not checks["source web"].ok
    assert url in checks["source web"].message and "refused" in checks["source web"].message.lower()
    assert seconds < 10


def test_a_configured_field_missing_in_the_first_rows_is_named(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"en": f"Line {i}.", "hi": f"पंक्ति {i}।"}, ensure_ascii=False) + "\n" for i in range(8)),
        encoding="utf-8",
    )
    source = {
        "name": "local",
        "kind": "hf",
        "uri": str(pairs),
        "fields": {"src": "english", "tgt": "hi"},
        "langs": {"src": "eng_Latn", "tgt": "hin_Deva"},
    }
    checks, seconds = checked(make_config(tmp_path, sources=[source]))
    check = checks["source local"]
    assert not check.ok
    assert str(pairs) in check.message
    assert "none of the first 5 rows has the configured fields" in check.message
    assert "field 'english' (src) is missing" in check.message
    assert seconds < 20

    good = {**source, "fields": {"src": "en", "tgt": "hi"}}
    checks, _ = checked(make_config(tmp_path, sources=[good]))
    assert checks["source local"].ok, checks["source local"]


def test_registry_under_a_file_is_not_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    checks, _ = checked(make_config(tmp_path, registry=str(blocker / "registry")))
    assert not checks["registry"].ok
    assert checks["registry"].message == f"{blocker / 'registry'} is not writable: {blocker} is not a directory"
    assert checks["workdir"].ok


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_registry_is_not_writable(tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    registry.chmod(0o555)
    try:
        checks, _ = checked(make_config(tmp_path, registry=str(registry)))
    finally:
        registry.chmod(0o755)
    assert not checks["registry"].ok and str(registry) in checks["registry"].message


def test_missing_flores_file_names_it(tmp_path, flores_dir):
    (flores_dir / "devtest" / "hin_Deva.devtest").unlink()
    checks, _ = checked(make_config(tmp_path, evaluation={"flores_dir": str(flores_dir)}))
    check = checks["FLORES eng_Latn-hin_Deva"]
    assert not check.ok and str(flores_dir / "devtest" / "hin_Deva.devtest") in check.message


def test_require_preflight_lists_every_failure(tmp_path):
    config = make_config(tmp_path, base_model=str(tmp_path / "gone"), registry=str(tmp_path / "runs" / "x"))
    (tmp_path / "runs").write_text("a file where the workdir should be")
    with pytest.raises(PreflightError) as raised:
        require_preflight(config)
    message = str(raised.value)
    assert message.startswith("preflight failed: base model: base model directory")
    assert "workdir: " in message and "registry: " in message and str(tmp_path / "gone") in message


def test_check_command_exits_non_zero_with_named_lines_and_json(tmp_path, tiny_base):
    url = f"http://127.0.0.1:{closed_port()}/pairs.jsonl"
    sets = local_run(tmp_path, tiny_base)
    good = run_cli("check", "configs/smoke.yaml", "--json", *sets)
    assert good.returncode == 0, good.stderr[-2000:]
    result = json.loads(good.stdout)  # stdout is the JSON alone
    assert result["ok"] is True
    assert [c["name"] for c in result["checks"]][-1] == "device"
    assert result["checks"][-1]["message"] == "cpu (no CUDA device): training runs on the CPU in float32 (auto)"
    assert any(line.startswith("ok    base model") for line in good.stderr.splitlines())

    bad = run_cli(
        "check",
        "configs/smoke.yaml",
        *sets,
        "--set",
        f"sources=[{{name: web, kind: http, uri: '{url}', format: jsonl}}]",
    )
    assert bad.returncode == 1
    lines = {line.split()[1] + " " + line.split()[2]: line for line in bad.stdout.splitlines()}
    assert lines["source web"].startswith("FAIL") and url in lines["source web"]
    assert lines["base model"].startswith("ok")


def test_pipeline_fails_before_ingesting_with_the_same_message(cli_env, tmp_path):
    missing = tmp_path / "no-such-base"
    out = run_cli(
        "pipeline",
        "configs/smoke.yaml",
        "--set",
        f"base_model={missing}",
        "--set",
        f"workdir={tmp_path / 'runs'}",
        "--set",
        f"registry={tmp_path / 'registry'}",
        env=cli_env,
    )
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("bhashaflow pipeline: error:")]
    assert errors == [
        f"bhashaflow pipeline: error: preflight failed: base model: base model directory {missing} does not exist"
    ]
    assert not list((tmp_path / "runs").rglob("staging")) and not list((tmp_path / "runs").rglob("manifest.json"))


# --- The real bases' checks, on their stand-ins by hub id (tests/standins.py) ----------------------------------


def test_a_language_the_base_has_no_tag_for_fails_the_check_naming_base_direction_and_tag(tmp_path, hf_standins):
    checks, _ = checked(
        make_config(tmp_path, base_model="facebook/m2m100_418M", directions=["eng_Latn-hin_Deva", "eng_Latn-tel_Telu"])
    )
    assert checks["base model"].ok
    tags = checks["language tags"]
    assert not tags.ok
    assert "'facebook/m2m100_418M'" in tags.message and "eng_Latn-tel_Telu" in tags.message
    assert "tel_Telu" in tags.message and "'__te__'" in tags.message


def test_a_pipeline_on_a_base_without_the_tag_stops_before_ingesting(tmp_path, hf_standins):
    config = make_config(tmp_path, base_model="facebook/m2m100_418M", directions=["eng_Latn-asm_Beng"])
    with pytest.raises(PreflightError) as raised:
        require_preflight(config)
    assert "language tags: base model 'facebook/m2m100_418M'" in str(raised.value) and "asm_Beng" in str(raised.value)
    assert not (tmp_path / "runs").exists()


def test_an_alias_is_said(tmp_path, hf_standins):
    checks, _ = checked(
        make_config(
            tmp_path,
            base_model="facebook/nllb-200-distilled-600M",
            directions=["eng_Latn-hin_Deva", "eng_Latn-sat_Olck"],
        )
    )
    tags = checks["language tags"]
    assert tags.ok and "NllbTokenizer" in tags.message and "sat_Olck as sat_Beng" in tags.message


def test_indictrans2_is_refused_in_one_line(tmp_path, hf_standins):
    checks, seconds = checked(make_config(tmp_path, base_model="ai4bharat/indictrans2-en-indic-dist-200M"))
    base = checks["base model"]
    assert not base.ok and "IndicTrans2 is not supported" in base.message and "\n" not in base.message
    assert "language tags" not in checks and seconds < 20


def test_a_local_copy_of_indictrans2_is_known_by_its_config(tmp_path, hf_standins):
    local = tmp_path / "my-translator"
    local.mkdir()
    snapshot = next((hf_standins / "models--ai4bharat--indictrans2-en-indic-dist-200M" / "snapshots").iterdir())
    (local / "config.json").write_bytes((snapshot / "config.json").read_bytes())
    checks, _ = checked(make_config(tmp_path, base_model=str(local)))
    assert not checks["base model"].ok and "IndicTrans2 is not supported" in checks["base model"].message


def test_a_base_that_saw_devtest_is_a_warning_not_a_failure(tmp_path, hf_standins):
    checks, _ = checked(make_config(tmp_path, base_model="bigscience/bloomz-560m"))
    seen = checks["evaluation set"]
    assert seen.ok and seen.warning
    assert "FLORES-200 dev and devtest" in seen.message and "measure memory, not translation" in seen.message
    assert checks["language tags"].ok and "decoder-only" in checks["language tags"].message
    checks, _ = checked(
        make_config(tmp_path, base_model="bigscience/bloomz-560m", evaluation={"flores_dir": FLORES, "split": "dev"})
    )
    assert checks["evaluation set"].warning  # dev too: BLOOMZ saw both
    from flows.preflight import format_checks

    assert any(line.startswith("WARN  evaluation set") for line in format_checks(list(checks.values())).splitlines())
