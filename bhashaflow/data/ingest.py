"""Ingestion: stage each source's validated rows resumably, then de-duplicate into Parquet shards.

Two steps, each restartable:
1. `stage_source` streams one source through validation and commits, every `ingest.commit_rows` rows
   read, a staged part (Arrow IPC) plus its quarantine and a progress file holding the connector's
   position and the counts. A crashed or retried stage resumes from the last progress file, so every row is read
   into the output exactly once however often the source fails.
2. `write_shards` reads the staged parts in config order, drops exact duplicates (bounded memory:
   8 bytes per distinct pair), writes Parquet shards per direction and, last, `manifest.json`.
   No manifest means no finished ingestion.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc
import pyarrow.parquet as pq

from bhashaflow.config import PipelineConfig, SourceConfig
from bhashaflow.core.fsio import join, open_fs, read_json, write_bytes_atomic, write_json_atomic
from bhashaflow.core.hashing import sha256_file, sha256_json
from bhashaflow.core.names import DATA_MANIFEST as MANIFEST
from bhashaflow.core.names import QUARANTINE
from bhashaflow.core.records import PAIR_SCHEMA, Pair, Position, RawRecord, RecordSource, Rejection
from bhashaflow.core.redact import redact_uri
from bhashaflow.data.validation import RowBatch, Validator, pair_keys

_STAGED_SCHEMA = PAIR_SCHEMA.append(pa.field("key", pa.uint64()))
# Staged parts are Arrow IPC files: written once and read once, several times cheaper than Parquet.
_STAGED_IPC = pa.ipc.IpcWriteOptions(compression="zstd")


class IngestError(RuntimeError):
    """Ingestion refused to finish (for example too many rejected rows); the message says why."""


@dataclass
class SourceProgress:
    """What a source's staging has committed so far."""

    position: Position | None = None
    read: int = 0
    valid: int = 0
    rejected: int = 0
    skipped: int = 0
    parts: int = 0
    done: bool = False
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rejected_by_direction: dict[str, int] = field(default_factory=dict)
    skipped_by_direction: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceProgress:
        return cls(**data)


@dataclass
class StagedSource:
    """A finished staging of one source: where its parts are and what it counted."""

    name: str
    kind: str
    uri: str
    staging_uri: str
    progress: SourceProgress


def staging_uri(run_uri: str, source_name: str) -> str:
    return join(run_uri, "staging", source_name)


def _quarantine_line(rej: Rejection) -> str:
    row: Any = dict(rej.row) if rej.row is not None and hasattr(rej.row, "items") else rej.row
    record = {"source": rej.source, "ref": rej.ref, "reason": rej.reason, "detail": rej.detail, "row": row}
    if rej.raw is not None:
        record["raw"] = rej.raw
    line = json.dumps(record, ensure_ascii=False, default=str)
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (a row rejected for one) stays a \u escape
            line = json.dumps(record, default=str)
    return line


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
    progress_uri = join(stage, "progress.json")
    fs, progress_path = open_fs(progress_uri, storage_options)
    progress = SourceProgress.from_dict(read_json(progress_uri, storage_options)) if fs.exists(progress_path) else SourceProgress()
    # The uri goes into the manifest and Prefect's stored results: without credentials.
    staged = StagedSource(source.name, source.kind, redact_uri(source.uri), stage, progress)
    if progress.done:
        return staged

    validator = Validator(source, config.directions, config.ingest.max_chars, config.ingest.min_script_fraction)
    commit_rows = config.ingest.commit_rows

    def validate_and_commit(rows: RowBatch, done: bool) -> None:
        _commit(progress, _Pending(rows, validator), stage, progress_uri, storage_options, done=done)

    # Rows are structure-checked as they are read; the text checks and the commit of a batch then run on a
    # worker thread while the next batch is read: parsing holds the GIL, but decompression, the numpy and
    # Arrow kernels and file writes release it. Commits stay in order, one at a time, and a batch is handed
    # over only once the one before is committed, so a failure leaves the progress inline commits would.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage-{source.name}") as worker:
        committing: Future[None] | None = None
        rows = validator.new_batch()
        try:
            for record in reader.iter_records(progress.position):
                rows.add(record)
                if rows.size >= commit_rows:
                    if committing is not None:
                        committing.result()
                    committing = worker.submit(validate_and_commit, rows, False)
                    rows = validator.new_batch()
        finally:
            if committing is not None:
                committing.result()  # what was read before a failure is still committed, as inline
    validate_and_commit(rows, True)
    return staged


