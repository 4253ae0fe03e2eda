"""Prefect task of fine-tuning: a thin wrapper around bhashaflow.training.loop.train_adapter."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import cast
from uuid import UUID

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger

from bhashaflow.config import PipelineConfig, TrainingConfig
from bhashaflow.core.folders import is_remote
from bhashaflow.core.fsio import join, write_bytes_atomic
from bhashaflow.core.names import ADAPTERS_DIR, DATA_MANIFEST, TRAIN_LOG
from bhashaflow.core.progress import PROGRESS_LOG_EXTRA, PhaseProgress, format_duration, publish
from bhashaflow.core.quiet import quiet_libraries
from bhashaflow.core.settings import get_settings
from bhashaflow.data.ingest import preference_uris, shard_uris
from bhashaflow.data.manifest import read_data_manifest
from bhashaflow.pipeline.curves import LOSS_CHART, loss_chart_png, read_loss_curve
from bhashaflow.pipeline.links import Locator
from bhashaflow.pipeline.reuse import published_training
from bhashaflow.training.loop import ProgressReport, TrainHooks, TrainResult, train_adapter
from bhashaflow.training.state import ValidationUpdate
from tasks.artifacts import MarkdownCard
from tasks.report import embedded_png
from tasks.reuse import TRAIN_CACHE
from tasks.rundirs import artifact_key, direction_uri, local_run_dir


def report_every(training: TrainingConfig) -> int:
    """Steps between progress reports: about 50 a run, on every `log_every`-th step (each report reads the loss,
    a host sync on a GPU, and so does each log line: reports on log steps cost no extra sync)."""
    cap = max(1, training.max_steps // 50)
    return max(d for d in range(1, min(cap, training.log_every) + 1) if training.log_every % d == 0)


class _TrainingWatch:
    """What a person watching one direction's training sees: the progress artifact, the log lines every
    `training.log_every` steps, the loss chart at each checkpoint (one artifact, rewritten in place), and the CLI's
    progress bar. Every artifact's description says what it is, and which run and direction."""

    def __init__(self, config: PipelineConfig, direction: str, run_dir: Path) -> None:
        self.direction, self.logger, self.training = direction, get_run_logger(), config.training
        self.run_id = config.resolved_run_id()
        self.card = MarkdownCard(artifact_key("adapter-pipeline", config.run_name, direction, "loss"))
        self.artifact = cast(
            UUID,
            create_progress_artifact(  # sync here: a UUID, not a coroutine
                0.0,
                key=artifact_key("adapter-pipeline", config.run_name, direction, "train"),
                description=self._describe("training progress", "loading the base model"),
            ),
        )
        self.log_path = run_dir / TRAIN_LOG  # the loop's local train log: written before each report
        self.chart_uri = join(direction_uri(config, direction), LOSS_CHART)
        self.settings = get_settings()
        self.options = self.settings.storage_options_for(self.chart_uri)
        self.validated = ""
        publish(PhaseProgress("train", direction, 0, self.training.max_steps, "steps", note="loading the base model"))

    def _describe(self, what: str, status: str) -> str:
        return f"{self.direction} {what}, run {self.run_id}: {status}"

    def report(self, r: ProgressReport) -> None:
        figures = f"loss {r.loss:.4f}, {r.tokens_per_s:,.0f} tokens/s"
        status = f"step {r.step}/{r.max_steps}: {figures}, ETA {format_duration(r.eta_s)}"
        update_progress_artifact(
            self.artifact,
            100.0 * r.fraction,
            description=self._describe("training progress", status + (f"; {self.validated}" if self.validated else "")),
        )
        publish(PhaseProgress("train", self.direction, r.step, r.max_steps, "steps", note=figures))
        last = r.step == r.max_steps
        if r.step % self.training.log_every == 0 or last:
            self.logger.info(
                "%s step %d/%d %s, ETA %s",
                self.direction,
                r.step,
                r.max_steps,
                figures,
                format_duration(r.eta_s),
                extra=PROGRESS_LOG_EXTRA,
            )
        if r.step % self.training.checkpoint_every == 0 or last:
            self.chart(r.step)

    def validation(self, step: int, result: ValidationUpdate) -> None:
        self.validated = (
            f"validation chrF++ {result['val_chrf_pp']:.2f} at step {step} "
            f"(best {result['best_chrf_pp']:.2f} at step {result['best_step']})"
        )
        self.logger.info("%s %s", self.direction, self.validated)

    def chart(self, step: int) -> None:
        """The loss chart so far as a PNG in the direction's run folder, and as the direction's one chart artifact."""
        curve = read_loss_curve(str(self.log_path))
        if curve is None or not curve.steps:
            return
        png = loss_chart_png({self.direction: curve})
        write_bytes_atomic(self.chart_uri, png, self.options)
        image = embedded_png(png, f"{self.direction} training loss and validation chrF++")
        chosen = "" if curve.best_step is None else f"; best validated step {curve.best_step}"
        self.card.write(
            f"### {self.direction}: training loss and validation chrF++ at step {step}{chosen}\n\n"
            f"{image}\n\nChart file: {Locator(self.settings).file(self.chart_uri)}\n",
            self._describe(
                "loss chart",
                f"training loss (moving average) and validation chrF++ at step {step}, redrawn at each checkpoint",
            ),
        )

    def finish(self, result: TrainResult) -> None:
        publish(
            PhaseProgress(
                "train",
                self.direction,
                result.steps,
                result.steps,
                "steps",
                finished=True,
                note=f"loss {result.final_loss:.4f}" + (", stopped early" if result.stopped_early else ""),
            )
        )
        if result.stopped_early:  # the last report was before the last step: the chart catches up
            self.chart(result.steps)
        # The candidate is the best validated step's adapter, else the last step's.
        best = result.best_step if result.best_step is not None else result.steps
        how = "patience ran out, " if result.stopped_early else ""
        unvalidated = ", no validation" if result.best_step is None else ""
        update_progress_artifact(
            self.artifact,
            100.0,
            description=self._describe(
                "training progress",
                f"final loss {result.final_loss:.4f}{unvalidated}; {how}finished at step {result.steps} (best step {best})",
            ),
        )


