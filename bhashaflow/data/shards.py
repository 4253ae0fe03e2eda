"""De-duplicated Parquet shards: exact duplicates dropped across all sources, pairs sharded per direction.

Memory stays bounded: about 8 bytes per distinct pair for de-duplication, one row group per direction for
the shards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bhashaflow.core.fsio import join, open_fs
from bhashaflow.core.hashing import sha256_file
from bhashaflow.core.records import PAIR_SCHEMA, PREFERENCE_SCHEMA, Pair


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


class WrittenShard(TypedDict):
    """A Parquet shard a ShardWriter wrote: its URI, its rows, and the sha256 of its bytes once it is closed."""

    uri: str
    rows: int
    sha256: NotRequired[str]


class ShardWriter:
    """Writes one direction's rows (`schema`: pairs by default) into Parquet shards of `shard_rows` rows."""

    def __init__(
        self, base_uri: str, shard_rows: int, storage_options: dict[str, Any] | None, schema: pa.Schema = PAIR_SCHEMA
    ) -> None:
        self.base_uri = base_uri
        self.schema = schema
        self.shard_rows = shard_rows
        self.row_group_rows = min(shard_rows, 10_000)
        self.storage_options = storage_options
        self.shards: list[WrittenShard] = []
        self._buf: list[pa.Table] = []
        self._buf_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._file: Any = None
        self._rows_in_shard = 0

    def write_table(self, table: pa.Table) -> None:
        """Append rows (the schema's columns; others are left out)."""
        if not table.num_rows:
            return
        self._buf.append(table.select(self.schema.names))
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
            [buffered.column(name).slice(0, n).combine_chunks() for name in self.schema.names], schema=self.schema
        )
        writer = self._writer if self._writer is not None else self._open_shard()
        writer.write_table(group)
        self._rows_in_shard += n
        self.shards[-1]["rows"] += n
        if self._rows_in_shard >= self.shard_rows:
            self._close_shard()

    def _open_shard(self) -> pq.ParquetWriter:
        uri = join(self.base_uri, f"shard-{len(self.shards):05d}.parquet")
        fs, path = open_fs(uri, self.storage_options)
        fs.makedirs(fs._parent(path), exist_ok=True)
        self._file = fs.open(path, "wb")
        self._writer = pq.ParquetWriter(self._file, self.schema)
        self.shards.append({"uri": uri, "rows": 0})
        return self._writer

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self._writer = None
            self._rows_in_shard = 0
            self.shards[-1]["sha256"] = sha256_file(self.shards[-1]["uri"], self.storage_options)

    def close(self) -> list[WrittenShard]:
        """Write what is buffered and close the last shard; every shard's uri, rows and sha256."""
        self._flush()
        self._close_shard()
        return self.shards


@dataclass
class DirectionShards:
    """One direction's de-duplicated pairs: how many were kept and dropped as duplicates, and their shards.

    Rows from a preference source (with a `rejected` translation) also go to the direction's preference shards,
    unless they are held out: those go to the held-out shards only, never into training.
    """

    accepted: int = 0
    duplicates: int = 0
    shards: list[WrittenShard] = field(default_factory=list)
    preferences: int = 0
    preference_shards: list[WrittenShard] = field(default_factory=list)
    heldout: int = 0
    heldout_shards: list[WrittenShard] = field(default_factory=list)


HOLDOUT_BUCKETS = 10_000


def held_out(keys: np.ndarray, share: float) -> np.ndarray:
    """Which pair keys fall in the held-out `share` (by the key's hash: the same pairs whatever the order)."""
    return (keys % HOLDOUT_BUCKETS) < round(share * HOLDOUT_BUCKETS)


class DeduplicatingShards:
    """Keeps each pair the first time its key is seen, across every table added, in its direction's shards.

    `heldout` maps a source's name to the share of its preference rows kept out of training.
    """

    def __init__(
        self, base_uri: str, directions: Sequence[str], shard_rows: int, storage_options: dict[str, Any] | None,
        heldout: dict[str, float] | None = None, root_uri: str | None = None,
    ) -> None:
        self._seen = SeenKeys()
        root = root_uri or base_uri.rsplit("/", 1)[0]
        self._writers = {d: ShardWriter(join(base_uri, d), shard_rows, storage_options) for d in directions}
        self._preferences = {
            d: ShardWriter(join(root, "preferences", d), shard_rows, storage_options, PREFERENCE_SCHEMA) for d in directions
        }
        self._heldout_writers = {
            d: ShardWriter(join(root, "heldout", d), shard_rows, storage_options, PREFERENCE_SCHEMA) for d in directions
        }
        self._heldout = heldout or {}
        self._out = {d: DirectionShards() for d in directions}

    def add(self, table: pa.Table) -> int:
        """Write the new rows of `table` (the staged columns and `key`); how many were new."""
        keys = table.column("key").to_numpy()
        fresh = self._seen.add_many(keys)
        directions_of = pc.binary_join_element_wise(table.column("src_lang"), table.column("tgt_lang"), "-")
        present = pc.unique(directions_of).to_pylist()
        preference = self._preference_rows(table)
        held = self._held_rows(table, keys, preference)
        for direction in present:
            in_direction = (
                np.ones(len(fresh), dtype=bool)
                if len(present) == 1
                else pc.equal(directions_of, direction).to_numpy(zero_copy_only=False)
            )
            keep = fresh & in_direction
            out = self._out[direction]
            train = keep & ~held
            self._writers[direction].write_table(table if train.all() else table.filter(pa.array(train)))
            out.accepted += int(train.sum())
            out.duplicates += int(in_direction.sum()) - int(keep.sum())
            if preference.any():
                self._preferences[direction].write_table(table.filter(pa.array(train & preference)))
                self._heldout_writers[direction].write_table(table.filter(pa.array(keep & held)))
                out.preferences += int((train & preference).sum())
                out.heldout += int((keep & held).sum())
        return int(fresh.sum())

    @staticmethod
    def _preference_rows(table: pa.Table) -> np.ndarray:
        if "rejected" not in table.column_names:
            return np.zeros(table.num_rows, dtype=bool)
        return np.asarray(pc.is_valid(table.column("rejected")).to_numpy(zero_copy_only=False), dtype=bool)

    def _held_rows(self, table: pa.Table, keys: np.ndarray, preference: np.ndarray) -> np.ndarray:
        held = np.zeros(table.num_rows, dtype=bool)
        if not self._heldout or not preference.any():
            return held
        sources = table.column("source").to_numpy(zero_copy_only=False)
        for name, share in self._heldout.items():
            held |= preference & (sources == name) & held_out(keys, share)
        return held

    def close(self) -> dict[str, DirectionShards]:
        """Finish every direction's shards, in the order of `directions`."""
        for direction, writer in self._writers.items():
            out = self._out[direction]
            out.shards = writer.close()
            out.preference_shards = self._preferences[direction].close()
            out.heldout_shards = self._heldout_writers[direction].close()
        return self._out


def iter_pairs(uris: Iterable[str], storage_options: dict[str, Any] | None = None) -> Iterator[Pair]:
    """Stream the pairs of Parquet shards."""
    for uri in uris:
        fs, path = open_fs(uri, storage_options)
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=10_000):
                cols = [batch.column(name).to_pylist() for name in PAIR_SCHEMA.names]
                for src, tgt, sl, tl, source, pid in zip(*cols, strict=True):
                    yield Pair(src, tgt, sl, tl, source, pid)
