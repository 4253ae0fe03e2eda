"""Prefect tasks of evaluation: base, incumbent and candidate scored with the same settings."""

from __future__ import annotations

from typing import Any

from prefect import task

from bhashaflow.config import PipelineConfig
from bhashaflow.core.fsio import join
from bhashaflow.core.settings import get_settings
from bhashaflow.evaluation.evaluate import evaluate_chrf, load_eval_set
from bhashaflow.modeling.adapters import load_adapter
from bhashaflow.modeling.loading import load_configured_base
from bhashaflow.registry.store import Registry
from tasks.rundirs import local_run_dir


@task(task_run_name="evaluate-{direction}", persist_result=True)
def evaluate_direction_task(config: PipelineConfig, direction: str, candidate_dir: str) -> dict[str, Any]:
    """Score the base, the promoted incumbent and the candidate on FLORES-200 in one go."""
    settings = get_settings()
    run_uri = config.run_uri()
    options = settings.storage_options_for(run_uri)
    lm = load_configured_base(config, get_settings())
    eval_set = load_eval_set(config.evaluation, direction)
    out = join(run_uri, "eval", direction)
    scores: dict[str, Any] = {"base": evaluate_chrf(lm, eval_set, config.evaluation, out_dir=join(out, "base"),
                                                    storage_options=options).to_dict()}
    registry = Registry(config.registry, settings.storage_options_for(config.registry))
    incumbent = registry.fetch_promoted(direction, local_run_dir(config, settings) / "incumbent")
    scores["incumbent"] = None
    scores["incumbent_version"] = None
    if incumbent is not None:
        info, path = incumbent
        load_adapter(lm, path, "incumbent")
        score = evaluate_chrf(lm, eval_set, config.evaluation, adapter="incumbent", out_dir=join(out, "incumbent"),
                              storage_options=options)
        scores["incumbent"] = score.to_dict()
        scores["incumbent_version"] = info.version
    load_adapter(lm, candidate_dir, "candidate")
    scores["candidate"] = evaluate_chrf(
        lm, eval_set, config.evaluation, adapter="candidate", out_dir=join(out, "candidate"), storage_options=options
    ).to_dict()
    return scores


@task(task_run_name="evaluate-{direction}-{adapter}", persist_result=True)
def evaluate_adapter_task(config: PipelineConfig, direction: str, adapter: str) -> dict[str, Any]:
    """Score one adapter of a direction alone: `promoted`, `none` (the bare base) or a version like v0003."""
    settings = get_settings()
    registry = Registry(config.registry, settings.storage_options_for(config.registry))
    cache = local_run_dir(config, settings) / "fetched"
    version: str | None = None
    path: str | None = None
    if adapter == "promoted":
        found = registry.fetch_promoted(direction, cache)
        if found is None:
            raise LookupError(f"{direction}: nothing is promoted in registry {config.registry}")
        version, path = found[0].version, found[1]
    elif adapter != "none":
        version, path = adapter, registry.fetch(direction, adapter, cache)
    lm = load_configured_base(config, get_settings())
    if path is not None:
        load_adapter(lm, path, "adapter")
    eval_set = load_eval_set(config.evaluation, direction)
    label = version or "base"
    run_uri = config.run_uri()
    score = evaluate_chrf(
        lm, eval_set, config.evaluation, adapter="adapter" if path else None,
        out_dir=join(run_uri, "eval-adapter", direction, label), storage_options=settings.storage_options_for(run_uri),
    )
    return {"adapter": adapter, "version": version, **score.to_dict()}
