"""Prefect task publishing the pipeline's report as artifacts a person reads."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from bhashaflow.config import PipelineConfig
from bhashaflow.report import markdown_report, table_rows, write_report
from bhashaflow.rundirs import artifact_key
from bhashaflow.settings import get_settings


@task
def publish_report_task(config: PipelineConfig, directions: dict[str, dict[str, Any]]) -> str:
    """Write the report and chart to the run folder and publish table, markdown and link artifacts."""
    run_uri = config.run_uri()
    run_id = config.resolved_run_id()
    report_uri, chart_uri = write_report(run_uri, run_id, directions, get_settings().storage_options_for(run_uri))
    create_table_artifact(table_rows(directions), key=artifact_key("adapter-pipeline", config.run_name, "chrf"),
                          description=f"chrF++ on FLORES-200, run {run_id}")
    create_markdown_artifact(markdown_report(run_id, directions, chart_uri),
                             key=artifact_key("adapter-pipeline", config.run_name, "report"))
    for direction, result in directions.items():
        if result["promoted"]:
            create_link_artifact(result["adapter_uri"], link_text=f"{direction} {result['version']}",
                                 key=artifact_key("adapter", config.run_name, direction))
    return report_uri
