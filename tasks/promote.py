"""Prefect task of promotion: register the candidate, and promote it when the metric gate passes."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from bhashaflow.config import PipelineConfig
from bhashaflow.promotion import decide_promotion
from bhashaflow.registry import Registry
from bhashaflow.settings import get_settings


@task(task_run_name="promote-{direction}", persist_result=True)
def promote_adapter_task(
    config: PipelineConfig, direction: str, trained: dict[str, Any], scores: dict[str, Any], data_manifest_sha256: str
) -> dict[str, Any]:
    """Register the candidate as a new version and point PROMOTED at it if it beats base and incumbent."""
    settings = get_settings()
    registry = Registry(config.registry, settings.storage_options_for(config.registry))
    incumbent = scores["incumbent"]["chrf_pp"] if scores["incumbent"] else None
    decision = decide_promotion(
        scores["candidate"]["chrf_pp"], incumbent, scores["base"]["chrf_pp"], config.promotion.min_gain
    )
    info = registry.register(
        direction,
        trained["adapter_dir"],
        base_model=trained["base_model"],
        base_revision=trained["base_revision"],
        data_manifest_sha256=data_manifest_sha256,
        config=config.model_dump(mode="json"),
        metrics={"candidate": scores["candidate"], "base": scores["base"], "incumbent": scores["incumbent"]},
    )
    if decision.promote:
        registry.promote(direction, info.version)
    get_run_logger().info("%s %s: %s", direction, info.version, decision.reason)
    return {
        "promoted": decision.promote,
        "reason": decision.reason,
        "version": info.version,
        "adapter_uri": registry.adapter_uri(direction, info.version),
    }
