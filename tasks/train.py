"""Prefect task of fine-tuning: a thin wrapper around bhashaflow.training.loop.train_adapter."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger

from bhashaflow.config import PipelineConfig
from bhashaflow.core.folders import is_remote
from bhashaflow.core.names import ADAPTERS_DIR
from bhashaflow.core.settings import get_settings
from bhashaflow.data.ingest import load_manifest, shard_uris
from bhashaflow.training.loop import TrainResult, train_adapter
from tasks.rundirs import artifact_key, direction_uri, local_run_dir


class _TrainingReport:
    """The progress artifact and the log lines of one direction's training."""

    def __init__(self, config: PipelineConfig, direction: str) -> None:
        self.direction, self.logger = direction, get_run_logger()
        self.artifact = create_progress_artifact(
            0.0, key=artifact_key("adapter-pipeline", config.run_name, direction, "train")
        )
        self.every = max(1, config.training.max_steps // 50)  # each report reads the loss: a host sync on a GPU
        self.validated = ""

    def progress(self, step: int, max_steps: int, loss: float) -> None:
        description = f"step {step}: loss {loss:.4f}" + (f"; {self.validated}" if self.validated else "")
        update_progress_artifact(self.artifact, 100.0 * step / max_steps, description=description)
        self.logger.info("%s step %d/%d loss %.4f", self.direction, step, max_steps, loss)

    def validation(self, step: int, result: dict[str, Any]) -> None:
        self.validated = (f"validation chrF++ {result['val_chrf_pp']:.2f} at step {step} "
                          f"(best {result['best_chrf_pp']:.2f} at step {result['best_step']})")  # fmt: skip
        self.logger.info("%s %s", self.direction, self.validated)


@task(task_run_name="train-{direction}", persist_result=True)
def train_adapter_task(config: PipelineConfig, direction: str) -> TrainResult:
    """Fine-tune one direction's LoRA adapter, resuming from the run's latest (published) checkpoint."""
    settings = get_settings()
    run_uri = config.run_uri()
    options = settings.storage_options_for(run_uri)
    manifest = load_manifest(run_uri, options)
    if manifest is None:
        raise RuntimeError(f"{run_uri}: no finished ingestion (manifest.json) to train on")
    report = _TrainingReport(config, direction)
    return train_adapter(
        config=config,
        direction=direction,
        shard_paths=shard_uris(manifest, run_uri, direction),
        out_dir=str(local_run_dir(config, settings) / ADAPTERS_DIR / direction),
        on_progress=report.progress,
        progress_every=report.every,
        on_validation=report.validation,
        storage_options=options,
        settings=settings,
        # On an object store the run URI, not this machine's disk, holds checkpoints and the adapter.
        publish_to=direction_uri(config, direction) if is_remote(run_uri, options) else None,
    )
