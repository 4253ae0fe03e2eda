"""Hub-style nested columns (`translation: {"en": ..., "hi": ...}`, as in opus-100, opus_books and the WMT sets)
read through every source kind whose rows can nest: hf (local JSONL and Parquet), http JSONL, s3 JSONL and
Parquet, and Qdrant payloads; then through staging with the exact accounting."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from qdrant_client import QdrantClient
from qdrant_client.models import Distance, PointStruct, VectorParams
from servers import FaultyHTTPServer, S3Server

from bhashaflow.config import PipelineConfig, SourceConfig
from bhashaflow.core.names import QUARANTINE
from bhashaflow.core.records import Pair, RawRecord, Rejection
from bhashaflow.core.settings import Settings
from bhashaflow.data.ingest import stage_source, write_shards
from bhashaflow.data.validation import Validator
from connectors import open_connector
from connectors.qdrant import QdrantConnector

DIRECTION = "eng_Latn-hin_Deva"
NESTED = {"fields": {"src": "translation.en", "tgt": "translation.hi"}, "langs": {"src": "eng_Latn", "tgt": "hin_Deva"}}
HI = ["सुप्रभात।", "धन्यवाद।", "स्टेशन कहाँ है?", "मैं ठीक हूँ।"]


def hub_rows(n: int) -> list[dict[str, Any]]:
    """Rows in opus-100's layout: an id and a `translation` column holding both sides."""
    return [{"id": str(i), "translation": {"en": f"Sentence {i}.", "hi": f"{HI[i % len(HI)]} {i}"}} for i in range(n)]


def expected(n: int) -> list[tuple[str, str]]:
    return [(f"Sentence {i}.", f"{HI[i % len(HI)]} {i}") for i in range(n)]


def validated(source: SourceConfig, records: list[RawRecord]) -> list[tuple[str, str] | str]:
    """Each record through the validator: (src, tgt) when accepted, else the rejection's detail."""
    validator = Validator(source, [DIRECTION], max_chars=200, min_script_fraction=0.5)
    out: list[tuple[str, str] | str] = []
    for record in records:
        verdict = validator.check(record)
        out.append(
            (verdict.src, verdict.tgt)
            if isinstance(verdict, Pair)
            else verdict.detail
            if isinstance(verdict, Rejection)
            else "skipped"
        )
    return out


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def parquet(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer, row_group_size=7)
    return buffer.getvalue()


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_hf_local_files_in_the_hub_layout(tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / f"train.{suffix}"
    path.write_bytes(jsonl(hub_rows(20)) if suffix == "jsonl" else parquet(hub_rows(20)))
    source = SourceConfig(name="opus100", kind="hf", uri=str(path), **NESTED)
    records = list(open_connector(source, Settings(), [DIRECTION]).iter_records())
    assert validated(source, records) == expected(20)


def test_http_jsonl_in_the_hub_layout(http_server: FaultyHTTPServer) -> None:
    rows = hub_rows(30)
    rows[4]["translation"] = {"en": "Only English."}
    rows[9]["translation"] = "not an object"
    (http_server.root / "train.jsonl").write_bytes(jsonl(rows))
    source = SourceConfig(name="web", kind="http", uri=http_server.url("train.jsonl"), **NESTED)
    got = validated(source, list(open_connector(source, Settings(), [DIRECTION]).iter_records()))
    assert got[4] == "field 'translation.hi' (tgt) is missing: no 'hi' under 'translation'"
    assert got[9] == "field 'translation.en' (src) is missing: 'translation' is str, not an object"
    assert [g for i, g in enumerate(got) if i not in (4, 9)] == [
        e for i, e in enumerate(expected(30)) if i not in (4, 9)
    ]


@pytest.mark.parametrize("key", ["hub/train.parquet", "hub/train.jsonl"])
def test_s3_files_in_the_hub_layout(s3_server: S3Server, key: str) -> None:
    s3_server.create_bucket("corpora")
    rows = hub_rows(40)
    s3_server.put("corpora", key, parquet(rows) if key.endswith(".parquet") else jsonl(rows))
    source = SourceConfig(name="lake", kind="s3", uri=f"s3://corpora/{key}", **NESTED)
    assert validated(source, list(open_connector(source, Settings(), [DIRECTION]).iter_records())) == expected(40)


def test_qdrant_payloads_nest_too() -> None:
    client = QdrantClient(location=":memory:")
    client.create_collection("pairs", vectors_config=VectorParams(size=2, distance=Distance.COSINE))
    rows = hub_rows(12)
    points = [
        PointStruct(
            id=i + 1,
            vector=[1.0, 0.5],
            payload={"pair": row["translation"], "langs": {"src": "eng_Latn", "tgt": "hin_Deva"}},
        )
        for i, row in enumerate(rows)
    ]
    client.upsert("pairs", points)
    source = SourceConfig(
        name="vectors",
        kind="qdrant",
        uri=":memory:",
        collection="pairs",
        fields={"src": "pair.en", "tgt": "pair.hi", "src_lang": "langs.src", "tgt_lang": "langs.tgt"},
    )
    records = list(QdrantConnector(source, Settings(), client=client).iter_records())
    assert validated(source, records) == expected(12)
    client.close()


def test_ingest_accounting_of_nested_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepted, duplicates, rejected by reason (the path in the detail) and skipped, from a hub-layout file."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows: list[dict[str, Any]] = [{**r, "pair": {"src": "eng_Latn", "tgt": "hin_Deva"}} for r in hub_rows(50)]
    rows += [dict(rows[3]), dict(rows[4])]  # duplicates
    rows.append({"id": "x", "translation": {"en": "No Hindi."}, "pair": {"src": "eng_Latn", "tgt": "hin_Deva"}})
    rows.append(
        {"id": "y", "translation": {"en": "Tamil.", "hi": "வணக்கம்"}, "pair": {"src": "eng_Latn", "tgt": "tam_Taml"}}
    )
    (tmp_path / "train.jsonl").write_bytes(jsonl(rows))
    fields = {"src": "translation.en", "tgt": "translation.hi", "src_lang": "pair.src", "tgt_lang": "pair.tgt"}
    config = PipelineConfig.model_validate(
        {
            "run_name": "nested",
            "workdir": str(tmp_path / "runs"),
            "directions": [DIRECTION],
            "sources": [{"name": "hub", "kind": "hf", "uri": str(tmp_path / "train.jsonl"), "fields": fields}],
            "ingest": {"commit_rows": 16, "shard_rows": 100},
        }
    )
    run_uri = config.run_uri()
    staged = [
        stage_source(config, s, open_connector(s, Settings(), config.directions), run_uri) for s in config.sources
    ]
    manifest = write_shards(config, staged, run_uri)
    source = manifest["sources"]["hub"]
    assert {k: source[k] for k in ("read", "accepted", "duplicates", "rejected", "skipped")} == {
        "read": 54,
        "accepted": 50,
        "duplicates": 2,
        "rejected": 1,
        "skipped": 1,
    }
    assert manifest["rejected_by_reason"] == {"missing_field": 1}
    assert source["skipped_by_direction"] == {"eng_Latn-tam_Taml": 1}
    (line,) = (Path(run_uri) / QUARANTINE).read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert (record["ref"], record["reason"], record["detail"]) == (
        f"{tmp_path / 'train.jsonl'}:53",
        "missing_field",
        "field 'translation.hi' (tgt) is missing: no 'hi' under 'translation'",
    )
