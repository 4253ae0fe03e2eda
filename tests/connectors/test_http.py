"""HttpConnector against a real local HTTP server that drops connections, fails and stalls on demand."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from servers import FaultyHTTPServer

from bhashaflow.config import SourceConfig, SourceRetryConfig
from bhashaflow.core.records import RawRecord
from bhashaflow.core.settings import Settings
from connectors import SourceError, TransientSourceError, open_connector
from connectors.http import HttpConnector

N_ROWS = 3000


def _rows(n: int) -> list[dict[str, str]]:
    return [
        {"src": f"Sentence number {i}.", "tgt": f"वाक्य संख्या {i}।", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
        for i in range(n)
    ]


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> bytes:
    data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return data


def _connector(url: str, **retry: float) -> HttpConnector:
    source = SourceConfig(name="web", kind="http", uri=url)
    return HttpConnector(source, Settings(), SourceRetryConfig(**{"base_delay_s": 0.01, "max_delay_s": 0.05, **retry}))


def _rows_of(records: list[RawRecord]) -> list[object]:
    return [r.row for r in records]


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_streams_every_jsonl_record_with_refs(http_server: FaultyHTTPServer, name: str) -> None:
    rows = _rows(N_ROWS)
    _write_jsonl(http_server.root / name, rows)
    records = list(_connector(http_server.url(name)).iter_records())
    assert _rows_of(records) == rows
    assert records[0].ref == f"{name}:1"
    assert records[-1].ref == f"{name}:{N_ROWS}"
    assert records[-1].position["done"] is True
    assert http_server.plan.count("GET") == 1


@pytest.mark.parametrize("gzipped", [False, True])
def test_streams_tsv_with_custom_header(http_server: FaultyHTTPServer, gzipped: bool) -> None:
    data = "english\thindi\n" + "".join(f"line {i}\tपंक्ति {i}\n" for i in range(500))
    name = "pairs.tsv.gz" if gzipped else "pairs.tsv"
    (http_server.root / name).write_bytes(gzip.compress(data.encode()) if gzipped else data.encode())
    records = list(
        open_connector(SourceConfig(name="web", kind="http", uri=http_server.url(name)), Settings(), []).iter_records()
    )
    assert len(records) == 500
    assert records[7].row == {"english": "line 7", "hindi": "पंक्ति 7"}
    assert records[7].ref == f"{name}:9"
    assert records[7].position["header"] == ["english", "hindi"]


def test_malformed_lines_are_records_with_refs(http_server: FaultyHTTPServer) -> None:
    (http_server.root / "mixed.jsonl").write_bytes(b'{"src": "a"}\n\n{"src": "\xc3\x28"}\n[1]\n{"src": "b"}')
    records = list(_connector(http_server.url("mixed.jsonl")).iter_records())
    assert [(r.ref, r.row, r.error) for r in records] == [
        ("mixed.jsonl:1", {"src": "a"}, None),
        ("mixed.jsonl:3", None, "invalid UTF-8 at byte 9"),
        ("mixed.jsonl:4", None, "JSON line is an array, not an object"),
        ("mixed.jsonl:5", {"src": "b"}, None),
    ]


@pytest.mark.parametrize("ranges", [True, False])
def test_dropped_connections_resume_without_duplicates_or_gaps(http_server: FaultyHTTPServer, ranges: bool) -> None:
    rows = _rows(N_ROWS)
    data = _write_jsonl(http_server.root / "pairs.jsonl", rows)
    http_server.ranges = ranges
    http_server.plan.drop(after_bytes=len(data) // 3)
    http_server.plan.drop(after_bytes=len(data) // 4)
    records = list(_connector(http_server.url("pairs.jsonl")).iter_records())
    assert _rows_of(records) == rows
    assert [r.ref for r in records] == [f"pairs.jsonl:{i + 1}" for i in range(N_ROWS)]
    gets = [r for r in http_server.plan.requests if r.method == "GET"]
    assert [r.fault for r in gets] == ["drop", "drop", None]
    if ranges:  # each retry asks for a line boundary just before the cut, not the whole file again
        cut = len(data) // 3
        resumed_at = int(gets[1].range[len("bytes=") : -1]) if gets[1].range else 0
        assert data[resumed_at - 1 : resumed_at] == b"\n"
        assert cut - 1000 < resumed_at <= cut
        assert gets[2].range is not None and int(gets[2].range[len("bytes=") : -1]) > resumed_at
    else:
        assert gets[1].range is not None  # asked, but the server answered the whole file: skipped locally


def test_drops_after_progress_never_exhaust_the_attempts(http_server: FaultyHTTPServer) -> None:
    rows = _rows(N_ROWS)
    data = _write_jsonl(http_server.root / "pairs.jsonl", rows)
    http_server.plan.drop(after_bytes=len(data) // 10, times=8)  # each resumed GET gets a tenth further
    assert _rows_of(list(_connector(http_server.url("pairs.jsonl"), attempts=2).iter_records())) == rows
    assert http_server.plan.count("GET") == 9


def test_dropped_gzip_stream_is_re_read_and_skipped(http_server: FaultyHTTPServer) -> None:
    rows = _rows(N_ROWS)
    _write_jsonl(http_server.root / "pairs.jsonl.gz", rows)
    size = (http_server.root / "pairs.jsonl.gz").stat().st_size
    http_server.plan.drop(after_bytes=size // 2, times=2)
    records = list(_connector(http_server.url("pairs.jsonl.gz")).iter_records())
    assert _rows_of(records) == rows
    assert http_server.plan.count("GET") == 3
    assert all(r.range is None for r in http_server.plan.requests)


def test_server_errors_are_retried_then_succeed(http_server: FaultyHTTPServer) -> None:
    rows = _rows(100)
    _write_jsonl(http_server.root / "pairs.jsonl", rows)
    http_server.plan.fail(times=3, status=503)
    assert _rows_of(list(_connector(http_server.url("pairs.jsonl")).iter_records())) == rows
    assert http_server.plan.count("GET") == 4


def test_persistent_server_errors_give_up_with_a_one_line_transient_error(http_server: FaultyHTTPServer) -> None:
    _write_jsonl(http_server.root / "pairs.jsonl", _rows(10))
    http_server.plan.fail(times=100)
    url = http_server.url("pairs.jsonl")
    with pytest.raises(TransientSourceError) as err:
        list(_connector(url, attempts=4).iter_records())
    message = str(err.value)
    assert "\n" not in message
    assert (
        message
        == f"source 'web': GET {url} failed 4 times in a row; last error: RetryableStatus: HTTP 500 Internal Server Error"
    )
    assert http_server.plan.count("GET") == 4


@pytest.mark.parametrize("status", [404, 403])
def test_missing_or_forbidden_fails_at_once(http_server: FaultyHTTPServer, status: int) -> None:
    if status == 403:
        _write_jsonl(http_server.root / "pairs.jsonl", _rows(3))
        http_server.plan.fail(times=10, status=403)
    began = time.monotonic()
    with pytest.raises(SourceError) as err:
        list(_connector(http_server.url("pairs.jsonl"), base_delay_s=1.0).iter_records())
    assert not isinstance(err.value, TransientSourceError)
    assert f"answered {status}" in str(err.value) and "'web'" in str(err.value)
    assert http_server.plan.count("GET") == 1
    assert time.monotonic() - began < 1.0


def test_truncated_gzip_with_consistent_length_is_retried(http_server: FaultyHTTPServer) -> None:
    rows = _rows(N_ROWS)
    _write_jsonl(http_server.root / "pairs.jsonl.gz", rows)
    size = (http_server.root / "pairs.jsonl.gz").stat().st_size
    http_server.plan.truncate(after_bytes=size - 20, times=2)
    assert _rows_of(list(_connector(http_server.url("pairs.jsonl.gz")).iter_records())) == rows
    assert [r.fault for r in http_server.plan.requests] == ["truncate", "truncate", None]

    http_server.plan.truncate(after_bytes=size // 2, times=10)
    with pytest.raises(TransientSourceError, match="TruncatedStreamError: gzip stream ended"):
        list(_connector(http_server.url("pairs.jsonl.gz"), attempts=3).iter_records())


@pytest.mark.parametrize("cut", [0, 1])
def test_gzip_body_cut_before_its_magic_is_retried_not_read_as_empty(http_server: FaultyHTTPServer, cut: int) -> None:
    rows = _rows(50)
    _write_jsonl(http_server.root / "pairs.jsonl.gz", rows)
    http_server.plan.truncate(after_bytes=cut)
    assert _rows_of(list(_connector(http_server.url("pairs.jsonl.gz")).iter_records())) == rows
    assert [r.fault for r in http_server.plan.requests] == ["truncate", None]


def test_stalled_response_times_out_and_is_retried(http_server: FaultyHTTPServer) -> None:
    rows = _rows(50)
    _write_jsonl(http_server.root / "pairs.jsonl", rows)
    http_server.plan.slow(delay_s=1.0)
    began = time.monotonic()
    records = list(_connector(http_server.url("pairs.jsonl"), timeout_s=0.2).iter_records())
    assert _rows_of(records) == rows
    assert time.monotonic() - began < 1.0


@pytest.mark.parametrize(
    ("name", "ranges"), [("pairs.jsonl", True), ("pairs.jsonl", False), ("pairs.jsonl.gz", True), ("pairs.tsv", True)]
)
def test_fresh_connector_resumes_from_a_reported_position(
    http_server: FaultyHTTPServer, name: str, ranges: bool
) -> None:
    rows = _rows(N_ROWS)
    if name.endswith(".tsv"):
        text = "src\ttgt\tsrc_lang\ttgt_lang\n" + "".join("\t".join(r.values()) + "\n" for r in rows)
        (http_server.root / name).write_text(text, encoding="utf-8")
    else:
        _write_jsonl(http_server.root / name, rows)
    http_server.ranges = ranges
    url = http_server.url(name)
    everything = list(_connector(url).iter_records())
    taken = 1234
    position = json.loads(json.dumps(everything[taken - 1].position))  # as a checkpoint would store it
    rest = list(_connector(url).iter_records(start=position))
    assert rest == everything[taken:]
    assert _rows_of(rest) == rows[taken:]


def test_resuming_after_the_last_record_reads_nothing(http_server: FaultyHTTPServer) -> None:
    _write_jsonl(http_server.root / "pairs.jsonl", _rows(10))
    last = list(_connector(http_server.url("pairs.jsonl")).iter_records())[-1].position
    assert list(_connector(http_server.url("pairs.jsonl")).iter_records(start=last)) == []
    # A position taken before the end was known (no "done") still ends cleanly on the server's 416.
    undone = {k: v for k, v in last.items() if k != "done"}
    assert list(_connector(http_server.url("pairs.jsonl")).iter_records(start=undone)) == []
    assert http_server.plan.count("GET") == 2


def test_a_file_that_shrank_since_the_position_is_an_error(http_server: FaultyHTTPServer) -> None:
    _write_jsonl(http_server.root / "pairs.jsonl", _rows(10))
    with pytest.raises(SourceError, match="changed since the position was taken"):
        list(_connector(http_server.url("pairs.jsonl")).iter_records(start={"line": 99, "offset": 10_000}))


def test_parquet_and_non_http_urls_are_refused(http_server: FaultyHTTPServer) -> None:
    with pytest.raises(SourceError, match="Parquet needs random access"):
        _connector(http_server.url("pairs.parquet"))
    with pytest.raises(SourceError, match="not an http"):
        HttpConnector(SourceConfig(name="web", kind="http", uri="ftp://example.org/a.jsonl"), Settings())
