"""The `adapter-pipeline` flow: ingest, then per direction fine-tune, evaluate, promote; then report."""

from __future__ import annotations

from typing import Any

from prefect import flow

from bhashaflow.config import PipelineConfig
from bhashaflow.report import direction_result
from flows.ingest_corpus import ingest_corpus
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
    ingested = ingest_corpus(config)
    directions: dict[str, dict[str, Any]] = {}
    for direction in config.directions:
        trained = train_adapter_task(config, direction)
        scores = evaluate_direction_task(config, direction, trained["adapter_dir"])
        promotion = promote_adapter_task(config, direction, trained, scores, ingested["manifest_sha256"])
        directions[direction] = direction_result(trained, scores, promotion)
    report = publish_report_task(config, directions)
    return {"run_id": config.resolved_run_id(), "report": report, "directions": directions}
