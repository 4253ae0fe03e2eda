"""Prefect task of promotion: register the candidate, and promote it when the metric gate passes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from bhashaflow.config import PipelineConfig
from bhashaflow.core.redact import redact_values
from bhashaflow.core.settings import get_settings
from bhashaflow.evaluation.evaluate import DirectionScores
from bhashaflow.pipeline.reuse import promoted_outcome
from bhashaflow.registry.promotion import PromotionOutcome, decide_promotion, gate_corrections, promote_adapter
from bhashaflow.registry.store import Provenance, registry_for
from bhashaflow.training.loop import TrainResult
from tasks.reuse import PROMOTE_CACHE
from tasks.rundirs import fetch_adapter

_FLORES = ("candidate", "base", "incumbent")  # always in the registry's metrics; the corrections only when scored


@task(task_run_name="promote-{direction}", persist_result=True, cache_policy=PROMOTE_CACHE)
def promote_adapter_task(
    config: PipelineConfig, direction: str, trained: TrainResult, scores: DirectionScores, data_manifest_sha256: str
) -> PromotionOutcome:
    """Register the candidate; promote it if it beats base and the incumbent, and that incumbent is still promoted."""
    settings = get_settings()
    registry = registry_for(config, settings)
    incumbent = scores.incumbent.chrf_pp if scores.incumbent else None
    decision = decide_promotion(scores.candidate.chrf_pp, incumbent, scores.base.chrf_pp, config.promotion.min_gain)
    if scores.candidate_corrections is not None:
        against = scores.incumbent_corrections or scores.base_corrections
        if against is not None:
            name = "incumbent" if scores.incumbent_corrections is not None else "base"
            decision = gate_corrections(
                decision, scores.candidate_corrections.chrf_pp, against.chrf_pp, name, config.promotion.max_regression
            )
    adapter_dir = fetch_adapter(
        config, settings, direction, trained.adapter_uri
    )  # the very bytes the evaluation scored
    served = promoted_outcome(registry, direction, adapter_dir)
    if served is not None:  # promoted already, but Prefect's record of it is missing: never registered twice
        get_run_logger().info("%s %s: %s", direction, served.version, served.reason)
        return served
    provenance = Provenance(
        base_model=trained.base_model,
        base_revision=trained.base_revision,
        data_manifest_sha256=data_manifest_sha256,
        config=redact_values(config.model_dump(mode="json")),  # source URLs without their credentials
        metrics=registry_metrics(scores),
    )
    outcome = promote_adapter(
        registry, direction, adapter_dir, decision, provenance, judged_against=scores.incumbent_version
    )
    get_run_logger().info("%s %s: %s", direction, outcome.version, outcome.reason)
    return replace(outcome, host=settings.host)


def registry_metrics(scores: DirectionScores) -> dict[str, Any]:
    """The scores a version's manifest records: FLORES-200's always, the held-out corrections' when scored."""
    named = (
        ("candidate", scores.candidate),
        ("base", scores.base),
        ("incumbent", scores.incumbent),
        ("candidate_corrections", scores.candidate_corrections),
        ("base_corrections", scores.base_corrections),
        ("incumbent_corrections", scores.incumbent_corrections),
    )
    return {k: v.to_dict() if v else None for k, v in named if k in _FLORES or v is not None}
