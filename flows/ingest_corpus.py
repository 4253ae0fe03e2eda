"""The `ingest-corpus` flow: every configured source into de-duplicated Parquet shards."""

from __future__ import annotations

from prefect import flow

from bhashaflow.config import PipelineConfig
from bhashaflow.core.settings import get_settings
from bhashaflow.data.ingest import IngestSummary, summary
from bhashaflow.data.manifest import read_data_manifest
from flows.runners import configured_run
from tasks.ingest import finished_manifest_task, stage_source_task, write_shards_task


@flow(name="ingest-corpus", persist_result=True)  # a retried parent reuses a finished ingestion
def ingest_corpus(config: PipelineConfig) -> IngestSummary:
    """Stream, validate and de-duplicate the configured sources into shards with a manifest.

    Args:
        config: the pipeline config; its `sources`, `directions` and `ingest` sections are used.
    """
    with configured_run(config, distribute=False) as config:
        run_uri = config.run_uri()
        ingested = finished_manifest_task(config, run_uri)
        if ingested is None:
            staged = [stage_source_task(config, source.name, run_uri) for source in config.sources]
            ingested = write_shards_task(config, staged, run_uri)
    manifest = read_data_manifest(run_uri, get_settings().storage_options_for(run_uri))
    if manifest is None:  # written by the task just now, or found by it: gone only if someone deleted it
        raise FileNotFoundError(f"{ingested.manifest_uri} disappeared after ingestion finished")
    return summary(manifest, ingested.manifest_uri)
