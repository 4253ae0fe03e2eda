"""S3Connector against moto's S3 server (real HTTP) behind a proxy that injects 500s and drops."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servers import S3Server

from bhashaflow.config import SourceConfig, SourceRetryConfig
from bhashaflow.core.records import RawRecord
from bhashaflow.core.settings import Settings
from connectors import SourceError, TransientSourceError, open_connector
from connectors.s3 import S3Connector

BUCKET = "corpora"


def _rows(n: int, tag: str = "") -> list[dict[str, str]]:
    return [
        {"src": f"Sentence {tag}{i}.", "tgt": f"वाक्य {tag}{i}।", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
        for i in range(n)
    ]


def _jsonl(rows: list[dict[str, str]]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


def _parquet(rows: list[dict[str, str]], row_group_size: int = 800) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer, row_group_size=row_group_size)
    return buffer.getvalue()


def _connector(uri: str, chunk_bytes: int = 1024 * 1024, **retry: float) -> S3Connector:
    source = SourceConfig(name="bucket", kind="s3", uri=uri)
    retry_config = SourceRetryConfig(**{"base_delay_s": 0.01, "max_delay_s": 0.05, **retry})
    return S3Connector(source, Settings(), retry_config, chunk_bytes=chunk_bytes)


def _rows_of(records: list[RawRecord]) -> list[object]:
    return [r.row for r in records]


@pytest.fixture
def corpus(s3_server: S3Server) -> dict[str, list[dict[str, str]]]:
    """Three gzip JSONL parts under indic/ (put out of order), a TSV, a Parquet file and a marker file."""
    s3_server.create_bucket(BUCKET)
    parts = {f"indic/part-{i}.jsonl.gz": _rows(400, tag=f"p{i}-") for i in (2, 0, 1)}
    for key, rows in parts.items():
        s3_server.put(BUCKET, key, gzip.compress(_jsonl(rows)))
    s3_server.put(BUCKET, "indic/_SUCCESS", b"")
    tsv_rows = _rows(300, tag="t")
    s3_server.put(
        BUCKET,
        "tsv/pairs.tsv",
        ("src\ttgt\tsrc_lang\ttgt_lang\n" + "".join("\t".join(r.values()) + "\n" for r in tsv_rows)).encode(),
    )
    parquet_rows = _rows(8000, tag="q")  # ~110 kB: more than pyarrow reads with the footer
    s3_server.put(BUCKET, "pq/pairs.parquet", _parquet(parquet_rows))
    return {**parts, "tsv/pairs.tsv": tsv_rows, "pq/pairs.parquet": parquet_rows}


def _expected(corpus: dict[str, list[dict[str, str]]], *keys: str) -> list[dict[str, str]]:
    return [row for key in keys for row in corpus[key]]


PARTS = ("indic/part-0.jsonl.gz", "indic/part-1.jsonl.gz", "indic/part-2.jsonl.gz")


@pytest.mark.parametrize("uri", [f"s3://{BUCKET}/indic/", f"s3://{BUCKET}/indic/*.jsonl.gz", f"s3://{BUCKET}/indic"])
def test_prefix_or_glob_reads_files_in_sorted_key_order(s3_server: S3Server, corpus: dict, uri: str) -> None:
    records = list(open_connector(SourceConfig(name="bucket", kind="s3", uri=uri), Settings(), []).iter_records())
    assert _rows_of(records) == _expected(corpus, *PARTS)
    assert records[0].ref == f"{BUCKET}/indic/part-0.jsonl.gz:1"
    assert records[400].position == {"file_index": 1, "key": f"{BUCKET}/indic/part-1.jsonl.gz", "line": 1}
    assert [r.position.get("done") for r in records].count(True) == 3


def test_single_tsv_key(s3_server: S3Server, corpus: dict) -> None:
    records = list(_connector(f"s3://{BUCKET}/tsv/pairs.tsv").iter_records())
    assert _rows_of(records) == corpus["tsv/pairs.tsv"]
    assert records[0].ref == f"{BUCKET}/tsv/pairs.tsv:2"
    assert records[0].position["offset"] > 0 and records[0].position["header"][0] == "src"


def test_parquet_rows(s3_server: S3Server, corpus: dict) -> None:
    records = list(_connector(f"s3://{BUCKET}/pq/").iter_records())
    assert _rows_of(records) == corpus["pq/pairs.parquet"]
    assert records[-1].ref == f"{BUCKET}/pq/pairs.parquet:row 8000"
    assert records[-1].position == {"file_index": 0, "key": f"{BUCKET}/pq/pairs.parquet", "row": 8000, "done": True}


@pytest.mark.parametrize(
    ("uri", "taken"),
    [
        (f"s3://{BUCKET}/indic/", 650),  # inside the second gzip part
        (f"s3://{BUCKET}/indic/", 400),  # the first part's last record: the resume skips that part
        (f"s3://{BUCKET}/tsv/pairs.tsv", 123),  # plain text: seeks to the byte offset
        (f"s3://{BUCKET}/pq/", 5555),  # Parquet: skips whole row groups, then rows
    ],
)
def test_fresh_connector_resumes_from_a_reported_position(
    s3_server: S3Server, corpus: dict, uri: str, taken: int
) -> None:
    everything = list(_connector(uri).iter_records())
    position = json.loads(json.dumps(everything[taken - 1].position))
    s3_server.plan.clear()
    rest = list(_connector(uri).iter_records(start=position))
    assert rest == everything[taken:]
    if taken == 400:
        assert s3_server.plan.count("GET", "part-0") == 0


@pytest.mark.parametrize("uri", [f"s3://{BUCKET}/indic/", f"s3://{BUCKET}/tsv/pairs.tsv", f"s3://{BUCKET}/pq/"])
def test_server_errors_mid_stream_give_the_same_records(s3_server: S3Server, corpus: dict, uri: str) -> None:
    clean = list(_connector(uri).iter_records())
    s3_server.plan.clear()
    s3_server.plan.fail(times=2, method="GET", path="part-1")  # GETs of an object in the middle of the stream
    s3_server.plan.fail(times=2, method="GET", path="pairs.")
    s3_server.plan.fail(times=2)  # whatever comes first, listing included
    flaky = list(_connector(uri).iter_records())
    assert flaky == clean
    assert s3_server.plan.pending <= 2  # only the filter that matches no key of this uri may be left


@pytest.mark.parametrize("key", ["tsv/pairs.tsv", "indic/part-1.jsonl.gz"])
def test_connections_dropped_inside_a_text_file_resume_within_it(s3_server: S3Server, corpus: dict, key: str) -> None:
    uri = f"s3://{BUCKET}/{key}"
    clean = list(_connector(uri).iter_records())
    s3_server.plan.clear()
    size = s3_server.client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    s3_server.plan.drop(after_bytes=size // 2, times=2, method="GET", path=key, linger_s=0.2)
    flaky = list(_connector(uri, chunk_bytes=512).iter_records())
    assert flaky == clean
    gets = [r for r in s3_server.plan.requests if r.method == "GET"]
    assert [r.fault for r in gets] == ["drop", "drop", None]
    if key.endswith(".tsv"):  # plain text resumes at a line boundary just before the cut
        assert gets[1].range is not None and size // 2 - 500 < int(gets[1].range[len("bytes=") : -1]) <= size // 2
    else:  # gzip cannot be entered mid-stream: re-read from the start, skipping what was handed out
        assert gets[1].range is None


def test_errors_between_parquet_row_groups_resume_within_the_file(s3_server: S3Server, corpus: dict) -> None:
    uri = f"s3://{BUCKET}/pq/pairs.parquet"
    clean = list(_connector(uri).iter_records())
    s3_server.plan.clear()
    # A GET per row group: fail the fourth and fifth, well inside the file.
    s3_server.plan.fail(times=2, method="GET", path="pairs.parquet", after=3)
    flaky = list(_connector(uri).iter_records())
    assert flaky == clean
    assert s3_server.plan.pending == 0
    assert s3_server.plan.count("GET") >= 12


def test_dropped_connections_give_the_same_records(s3_server: S3Server, corpus: dict) -> None:
    uri = f"s3://{BUCKET}/indic/"
    clean = list(_connector(uri).iter_records())
    s3_server.plan.clear()
    s3_server.plan.drop(after_bytes=2000, times=3, method="GET", path="part-1")
    assert list(_connector(uri).iter_records()) == clean
    assert s3_server.plan.pending == 0


def test_persistent_errors_give_up_naming_source_and_key(s3_server: S3Server, corpus: dict) -> None:
    s3_server.plan.fail(times=100, method="GET", path="part-1")
    with pytest.raises(TransientSourceError) as err:
        list(_connector(f"s3://{BUCKET}/indic/", attempts=3).iter_records())
    message = str(err.value)
    assert message.startswith(f"source 'bucket': reading s3://{BUCKET}/indic/part-1.jsonl.gz failed 3 times")
    assert "\n" not in message


def test_no_matching_files_or_no_bucket_is_a_source_error(s3_server: S3Server, corpus: dict) -> None:
    with pytest.raises(SourceError, match=f"no files match s3://{BUCKET}/nothing/"):
        list(_connector(f"s3://{BUCKET}/nothing/").iter_records())
    with pytest.raises(SourceError, match=r"no files match s3://corpora/indic/\*.parquet"):
        list(_connector(f"s3://{BUCKET}/indic/*.parquet").iter_records())
    with pytest.raises(SourceError, match="no files match s3://missing-bucket/x/") as err:
        list(_connector("s3://missing-bucket/x/").iter_records())
    assert not isinstance(err.value, TransientSourceError)


def test_malformed_lines_are_records_with_refs(s3_server: S3Server) -> None:
    s3_server.create_bucket(BUCKET)
    s3_server.put(BUCKET, "mixed/a.jsonl.gz", gzip.compress(b'{"src": "a"}\n"text"\n{"src": "\xff"}\n'))
    records = list(_connector(f"s3://{BUCKET}/mixed/").iter_records())
    assert [(r.ref, r.row, r.error) for r in records] == [
        (f"{BUCKET}/mixed/a.jsonl.gz:1", {"src": "a"}, None),
        (f"{BUCKET}/mixed/a.jsonl.gz:2", None, "JSON line is a string, not an object"),
        (f"{BUCKET}/mixed/a.jsonl.gz:3", None, "invalid UTF-8 at byte 9"),
    ]


def test_unparsable_files_are_source_errors_naming_the_key(s3_server: S3Server) -> None:
    s3_server.create_bucket(BUCKET)
    s3_server.put(BUCKET, "bad/a.jsonl.gz", gzip.compress(b'{"a": 1}\n')[:12] + b"\x00not gzip at all" * 8)
    with pytest.raises(SourceError, match=f"s3://{BUCKET}/bad/a.jsonl.gz: corrupt gzip") as err:
        list(_connector(f"s3://{BUCKET}/bad/").iter_records())
    assert not isinstance(err.value, TransientSourceError)
    s3_server.put(BUCKET, "odd/a.bin", b"x")
    with pytest.raises(SourceError, match="cannot infer the format"):
        list(_connector(f"s3://{BUCKET}/odd/").iter_records())


def test_endpoint_url_of_the_source_overrides_the_environment(
    s3_server: S3Server, corpus: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    source = SourceConfig(
        name="bucket", kind="s3", uri=f"s3://{BUCKET}/tsv/pairs.tsv", endpoint_url=s3_server.endpoint_url
    )
    assert len(list(S3Connector(source, Settings()).iter_records())) == 300
