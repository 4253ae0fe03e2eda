"""Where a flow's tasks run and where their results persist, both chosen per run from the config.

A deployment's flow is fixed when it is deployed, but the task runner and the result location belong to the
config a run is started with (`task_runner`, `workdir`): `configured_run` applies them inside the flow.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any, Literal

from prefect.context import FlowRunContext
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from bhashaflow.config import PipelineConfig
from bhashaflow.core.fsio import is_local, join, open_fs
from bhashaflow.core.settings import Settings, get_settings

RESULTS_DIR = "prefect-results"


def results_uri(config: PipelineConfig) -> str:
    """Where a run's task results persist: inside its run folder, so deleting a run also forgets its cache."""
    return join(config.run_uri(), RESULTS_DIR)


def result_storage(config: PipelineConfig, settings: Settings | None = None) -> WritableFileSystem | None:
    """The run's result storage as a Prefect filesystem (any fsspec URL), or None to keep Prefect's default.

    A configured `PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK` (e.g. an S3 bucket block in production) wins.
    """
    if get_current_settings().results.default_storage_block:
        return None
    settings = settings or get_settings()
    uri = results_uri(config)
    options = settings.storage_options_for(uri)
    fs, path = open_fs(uri, options)
    if is_local(fs):
        # Absolute: Dask workers and retried runs may start in another working directory.
        return LocalFileSystem(basepath=os.path.abspath(path))
    return RemoteFileSystem(basepath=uri, settings=dict(options or {}))


def build_task_runner(config: PipelineConfig) -> TaskRunner[Any]:
    """The task runner `config.task_runner` names: threads, an existing Dask cluster, or a local one."""
    spec = config.task_runner
    if spec.kind == "thread":
        # One task at a time: loading models with transformers is not thread-safe, and two directions fine-tuning
        # at once would not fit one 6 GB GPU anyway. Parallel directions run in separate processes, on Dask.
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if spec.address:
        return DaskTaskRunner(address=spec.address)
    n_workers = spec.n_workers or max(1, min(len(config.directions), os.cpu_count() or 1))
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,  # one task per worker: a worker is one trainer
            "processes": True,
            "dashboard_address": None,
            # Local workers offer the resources tasks claim, so annotated tasks still run on a laptop.
            "resources": spec.offered_locally() or None,
        },
    )


def task_resources(config: PipelineConfig, step: Literal["train", "evaluate"] = "train") -> AbstractContextManager[Any]:
    """Around `.submit()`: the Dask worker resources (e.g. GPU) the fine-tune or evaluate tasks claim."""
    spec = config.task_runner
    resources = spec.resources_of(step)
    if spec.kind == "dask" and resources:
        import dask

        return dask.annotate(resources=dict(resources))
    return nullcontext()


def at_scheduled_start(config: PipelineConfig, context: FlowRunContext | None) -> PipelineConfig:
    """`config` with `{date}` / `{datetime}` in `run_id` filled from the flow run's scheduled start, which its
    retries share; unchanged outside a flow run (or one without a scheduled start)."""
    flow_run = context.flow_run if context is not None else None
    started = flow_run.expected_start_time if flow_run is not None else None
    return config if started is None else config.at(started)


@contextmanager
def configured_run(config: PipelineConfig, *, distribute: bool = True) -> Iterator[PipelineConfig]:
    """Inside a flow: persist task results under the run folder and, with `distribute`, send `.submit()`s to
    the config's task runner (which is started here and shut down on exit). Yields the config the run uses:
    `{date}` / `{datetime}` in `run_id` filled from the flow run's scheduled start, which its retries share.

    Args:
        config: the run's config (`run_id`, `workdir`, `task_runner`).
        distribute: also replace the flow's task runner; off for flows that call their tasks directly.
    """
    context = FlowRunContext.get()
    if context is None:
        raise RuntimeError("configured_run() belongs inside a flow")
    config = at_scheduled_start(config, context)
    update: dict[str, Any] = {}
    storage = result_storage(config)
    if storage is not None:
        update["result_store"] = context.result_store.model_copy(update={"result_storage": storage})
    with ExitStack() as stack:
        if distribute:
            if config.task_runner.kind == "dask" and not get_current_settings().api.url:
                # A CLI run talks to a temporary server; without its address each Dask worker would start its own.
                stack.enter_context(temporary_settings(updates={PREFECT_API_URL: str(context.client.api_url)}))
            update["task_runner"] = stack.enter_context(build_task_runner(config))
        # A copy of the flow run's context: tasks and subflows started inside read their runner and store from it.
        stack.enter_context(context.model_copy(update=update))
        yield config
