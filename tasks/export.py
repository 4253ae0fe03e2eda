"""Prefect task of RL log export: a thin wrapper around bhashaflow.episodes.export."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from bhashaflow.config import RLExportFlowConfig
from bhashaflow.core.fsio import join
from bhashaflow.core.settings import get_settings
from bhashaflow.episodes.export import ExportSummary, export_rl_logs
from connectors.sinks import open_sink
from tasks.rundirs import artifact_key


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_jitter_factor=0.5)
def export_rl_logs_task(config: RLExportFlowConfig) -> ExportSummary:
    """Export episodes not yet exported to the configured target, each part verified before the watermark moves."""
    settings = get_settings()
    result = export_rl_logs(config, settings, sink=open_sink(config.rl_export.target, settings))
    if result["parts"]:
        lines = [f"# RL log export to `{result['target']}`", "", f"{result['exported']} episodes in these parts:", ""]
        lines += [f"- [{part}]({join(result['target'], part)})" for part in result["parts"]]
        create_markdown_artifact("\n".join(lines), key=artifact_key("export-rl-logs", config.run_name, "parts"))
    return result
