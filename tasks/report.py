"""Prefect task publishing the pipeline's report as artifacts a person reads."""

from __future__ import annotations

import base64
from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from bhashaflow.config import PipelineConfig
from bhashaflow.core.fsio import open_fs
from bhashaflow.core.settings import get_settings
from bhashaflow.pipeline.report import base_notes, link_url, markdown_report, table_rows, write_report
from tasks.rundirs import artifact_key


def embedded_png(png: bytes, alt: str) -> str:
    """Markdown showing `png` inline: the UI cannot reach a file in the run folder."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _read(uri: str, storage_options: dict[str, Any] | None) -> bytes:
    fs, path = open_fs(uri, storage_options)
    return bytes(fs.cat_file(path))


@task
def publish_report_task(config: PipelineConfig, directions: dict[str, dict[str, Any]]) -> str:
    """Write the report and charts to the run folder and publish table, markdown and link artifacts."""
    run_uri = config.run_uri()
    run_id = config.resolved_run_id()
    options = get_settings().storage_options_for(run_uri)
    notes = base_notes(config, get_settings())  # a base that saw the evaluation split; languages named by alias
    files = write_report(run_uri, run_id, directions, options, notes)
    charts = [embedded_png(_read(files.chart_uri, options), "chrF++ per direction")]
    if files.loss_chart_uri is not None:  # beside the chrF++ chart: images on one line sit side by side
        charts.append(embedded_png(_read(files.loss_chart_uri, options), "training loss per direction"))
    create_table_artifact(table_rows(directions), key=artifact_key("adapter-pipeline", config.run_name, "chrf"),
                          description=f"chrF++ on FLORES-200, run {run_id}")
    create_markdown_artifact(markdown_report(run_id, directions, files.chart_uri, files.loss_chart_uri, notes) + "\n"
                             + " ".join(charts) + "\n",
                             key=artifact_key("adapter-pipeline", config.run_name, "report"))  # fmt: skip
    for direction, result in directions.items():
        if result["promoted"]:
            create_link_artifact(link_url(result["adapter_uri"]), link_text=f"{direction} {result['version']}",
                                 key=artifact_key("adapter-pipeline", config.run_name, direction, "adapter"))
    return files.report_uri
