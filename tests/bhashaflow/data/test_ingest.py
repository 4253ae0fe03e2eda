import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bhashaflow.config import PipelineConfig
from bhashaflow.core.hashing import sha256_file
from bhashaflow.core.records import PAIR_SCHEMA, RawRecord
from bhashaflow.data.ingest import IngestError, load_manifest, shard_uris, stage_source, write_shards
from bhashaflow.data.shards import SeenKeys, ShardWriter, iter_pairs

HI = "यह एक वाक्य है"


class ListReader:
    """Rows from a list; can fail once after a number of records, like a dropped stream."""

    def __init__(self, name, rows, fail_after=None):
        self.name = name
        self.rows = rows
        self.fail_after = fail_after
        self.taken = 0

    def iter_records(self, start=None):
        begin = start["i"] if start else 0
        for i in range(begin, len(self.rows)):
            if self.fail_after is not None and self.taken == self.fail_after:
                self.fail_after = None
                raise ConnectionError("dropped")
            self.taken += 1
            row = self.rows[i]
            yield RawRecord(position={"i": i + 1}, ref=f"rows:{i + 1}", row=row, error=None if row else "bad json")


def pair(i, lang="hin_Deva", tgt=None):
    return {"src": f"Sentence number {i}", "tgt": tgt or f"{HI} {i}", "src_lang": "eng_Latn", "tgt_lang": lang}


def make_config(tmp_path, **ingest):
    return PipelineConfig.model_validate(
        {
            "run_name": "t",
            "workdir": str(tmp_path / "runs"),
            "directions": ["eng_Latn-hin_Deva", "eng_Latn-tam_Taml"],
            "sources": [{"name": "a", "kind": "http", "uri": "http://x/a.jsonl"}, {"name": "b", "kind": "http", "uri": "http://x/b.jsonl"}],
            "ingest": {"commit_rows": 7, "shard_rows": 10, **ingest},
        }
    )


def corpus():
    rows_a = [pair(i) for i in range(30)]
    rows_a += [pair(3), pair(4)]  # 2 duplicates within a
    rows_a += [None, {"src": "x"}, pair(99, tgt="latin only")]  # malformed, missing_field, wrong_script
    rows_a += [pair(5, lang="tam_Taml", tgt="வணக்கம் 5")]
    rows_a += [{**pair(7), "tgt_lang": "fra_Latn", "tgt": "Bonjour"}]  # not configured: skipped
    rows_b = [pair(0), pair(100)]  # one duplicate of a
    return rows_a, rows_b


def run(config, readers):
    run_uri = config.run_uri()
    staged = [stage_source(config, s, r, run_uri) for s, r in zip(config.sources, readers, strict=True)]
    return write_shards(config, staged, run_uri), run_uri


def test_counts_shards_and_quarantine(tmp_path):
    config = make_config(tmp_path)
    rows_a, rows_b = corpus()
    manifest, run_uri = run(config, [ListReader("a", rows_a), ListReader("b", rows_b)])
    a, b = manifest["sources"]["a"], manifest["sources"]["b"]
    assert (a["read"], a["accepted"], a["duplicates"], a["rejected"], a["skipped"]) == (37, 31, 2, 3, 1)
    assert (b["read"], b["accepted"], b["duplicates"], b["rejected"], b["skipped"]) == (2, 1, 1, 0, 0)
    assert manifest["directions"]["eng_Latn-hin_Deva"] | {"shards": None} == {
        "accepted": 31, "duplicates": 3, "rejected": 1, "shards": None
    }
    assert manifest["directions"]["eng_Latn-tam_Taml"]["accepted"] == 1
    assert manifest["rejected_by_reason"] == {"malformed": 1, "missing_field": 1, "wrong_script": 1}
    shards = manifest["directions"]["eng_Latn-hin_Deva"]["shards"]
    assert [s["rows"] for s in shards] == [10, 10, 10, 1]
    pairs = list(iter_pairs(shard_uris(manifest, run_uri, "eng_Latn-hin_Deva")))
    assert len(pairs) == 31 and len({(p.src, p.tgt) for p in pairs}) == 31
    assert pairs[0].id == "a:rows:1"
    quarantine = [json.loads(line) for line in open(f"{run_uri}/quarantine.jsonl", encoding="utf-8")]
    assert [(q["source"], q["ref"], q["reason"]) for q in quarantine] == [
        ("a", "rows:33", "malformed"), ("a", "rows:34", "missing_field"), ("a", "rows:35", "wrong_script")
    ]
    assert load_manifest(run_uri) == manifest
    assert pq.read_table(f"{run_uri}/{shards[0]['path']}").column_names == ["src", "tgt", "src_lang", "tgt_lang", "source", "id"]


