"""Real Prefect processes for the integration tests: start a server, wait for it, stop what was started."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from uuid import UUID

import yaml
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from bhashaflow.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def prefect_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a Prefect process with its own PREFECT_HOME, telemetry and UI off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        # No scheduled runs during a test: the hourly export would otherwise queue itself on the worker.
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def wait_for_api(api_url: str, alive: subprocess.Popen[bytes] | None = None, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with status {alive.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer from {api_url} within {timeout:.0f} s")
        time.sleep(0.3)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


class PrefectServer:
    """`prefect server start` on 127.0.0.1 and a free port, with its own PREFECT_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        log = (self.home / "server.log").open("wb")
        self.process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=prefect_env(self.home),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.home,
        )
        try:
            wait_for_api(self.api_url, self.process)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def smoke_config(tmp: Path, base_model: str, overrides: list[str] | None = None) -> PipelineConfig:
    """configs/smoke.yaml, with every path it writes moved under `tmp` and a prebuilt base."""
    return load_config(
        REPO / "configs" / "smoke.yaml",
        [
            f"base_model={base_model}",
            f"workdir={tmp / 'runs'}",
            f"registry={tmp / 'registry'}",
            f"serving.episodes_db={tmp / 'episodes.db'}",
            f"rl_export.target={tmp / 'rl-logs'}",
            *(overrides or []),
        ],
    )


def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def task_states(flow_run_id: UUID) -> dict[str, list[str]]:
    """Task run name (less Prefect's random suffix) -> the state names of its runs in this flow run, oldest first."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states: dict[str, list[str]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: r.created or 0):
        states[re.sub(r"-[0-9a-f]{3}$", "", run.name)].append(run.state_name or "")
    return dict(states)
