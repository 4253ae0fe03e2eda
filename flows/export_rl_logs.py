"""The `export-rl-logs` flow: served episodes and feedback out to S3, a folder or an HTTP endpoint."""

from __future__ import annotations

from prefect import flow

from bhashaflow.config import RLExportFlowConfig
from bhashaflow.episodes.export import ExportSummary
from tasks.export import export_rl_logs_task


@flow(name="export-rl-logs")
def export_rl_logs_flow(config: RLExportFlowConfig) -> ExportSummary:
    """Export every episode not yet exported (or only those with feedback), exactly once.

    Args:
        config: the run name, the service's episodes database and the export settings (`rl_export`);
            `RLExportFlowConfig.of(pipeline_config)` takes them from a whole pipeline config.
    """
    return export_rl_logs_task(config)