def test_failed_stage_resumes_and_matches_clean_run(tmp_path):
    rows_a, rows_b = corpus()
    clean, _ = run(make_config(tmp_path / "clean"), [ListReader("a", rows_a), ListReader("b", rows_b)])

    config = make_config(tmp_path / "faulty")
    reader = ListReader("a", rows_a, fail_after=17)
    with pytest.raises(ConnectionError):
        stage_source(config, config.sources[0], reader, config.run_uri())
    # the retry reads on from the last commit (row 14), not from the start
    reader.taken = 0
    faulty, _ = run(config, [reader, ListReader("b", rows_b)])
    assert reader.taken == 37 - 14
    for key in ("directions", "sources", "totals", "rejected_by_reason", "quarantine"):
        assert faulty[key] == clean[key]


def test_reject_threshold_fails_after_writing_quarantine(tmp_path):
    config = make_config(tmp_path, max_reject_fraction=0.1)
    rows = [pair(i) for i in range(8)] + [None, None]
    with pytest.raises(IngestError, match=r"2 of 10 rows rejected \(20.0% > max_reject_fraction 10.0%\): malformed 2"):
        run(config, [ListReader("a", rows), ListReader("b", [])])
    run_uri = config.run_uri()
    assert load_manifest(run_uri) is None
    assert len(open(f"{run_uri}/quarantine.jsonl").readlines()) == 2


def test_seen_keys_exact_across_merges():
    seen = SeenKeys(buffer=3)
    assert [seen.add(k) for k in [5, 1, 9, 5, 2, 7, 1, 2**64 - 1, 9, 2**64 - 1]] == [
        True, True, True, False, True, True, False, True, False, False
    ]


def test_seen_keys_batches_match_a_set():
    rng = np.random.default_rng(7)
    seen, model = SeenKeys(buffer=50, max_run=300), set()
    for size in [1, 30, 80, 200, 5, 400, 120, 60, 1000]:
        keys = rng.integers(0, 2000, size).astype(np.uint64)  # repeats within and across batches
        expected = []
        for key in keys.tolist():
            expected.append(key not in model)
            model.add(key)
        assert seen.add_many(keys).tolist() == expected
    assert seen.add(2**64 - 1) and not seen.add(2**64 - 1)
    assert not seen.add(int(next(iter(model))))


def reference_shards(rows, shard_rows, group_rows, base):
    """Shards as the row-by-row writer made them: row groups of up to `group_rows` built from Python lists,
    cut where a shard of `shard_rows` ends."""
    paths, i = [], 0
    while i < len(rows):
        shard = rows[i : i + shard_rows]
        paths.append(base / f"shard-{len(paths):05d}.parquet")
        with pq.ParquetWriter(paths[-1], PAIR_SCHEMA) as writer:
            for g in range(0, len(shard), group_rows):
                group = shard[g : g + group_rows]
                writer.write_table(pa.table({name: [r[k] for r in group] for k, name in enumerate(PAIR_SCHEMA.names)},
                                            schema=PAIR_SCHEMA))
        i += shard_rows
    return [sha256_file(p) for p in paths]