@task(task_run_name="train-{direction}", persist_result=True, cache_policy=TRAIN_CACHE)
def train_adapter_task(config: PipelineConfig, direction: str) -> TrainResult:
    """Fine-tune one direction's LoRA adapter, resuming from the run's latest (published) checkpoint."""
    quiet_libraries()
    settings = get_settings()
    run_uri = config.run_uri()
    options = settings.storage_options_for(run_uri)
    finished = published_training(config, direction, direction_uri(config, direction), options)
    if finished is not None:  # published, but Prefect's record of it is missing (a kill in between, or deleted)
        return finished
    manifest = read_data_manifest(run_uri, options)
    if manifest is None:
        raise RuntimeError(f"{run_uri}: no finished ingestion ({DATA_MANIFEST}) to train on")
    out_dir = local_run_dir(config, settings) / ADAPTERS_DIR / direction
    watch = _TrainingWatch(config, direction, out_dir)
    result = train_adapter(
        config=config,
        direction=direction,
        shard_paths=shard_uris(manifest, run_uri, direction),
        preference_paths=preference_uris(manifest, run_uri, direction),
        out_dir=str(out_dir),
        storage_options=options,
        settings=settings,
        # On an object store the run URI, not this machine's disk, holds checkpoints and the adapter.
        publish_to=direction_uri(config, direction) if is_remote(run_uri, options) else None,
        hooks=TrainHooks(
            on_report=watch.report, progress_every=report_every(config.training), on_validation=watch.validation
        ),
    )
    watch.finish(result)
    return replace(result, host=settings.host)
