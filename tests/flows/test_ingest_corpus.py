"""The ingest-corpus flow end to end against real local services, clean and faulty."""

from __future__ import annotations

import gzip
import json

import pytest

from bhashaflow.config import PipelineConfig
from bhashaflow.data.ingest import IngestError, load_manifest
from flows.ingest_corpus import ingest_corpus

HI = ["यह पहला वाक्य है", "दिल्ली भारत की राजधानी है", "मुझे चाय पसंद है", "आज मौसम अच्छा है"]


def rows(n: int, start: int = 0) -> list[dict]:
    return [
        {
            "src": f"This is sentence {i}.",
            "tgt": f"{HI[i % len(HI)]} {i}",
            "src_lang": "eng_Latn",
            "tgt_lang": "hin_Deva",
        }
        for i in range(start, start + n)
    ]


DIRTY = [
    '{"src": "broken json',  # malformed
    json.dumps({"src": "No target", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}),  # missing_field
    json.dumps({"src": "Number", "tgt": 7, "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}),  # not_a_string
    json.dumps({"src": "Empty", "tgt": "  ", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}),  # empty
    json.dumps({"src": "Long", "tgt": "क" * 300, "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}),  # too_long
    json.dumps({"src": "Code", "tgt": "नमस्ते", "src_lang": "eng_Latn", "tgt_lang": "hin_Xxxx"}),  # unknown_language
    json.dumps(
        {"src": "Latin", "tgt": "namaste duniya", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
    ),  # wrong_script
    json.dumps({"src": "Tamil", "tgt": "வணக்கம்", "src_lang": "eng_Latn", "tgt_lang": "tam_Taml"}),  # skipped
]


def jsonl(items: list) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in items).encode()


def config_for(tmp_path, http_url: str, s3_uri: str, **ingest) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "run_name": "t",
            "workdir": str(tmp_path / "runs"),
            "directions": ["eng_Latn-hin_Deva"],
            "sources": [
                {"name": "web", "kind": "http", "uri": http_url, "format": "jsonl"},
                {"name": "lake", "kind": "s3", "uri": s3_uri},
            ],
            "ingest": {"max_chars": 200, "commit_rows": 50, **ingest},
        }
    )


@pytest.fixture
def served(http_server, s3_server):
    web = rows(300) + DIRTY + rows(20)  # 20 exact duplicates of the first rows
    (http_server.root / "pairs.jsonl").write_bytes(jsonl(web))
    s3_server.create_bucket("corpora")
    s3_server.put("corpora", "indic/a.jsonl.gz", gzip.compress(jsonl(rows(150, 280))))  # 20 overlap with web
    s3_server.put("corpora", "indic/b.jsonl.gz", gzip.compress(jsonl(rows(100, 1000))))
    s3_server.put("corpora", "indic/notes.txt", b"not matched by the glob")
    return http_server, s3_server


COMPARED = ("directions", "totals", "rejected_by_reason", "quarantine")


def test_clean_run_counts_everything(prefect_api, served, tmp_path):
    http, s3 = served
    config = config_for(tmp_path, http.url("pairs.jsonl"), "s3://corpora/indic/*.jsonl.gz")
    summary = ingest_corpus(config)
    assert summary["pairs"] == {"eng_Latn-hin_Deva": {"accepted": 530, "duplicates": 40, "rejected": 5}}
    assert summary["sources"]["web"] == {"read": 328, "accepted": 300, "duplicates": 20, "rejected": 7, "skipped": 1}
    assert summary["sources"]["lake"] == {"read": 250, "accepted": 230, "duplicates": 20, "rejected": 0, "skipped": 0}
    assert summary["rejected_by_reason"] == {
        "empty": 1,
        "malformed": 1,
        "missing_field": 1,
        "not_a_string": 1,
        "too_long": 1,
        "unknown_language": 1,
        "wrong_script": 1,
    }
    run_uri = config.run_uri()
    quarantine = [json.loads(line) for line in open(f"{run_uri}/quarantine.jsonl", encoding="utf-8")]
    assert [q["ref"] for q in quarantine] == [f"pairs.jsonl:{i}" for i in range(301, 308)]


def test_http_drops_and_s3_errors_give_the_clean_manifest(prefect_api, served, tmp_path):
    http, s3 = served
    clean_config = config_for(tmp_path / "clean", http.url("pairs.jsonl"), "s3://corpora/indic/*.jsonl.gz")
    ingest_corpus(clean_config)
    clean = load_manifest(clean_config.run_uri())

    http.plan.drop(after_bytes=4000, times=2)
    s3.plan.fail(times=2, status=500, method="GET")
    faulty_config = config_for(tmp_path / "faulty", http.url("pairs.jsonl"), "s3://corpora/indic/*.jsonl.gz")
    ingest_corpus(faulty_config)
    faulty = load_manifest(faulty_config.run_uri())
    assert http.plan.pending == 0 and s3.plan.pending == 0  # every fault was hit
    for key in COMPARED:
        assert faulty[key] == clean[key]
    for name in ("web", "lake"):
        for count in ("read", "accepted", "duplicates", "rejected", "skipped"):
            assert faulty["sources"][name][count] == clean["sources"][name][count]


def test_reject_threshold_fails_the_flow_without_manifest(prefect_api, served, tmp_path):
    http, _ = served
    config = config_for(tmp_path, http.url("pairs.jsonl"), "s3://corpora/indic/b.jsonl.gz", max_reject_fraction=0.01)
    with pytest.raises(IngestError, match=r"7 of 427 rows rejected"):
        ingest_corpus(config)
    assert load_manifest(config.run_uri()) is None
    assert len(open(f"{config.run_uri()}/quarantine.jsonl").readlines()) == 7


def test_hf_and_qdrant_sources_in_one_run(prefect_api, tmp_path):
    from qdrant_client import QdrantClient, models

    local = tmp_path / "hub" / "train.jsonl"
    local.parent.mkdir()
    local.write_bytes(jsonl([{"en": r["src"], "hi": r["tgt"]} for r in rows(30)]))
    store = tmp_path / "qdrant"
    client = QdrantClient(path=str(store))
    client.create_collection("pairs", vectors_config=models.VectorParams(size=2, distance=models.Distance.COSINE))
    client.upsert(
        "pairs", [models.PointStruct(id=i + 1, vector=[1.0, 0.0], payload=r) for i, r in enumerate(rows(40, 20))]
    )
    client.close()
    config = PipelineConfig.model_validate(
        {
            "run_name": "t",
            "workdir": str(tmp_path / "runs"),
            "directions": ["eng_Latn-hin_Deva"],
            "sources": [
                {
                    "name": "hub",
                    "kind": "hf",
                    "uri": str(local.parent),
                    "fields": {"src": "en", "tgt": "hi"},
                    "langs": {"src": "eng_Latn", "tgt": "hin_Deva"},
                },
                {"name": "vectors", "kind": "qdrant", "uri": str(store), "collection": "pairs"},
            ],
        }
    )
    summary = ingest_corpus(config)
    assert summary["sources"]["hub"] == {"read": 30, "accepted": 30, "duplicates": 0, "rejected": 0, "skipped": 0}
    assert summary["sources"]["vectors"] == {"read": 40, "accepted": 30, "duplicates": 10, "rejected": 0, "skipped": 0}
    # a second run of the same config finds the finished manifest and reads nothing again
    assert ingest_corpus(config)["manifest_sha256"] == summary["manifest_sha256"]
