"""The `adapter-pipeline` flow: ingest, then per direction fine-tune, evaluate, promote; then report."""

from __future__ import annotations

from typing import Any

from prefect import flow

from bhashaflow.config import PipelineConfig
from bhashaflow.evaluation.report import direction_result
from flows.ingest_corpus import ingest_corpus
from flows.runners import configured_run, task_resources
from tasks.evaluate import evaluate_direction_task
from tasks.promote import promote_adapter_task
from tasks.report import publish_report_task
from tasks.train import train_adapter_task


@flow(name="adapter-pipeline")
def adapter_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """Turn the configured corpora into one promoted-if-better LoRA adapter per direction.

    Args:
        config: the whole pipeline config (sources, base model, training, evaluation, promotion, registry).
    """
    with configured_run(config) as config:
        ingested = ingest_corpus(config)
        # Directions fan out over the task runner (threads, or Dask workers); each evaluates as soon as it trained.
        with task_resources(config):
            training = {d: train_adapter_task.submit(config, d) for d in config.directions}
        trained: dict[str, dict[str, Any]] = {}
        evaluating = {}
        for direction, future in training.items():
            trained[direction] = future.result()
            with task_resources(config):
                evaluating[direction] = evaluate_direction_task.submit(
                    config, direction, trained[direction]["adapter_dir"]
                )
        directions: dict[str, dict[str, Any]] = {}
        for direction, future in evaluating.items():
            scores = future.result()
            promotion = promote_adapter_task(
                config, direction, trained[direction], scores, ingested["manifest_sha256"]
            )
            directions[direction] = direction_result(trained[direction], scores, promotion)
        report = publish_report_task(config, directions)
    return {"run_id": config.resolved_run_id(), "report": report, "directions": directions}
