"""Prefect task of promotion: register the candidate, and promote it when the metric gate passes."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from bhashaflow.config import PipelineConfig
from bhashaflow.core.redact import redact_values
from bhashaflow.core.settings import get_settings
from bhashaflow.registry.promotion import decide_promotion, promote_adapter
from bhashaflow.registry.store import Registry


@task(task_run_name="promote-{direction}", persist_result=True)
def promote_adapter_task(
    config: PipelineConfig, direction: str, trained: dict[str, Any], scores: dict[str, Any], data_manifest_sha256: str
) -> dict[str, Any]:
    """Register the candidate; promote it if it beats base and the incumbent, and that incumbent is still promoted."""
    settings = get_settings()
    registry = Registry(config.registry, settings.storage_options_for(config.registry))
    incumbent = scores["incumbent"]["chrf_pp"] if scores["incumbent"] else None
    decision = decide_promotion(
        scores["candidate"]["chrf_pp"], incumbent, scores["base"]["chrf_pp"], config.promotion.min_gain
    )
    outcome = promote_adapter(
        registry,
        direction,
        trained["adapter_dir"],
        decision,
        judged_against=scores["incumbent_version"],
        base_model=trained["base_model"],
        base_revision=trained["base_revision"],
        data_manifest_sha256=data_manifest_sha256,
        config=redact_values(config.model_dump(mode="json")),  # source URLs without their credentials
        metrics={"candidate": scores["candidate"], "base": scores["base"], "incumbent": scores["incumbent"]},
    )
    get_run_logger().info("%s %s: %s", direction, outcome.version, outcome.reason)
    return {
        "promoted": outcome.promoted,
        "reason": outcome.reason,
        "version": outcome.version,
        "adapter_uri": registry.adapter_uri(direction, outcome.version),
    }