class _Pending:
    """Rows read since the last commit, validated."""

    def __init__(self, rows: RowBatch, validator: Validator) -> None:
        checked = rows.check()
        self.read = rows.size
        self.position = rows.last_position
        self.valid = checked.accepted.num_rows
        self.table = checked.accepted.append_column("key", pair_keys(checked.accepted))
        self.skipped_by_direction = Counter(checked.skipped)
        self.rejected_by_reason: Counter[str] = Counter()
        self.rejected_by_direction: Counter[str] = Counter()
        self.quarantine: list[str] = []
        for record, rejection in checked.rejections:
            self.rejected_by_reason[rejection.reason] += 1
            hint = validator.direction_hint(record)
            if hint is not None and hint in validator.directions:
                self.rejected_by_direction[hint] += 1
            self.quarantine.append(_quarantine_line(rejection))


def _commit(
    progress: SourceProgress,
    pending: _Pending,
    stage: str,
    progress_uri: str,
    storage_options: dict[str, Any] | None,
    done: bool = False,
) -> None:
    # Parts first, progress last: a crash in between rewrites the same part number on resume.
    part = progress.parts
    if pending.valid:
        buf = pa.BufferOutputStream()
        with pa.ipc.new_file(buf, pending.table.schema, options=_STAGED_IPC) as writer:
            writer.write_table(pending.table)
        write_bytes_atomic(join(stage, f"part-{part:05d}.arrow"), buf.getvalue().to_pybytes(), storage_options)
    if pending.quarantine:
        data = ("\n".join(pending.quarantine) + "\n").encode()
        write_bytes_atomic(join(stage, f"quarantine-{part:05d}.jsonl"), data, storage_options)
    if pending.read or done:
        if pending.read:
            progress.position = pending.position
        progress.read += pending.read
        progress.valid += pending.valid
        progress.rejected += sum(pending.rejected_by_reason.values())
        progress.skipped += sum(pending.skipped_by_direction.values())
        for attr, counter in (
            ("rejected_by_reason", pending.rejected_by_reason),
            ("rejected_by_direction", pending.rejected_by_direction),
            ("skipped_by_direction", pending.skipped_by_direction),
        ):
            merged = Counter(getattr(progress, attr))
            merged.update(counter)
            setattr(progress, attr, dict(sorted(merged.items())))
        if pending.valid or pending.quarantine:
            progress.parts = part + 1
        progress.done = done
        write_json_atomic(progress_uri, asdict(progress), storage_options)


class SeenKeys:
    """Exact membership of 64-bit pair fingerprints in about 8 bytes each.

    New keys collect in small sorted arrays; past `buffer` of them they become one sorted run, and runs of
    similar size merge up to `max_run` keys, which bounds both the number of runs a lookup searches and the
    extra memory a merge needs.
    """

    def __init__(self, buffer: int = 200_000, max_run: int = 1 << 21) -> None:
        self._runs: list[np.ndarray] = []  # sorted, disjoint, larger first
        self._pending: list[np.ndarray] = []
        self._pending_size = 0
        self._buffer = buffer
        self._max_run = max_run

    def add(self, key: int) -> bool:
        """Record `key`; False when it was already there."""
        return bool(self.add_many(np.array([key], dtype=np.uint64))[0])

    def add_many(self, keys: np.ndarray) -> np.ndarray:
        """Record `keys` in order; True where a key is new (not seen before, nor earlier in `keys`)."""
        unique, first = np.unique(np.asarray(keys, dtype=np.uint64), return_index=True)
        seen = np.zeros(len(unique), dtype=bool)
        for run in self._runs + self._pending:
            at = np.searchsorted(run, unique)
            seen |= run[np.minimum(at, len(run) - 1)] == unique
        fresh = np.zeros(len(keys), dtype=bool)
        fresh[first[~seen]] = True
        if not seen.all():
            self._pending.append(unique[~seen])
            self._pending_size += int((~seen).sum())
            if self._pending_size >= self._buffer:
                self._push(np.sort(np.concatenate(self._pending)))
                self._pending, self._pending_size = [], 0
        return fresh

    def _push(self, run: np.ndarray) -> None:
        self._runs.append(run)
        while len(self._runs) > 1:
            small, large = self._runs[-1], self._runs[-2]
            if len(large) > 2 * len(small) or len(large) + len(small) > self._max_run:
                break
            # Stable sort is a merge of the two sorted halves here.
            self._runs[-2:] = [np.sort(np.concatenate([large, small]), kind="stable")]


