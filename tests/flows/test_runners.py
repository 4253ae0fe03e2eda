"""flows/runners.py: the task runner and the result storage a config asks for."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.flow_engine import run_flow
from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, temporary_settings
from prefect.states import Scheduled
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from bhashaflow.config import ConfigError, PipelineConfig, config_from_dict
from bhashaflow.core.settings import Settings
from flows.runners import build_task_runner, configured_run, result_storage, task_resources

TWO = ["eng_Latn-hin_Deva", "eng_Latn-tam_Taml"]


def config(**fields) -> PipelineConfig:
    return config_from_dict({"directions": TWO, **fields})


def test_thread_runner_runs_one_task_at_a_time():
    runner = build_task_runner(config())
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 1


def test_dask_with_an_address_joins_that_cluster():
    runner = build_task_runner(config(task_runner={"kind": "dask", "address": "tcp://10.1.2.3:8786"}))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.address == "tcp://10.1.2.3:8786"


def test_dask_without_an_address_starts_a_local_cluster_of_one_worker_per_direction():
    runner = build_task_runner(config(task_runner={"kind": "dask", "resources": {"GPU": 1}}))
    assert isinstance(runner, DaskTaskRunner) and runner.address is None
    assert runner.cluster_class == "distributed.LocalCluster"
    assert runner.cluster_kwargs == {
        "n_workers": min(2, os.cpu_count() or 1),
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
        "resources": {"GPU": 1.0},
    }


def test_dask_resources_annotate_submissions_only_for_dask():
    import dask

    with task_resources(config(task_runner={"kind": "dask", "resources": {"GPU": 1}})):
        assert dask.get_annotations() == {"resources": {"GPU": 1.0}}
    with task_resources(config()):
        assert dask.get_annotations() == {}


@pytest.mark.parametrize(
    "task_runner,message",
    [
        ({"address": "tcp://h:8786"}, "task_runner.address, n_workers and resources need kind: dask"),
        ({"resources": {"GPU": 1}}, "task_runner.address, n_workers and resources need kind: dask"),
        ({"n_workers": 2}, "task_runner.address, n_workers and resources need kind: dask"),
        ({"kind": "dask", "address": "tcp://h:8786", "n_workers": 2}, "an existing cluster (address) has its own"),
        ({"kind": "dask", "resources": {"GPU": 0}}, "amounts must be positive"),
        ({"kind": "ray"}, "task_runner.kind: Input should be 'thread' or 'dask'"),
    ],
)
def test_task_runner_config_errors_name_the_key(task_runner, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(task_runner=task_runner)


def test_local_results_go_to_the_run_folder_as_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    cfg = config(workdir="runs", run_name="demo")
    storage = result_storage(cfg, Settings())
    assert isinstance(storage, LocalFileSystem)
    assert storage.basepath == str(tmp_path / "runs" / "demo" / cfg.resolved_run_id() / "prefect-results")


def test_s3_results_carry_the_settings_credentials(monkeypatch: pytest.MonkeyPatch):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    cfg = config(workdir="s3://bucket/runs", run_name="demo")
    settings = Settings(
        aws_access_key_id="AKID", aws_secret_access_key="secret", aws_endpoint_url="http://127.0.0.1:9000"
    )  # type: ignore[call-arg]
    storage = result_storage(cfg, settings)
    assert isinstance(storage, RemoteFileSystem)
    assert storage.basepath == f"s3://bucket/runs/demo/{cfg.resolved_run_id()}/prefect-results"
    assert storage.settings == {
        "key": "AKID",
        "secret": "secret",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"},
    }


def test_a_configured_default_storage_block_wins():
    with temporary_settings(updates={PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: "s3-bucket/bhashaflow-results"}):
        assert result_storage(config(), Settings()) is None


@flow
def _run_folder(config: PipelineConfig) -> str:
    with configured_run(config, distribute=False) as resolved:
        return resolved.run_uri()


def _scheduled_run(when: datetime, parameters: dict) -> Any:
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(_run_folder, parameters=parameters, state=Scheduled(scheduled_time=when))
    return flow_run


def test_a_scheduled_run_takes_its_run_id_from_its_scheduled_date_and_a_retry_keeps_it(prefect_api, tmp_path):
    nightly = config(run_id="nightly-{date}", workdir=str(tmp_path))
    parameters = {"config": nightly.model_dump(mode="json")}
    monday = _scheduled_run(datetime(2026, 3, 2, 20, 30, tzinfo=UTC), parameters)
    tuesday = _scheduled_run(datetime(2026, 3, 3, 20, 30, tzinfo=UTC), parameters)
    assert (
        run_flow(_run_folder, flow_run=monday, parameters={"config": nightly}) == f"{tmp_path}/run/nightly-2026-03-02"
    )
    assert (
        run_flow(_run_folder, flow_run=tuesday, parameters={"config": nightly}) == f"{tmp_path}/run/nightly-2026-03-03"
    )
    # A retry runs the same flow run again (its scheduled start does not move): the same run folder, resumed.
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(monday.id, Scheduled(), force=True)
        again = client.read_flow_run(monday.id)
    assert run_flow(_run_folder, flow_run=again, parameters={"config": nightly}) == f"{tmp_path}/run/nightly-2026-03-02"
