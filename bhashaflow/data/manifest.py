"""The data manifest: what a finished ingestion holds, as `<run_uri>/manifest.json` (DATA_MANIFEST) records it.

One model of the file: ingestion builds it, every reader reads it (training, evaluation, the flows' summaries).
The file is its JSON (`document()`): the same keys as always, and keys a field's default stands for (an older file
without `skipped_by_reason`, a run without an rl_logs source and so without `preferences` and `heldout`) are never
written. Keys this model does not know are kept, so a file read and hashed again hashes the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bhashaflow.core.fsio import join, open_fs, read_json
from bhashaflow.core.hashing import sha256_json
from bhashaflow.core.names import DATA_MANIFEST


class _Entry(BaseModel):
    model_config = ConfigDict(extra="allow")


class ShardEntry(_Entry):
    """One Parquet shard: its path relative to the run folder, its rows and the sha256 of its bytes."""

    path: str
    rows: int
    sha256: str


class ShardSet(_Entry):
    """A direction's preference triplets or held-out corrections (runs with an rl_logs source)."""

    rows: int
    shards: list[ShardEntry]


class DirectionEntry(_Entry):
    """One direction's pairs: kept, dropped as duplicates, rejected, and the shards training reads."""

    accepted: int
    duplicates: int
    rejected: int
    shards: list[ShardEntry]
    preferences: ShardSet | None = None
    heldout: ShardSet | None = None


class SourceEntry(_Entry):
    """One source: where it was read (credentials masked), its counts and its connector's last position."""

    kind: str
    uri: str
    read: int
    accepted: int
    duplicates: int
    rejected: int
    skipped: int
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)
    skipped_by_direction: dict[str, int] = Field(default_factory=dict)
    skipped_by_reason: dict[str, int] = Field(default_factory=dict)
    # The connector's own resume point (a JSON object each connector defines; core.records.Position).
    position: dict[str, Any] | None = None


class Totals(_Entry):
    """Every source's rows together; `heldout` only in runs with an rl_logs source."""

    read: int
    accepted: int
    duplicates: int
    rejected: int
    skipped: int
    heldout: int | None = None


class QuarantineEntry(_Entry):
    """The rejected rows' file (relative to the run folder) and how many it holds."""

    path: str
    rows: int


class DataManifest(_Entry):
    """A finished ingestion (`manifest.json` of a run folder, written last: no manifest, no finished ingestion)."""

    run_id: str
    config_hash: str  # the ingest config's hash: a later run of the same config reuses this ingestion
    created_at: str
    directions: dict[str, DirectionEntry]
    sources: dict[str, SourceEntry]
    totals: Totals
    rejected_by_reason: dict[str, int]
    quarantine: QuarantineEntry

    @classmethod
    def of(cls, manifest: DataManifest | Mapping[str, Any]) -> DataManifest:
        """`manifest` itself, or the model of its JSON object (as the file holds it)."""
        return manifest if isinstance(manifest, DataManifest) else cls.model_validate(manifest)

    def document(self) -> dict[str, Any]:
        """The JSON object the file holds: the keys that were given, none that a default stands for."""
        return self.model_dump(mode="json", exclude_unset=True)

    def sha256(self) -> str:
        """A stable hash of the content (counts, shards, sources), ignoring when it was written."""
        body = {k: v for k, v in self.document().items() if k != "created_at"}
        return sha256_json(body)

    def shard_uris(self, run_uri: str, direction: str) -> list[str]:
        """Absolute URIs of a direction's shards."""
        return [join(run_uri, sh.path) for sh in self.directions[direction].shards]

    def preference_uris(self, run_uri: str, direction: str, kind: str = "preferences") -> list[str]:
        """Absolute URIs of a direction's preference shards (`kind` preferences) or held-out shards (`heldout`)."""
        entry = self.directions[direction]
        found = {"preferences": entry.preferences, "heldout": entry.heldout}[kind]
        return [] if found is None else [join(run_uri, sh.path) for sh in found.shards]


def load_manifest(run_uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The JSON object of a run folder's data manifest, or None when ingestion has not finished."""
    uri = join(run_uri, DATA_MANIFEST)
    fs, path = open_fs(uri, storage_options)
    if not fs.exists(path):
        return None
    data: dict[str, Any] = read_json(uri, storage_options)
    return data


def read_data_manifest(run_uri: str, storage_options: dict[str, Any] | None = None) -> DataManifest | None:
    """A run folder's data manifest, or None when ingestion has not finished."""
    document = load_manifest(run_uri, storage_options)
    return None if document is None else DataManifest.of(document)
