"""Prefect task publishing the pipeline's report as artifacts a person reads."""

from __future__ import annotations

import base64
from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from bhashaflow.config import PipelineConfig
from bhashaflow.core.fsio import open_fs
from bhashaflow.core.settings import get_settings
from bhashaflow.pipeline.report import markdown_report, table_rows, write_report
from tasks.rundirs import artifact_key


@task
def publish_report_task(config: PipelineConfig, directions: dict[str, dict[str, Any]]) -> str:
    """Write the report and chart to the run folder and publish table, markdown and link artifacts."""
    run_uri = config.run_uri()
    run_id = config.resolved_run_id()
    options = get_settings().storage_options_for(run_uri)
    report_uri, chart_uri = write_report(run_uri, run_id, directions, options)
    fs, chart_path = open_fs(chart_uri, options)
    # The chart travels inside the artifact: the UI cannot reach a file in the run folder.
    chart = f"![chrF++ per direction](data:image/png;base64,{base64.b64encode(fs.cat_file(chart_path)).decode()})"
    create_table_artifact(table_rows(directions), key=artifact_key("adapter-pipeline", config.run_name, "chrf"),
                          description=f"chrF++ on FLORES-200, run {run_id}")
    create_markdown_artifact(markdown_report(run_id, directions, chart_uri) + "\n" + chart + "\n",
                             key=artifact_key("adapter-pipeline", config.run_name, "report"))
    for direction, result in directions.items():
        if result["promoted"]:
            create_link_artifact(result["adapter_uri"], link_text=f"{direction} {result['version']}",
                                 key=artifact_key("adapter-pipeline", config.run_name, direction, "adapter"))
    return report_uri
