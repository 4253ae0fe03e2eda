"""Ingestion: stage each source's validated rows resumably, then de-duplicate into Parquet shards.

Two steps, each restartable:
1. `stage_source` streams one source through validation and commits, every `ingest.commit_rows` rows
   read, a staged part plus its quarantine and a progress file holding the connector's position and the
   counts (`staging`). A crashed or retried stage resumes from the last progress file, so every row is read
   into the output exactly once however often the source fails.
2. `write_shards` writes the quarantine, fails when too many rows were rejected, reads the staged parts in
   config order into de-duplicated Parquet shards per direction (`shards`) and, last, writes
   `manifest.json`. No manifest means no finished ingestion.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

from bhashaflow.config import PipelineConfig, SourceConfig
from bhashaflow.core.fsio import join, open_fs, write_json_atomic
from bhashaflow.core.names import DATA_MANIFEST, QUARANTINE
from bhashaflow.core.records import RawRecord, RecordSource
from bhashaflow.core.redact import redact_uri
from bhashaflow.data.manifest import (
    DataManifest,
    DirectionEntry,
    QuarantineEntry,
    ShardEntry,
    ShardSet,
    SourceEntry,
    Totals,
)
from bhashaflow.data.manifest import load_manifest as load_manifest  # re-exported: ingestion's readers live here too
from bhashaflow.data.manifest import read_data_manifest as read_data_manifest
from bhashaflow.data.shards import DeduplicatingShards, DirectionShards, WrittenShard
from bhashaflow.data.staging import (
    StagedSource,
    ValidatedPart,
    commit_part,
    iter_quarantine_lines,
    iter_staged_tables,
    load_progress,
    staging_uri,
)
from bhashaflow.data.validation import RowBatch, Validator


class IngestError(RuntimeError):
    """Ingestion refused to finish (for example too many rejected rows); the message says why."""


def stage_source(
    config: PipelineConfig,
    source: SourceConfig,
    reader: RecordSource,
    run_uri: str,
    storage_options: dict[str, Any] | None = None,
) -> StagedSource:
    """Stream one source through validation into staged parts, resuming from committed progress.

    Args:
        config: the pipeline config (directions and ingest rules).
        source: the source being staged.
        reader: its connector.
        run_uri: the run folder (any fsspec URL).
        storage_options: fsspec options for `run_uri`.
    """
    stage = staging_uri(run_uri, source.name)
    progress = load_progress(stage, storage_options)
    # The uri goes into the manifest and Prefect's stored results: without credentials.
    staged = StagedSource(source.name, source.kind, redact_uri(source.uri), stage, progress)
    if progress.done:
        return staged

    validator = Validator(source, config.directions, config.ingest.max_chars, config.ingest.min_script_fraction)

    def validate_and_commit(rows: RowBatch, done: bool = False) -> None:
        commit_part(progress, ValidatedPart(rows, validator), stage, storage_options, done=done)

    rest = _read_committing_behind(
        reader.iter_records(progress.position),
        validator,
        config.ingest.commit_rows,
        validate_and_commit,
        thread_name=f"stage-{source.name}",
    )
    validate_and_commit(rest, done=True)
    return staged


def _read_committing_behind(
    records: Iterable[RawRecord],
    validator: Validator,
    commit_rows: int,
    commit: Callable[[RowBatch], None],
    thread_name: str,
) -> RowBatch:
    """Batches of `commit_rows` records, each committed while the next is read; returns the last, uncommitted."""
    # Rows are structure-checked as they are read; the text checks and the commit of a batch then run on a
    # worker thread while the next batch is read: parsing holds the GIL, but decompression, the numpy and
    # Arrow kernels and file writes release it. Commits stay in order, one at a time, and a batch is handed
    # over only once the one before is committed, so a failure leaves the progress inline commits would.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name) as worker:
        committing: Future[None] | None = None
        rows = validator.new_batch()
        try:
            for record in records:
                rows.add(record)
                if rows.size >= commit_rows:
                    if committing is not None:
                        committing.result()
                    committing = worker.submit(commit, rows)
                    rows = validator.new_batch()
        finally:
            if committing is not None:
                committing.result()  # what was read before a failure is still committed, as inline
    return rows


def write_shards(
    config: PipelineConfig,
    staged: list[StagedSource],
    run_uri: str,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """De-duplicate the staged parts into per-direction shards and write the manifest last.

    Args:
        config: the pipeline config.
        staged: every source's finished staging, in config order.
        run_uri: the run folder.
        storage_options: fsspec options for `run_uri`.

    Returns:
        The manifest's JSON object, as written to `<run_uri>/manifest.json` (`DataManifest.of` reads it).
    """
    quarantine_uri, quarantine_rows = _write_quarantine(staged, run_uri, storage_options)
    _check_reject_share(config, staged, quarantine_uri)
    directions, per_source = _write_deduplicated_shards(config, staged, run_uri, storage_options)
    document = _manifest(config, staged, run_uri, directions, per_source, quarantine_rows).document()
    write_json_atomic(join(run_uri, DATA_MANIFEST), document, storage_options)
    return document


def _write_quarantine(
    staged: list[StagedSource], run_uri: str, storage_options: dict[str, Any] | None
) -> tuple[str, int]:
    """Every source's quarantine, in config order, into the run's quarantine file; its uri and rows."""
    uri = join(run_uri, QUARANTINE)
    fs, path = open_fs(uri, storage_options)
    rows = 0
    tmp = path + ".partial"
    with fs.open(tmp, "wb") as out:
        for s in staged:
            for line in iter_quarantine_lines(s, storage_options):
                out.write(line)
                rows += 1
    fs.mv(tmp, path)
    return uri, rows


def _rejected_by_reason(staged: list[StagedSource]) -> Counter[str]:
    by_reason: Counter[str] = Counter()
    for s in staged:
        by_reason.update(s.progress.rejected_by_reason)
    return by_reason


def _check_reject_share(config: PipelineConfig, staged: list[StagedSource], quarantine_uri: str) -> None:
    """Fail when more than `ingest.max_reject_fraction` of the rows read (skipped ones aside) were rejected."""
    considered = sum(s.progress.read for s in staged) - sum(s.progress.skipped for s in staged)
    rejected = sum(s.progress.rejected for s in staged)
    share = rejected / considered if considered else 0.0
    if share > config.ingest.max_reject_fraction:
        by_reason = _rejected_by_reason(staged)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1]))
        raise IngestError(
            f"{rejected} of {considered} rows rejected ({share:.1%} > max_reject_fraction "
            f"{config.ingest.max_reject_fraction:.1%}): {reasons}; see {quarantine_uri}"
        )


def _write_deduplicated_shards(
    config: PipelineConfig, staged: list[StagedSource], run_uri: str, storage_options: dict[str, Any] | None
) -> tuple[dict[str, DirectionShards], dict[str, tuple[int, int]]]:
    """Every staged pair not seen before into its direction's shards; per source, pairs kept and duplicates."""
    heldout = {s.name: s.heldout_fraction for s in config.sources if s.kind == "rl_logs"}
    shards = DeduplicatingShards(
        join(run_uri, "shards"), config.directions, config.ingest.shard_rows, storage_options, heldout, run_uri
    )
    per_source: dict[str, tuple[int, int]] = {}
    for s in staged:
        accepted = duplicates = 0
        for table in iter_staged_tables(s, storage_options):
            new = shards.add(table)
            accepted += new
            duplicates += table.num_rows - new
        per_source[s.name] = (accepted, duplicates)
    return shards.close(), per_source


