"""Prefect task publishing the pipeline's report as artifacts a person reads."""

from __future__ import annotations

import base64
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from bhashaflow.config import PipelineConfig
from bhashaflow.core.fsio import open_fs
from bhashaflow.core.settings import get_settings
from bhashaflow.pipeline.links import Locator
from bhashaflow.pipeline.report import DirectionResult, base_notes, markdown_report, table_rows, write_report
from tasks.rundirs import artifact_key


def embedded_png(png: bytes, alt: str) -> str:
    """Markdown showing `png` inline: the UI cannot reach a file in the run folder."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _read(uri: str, storage_options: dict[str, Any] | None) -> bytes:
    fs, path = open_fs(uri, storage_options)
    return bytes(fs.cat_file(path))


@task
def publish_report_task(config: PipelineConfig, directions: dict[str, DirectionResult]) -> str:
    """Write the report and charts to the run folder; publish the chrF++ table, the report, each promoted adapter."""
    run_uri, run_id, settings = config.run_uri(), config.resolved_run_id(), get_settings()
    options = settings.storage_options_for(run_uri)
    notes = base_notes(config, settings)  # a base that saw the evaluation split; languages named by alias
    files = write_report(run_uri, run_id, directions, options, notes)
    locator = Locator(settings)
    charts = [embedded_png(_read(files.chart_uri, options), "chrF++ per direction")]
    if files.loss_chart_uri is not None:  # below the chrF++ chart
        charts.append(embedded_png(_read(files.loss_chart_uri, options), "training loss per direction"))
    create_table_artifact(
        table_rows(directions),
        key=artifact_key("adapter-pipeline", config.run_name, "chrf"),
        description=f"chrF++ on FLORES-200 {config.evaluation.split} per direction, run {run_id}: "
        "base, incumbent and candidate, and whether the candidate was promoted",
    )
    report = markdown_report(run_id, directions, files.chart_uri, files.loss_chart_uri, notes, locate=locator.file)
    create_markdown_artifact(
        report + "\n" + "\n\n".join(charts) + "\n",
        key=artifact_key("adapter-pipeline", config.run_name, "report"),
        description=f"Report of run {run_id}, every direction: chrF++, promotion reasons, training details, charts",
    )
    for direction, result in directions.items():
        if result["promoted"]:
            create_markdown_artifact(
                adapter_markdown(direction, result, run_id, locator),
                key=artifact_key("adapter-pipeline", config.run_name, direction, "adapter"),
                description=f"{direction} adapter {result['version']}, promoted by run {run_id}: "
                "where it is in the registry",
            )
    return files.report_uri


def adapter_markdown(direction: str, result: DirectionResult, run_id: str, locator: Locator) -> str:
    """Where a promoted adapter is: links a browser follows, or the path and the command that opens it."""
    return (
        f"### {direction} adapter {result['version']}\n\nPromoted by run `{run_id}` "
        f"(candidate chrF++ {result['candidate_chrf_pp']:.1f}). In the registry: {locator.folder(result['adapter_uri'])}\n"
    )
