"""The `evaluate-adapter` flow: score one adapter per direction on FLORES-200, alone."""

from __future__ import annotations

from typing import Any, TypedDict

from prefect import flow

from bhashaflow.config import PipelineConfig
from flows.runners import configured_run, task_resources
from tasks.evaluate import evaluate_adapter_task


class EvaluationResult(TypedDict):
    """What the evaluate-adapter flow returns: the `bhashaflow evaluate --json` object."""

    run_id: str
    directions: dict[str, dict[str, Any]]  # AdapterScore.to_dict() per direction: adapter, version and its scores


@flow(name="evaluate-adapter")
def evaluate_adapter(config: PipelineConfig, adapter: str = "promoted") -> EvaluationResult:
    """Score an adapter of every configured direction with the config's evaluation settings.

    Args:
        config: the pipeline config (directions, base model, evaluation, registry).
        adapter: `promoted`, `none` (the base model alone) or a registry version such as `v0002`.
    """
    with configured_run(config) as config, task_resources(config, "evaluate"):
        futures = {d: evaluate_adapter_task.submit(config, d, adapter) for d in config.directions}
        return {"run_id": config.resolved_run_id(), "directions": {d: f.result().to_dict() for d, f in futures.items()}}