def _manifest(
    config: PipelineConfig,
    staged: list[StagedSource],
    run_uri: str,
    directions: dict[str, DirectionShards],
    per_source: dict[str, tuple[int, int]],
    quarantine_rows: int,
) -> DataManifest:
    preferences = any(source.kind == "rl_logs" for source in config.sources)
    totals = Totals(
        read=sum(s.progress.read for s in staged),
        accepted=sum(out.accepted for out in directions.values()),
        duplicates=sum(out.duplicates for out in directions.values()),
        rejected=sum(s.progress.rejected for s in staged),
        skipped=sum(s.progress.skipped for s in staged),
    )
    if preferences:  # accepted corrections kept out of training: accepted + heldout is what the sources accepted
        totals.heldout = sum(out.heldout for out in directions.values())
    return DataManifest(
        run_id=run_uri.rstrip("/").rsplit("/", 1)[-1],
        config_hash=config.ingest_hash,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        directions={d: _direction_entry(d, out, staged, run_uri, preferences) for d, out in directions.items()},
        sources={s.name: _source_entry(s, *per_source[s.name]) for s in staged},
        totals=totals,
        rejected_by_reason=dict(sorted(_rejected_by_reason(staged).items())),
        quarantine=QuarantineEntry(path=QUARANTINE, rows=quarantine_rows),
    )


def _direction_entry(
    direction: str, out: DirectionShards, staged: list[StagedSource], run_uri: str, preferences: bool
) -> DirectionEntry:
    def listed(shards: list[WrittenShard]) -> list[ShardEntry]:
        return [ShardEntry(path=_relative(sh["uri"], run_uri), rows=sh["rows"], sha256=sh["sha256"]) for sh in shards]

    entry = DirectionEntry(
        accepted=out.accepted,
        duplicates=out.duplicates,
        rejected=sum(s.progress.rejected_by_direction.get(direction, 0) for s in staged),
        shards=listed(out.shards),
    )
    if preferences:  # a run with an rl_logs source: its preference triplets and held-out corrections
        entry.preferences = ShardSet(rows=out.preferences, shards=listed(out.preference_shards))
        entry.heldout = ShardSet(rows=out.heldout, shards=listed(out.heldout_shards))
    return entry


