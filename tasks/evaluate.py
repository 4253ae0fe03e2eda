"""Prefect tasks of evaluation: base, incumbent and candidate scored with the same settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from bhashaflow.config import PipelineConfig
from bhashaflow.core.fsio import join
from bhashaflow.core.progress import PROGRESS_LOG_EXTRA, PhaseProgress, publish
from bhashaflow.core.quiet import quiet_libraries
from bhashaflow.core.settings import get_settings
from bhashaflow.data.manifest import read_data_manifest
from bhashaflow.evaluation.chrf import ChrfScore
from bhashaflow.evaluation.evaluate import (
    AdapterScore,
    DirectionScores,
    evaluate_chrf,
    load_eval_set,
    load_heldout_corrections,
)
from bhashaflow.modeling.adapters import load_adapter
from bhashaflow.modeling.loaded import LoadedModel
from bhashaflow.modeling.loading import load_configured_base
from bhashaflow.registry.store import registry_for
from tasks.reuse import EVALUATE_CACHE
from tasks.rundirs import fetch_adapter, fetch_dir


def translation_progress(direction: str, model: str) -> Callable[[int, int], None]:
    """`on_batch` of one model's evaluation: the CLI's progress bar, and a log line at each quarter and the end."""
    name, logger, logged = f"{direction} {model}", get_run_logger(), [0]
    publish(PhaseProgress("evaluate", name, 0, None, "sentences"))

    def on_batch(done: int, total: int) -> None:
        publish(PhaseProgress("evaluate", name, done, total, "sentences", finished=done >= total))
        quarter = 4 * done // max(1, total)
        if quarter > logged[0]:
            logged[0] = quarter
            logger.info("%s: translated %d/%d sentences", name, done, total, extra=PROGRESS_LOG_EXTRA)

    return on_batch


@task(task_run_name="evaluate-{direction}", persist_result=True, cache_policy=EVALUATE_CACHE)
def evaluate_direction_task(config: PipelineConfig, direction: str, candidate_uri: str) -> DirectionScores:
    """Score the base, the promoted incumbent and the candidate (fetched from the run URI) with the same settings."""
    quiet_libraries()
    settings = get_settings()
    run_uri = config.run_uri()
    options = settings.storage_options_for(run_uri)
    candidate_dir = fetch_adapter(config, settings, direction, candidate_uri)
    lm = load_configured_base(config, settings)
    eval_set = load_eval_set(config.evaluation, direction)
    out = join(run_uri, "eval", direction)

    def score(label: str, adapter: str | None) -> ChrfScore:
        return evaluate_chrf(
            lm,
            eval_set,
            config.evaluation,
            adapter=adapter,
            out_dir=join(out, label),
            storage_options=options,
            on_batch=translation_progress(direction, label),
        )

    base = score("base", None)
    registry = registry_for(config, settings)
    found = registry.fetch_promoted(direction, fetch_dir(config, settings, direction, "incumbent"))
    incumbent, version = None, None
    if found is not None:
        load_adapter(lm, found[1], "incumbent")
        incumbent, version = score("incumbent", "incumbent"), found[0].version
    load_adapter(lm, candidate_dir, "candidate")
    candidate = score("candidate", "candidate")
    corrections = _score_corrections(config, direction, lm, incumbent is not None, options)
    return DirectionScores(
        direction,
        base=base,
        candidate=candidate,
        incumbent=incumbent,
        incumbent_version=version,
        host=settings.host,
        **corrections,
    )


def _score_corrections(
    config: PipelineConfig, direction: str, lm: LoadedModel, has_incumbent: bool, options: dict[str, Any] | None
) -> dict[str, ChrfScore | None]:
    """The held-out corrections yardstick, when the run has them: base, incumbent and candidate scored on them."""
    run_uri = config.run_uri()
    manifest = read_data_manifest(run_uri, options)
    heldout = load_heldout_corrections(manifest, run_uri, direction, options) if manifest else None
    if heldout is None:
        return {}
    out = join(run_uri, "eval", direction, "corrections")
    labels = {"base_corrections": None, "candidate_corrections": "candidate"}
    if has_incumbent:
        labels["incumbent_corrections"] = "incumbent"
    return {
        field: evaluate_chrf(
            lm,
            heldout,
            config.evaluation,
            adapter=adapter,
            out_dir=join(out, adapter or "base"),
            storage_options=options,
            on_batch=translation_progress(direction, f"{adapter or 'base'} corrections"),
        )
        for field, adapter in labels.items()
    }


@task(task_run_name="evaluate-{direction}-{adapter}", persist_result=True)
def evaluate_adapter_task(config: PipelineConfig, direction: str, adapter: str) -> AdapterScore:
    """Score one adapter of a direction alone: `promoted`, `none` (the bare base) or a version like v0003."""
    quiet_libraries()
    settings = get_settings()
    registry = registry_for(config, settings)
    cache = fetch_dir(config, settings, direction, "registry")
    version: str | None = None
    path: str | None = None
    if adapter == "promoted":
        found = registry.fetch_promoted(direction, cache)
        if found is None:
            raise LookupError(f"{direction}: nothing is promoted in registry {config.registry}")
        version, path = found[0].version, found[1]
    elif adapter != "none":
        version, path = adapter, registry.fetch(direction, adapter, cache)
    lm = load_configured_base(config, settings)
    if path is not None:
        load_adapter(lm, path, "adapter")
    eval_set = load_eval_set(config.evaluation, direction)
    run_uri = config.run_uri()
    score = evaluate_chrf(
        lm,
        eval_set,
        config.evaluation,
        adapter="adapter" if path else None,
        out_dir=join(run_uri, "eval-adapter", direction, version or "base"),
        storage_options=settings.storage_options_for(run_uri),
        on_batch=translation_progress(direction, version or "base"),
    )
    return AdapterScore(direction, adapter, version, score)
