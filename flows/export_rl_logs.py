"""The `export-rl-logs` flow: served episodes and feedback out to S3, a folder or an HTTP endpoint."""

from __future__ import annotations

from typing import Any

from prefect import flow

from bhashaflow.config import PipelineConfig
from tasks.export import export_rl_logs_task


@flow(name="export-rl-logs")
def export_rl_logs_flow(config: PipelineConfig) -> dict[str, Any]:
    """Export every episode not yet exported (or only those with feedback), exactly once.

    Args:
        config: the pipeline config; its `serving.episodes_db` and `rl_export` sections are used.
    """
    return export_rl_logs_task(config)
