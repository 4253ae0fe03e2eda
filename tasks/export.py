"""Prefect task of RL log export: a thin wrapper around bhashaflow.episodes.export."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from bhashaflow.config import RLExportFlowConfig
from bhashaflow.core.fsio import join
from bhashaflow.core.settings import get_settings
from bhashaflow.episodes.export import ExportSummary, export_rl_logs
from bhashaflow.pipeline.links import Locator
from connectors.sinks import open_sink
from tasks.rundirs import artifact_key


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_jitter_factor=0.5)
def export_rl_logs_task(config: RLExportFlowConfig) -> ExportSummary:
    """Export episodes not yet exported to the configured target, each part verified before the watermark moves."""
    settings = get_settings()
    result = export_rl_logs(config, settings, sink=open_sink(config.rl_export.target, settings))
    if result["parts"]:
        create_markdown_artifact(
            parts_markdown(result, Locator(settings)),
            key=artifact_key("export-rl-logs", config.run_name, "parts"),
            description=f"RL log export of {config.run_name}'s episodes: the "
            f"{len(result['parts'])} parts this run wrote to {result['target']}",
        )
    return result


def parts_markdown(result: ExportSummary, locator: Locator) -> str:
    """The parts an export wrote: on this disk, the folder and the parts' names; on S3, a (presigned) link each."""
    target = result["target"]
    local = locator.local_path(target)
    lines = [
        f"# RL log export to `{local or target}`",
        "",
        f"{result['exported']} episodes in these parts" + (f", in {locator.folder(target)}:" if local else ":"),
        "",
    ]
    lines += [f"- `{part}`" if local else f"- {locator.file(join(target, part))}" for part in result["parts"]]
    return "\n".join(lines) + "\n"
