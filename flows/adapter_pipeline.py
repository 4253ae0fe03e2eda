"""The `adapter-pipeline` flow: ingest, then per direction fine-tune, evaluate, promote; then report."""

from __future__ import annotations

from typing import TypedDict

from prefect import flow

from bhashaflow.config import PipelineConfig
from bhashaflow.core.names import DATA_MANIFEST
from bhashaflow.core.settings import get_settings
from bhashaflow.data.ingest import IngestedData
from bhashaflow.data.manifest import read_data_manifest
from bhashaflow.pipeline.report import DirectionResult, direction_result
from bhashaflow.training.loop import TrainResult
from flows.ingest_corpus import ingest_corpus
from flows.preflight import require_preflight
from flows.runners import configured_run, task_resources
from tasks.evaluate import evaluate_direction_task
from tasks.promote import promote_adapter_task
from tasks.report import publish_report_task
from tasks.reuse import REPORT_CACHE, reused
from tasks.train import train_adapter_task


class PipelineResult(TypedDict):
    """What the adapter-pipeline flow returns: the `bhashaflow pipeline --json` object."""

    run_id: str
    report: str  # report.md's URI in the run folder
    directions: dict[str, DirectionResult]


@flow(name="adapter-pipeline")
def adapter_pipeline(config: PipelineConfig) -> PipelineResult:
    """Turn the configured corpora into one promoted-if-better LoRA adapter per direction.

    Args:
        config: the whole pipeline config (sources, base model, training, evaluation, promotion, registry).
    """
    with configured_run(config) as config:
        require_preflight(config)  # the cheap checks of `bhashaflow check`: fail before ingesting, naming the cause
        ingested = _ingest(config)
        # Directions fan out over the task runner (threads, or Dask workers); each evaluates as soon as it trained.
        with task_resources(config, "train"):
            training = {d: train_adapter_task.submit(config, d) for d in config.directions}
        trained: dict[str, TrainResult] = {}
        evaluating = {}
        handed_on: dict[str, bool] = {}  # finished work found at the run URI (tasks/reuse.py), per direction
        for direction, future in training.items():
            trained[direction] = future.result()
            handed_on[direction] = reused(direction, "training", future.state, trained[direction])
            with task_resources(config, "evaluate"):  # tasks hand each other run URIs: any worker can evaluate
                evaluating[direction] = evaluate_direction_task.submit(
                    config, direction, trained[direction].adapter_uri
                )
        directions: dict[str, DirectionResult] = {}
        for direction, scoring in evaluating.items():
            scores = scoring.result()
            handed_on[direction] |= reused(direction, "evaluation", scoring.state, scores)
            state = promote_adapter_task(
                config, direction, trained[direction], scores, ingested.manifest_sha256, return_state=True
            )
            promotion = state.result()
            handed_on[direction] |= reused(direction, "promotion", state, promotion)
            directions[direction] = direction_result(trained[direction], scores, promotion, handed_on[direction])
        report = publish_report_task.with_options(cache_policy=REPORT_CACHE, persist_result=True)(config, directions)
    return {"run_id": config.resolved_run_id(), "report": report, "directions": directions}


def _ingest(config: PipelineConfig) -> IngestedData:
    """The ingest-corpus subflow, then what it finished, read from the run URI.

    A retried flow run reuses the finished subflow without reading its result back: that result sits in the
    run folder's result storage, which a cached state's metadata cannot name on another process or host.
    """
    state = ingest_corpus(config, return_state=True)
    if not state.is_completed():
        state.result()  # raises the ingestion's own error
    run_uri = config.run_uri()
    manifest = read_data_manifest(run_uri, get_settings().storage_options_for(run_uri))
    if manifest is None:
        raise RuntimeError(f"{run_uri}: ingestion finished but left no {DATA_MANIFEST}")
    return IngestedData.of(manifest, run_uri)
