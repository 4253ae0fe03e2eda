"""`make prefect-up`, the smoke deployment run by the worker, its artifacts read back, the notebook, `make prefect-down`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml
from nbclient import NotebookClient
from prefect import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_stack import PREFECT, REPO, free_port, pid_alive, prefect_env, smoke_config, task_states

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READ_TABLE = """
import sys
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
with get_client(sync_client=True) as client:
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[sys.argv[1]])))
[artifact] = artifacts
print(artifact.type, artifact.flow_run_id)
print(artifact.data)
"""


def make(target: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # -o install: the suite already runs inside the installed venv; never reinstall from a test.
    return subprocess.run(
        ["make", "--no-print-directory", "-o", "install", target],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_smoke_deployment_runs_on_the_worker_and_the_notebook_reads_it(tiny_base: str, tmp_path: Path):
    home = tmp_path / "prefect-home"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(
        home, PREFECT_PORT=str(port), PREFECT_WORKER_QUERY_SECONDS="1", BHASHAFLOW_CACHE_DIR=str(tmp_path / "cache")
    )
    up = make("prefect-up", env)
    pids = {
        name: int((home / "up" / f"{name}.pid").read_text())
        for name in ("server", "worker")
        if (home / "up" / f"{name}.pid").is_file()
    }
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert sorted(pids) == ["server", "worker"] and all(pid_alive(p) for p in pids.values())
        cli_env = {**env, "PREFECT_API_URL": api}
        # The UI asks /ui-settings where its API is: this server, on this port (not Prefect's default 4200).
        ui_api = _get_json(f"http://127.0.0.1:{port}/ui-settings")["api_url"]
        assert ui_api == api

        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            smoke = client.read_deployment_by_name("adapter-pipeline/smoke")
            nightly = client.read_deployment_by_name("adapter-pipeline/nightly")
            hourly = client.read_deployment_by_name("export-rl-logs/hourly")
            client.read_deployment_by_name("adapter-pipeline/demo")
            client.read_deployment_by_name("evaluate-adapter/manual")
            pool = client.read_work_pool("bhashaflow-local")
        assert smoke.parameters == {"config": yaml.safe_load((REPO / "configs/smoke.yaml").read_text())}
        assert "PipelineConfig" in smoke.parameter_openapi_schema["definitions"]  # the UI's run form
        assert smoke.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
        assert [(s.schedule.cron, s.active) for s in nightly.schedules] == [("0 2 * * *", False)]
        assert [(s.schedule.interval.total_seconds(), s.active) for s in hourly.schedules] == [(3600.0, False)]
        assert (pool.type, smoke.work_pool_name) == ("process", "bhashaflow-local")

        # The run form, filled in: the smoke config with its paths in this test's folder and a prebuilt base.
        config = smoke_config(tmp_path, tiny_base)
        run = subprocess.run(
            [
                PREFECT,
                "deployment",
                "run",
                "adapter-pipeline/smoke",
                "--params",
                json.dumps({"config": config.model_dump(mode="json")}),
                "--watch",
                "--watch-timeout",
                "300",
            ],
            cwd=tmp_path,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert run.returncode == 0, (
            run.stdout[-3000:] + run.stderr[-3000:] + (home / "up/worker.log").read_text()[-4000:]
        )
        assert "Flow run finished successfully in 'Completed'" in run.stdout

        # Another process reads the chrF table back through the API: its data is a JSON string.
        read = subprocess.run(
            [sys.executable, "-c", READ_TABLE, "adapter-pipeline-smoke-chrf"],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert read.returncode == 0, read.stderr[-3000:]
        kind, flow_run_id = read.stdout.splitlines()[0].split()
        # What the UI's Runs page asks of the API it was given: the run is there, completed.
        listed = {r["id"]: r["state_type"] for r in _post_json(f"{ui_api}/flow_runs/filter", {"limit": 10})}
        assert listed[flow_run_id] == "COMPLETED"
        rows = json.loads(read.stdout.splitlines()[1])
        assert kind == "table"
        assert [r["direction"] for r in rows] == config.directions
        assert all(r["promoted"] in ("yes, v0001", "no (v0001 kept as a candidate)") for r in rows)
        # min_gain 0: a candidate at least as good as the base is promoted (2 steps on a random base: maybe not).
        promoted = [r["direction"] for r in rows if r["promoted"].startswith("yes")]
        assert all(float(r["candidate chrF++"]) >= float(r["base chrF++"]) for r in rows if r["direction"] in promoted)
        assert {r["incumbent chrF++"] for r in rows} == {"none yet"}

        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

            artifacts = {
                a.key: a
                for a in client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
                )
                if a.key
            }
            states = task_states(flow_run_id)
        assert sorted(artifacts) == sorted(
            ["adapter-pipeline-smoke-chrf", "adapter-pipeline-smoke-report"]
            + [f"adapter-pipeline-smoke-{d.lower().replace('_', '-')}-train" for d in config.directions]
            + [f"adapter-pipeline-smoke-{d.lower().replace('_', '-')}-loss" for d in config.directions]
            + [f"adapter-pipeline-smoke-{d.lower().replace('_', '-')}-adapter" for d in promoted]
        )
        assert "data:image/png;base64," in artifacts["adapter-pipeline-smoke-report"].data
        assert artifacts["adapter-pipeline-smoke-eng-latn-hin-deva-train"].data == 100
        for d in promoted:  # a local registry: where it is and the command that opens it, no file:// link
            where = artifacts[f"adapter-pipeline-smoke-{d.lower().replace('_', '-')}-adapter"].data
            folder = (tmp_path / "registry" / d / "versions" / "v0001").resolve()
            assert f"In the registry: `{folder}` on host `" in where and f"(open: `ls -l {folder}`)" in where
        for key, artifact in artifacts.items():  # every card says what it is; no link a browser refuses to open
            assert artifact.description and "file://" not in str(artifact.data), key
        assert states["train-eng_Latn-hin_Deva"] == states["evaluate-eng_Latn-tam_Taml"] == ["Completed"]

        # The notebook, top to bottom, against the same server.
        notebook = nbformat.read(REPO / "notebooks" / "run_report.ipynb", as_version=4)
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
        ).execute(env=cli_env)
        nbformat.write(notebook, tmp_path / "run_report.executed.ipynb")  # to read when this test fails
        outputs = "\n".join(
            out.get("text", "") + json.dumps(out.get("data", {}).get("text/plain", ""))
            for cell in notebook.cells
            if cell.cell_type == "code"
            for out in cell.outputs
        )
        assert not [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert f"({flow_run_id})" in outputs
        shown = promoted[0] if promoted else config.directions[0]
        label = "promoted" if promoted else "newest candidate (nothing promoted)"
        assert f"{shown}: {label} v0001 from {tmp_path / 'registry'}" in outputs
        assert f"{shown} v0001: 'The river flows through the old city.' -> " in outputs
        assert any(
            o.output_type == "display_data" and "image/png" in o.data
            for c in notebook.cells
            if c.cell_type == "code"
            for o in c.outputs
        )
    finally:
        down = make("prefect-down", env)
        survivors = {name: pid for name, pid in pids.items() if pid_alive(pid)}
        for pid in survivors.values():
            os.kill(pid, signal.SIGKILL)
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"stopped worker (pid {pids['worker']})" in down.stdout
    assert f"stopped server (pid {pids['server']})" in down.stdout
    assert survivors == {}
    assert not list((home / "up").glob("*.pid"))