def _source_entry(s: StagedSource, accepted: int, duplicates: int) -> SourceEntry:
    p = s.progress
    return SourceEntry(
        kind=s.kind,
        uri=s.uri,
        read=p.read,
        accepted=accepted,
        duplicates=duplicates,
        rejected=p.rejected,
        skipped=p.skipped,
        rejected_by_reason=p.rejected_by_reason,
        skipped_by_direction=p.skipped_by_direction,
        skipped_by_reason=p.skipped_by_reason,
        position=p.position,
    )


def _relative(uri: str, base: str) -> str:
    return uri[len(base.rstrip("/")) + 1 :] if uri.startswith(base.rstrip("/") + "/") else uri


@dataclass(frozen=True)
class IngestedData:
    """A finished ingestion as tasks hand it on: where its manifest is, and what it holds (its content hash)."""

    run_id: str
    manifest_uri: str
    manifest_sha256: str

    @classmethod
    def of(cls, manifest: DataManifest, run_uri: str) -> IngestedData:
        return cls(manifest.run_id, join(run_uri, DATA_MANIFEST), manifest.sha256())


# The functions below read a manifest given as the model or as the file's JSON object (what `write_shards` and
# `load_manifest` return).
ManifestLike = DataManifest | Mapping[str, Any]


def manifest_sha256(manifest: ManifestLike) -> str:
    """A stable hash of a manifest's content (its counts, shards and sources), ignoring when it was written."""
    return DataManifest.of(manifest).sha256()


def shard_uris(manifest: ManifestLike, run_uri: str, direction: str) -> list[str]:
    """Absolute URIs of a direction's shards."""
    return DataManifest.of(manifest).shard_uris(run_uri, direction)


def preference_uris(manifest: ManifestLike, run_uri: str, direction: str, kind: str = "preferences") -> list[str]:
    """Absolute URIs of a direction's preference shards (`kind` preferences) or held-out shards (`heldout`)."""
    return DataManifest.of(manifest).preference_uris(run_uri, direction, kind)


class SourceCounts(TypedDict):
    """A source's rows in the ingestion summary."""

    read: int
    accepted: int
    duplicates: int
    rejected: int
    skipped: int


class QuarantineCounts(TypedDict):
    """The quarantine file (relative to the run folder) and the rejected rows it holds."""

    path: str
    rows: int


class IngestSummary(TypedDict):
    """What the ingest-corpus flow returns: the `bhashaflow ingest --json` object."""

    run_id: str
    manifest: str  # the manifest's URI
    manifest_sha256: str
    pairs: dict[str, dict[str, int]]  # per direction: accepted, duplicates, rejected (+ preferences, heldout)
    sources: dict[str, SourceCounts]
    rejected_by_reason: dict[str, int]
    skipped_by_reason: dict[str, int]
    quarantine: QuarantineCounts


def summary(manifest: ManifestLike, manifest_uri: str) -> IngestSummary:
    """The `--json` summary of an ingestion."""
    m = DataManifest.of(manifest)
    return {
        "run_id": m.run_id,
        "manifest": manifest_uri,
        "manifest_sha256": m.sha256(),
        "pairs": {d: _pair_counts(entry) for d, entry in m.directions.items()},
        "sources": {name: _source_counts(s) for name, s in m.sources.items()},
        "rejected_by_reason": m.rejected_by_reason,
        "skipped_by_reason": _skipped_by_reason(m),
        "quarantine": {"path": m.quarantine.path, "rows": m.quarantine.rows},
    }


def _source_counts(s: SourceEntry) -> SourceCounts:
    return {"read": s.read, "accepted": s.accepted, "duplicates": s.duplicates, "rejected": s.rejected,
            "skipped": s.skipped}


def _skipped_by_reason(manifest: DataManifest) -> dict[str, int]:
    """Every source's skipped rows by reason (unconfigured_direction, no_correction, untrusted_client, ...)."""
    total: Counter[str] = Counter()
    for s in manifest.sources.values():
        total.update(s.skipped_by_reason)
    return dict(sorted(total.items()))


def _pair_counts(entry: DirectionEntry) -> dict[str, int]:
    counts = {"accepted": entry.accepted, "duplicates": entry.duplicates, "rejected": entry.rejected}
    for kind, found in (("preferences", entry.preferences), ("heldout", entry.heldout)):  # runs with an rl_logs source
        if found is not None:
            counts[kind] = found.rows
    return counts
