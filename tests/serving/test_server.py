"""The service as users run it: `serving.app.run` in its own process (uvicorn), talked to over real HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import EN_HI, REPO, TOKEN, serving_config

_RUN = (
    "import sys\n"
    "from bhashaflow.config import load_config\n"
    "from serving.app import run\n"
    "run(load_config(sys.argv[1]), '127.0.0.1', int(sys.argv[2]))\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(tmp_path: Path, base: str, registry: str, **serving: object) -> tuple[subprocess.Popen[str], str]:
    config = serving_config(tmp_path, base, registry, **serving)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    port = _free_port()
    env = {**os.environ, "BHASHAFLOW_API_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(path), str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
def server(tmp_path: Path, tiny_base: str, registry: str) -> Iterator[str]:
    proc, url = _start(tmp_path, tiny_base, registry, max_batch_size=16, max_wait_ms=50)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the server never became ready"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert proc.returncode in (0, -signal.SIGTERM), stderr[-3000:]
        assert "Application shutdown complete" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _translate_concurrently(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(
                    "/v1/translate", json={"texts": [f"sentence {i}"], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
                )
                for i in range(n)
            )
        )


def test_a_real_server_batches_concurrent_requests_and_takes_feedback(server: str) -> None:
    responses = asyncio.run(_translate_concurrently(server, 16))
    assert [r.status_code for r in responses] == [200] * 16
    assert sorted(r.json()["episode_ids"][0] for r in responses) == list(range(1, 17))
    assert {r.json()["adapter"]["version"] for r in responses} == {"v0001"}

    metrics = {f.name: f.samples for f in text_string_to_metric_families(httpx.get(f"{server}/metrics").text)}
    batches = {s.name: s.value for s in metrics["bhashaflow_batch_size"] if not s.labels.get("le")}
    singles = next(s.value for s in metrics["bhashaflow_batch_size"] if s.labels.get("le") == "1.0")
    assert batches["bhashaflow_batch_size_sum"] == 16
    assert batches["bhashaflow_batch_size_count"] < 16 and singles < batches["bhashaflow_batch_size_count"]

    feedback = httpx.post(f"{server}/v1/feedback", json={"episode_id": "3", "reward": 1.0, "correction": "सही"})
    assert feedback.status_code == 200 and feedback.json()["episode_id"] == 3
    assert httpx.post(f"{server}/v1/feedback", json={"episode_id": 99, "reward": 1.0}).status_code == 404

    assert httpx.post(f"{server}/v1/adapters/reload").status_code == 401
    reload = httpx.post(f"{server}/v1/adapters/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reload.status_code == 200 and reload.json()["adapters"][0]["direction"] == EN_HI

    big = httpx.post(f"{server}/v1/translate", content=b"x" * 1_000_001, headers={"Content-Type": "application/json"})
    assert big.status_code == 413


def test_run_exits_with_an_error_when_the_base_cannot_load(tmp_path: Path, registry: str) -> None:
    proc, _ = _start(tmp_path, str(tmp_path / "missing-base"), registry)
    try:
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "could not load base model" in stderr
