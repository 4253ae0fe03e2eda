"""Prefect tasks of evaluation: base, incumbent and candidate scored with the same settings."""

from __future__ import annotations

from prefect import task

from bhashaflow.config import PipelineConfig
from bhashaflow.core.fsio import join
from bhashaflow.core.settings import get_settings
from bhashaflow.evaluation.chrf import ChrfScore
from bhashaflow.evaluation.evaluate import AdapterScore, DirectionScores, evaluate_chrf, load_eval_set
from bhashaflow.modeling.adapters import load_adapter
from bhashaflow.modeling.loading import load_configured_base
from bhashaflow.registry.store import Registry
from tasks.rundirs import fetch_adapter, fetch_dir


@task(task_run_name="evaluate-{direction}", persist_result=True)
def evaluate_direction_task(config: PipelineConfig, direction: str, candidate_uri: str) -> DirectionScores:
    """Score the base, the promoted incumbent and the candidate (fetched from the run URI) with the same settings."""
    settings = get_settings()
    run_uri = config.run_uri()
    options = settings.storage_options_for(run_uri)
    candidate_dir = fetch_adapter(config, settings, direction, candidate_uri)
    lm = load_configured_base(config, settings)
    eval_set = load_eval_set(config.evaluation, direction)
    out = join(run_uri, "eval", direction)

    def score(label: str, adapter: str | None) -> ChrfScore:
        return evaluate_chrf(lm, eval_set, config.evaluation, adapter=adapter, out_dir=join(out, label),
                             storage_options=options)  # fmt: skip

    base = score("base", None)
    registry = Registry(config.registry, settings.storage_options_for(config.registry))
    found = registry.fetch_promoted(direction, fetch_dir(config, settings, direction, "incumbent"))
    incumbent, version = None, None
    if found is not None:
        load_adapter(lm, found[1], "incumbent")
        incumbent, version = score("incumbent", "incumbent"), found[0].version
    load_adapter(lm, candidate_dir, "candidate")
    return DirectionScores(direction, base=base, candidate=score("candidate", "candidate"), incumbent=incumbent,
                           incumbent_version=version)  # fmt: skip


@task(task_run_name="evaluate-{direction}-{adapter}", persist_result=True)
def evaluate_adapter_task(config: PipelineConfig, direction: str, adapter: str) -> AdapterScore:
    """Score one adapter of a direction alone: `promoted`, `none` (the bare base) or a version like v0003."""
    settings = get_settings()
    registry = Registry(config.registry, settings.storage_options_for(config.registry))
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
        lm, eval_set, config.evaluation, adapter="adapter" if path else None,
        out_dir=join(run_uri, "eval-adapter", direction, version or "base"),
        storage_options=settings.storage_options_for(run_uri),
    )  # fmt: skip
    return AdapterScore(direction, adapter, version, score)
