"""`bhashaflow demo`: the whole product once, offline, as a user would run it.

The pipeline (ingest, fine-tune, evaluate, promote, report), then the service on the promoted adapters with
a translation and a feedback per direction over HTTP and corrections of FLORES dev translations, then the RL log
export, then the feedback loop (configs/feedback-loop.yaml) on those corrections; each step prints what it did.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TypedDict

import httpx

from bhashaflow.config import PipelineConfig, RLExportFlowConfig
from bhashaflow.episodes.export import ExportSummary
from bhashaflow.pipeline.report import format_table
from flows.adapter_pipeline import PipelineResult, adapter_pipeline
from flows.export_rl_logs import export_rl_logs_flow
from flows.feedback_loop import FeedbackLoopResult, post_corrections
from flows.watch import watched

SENTENCE = "The river flows through the old city."
CORRECTIONS = 300  # FLORES dev sentences per direction translated and corrected
LOOP_CONFIG = "feedback-loop.yaml"
READY_TIMEOUT_S = 600


class DemoResult(TypedDict):
    """What `bhashaflow demo --json` prints: the pipeline's result, the export's, the feedback loop's (None: not run)."""

    pipeline: PipelineResult
    export: ExportSummary
    loop: FeedbackLoopResult | None


def run_demo(config_path: str, overrides: list[str], config: PipelineConfig, *, quiet: bool = False) -> DemoResult:
    """Pipeline, table, a served translation with feedback per promoted direction, RL log export.

    Args:
        config_path: the YAML file (the service is started from it, as `bhashaflow serve` would be).
        overrides: the `--set` overrides, passed on to the service.
        config: the loaded config.
        quiet: errors and the tables only (no progress bars or log lines).
    """
    with watched(quiet=quiet):  # progress bars on a terminal, log lines in a pipe (flows/watch.py)
        result = adapter_pipeline(config)
    print(f"\nrun {result['run_id']}: report {result['report']}")
    print(format_table(result["directions"]), flush=True)
    promoted = [d for d, r in result["directions"].items() if r["promoted"] or r["incumbent_version"]]
    if promoted:
        serve_and_try(config_path, overrides, config, promoted)
    else:
        print("\nno direction has a promoted adapter, so there is nothing to serve", flush=True)
    with watched(quiet=quiet):
        exported = export_rl_logs_flow(RLExportFlowConfig.of(config))
    print(f"exported {exported['exported']} episodes in {len(exported['parts'])} parts to {exported['target']}")
    loop = run_loop(config_path, overrides, quiet=quiet) if promoted else None
    return {"pipeline": result, "export": exported, "loop": loop}


def run_loop(config_path: str, overrides: list[str], *, quiet: bool = False) -> FeedbackLoopResult | None:
    """The feedback loop on the corrections just exported: configs/feedback-loop.yaml beside the demo's config."""
    from bhashaflow.config import load_config
    from flows.feedback_loop import feedback_loop, loop_table

    loop_path = Path(config_path).with_name(LOOP_CONFIG)
    if not loop_path.is_file():
        print(f"\nno {loop_path}: the feedback loop is skipped", flush=True)
        return None
    print(f"\n$ bhashaflow feedback-loop {loop_path}", flush=True)
    with watched(quiet=quiet):
        loop = feedback_loop(load_config(loop_path, overrides))
    print(loop_table(loop), flush=True)
    return loop


def serve_and_try(config_path: str, overrides: list[str], config: PipelineConfig, directions: list[str]) -> None:
    """Start the service on the promoted adapters, translate and give feedback per direction, stop it."""
    host = config.serving.host
    port = _free_port(host)
    cmd = [sys.executable, "-m", "flows.cli", "serve", config_path, "--port", str(port)]
    for item in [*overrides, "serving.feedback_per_minute=0"]:  # the demo's users correct faster than people do
        cmd += ["--set", item]
    log_path = Path(config.serving.episodes_db).with_name("serve.log")  # its access log: a line per request
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n$ bhashaflow serve {config_path} --port {port}   (its log: {log_path})", flush=True)
    with log_path.open("ab") as log_file:
        service = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://{host}:{port}"
    try:
        _wait_ready(service, base, log_path)
        for direction in directions:
            _translate_and_rate(base, direction)
        for direction in directions:  # users correcting translations: FLORES dev references stand in for them
            posted = post_corrections(base, direction, config.evaluation.flores_dir, CORRECTIONS)
            print(
                f"POST /v1/feedback {direction}: {posted['corrections']} corrections of FLORES dev translations "
                f"({posted['equal_to_output']} equal to what was served)",
                flush=True,
            )
    finally:
        _stop(service)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(service: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if service.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError(
                f"the service exited with status {service.returncode} before it was ready; "
                f"the end of {log_path}:\n" + "\n".join(tail)
            )
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service did not become ready within {READY_TIMEOUT_S} s")
        time.sleep(0.5)


def _translate_and_rate(base: str, direction: str) -> None:
    src_lang, tgt_lang = direction.split("-")
    r = httpx.post(
        f"{base}/v1/translate", json={"texts": [SENTENCE], "src_lang": src_lang, "tgt_lang": tgt_lang}, timeout=120
    )
    body = r.json()
    if r.status_code != 200:
        print(f"POST /v1/translate {direction}: {r.status_code} {body.get('detail', body)}")
        return
    print(
        f"POST /v1/translate {direction} ({body['adapter']['version']}): {SENTENCE!r} -> "
        f"{body['translations'][0]!r} (script valid: {body['script_valid'][0]})"
    )
    fb = httpx.post(f"{base}/v1/feedback", json={"episode_id": body["episode_ids"][0], "reward": 0.5}, timeout=30)
    print(f"POST /v1/feedback episode {body['episode_ids'][0]} reward 0.5: {fb.status_code}")


def _stop(service: subprocess.Popen[bytes]) -> None:
    service.terminate()
    try:
        service.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.kill()
        service.wait()
    print("service stopped", flush=True)
