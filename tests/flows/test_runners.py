"""flows/runners.py: the task runner and the result storage a config asks for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from bhashaflow.config import ConfigError, PipelineConfig, config_from_dict
from bhashaflow.settings import Settings
from flows.runners import build_task_runner, result_storage, task_resources

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
        "n_workers": min(2, os.cpu_count() or 1), "threads_per_worker": 1, "processes": True,
        "dashboard_address": None, "resources": {"GPU": 1.0},
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
    settings = Settings(aws_access_key_id="AKID", aws_secret_access_key="secret", aws_endpoint_url="http://127.0.0.1:9000")  # type: ignore[call-arg]
    storage = result_storage(cfg, settings)
    assert isinstance(storage, RemoteFileSystem)
    assert storage.basepath == f"s3://bucket/runs/demo/{cfg.resolved_run_id()}/prefect-results"
    assert storage.settings == {"key": "AKID", "secret": "secret", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}


def test_a_configured_default_storage_block_wins():
    with temporary_settings(updates={PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: "s3-bucket/bhashaflow-results"}):
        assert result_storage(config(), Settings()) is None
