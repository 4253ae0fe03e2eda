"""Ingestion: stage each source's validated rows resumably, then de-duplicate into Parquet shards.

Two steps, each restartable:
1. `stage_source` streams one source through validation and commits, every `ingest.commit_rows` rows
   read, a staged part plus its quarantine and a progress file holding the connector's position and
   the counts. A crashed or retried stage resumes from the last progress file, so every row is read
   into the output exactly once however often the source fails.
2. `write_shards` reads the staged parts in config order, drops exact duplicates (bounded memory:
   8 bytes per distinct pair), writes Parquet shards per direction and, last, `manifest.json`.
   No manifest means no finished ingestion.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bhashaflow.config import PipelineConfig, SourceConfig
from bhashaflow.fsio import join, open_fs, read_json, sha256_file, write_bytes_atomic, write_json_atomic
from bhashaflow.records import Pair, Position, RawRecord, Rejection
from bhashaflow.validation import PAIR_SCHEMA, Validator, pair_keys

_STAGED_SCHEMA = PAIR_SCHEMA.append(pa.field("key", pa.uint64()))
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"


class IngestError(RuntimeError):
    """Ingestion refused to finish (for example too many rejected rows); the message says why."""


class RecordSource(Protocol):
    name: str

    def iter_records(self, start: Position | None = None) -> Iterator[RawRecord]: ...


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
    return json.dumps(record, ensure_ascii=False, default=str)


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
    staged = StagedSource(source.name, source.kind, source.uri, stage, progress)
    if progress.done:
        return staged

    validator = Validator(source, config.directions, config.ingest.max_chars, config.ingest.min_script_fraction)
    commit_rows = config.ingest.commit_rows
    batch: list[RawRecord] = []
    for record in reader.iter_records(progress.position):
        batch.append(record)
        if len(batch) >= commit_rows:
            _commit(progress, _Pending(batch, validator), stage, progress_uri, storage_options)
            batch = []
    _commit(progress, _Pending(batch, validator), stage, progress_uri, storage_options, done=True)
    return staged


class _Pending:
    """Rows read since the last commit, validated."""

    def __init__(self, batch: list[RawRecord], validator: Validator) -> None:
        checked = validator.check_batch(batch)
        self.read = len(batch)
        self.position = batch[-1].position if batch else None
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
        buf = io.BytesIO()
        pq.write_table(pending.table, buf)
        write_bytes_atomic(join(stage, f"part-{part:05d}.parquet"), buf.getvalue(), storage_options)
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

    New keys collect in a set; past `buffer` they merge into one sorted numpy array.
    """

    def __init__(self, buffer: int = 200_000) -> None:
        self._sorted = np.empty(0, dtype=np.uint64)
        self._recent: set[int] = set()
        self._buffer = buffer

    def add(self, key: int) -> bool:
        """Record `key`; False when it was already there."""
        if key in self._recent:
            return False
        arr = self._sorted
        if arr.size:
            i = int(np.searchsorted(arr, np.uint64(key)))
            if i < arr.size and int(arr[i]) == key:
                return False
        self._recent.add(key)
        if len(self._recent) >= self._buffer:
            merged = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
            self._sorted = np.union1d(self._sorted, merged)
            self._recent.clear()
        return True


class ShardWriter:
    """Writes one direction's pairs into Parquet shards of `shard_rows` rows with bounded memory."""

    def __init__(self, base_uri: str, shard_rows: int, storage_options: dict[str, Any] | None) -> None:
        self.base_uri = base_uri
        self.shard_rows = shard_rows
        self.row_group_rows = min(shard_rows, 10_000)
        self.storage_options = storage_options
        self.shards: list[dict[str, Any]] = []
        self._buf: dict[str, list[Any]] = {name: [] for name in PAIR_SCHEMA.names}
        self._writer: pq.ParquetWriter | None = None
        self._file: Any = None
        self._rows_in_shard = 0

    def write(self, row: tuple[str, str, str, str, str, str]) -> None:
        for name, value in zip(PAIR_SCHEMA.names, row, strict=True):
            self._buf[name].append(value)
        if len(self._buf["src"]) >= min(self.row_group_rows, self.shard_rows - self._rows_in_shard):
            self._flush()

    def _flush(self) -> None:
        n = len(self._buf["src"])
        if not n:
            return
        if self._writer is None:
            index = len(self.shards)
            uri = join(self.base_uri, f"shard-{index:05d}.parquet")
            fs, path = open_fs(uri, self.storage_options)
            fs.makedirs(fs._parent(path), exist_ok=True)
            self._file = fs.open(path, "wb")
            self._writer = pq.ParquetWriter(self._file, PAIR_SCHEMA)
            self.shards.append({"uri": uri, "rows": 0})
        self._writer.write_table(pa.table(self._buf, schema=PAIR_SCHEMA))
        self._buf = {name: [] for name in PAIR_SCHEMA.names}
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


def _iter_staged_rows(staged: StagedSource, storage_options: dict[str, Any] | None) -> Iterator[tuple[Any, ...]]:
    for part in range(staged.progress.parts):
        uri = join(staged.staging_uri, f"part-{part:05d}.parquet")
        fs, path = open_fs(uri, storage_options)
        if not fs.exists(path):
            continue  # that commit held only rejections
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=10_000):
                cols = [batch.column(name).to_pylist() for name in _STAGED_SCHEMA.names]
                yield from zip(*cols, strict=True)


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
        for row in _iter_staged_rows(s, storage_options):
            direction = f"{row[2]}-{row[3]}"
            if seen.add(row[6]):
                writers[direction].write(row[:6])
                accepted[direction] += 1
                src_accepted += 1
            else:
                duplicates[direction] += 1
                src_dupes += 1
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
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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
