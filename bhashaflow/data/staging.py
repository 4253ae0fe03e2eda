"""A source's staging folder: validated rows committed resumably, then read back for sharding.

`<run_uri>/staging/<source>/` holds, for each commit that had rows to keep, `part-NNNNN.arrow` (the accepted
pairs with their de-duplication key) and `quarantine-NNNNN.jsonl` (the rejected rows), then `progress.json`:
the connector's position and the counts so far. Parts are written first and progress last, so a crash in
between rewrites the same part number on resume and every row is counted once.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.ipc

from bhashaflow.core.fsio import join, open_fs, read_json, write_bytes_atomic, write_json_atomic
from bhashaflow.core.names import STAGING_DIR, STAGING_PROGRESS
from bhashaflow.core.records import ACCEPTED_SCHEMA, Position, Rejection
from bhashaflow.data.validation import RowBatch, Validator, pair_keys

_STAGED_SCHEMA = ACCEPTED_SCHEMA.append(pa.field("key", pa.uint64()))
# Staged parts are Arrow IPC files: written once and read once, several times cheaper than Parquet.
_STAGED_IPC = pa.ipc.IpcWriteOptions(compression="zstd")


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
    skipped_by_direction: dict[str, int] = field(default_factory=dict)  # rows of unconfigured directions
    skipped_by_reason: dict[str, int] = field(default_factory=dict)  # every skipped row, by SKIP_REASONS

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
    return join(run_uri, STAGING_DIR, source_name)


def _part_uri(stage: str, part: int) -> str:
    return join(stage, f"part-{part:05d}.arrow")


def _quarantine_part_uri(stage: str, part: int) -> str:
    return join(stage, f"quarantine-{part:05d}.jsonl")


def load_progress(stage: str, storage_options: dict[str, Any] | None = None) -> SourceProgress:
    """What the staging folder `stage` has committed: nothing yet when it has no progress file."""
    uri = join(stage, STAGING_PROGRESS)
    fs, path = open_fs(uri, storage_options)
    return SourceProgress.from_dict(read_json(uri, storage_options)) if fs.exists(path) else SourceProgress()


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


class ValidatedPart:
    """Rows read since the last commit, validated: the part, quarantine lines and counts a commit writes."""

    def __init__(self, rows: RowBatch, validator: Validator) -> None:
        checked = rows.check()
        self.read = rows.size
        self.position = rows.last_position
        self.valid = checked.accepted.num_rows
        self.table = checked.accepted.append_column("key", pair_keys(checked.accepted))
        self.skipped_by_direction = Counter(checked.skipped)
        self.skipped_by_reason = Counter(checked.skip_reasons)
        self.rejected_by_reason: Counter[str] = Counter()
        self.rejected_by_direction: Counter[str] = Counter()
        self.quarantine: list[str] = []
        for record, rejection in checked.rejections:
            self.rejected_by_reason[rejection.reason] += 1
            hint = validator.direction_hint(record)
            if hint is not None and hint in validator.directions:
                self.rejected_by_direction[hint] += 1
            self.quarantine.append(_quarantine_line(rejection))


def commit_part(
    progress: SourceProgress,
    part: ValidatedPart,
    stage: str,
    storage_options: dict[str, Any] | None = None,
    done: bool = False,
) -> None:
    """Write `part` into the staging folder `stage`, then add it to `progress` and write that, last."""
    number = progress.parts
    _write_part_files(part, stage, number, storage_options)
    if part.read or done:
        _add_to_progress(progress, part)
        if part.valid or part.quarantine:
            progress.parts = number + 1
        progress.done = done
        write_json_atomic(join(stage, STAGING_PROGRESS), asdict(progress), storage_options)


def _write_part_files(part: ValidatedPart, stage: str, number: int, storage_options: dict[str, Any] | None) -> None:
    if part.valid:
        buf = pa.BufferOutputStream()
        with pa.ipc.new_file(buf, part.table.schema, options=_STAGED_IPC) as writer:
            writer.write_table(part.table)
        write_bytes_atomic(_part_uri(stage, number), buf.getvalue().to_pybytes(), storage_options)
    if part.quarantine:
        data = ("\n".join(part.quarantine) + "\n").encode()
        write_bytes_atomic(_quarantine_part_uri(stage, number), data, storage_options)


def _add_to_progress(progress: SourceProgress, part: ValidatedPart) -> None:
    if part.read:
        progress.position = part.position
    progress.read += part.read
    progress.valid += part.valid
    progress.rejected += sum(part.rejected_by_reason.values())
    progress.skipped += sum(part.skipped_by_reason.values())
    for attr, counter in (
        ("rejected_by_reason", part.rejected_by_reason),
        ("rejected_by_direction", part.rejected_by_direction),
        ("skipped_by_direction", part.skipped_by_direction),
        ("skipped_by_reason", part.skipped_by_reason),
    ):
        merged = Counter(getattr(progress, attr))
        merged.update(counter)
        setattr(progress, attr, dict(sorted(merged.items())))


def iter_staged_tables(staged: StagedSource, storage_options: dict[str, Any] | None = None) -> Iterator[pa.Table]:
    """A staged source's accepted rows (the `ACCEPTED_SCHEMA` columns and `key`), part by part."""
    for part in range(staged.progress.parts):
        uri = _part_uri(staged.staging_uri, part)
        fs, path = open_fs(uri, storage_options)
        if fs.exists(path):  # a part without one held only rejections
            with pa.ipc.open_file(pa.BufferReader(fs.cat_file(path))) as reader:
                yield _with_staged_columns(reader.read_all())


def _with_staged_columns(table: pa.Table) -> pa.Table:
    """`table` in the staged schema's column order; parts staged before the preference columns get them as nulls."""
    for name in _STAGED_SCHEMA.names:
        if name not in table.column_names:
            table = table.append_column(_STAGED_SCHEMA.field(name), pa.nulls(table.num_rows, _STAGED_SCHEMA.field(name).type))
    return table.select(_STAGED_SCHEMA.names)


def iter_quarantine_lines(staged: StagedSource, storage_options: dict[str, Any] | None = None) -> Iterator[bytes]:
    """A staged source's quarantine records, one JSON line each, part by part."""
    for part in range(staged.progress.parts):
        fs, path = open_fs(_quarantine_part_uri(staged.staging_uri, part), storage_options)
        if fs.exists(path):
            with fs.open(path, "rb") as f:
                yield from f
