"""The data manifest model (bhashaflow/data/manifest.py): the file it reads is the file it writes, byte for byte."""

from __future__ import annotations

import copy
import json

import pytest
from pydantic import ValidationError

from bhashaflow.core.fsio import dumps_json, write_json_atomic
from bhashaflow.core.hashing import sha256_json
from bhashaflow.data.ingest import manifest_sha256, preference_uris, shard_uris, summary
from bhashaflow.data.manifest import DataManifest, read_data_manifest

SHARD = {"path": "shards/eng_Latn-hin_Deva/shard-00000.parquet", "rows": 3, "sha256": "ab" * 32}
SOURCE = {"kind": "http", "uri": "https://example.org/pairs.jsonl?token=***", "read": 5, "accepted": 3, "duplicates": 1,
          "rejected": 1, "skipped": 0, "rejected_by_reason": {"malformed": 1}, "skipped_by_direction": {},
          "skipped_by_reason": {}, "position": {"offset": 120}}
PLAIN = {
    "run_id": "r1", "config_hash": "cd" * 32, "created_at": "2026-12-01T10:00:00+00:00",
    "directions": {"eng_Latn-hin_Deva": {"accepted": 3, "duplicates": 1, "rejected": 1, "shards": [SHARD]}},
    "sources": {"web": SOURCE},
    "totals": {"read": 5, "accepted": 3, "duplicates": 1, "rejected": 1, "skipped": 0},
    "rejected_by_reason": {"malformed": 1}, "quarantine": {"path": "quarantine.jsonl", "rows": 1},
}


def with_feedback() -> dict:
    """A run with an rl_logs source: preference and held-out shards, totals.heldout."""
    doc = copy.deepcopy(PLAIN)
    doc["directions"]["eng_Latn-hin_Deva"]["preferences"] = {"rows": 2, "shards": [SHARD | {"path": "preferences/p.parquet"}]}
    doc["directions"]["eng_Latn-hin_Deva"]["heldout"] = {"rows": 1, "shards": [SHARD | {"path": "heldout/h.parquet"}]}
    doc["totals"]["heldout"] = 1
    return doc


def legacy() -> dict:
    """A manifest from before skipped_by_reason, with a key this model does not know."""
    doc = copy.deepcopy(PLAIN)
    del doc["sources"]["web"]["skipped_by_reason"]
    doc["sources"]["web"]["note"] = "kept"
    return doc


@pytest.mark.parametrize("document", [PLAIN, with_feedback(), legacy()], ids=["plain", "feedback", "legacy"])
def test_the_model_writes_back_the_very_file_it_read_and_hashes_it_as_before(document, tmp_path):
    manifest = DataManifest.of(document)
    assert manifest.document() == document
    assert dumps_json(manifest.document()) == dumps_json(document)
    # The content hash of the dict-era code: every key but created_at, as JSON with sorted keys.
    assert manifest.sha256() == sha256_json({k: v for k, v in document.items() if k != "created_at"})
    assert manifest_sha256(document) == manifest.sha256()
    write_json_atomic(str(tmp_path / "manifest.json"), document)
    assert read_data_manifest(str(tmp_path)) == manifest
    assert read_data_manifest(str(tmp_path / "none")) is None


def test_readers_take_the_model_or_the_files_json_alike():
    doc = with_feedback()
    model = DataManifest.of(doc)
    d = "eng_Latn-hin_Deva"
    assert shard_uris(doc, "s3://b/run", d) == shard_uris(model, "s3://b/run", d) == [f"s3://b/run/{SHARD['path']}"]
    assert preference_uris(model, "/r", d, "heldout") == ["/r/heldout/h.parquet"]
    assert preference_uris(PLAIN, "/r", d) == []  # no rl_logs source: no preference shards
    assert json.dumps(summary(doc, "m")) == json.dumps(summary(model, "m"))
    assert summary(legacy(), "m")["skipped_by_reason"] == {}
    assert summary(doc, "m")["pairs"][d] == {"accepted": 3, "duplicates": 1, "rejected": 1, "preferences": 2, "heldout": 1}


def test_a_manifest_missing_a_count_is_refused_naming_it():
    doc = copy.deepcopy(PLAIN)
    del doc["totals"]["read"]
    with pytest.raises(ValidationError, match="totals.read"):
        DataManifest.of(doc)