@pytest.mark.parametrize(
    ("shard_rows", "group_rows", "pieces", "repeat"),
    [
        (25, 7, [3, 40, 1, 19, 0, 50], 1),
        (10, 10, [113], 1),
        (1000, 9, [1] * 30, 1),
        (5000, 2500, [1700, 2900, 2000], 30),  # megabyte row groups: pages split where the chunks would
    ],
)
def test_shard_writer_tables_write_the_same_files_as_rows(tmp_path, shard_rows, group_rows, pieces, repeat):
    rows = [(f"Sentence {i}", f"{HI * repeat} {i}", "eng_Latn", "hin_Deva", "a", f"a:rows:{i}") for i in range(sum(pieces))]
    writer = ShardWriter(str(tmp_path / "new"), shard_rows, None)
    writer.row_group_rows = group_rows
    start = 0
    for n in pieces:
        chunk = rows[start : start + n]
        start += n
        writer.write_table(pa.table({name: [r[k] for r in chunk] for k, name in enumerate(PAIR_SCHEMA.names)},
                                    schema=PAIR_SCHEMA))
    shards = writer.close()
    (tmp_path / "old").mkdir()
    assert [s["sha256"] for s in shards] == reference_shards(rows, shard_rows, group_rows, tmp_path / "old")
    assert [s["rows"] for s in shards] == [min(shard_rows, len(rows) - i) for i in range(0, len(rows), shard_rows)]
    assert [pq.ParquetFile(s["uri"]).metadata.num_row_groups for s in shards] == [
        -(-s["rows"] // group_rows) for s in shards
    ]


def test_lone_surrogate_lands_in_the_quarantine(tmp_path):
    config = make_config(tmp_path, max_reject_fraction=0.5)
    manifest, run_uri = run(config, [ListReader("a", [pair(1), {**pair(2), "src": "bad \ud800 text"}]), ListReader("b", [])])
    assert manifest["rejected_by_reason"] == {"invalid_utf8": 1}
    (line,) = open(f"{run_uri}/quarantine.jsonl", encoding="utf-8").read().splitlines()
    record = json.loads(line)
    assert (record["ref"], record["detail"], record["row"]["src"]) == (
        "rows:2", "field 'src' (src) holds a lone surrogate", "bad \ud800 text"
    )


def test_a_failed_commit_stops_the_stage(tmp_path):
    config = make_config(tmp_path)
    staging = Path(config.run_uri(), "staging")
    staging.mkdir(parents=True)
    (staging / "a").write_text("a file where the staging folder should go")
    reader = ListReader("a", [pair(i) for i in range(30)])
    with pytest.raises(OSError):
        stage_source(config, config.sources[0], reader, config.run_uri())
    assert reader.taken <= 14  # the error surfaced at the next hand-over, not after the whole source


def test_nested_columns_are_counted_like_flat_ones(tmp_path):
    config = PipelineConfig.model_validate({
        "run_name": "t", "workdir": str(tmp_path / "runs"), "directions": ["eng_Latn-hin_Deva"],
        "sources": [{"name": "hub", "kind": "hf", "uri": "org/opus", "fields": {
            "src": "translation.en", "tgt": "translation.hi", "src_lang": "meta.src", "tgt_lang": "meta.tgt"}}],
        "ingest": {"commit_rows": 4, "shard_rows": 10, "max_reject_fraction": 0.5},
    })
    meta = {"src": "eng_Latn", "tgt": "hin_Deva"}
    rows = [{"translation": {"en": f"Sentence {i}", "hi": f"{HI} {i}"}, "meta": meta} for i in range(12)]
    rows += [rows[2], {"translation": {"en": "No target"}, "meta": meta}, {"translation": None, "meta": meta},
             {"translation": {"en": "Tamil", "hi": "வணக்கம்"}, "meta": {"src": "eng_Latn", "tgt": "tam_Taml"}}]
    run_uri = config.run_uri()
    manifest = write_shards(config, [stage_source(config, config.sources[0], ListReader("hub", rows), run_uri)], run_uri)
    assert manifest["totals"] == {"read": 16, "accepted": 12, "duplicates": 1, "rejected": 2, "skipped": 1}
    quarantine = [json.loads(line) for line in open(f"{run_uri}/quarantine.jsonl", encoding="utf-8")]
    assert [(q["ref"], q["detail"]) for q in quarantine] == [
        ("rows:14", "field 'translation.hi' (tgt) is missing: no 'hi' under 'translation'"),
        ("rows:15", "field 'translation.en' (src) is missing: 'translation' is null"),
    ]
