"""Prefect tasks of ingestion: thin wrappers around bhashaflow.data.ingest and the connectors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE, TASK_SOURCE, CacheKeyFnPolicy
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from bhashaflow.config import PipelineConfig
from bhashaflow.core.hashing import sha256_json
from bhashaflow.core.progress import PROGRESS_LOG_EXTRA, PhaseProgress, publish
from bhashaflow.core.quiet import quiet_libraries
from bhashaflow.core.records import Position, RawRecord, RecordSource
from bhashaflow.core.settings import get_settings
from bhashaflow.data.ingest import IngestedData, stage_source, write_shards
from bhashaflow.data.manifest import DataManifest, read_data_manifest
from bhashaflow.data.staging import StagedSource, load_progress, staging_uri
from connectors import SourceError, TransientSourceError, open_connector


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    # Retry network trouble; a missing file, a refused credential or bad data fails at once.
    try:
        state.result()
    except TransientSourceError:
        return True
    except SourceError:
        return False
    except (OSError, TimeoutError):
        return True
    except Exception:
        return False
    return False


def _staged_source_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    # Not keyed by flow run: a later run of the same config reuses a source it already staged.
    config: PipelineConfig = parameters["config"]
    source = next(s for s in config.sources if s.name == parameters["source_name"])
    identity = {
        "source": source.model_dump(mode="json"),
        "ingest": config.ingest_hash,
        "run_uri": parameters["run_uri"],
    }
    return "stage-" + sha256_json(identity)


class _CountedSource:
    """A source whose rows are counted as they stream: the CLI's progress bar, and a log line every `log_rows`."""

    PUBLISH_ROWS = 1000  # rows between progress events

    def __init__(self, reader: RecordSource, read_before: int, log_rows: int) -> None:
        self.name, self.reader, self.read, self.log_rows = reader.name, reader, read_before, log_rows
        self.logger = get_run_logger()

    def iter_records(self, start: Position | None = None) -> Iterator[RawRecord]:
        publish(PhaseProgress("ingest", self.name, self.read, None, "rows"))
        for record in self.reader.iter_records(start):
            self.read += 1
            if self.read % self.PUBLISH_ROWS == 0:
                publish(PhaseProgress("ingest", self.name, self.read, None, "rows"))
                if self.read % self.log_rows == 0:
                    self.logger.info("%s: %d rows read", self.name, self.read, extra=PROGRESS_LOG_EXTRA)
            yield record
        publish(PhaseProgress("ingest", self.name, self.read, self.read, "rows", finished=True))
        self.logger.info("%s: %d rows read, the whole source", self.name, self.read, extra=PROGRESS_LOG_EXTRA)


@task(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_transient,
    task_run_name="stage-{source_name}",
    persist_result=True,
    cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_staged_source_key),
)
def stage_source_task(config: PipelineConfig, source_name: str, run_uri: str) -> StagedSource:
    """Stream one source into validated staged parts, resuming from its last committed position."""
    settings = get_settings()
    source = next(s for s in config.sources if s.name == source_name)
    quiet_libraries(datasets=source.kind == "hf")
    options = settings.storage_options_for(run_uri)
    # Rows read before a resume count too; log lines come at multiples of 1000 near every commit.
    read_before = load_progress(staging_uri(run_uri, source_name), options).read
    log_rows = max(_CountedSource.PUBLISH_ROWS, config.ingest.commit_rows // 1000 * 1000)
    reader = _CountedSource(
        open_connector(source, settings, config.directions, config.source_retry), read_before, log_rows
    )
    return stage_source(config, source, reader, run_uri, options)


@task(persist_result=True)
def write_shards_task(config: PipelineConfig, staged: list[StagedSource], run_uri: str) -> IngestedData:
    """De-duplicate the staged sources into per-direction shards and write the manifest."""
    written = write_shards(config, staged, run_uri, get_settings().storage_options_for(run_uri))
    return IngestedData.of(DataManifest.of(written), run_uri)


@task(cache_policy=NO_CACHE)  # a check of the run folder's state: never answered from a cache
def finished_manifest_task(config: PipelineConfig, run_uri: str) -> IngestedData | None:
    """The run's ingestion when it already finished under the same ingest config."""
    manifest = read_data_manifest(run_uri, get_settings().storage_options_for(run_uri))
    if manifest is not None and manifest.config_hash == config.ingest_hash:
        return IngestedData.of(manifest, run_uri)
    return None
