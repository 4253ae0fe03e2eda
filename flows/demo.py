"""`bhashaflow demo`: the whole product once, offline, as a user would run it.

The pipeline (ingest, fine-tune, evaluate, promote, report), then the service on the promoted adapters with
a translation and a feedback per direction over HTTP, then the RL log export; each step prints what it did.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

import httpx

from bhashaflow.config import PipelineConfig, RLExportFlowConfig
from bhashaflow.pipeline.report import format_table
from flows.adapter_pipeline import adapter_pipeline
from flows.export_rl_logs import export_rl_logs_flow

SENTENCE = "The river flows through the old city."
READY_TIMEOUT_S = 600


def run_demo(config_path: str, overrides: list[str], config: PipelineConfig) -> dict[str, Any]:
    """Pipeline, table, a served translation with feedback per promoted direction, RL log export.

    Args:
        config_path: the YAML file (the service is started from it, as `bhashaflow serve` would be).
        overrides: the `--set` overrides, passed on to the service.
        config: the loaded config.
    """
    result = adapter_pipeline(config)
    print(f"\nrun {result['run_id']}: report {result['report']}")
    print(format_table(result["directions"]), flush=True)
    promoted = [d for d, r in result["directions"].items() if r["promoted"] or r["incumbent_version"]]
    if promoted:
        serve_and_try(config_path, overrides, config, promoted)
    else:
        print("\nno direction has a promoted adapter, so there is nothing to serve", flush=True)
    exported = export_rl_logs_flow(RLExportFlowConfig.of(config))
    print(f"exported {exported['exported']} episodes in {len(exported['parts'])} parts to {exported['target']}")
    return {"pipeline": result, "export": exported}


def serve_and_try(config_path: str, overrides: list[str], config: PipelineConfig, directions: list[str]) -> None:
    """Start the service on the promoted adapters, translate and give feedback per direction, stop it."""
    host = config.serving.host
    port = _free_port(host)
    cmd = [sys.executable, "-m", "flows.cli", "serve", config_path, "--port", str(port)]
    for item in overrides:
        cmd += ["--set", item]
    print(f"\n$ bhashaflow serve {config_path} --port {port}", flush=True)
    service = subprocess.Popen(cmd)
    base = f"http://{host}:{port}"
    try:
        _wait_ready(service, base)
        for direction in directions:
            _translate_and_rate(base, direction)
    finally:
        _stop(service)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(service: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if service.poll() is not None:
            raise RuntimeError(f"the service exited with status {service.returncode} before it was ready")
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
    r = httpx.post(f"{base}/v1/translate", json={"texts": [SENTENCE], "src_lang": src_lang, "tgt_lang": tgt_lang},
                   timeout=120)  # fmt: skip
    body = r.json()
    if r.status_code != 200:
        print(f"POST /v1/translate {direction}: {r.status_code} {body.get('detail', body)}")
        return
    print(f"POST /v1/translate {direction} ({body['adapter']['version']}): {SENTENCE!r} -> "
          f"{body['translations'][0]!r} (script valid: {body['script_valid'][0]})")  # fmt: skip
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