class ShardWriter:
    """Writes one direction's pairs into Parquet shards of `shard_rows` rows with bounded memory."""

    def __init__(self, base_uri: str, shard_rows: int, storage_options: dict[str, Any] | None) -> None:
        self.base_uri = base_uri
        self.shard_rows = shard_rows
        self.row_group_rows = min(shard_rows, 10_000)
        self.storage_options = storage_options
        self.shards: list[dict[str, Any]] = []
        self._buf: list[pa.Table] = []
        self._buf_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._file: Any = None
        self._rows_in_shard = 0

    def write(self, row: tuple[str, str, str, str, str, str]) -> None:
        self.write_table(pa.table({name: [value] for name, value in zip(PAIR_SCHEMA.names, row, strict=True)}))

    def write_table(self, table: pa.Table) -> None:
        """Append pairs (the `PAIR_SCHEMA` columns, in order)."""
        if not table.num_rows:
            return
        self._buf.append(table.select(PAIR_SCHEMA.names))
        self._buf_rows += table.num_rows
        # Row groups of row_group_rows, cut short where a shard ends: the same files row by row writing made.
        while self._buf_rows and self._buf_rows >= min(self.row_group_rows, self.shard_rows - self._rows_in_shard):
            self._flush(min(self.row_group_rows, self.shard_rows - self._rows_in_shard))

    def _flush(self, rows: int | None = None) -> None:
        n = self._buf_rows if rows is None else rows
        if not n:
            return
        buffered = pa.concat_tables(self._buf)
        rest = buffered.slice(n)
        self._buf, self._buf_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
        # One contiguous chunk per column, as a table built from lists: Parquet pages then fall where they did.
        group = pa.Table.from_arrays(
            [buffered.column(name).slice(0, n).combine_chunks() for name in PAIR_SCHEMA.names], schema=PAIR_SCHEMA
        )
        if self._writer is None:
            index = len(self.shards)
            uri = join(self.base_uri, f"shard-{index:05d}.parquet")
            fs, path = open_fs(uri, self.storage_options)
            fs.makedirs(fs._parent(path), exist_ok=True)
            self._file = fs.open(path, "wb")
            self._writer = pq.ParquetWriter(self._file, PAIR_SCHEMA)
            self.shards.append({"uri": uri, "rows": 0})
        self._writer.write_table(group)
        self._rows_in_shard += n
        self.shards[-1]["rows"] += n
        if self._rows_in_shard >= self.shard_rows:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self._writer = None
            self._rows_in_shard = 0
            self.shards[-1]["sha256"] = sha256_file(self.shards[-1]["uri"], self.storage_options)

    def close(self) -> list[dict[str, Any]]:
        self._flush()
        self._close_shard()
        return self.shards


def _iter_staged_batches(staged: StagedSource, storage_options: dict[str, Any] | None) -> Iterator[pa.Table]:
    for part in range(staged.progress.parts):
        uri = join(staged.staging_uri, f"part-{part:05d}.arrow")
        fs, path = open_fs(uri, storage_options)
        if fs.exists(path):
            with pa.ipc.open_file(pa.BufferReader(fs.cat_file(path))) as reader:
                yield reader.read_all().select(_STAGED_SCHEMA.names)
            continue
        # Parts staged by earlier versions are Parquet; a part that is neither held only rejections.
        uri = join(staged.staging_uri, f"part-{part:05d}.parquet")
        fs, path = open_fs(uri, storage_options)
        if fs.exists(path):
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                for batch in pf.iter_batches(batch_size=10_000, columns=_STAGED_SCHEMA.names):
                    yield pa.Table.from_batches([batch])


