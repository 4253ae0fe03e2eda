"""Prefect task of fine-tuning: a thin wrapper around bhashaflow.training.loop.train_adapter."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger

from bhashaflow.config import PipelineConfig
from bhashaflow.core.settings import get_settings
from bhashaflow.data.ingest import load_manifest, shard_uris
from bhashaflow.modeling.loading import load_configured_base
from bhashaflow.training.loop import train_adapter
from tasks.rundirs import artifact_key, local_run_dir


@task(task_run_name="train-{direction}", persist_result=True)
def train_adapter_task(config: PipelineConfig, direction: str) -> dict[str, Any]:
    """Fine-tune one direction's LoRA adapter, resuming from the run's latest checkpoint."""
    settings = get_settings()
    run_uri = config.run_uri()
    options = settings.storage_options_for(run_uri)
    manifest = load_manifest(run_uri, options)
    if manifest is None:
        raise RuntimeError(f"{run_uri}: no finished ingestion (manifest.json) to train on")
    lm = load_configured_base(config, settings)
    logger = get_run_logger()
    artifact = create_progress_artifact(0.0, key=artifact_key("adapter-pipeline", config.run_name, direction, "train"))
    every = max(1, config.training.max_steps // 50)

    validated: list[str] = []  # the latest validation, shown beside the loss

    def on_progress(step: int, max_steps: int, loss: float) -> None:
        description = f"step {step}: loss {loss:.4f}" + "".join(f"; {v}" for v in validated[-1:])
        update_progress_artifact(artifact, 100.0 * step / max_steps, description=description)
        logger.info("%s step %d/%d loss %.4f", direction, step, max_steps, loss)

    def on_validation(step: int, result: dict[str, Any]) -> None:
        validated.append(f"validation chrF++ {result['val_chrf_pp']:.2f} at step {step} "
                         f"(best {result['best_chrf_pp']:.2f} at step {result['best_step']})")  # fmt: skip
        logger.info("%s %s", direction, validated[-1])

    result = train_adapter(
        config=config,
        direction=direction,
        shard_paths=shard_uris(manifest, run_uri, direction),
        out_dir=str(local_run_dir(config, settings) / "adapters" / direction),
        on_progress=on_progress,
        progress_every=every,  # each report reads the loss: a host sync on a GPU
        on_validation=on_validation,
        storage_options=options,
        settings=settings,
        lm=lm,
    )
    return {
        "adapter_dir": result.adapter_dir,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "final_loss": result.final_loss,
        "tokens_per_s": result.tokens_per_s,
        "decontaminated": result.decontaminated,
        "validation_pairs": result.validation_pairs,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "base_model": config.base_model,
        "base_revision": lm.revision,
    }