def _write_quarantine(
    staged: list[StagedSource], run_uri: str, storage_options: dict[str, Any] | None
) -> tuple[str, int]:
    uri = join(run_uri, QUARANTINE)
    fs, path = open_fs(uri, storage_options)
    rows = 0
    tmp = path + ".partial"
    with fs.open(tmp, "wb") as out:
        for s in staged:
            for part in range(s.progress.parts):
                q_uri = join(s.staging_uri, f"quarantine-{part:05d}.jsonl")
                q_fs, q_path = open_fs(q_uri, storage_options)
                if not q_fs.exists(q_path):
                    continue
                with q_fs.open(q_path, "rb") as f:
                    for line in f:
                        out.write(line)
                        rows += 1
    fs.mv(tmp, path)
    return uri, rows


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
        The manifest (also written to `<run_uri>/manifest.json`).
    """
    quarantine_uri, quarantine_rows = _write_quarantine(staged, run_uri, storage_options)
    read = sum(s.progress.read for s in staged)
    considered = read - sum(s.progress.skipped for s in staged)
    rejected = sum(s.progress.rejected for s in staged)
    by_reason: Counter[str] = Counter()
    for s in staged:
        by_reason.update(s.progress.rejected_by_reason)
    share = rejected / considered if considered else 0.0
    if share > config.ingest.max_reject_fraction:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1]))
        raise IngestError(
            f"{rejected} of {considered} rows rejected ({share:.1%} > max_reject_fraction "
            f"{config.ingest.max_reject_fraction:.1%}): {reasons}; see {quarantine_uri}"
        )

    seen = SeenKeys()
    writers = {d: ShardWriter(join(run_uri, "shards", d), config.ingest.shard_rows, storage_options) for d in config.directions}
    accepted: Counter[str] = Counter()
    duplicates: Counter[str] = Counter()
    source_stats: dict[str, dict[str, Any]] = {}
    for s in staged:
        src_accepted = src_dupes = 0
        for table in _iter_staged_batches(s, storage_options):
            fresh = seen.add_many(table.column("key").to_numpy())
            src_accepted += int(fresh.sum())
            src_dupes += len(fresh) - int(fresh.sum())
            directions_of = pc.binary_join_element_wise(table.column("src_lang"), table.column("tgt_lang"), "-")
            present = pc.unique(directions_of).to_pylist()
            for direction in present:
                in_direction = (
                    np.ones(len(fresh), dtype=bool)
                    if len(present) == 1
                    else pc.equal(directions_of, direction).to_numpy(zero_copy_only=False)
                )
                keep = fresh & in_direction
                kept = int(keep.sum())
                writers[direction].write_table(table if kept == len(keep) else table.filter(pa.array(keep)))
                accepted[direction] += kept
                duplicates[direction] += int(in_direction.sum()) - kept
        p = s.progress
        source_stats[s.name] = {
            "kind": s.kind,
            "uri": s.uri,
            "read": p.read,
            "accepted": src_accepted,
            "duplicates": src_dupes,
            "rejected": p.rejected,
            "skipped": p.skipped,
            "rejected_by_reason": p.rejected_by_reason,
            "skipped_by_direction": p.skipped_by_direction,
            "position": p.position,
        }
    directions: dict[str, Any] = {}
    for d, writer in writers.items():
        shards = writer.close()
        directions[d] = {
            "accepted": accepted[d],
            "duplicates": duplicates[d],
            "rejected": sum(s.progress.rejected_by_direction.get(d, 0) for s in staged),
            "shards": [
                {"path": _relative(sh["uri"], run_uri), "rows": sh["rows"], "sha256": sh["sha256"]} for sh in shards
            ],
        }
    manifest = {
        "run_id": run_uri.rstrip("/").rsplit("/", 1)[-1],
        "config_hash": config.ingest_hash,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "directions": directions,
        "sources": source_stats,
        "totals": {
            "read": read,
            "accepted": sum(accepted.values()),
            "duplicates": sum(duplicates.values()),
            "rejected": rejected,
            "skipped": sum(s.progress.skipped for s in staged),
        },
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "quarantine": {"path": QUARANTINE, "rows": quarantine_rows},
    }
    write_json_atomic(join(run_uri, MANIFEST), manifest, storage_options)
    return manifest


def _relative(uri: str, base: str) -> str:
    return uri[len(base.rstrip("/")) + 1 :] if uri.startswith(base.rstrip("/") + "/") else uri


def load_manifest(run_uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The finished ingestion's manifest of a run folder, or None when ingestion has not finished."""
    uri = join(run_uri, MANIFEST)
    fs, path = open_fs(uri, storage_options)
    if not fs.exists(path):
        return None
    data: dict[str, Any] = read_json(uri, storage_options)
    return data


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """A stable hash of a manifest's content (its counts, shards and sources), ignoring when it was written."""
    body = {k: v for k, v in manifest.items() if k != "created_at"}
    return sha256_json(body)


def shard_uris(manifest: dict[str, Any], run_uri: str, direction: str) -> list[str]:
    """Absolute URIs of a direction's shards."""
    return [join(run_uri, sh["path"]) for sh in manifest["directions"][direction]["shards"]]


def summary(manifest: dict[str, Any], manifest_uri: str) -> dict[str, Any]:
    """The `--json` summary of an ingestion."""
    keys = ("read", "accepted", "duplicates", "rejected", "skipped")
    return {
        "run_id": manifest["run_id"],
        "manifest": manifest_uri,
        "manifest_sha256": manifest_sha256(manifest),
        "pairs": {
            d: {k: v[k] for k in ("accepted", "duplicates", "rejected")} for d, v in manifest["directions"].items()
        },
        "sources": {name: {k: s[k] for k in keys} for name, s in manifest["sources"].items()},
        "rejected_by_reason": manifest["rejected_by_reason"],
        "quarantine": manifest["quarantine"],
    }


def iter_pairs(uris: Iterable[str], storage_options: dict[str, Any] | None = None) -> Iterator[Pair]:
    """Stream the pairs of Parquet shards."""
    for uri in uris:
        fs, path = open_fs(uri, storage_options)
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=10_000):
                cols = [batch.column(name).to_pylist() for name in PAIR_SCHEMA.names]
                for src, tgt, sl, tl, source, pid in zip(*cols, strict=True):
                    yield Pair(src, tgt, sl, tl, source, pid)
