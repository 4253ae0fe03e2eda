"""Part sinks against real local services: a folder, moto's S3 server, an http.server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import PartServer, S3Server

from bhashaflow.core.settings import Settings
from connectors.retry import RetryPolicy
from connectors.sinks import FolderSink, HttpSink, S3Sink, SinkError, open_sink, with_retries

FAST = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture
def part_server() -> Iterator[PartServer]:
    with PartServer() as server:
        yield server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_open_sink_picks_the_sink_by_scheme(tmp_path: Path) -> None:
    settings = Settings()
    assert isinstance(open_sink("s3://bucket/prefix", settings), S3Sink)
    assert isinstance(open_sink("https://example.org/rl", settings), HttpSink)
    file_sink = open_sink(f"file://{tmp_path}/logs", settings)
    assert isinstance(file_sink, FolderSink) and file_sink.directory == f"{tmp_path}/logs"
    plain = open_sink("rl-logs", settings)
    assert isinstance(plain, FolderSink) and plain.directory == "rl-logs"
    with pytest.raises(SinkError, match="unsupported scheme 'gs'"):
        open_sink("gs://bucket/x", settings)
    with pytest.raises(SinkError, match="local path"):
        open_sink("file://otherhost/x", settings)


def test_folder_sink_writes_and_replaces_a_part(tmp_path: Path) -> None:
    sink = open_sink(str(tmp_path / "out"), Settings(), FAST)
    sink.write("p-1.jsonl", b'{"a": 1}\n', "application/x-ndjson")
    sink.write("p-1.jsonl", b'{"a": 2}\n', "application/x-ndjson")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p-1.jsonl"]
    assert (tmp_path / "out" / "p-1.jsonl").read_bytes() == b'{"a": 2}\n'


def test_folder_sink_rewriting_a_part_removes_the_temporary_of_a_killed_write(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".p-1.jsonl.tmp-0123abcd").write_bytes(b'{"a": 1}')  # what a SIGKILL mid-write leaves
    (out / ".p-2.jsonl.tmp-4567ef01").write_bytes(b'{"b": 1}')  # another part's: left to that part's rewrite
    open_sink(str(out), Settings(), FAST).write("p-1.jsonl", b'{"a": 1}\n', "application/x-ndjson")
    assert sorted(p.name for p in out.iterdir()) == [".p-2.jsonl.tmp-4567ef01", "p-1.jsonl"]


def test_folder_sink_reports_an_unwritable_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    sink = open_sink(str(tmp_path / "file"), Settings(), FAST)
    with pytest.raises(SinkError, match="cannot write"):
        sink.write("p.jsonl", b"x", "application/x-ndjson")


def test_s3_sink_uploads_verifies_and_replaces(s3_server: S3Server) -> None:
    s3_server.create_bucket("sinks")
    sink = open_sink("s3://sinks/rl/", Settings(), FAST)
    sink.write("p-1.jsonl", b"one\n", "application/x-ndjson")
    sink.write("p-1.jsonl", b"two\n", "application/x-ndjson")
    listed = s3_server.client.list_objects_v2(Bucket="sinks")["Contents"]
    assert [o["Key"] for o in listed] == ["rl/p-1.jsonl"]
    obj = s3_server.client.get_object(Bucket="sinks", Key="rl/p-1.jsonl")
    assert obj["Body"].read() == b"two\n"
    assert obj["ContentType"] == "application/x-ndjson"


def test_s3_sink_uploads_again_when_the_size_check_disagrees(s3_server: S3Server) -> None:
    s3_server.create_bucket("sinks")
    s3_server.plan.truncate(after_bytes=1, times=1, method="HEAD")  # the read-back reports 1 byte
    open_sink("s3://sinks/rl", Settings(), FAST).write("p.jsonl", b"0123456789", "application/x-ndjson")
    assert s3_server.plan.count("PUT", "/sinks/rl/p.jsonl") == 2
    assert s3_server.plan.count("HEAD", "/sinks/rl/p.jsonl") == 2
    assert s3_server.client.get_object(Bucket="sinks", Key="rl/p.jsonl")["Body"].read() == b"0123456789"


def test_s3_sink_retries_by_its_own_policy_only(s3_server: S3Server) -> None:
    s3_server.create_bucket("sinks")
    s3_server.plan.fail(times=3, status=503, method="PUT")
    started = time.perf_counter()
    open_sink("s3://sinks/rl", Settings(), FAST).write("p.jsonl", b"x", "application/x-ndjson")
    # botocore retrying each of these too would make it 3 x 5 PUTs, with up to seconds of its own backoff
    assert s3_server.plan.count("PUT", "/sinks/rl/p.jsonl") == 4
    assert time.perf_counter() - started < 5
    s3_server.plan.fail(times=10, status=500, method="PUT")
    with pytest.raises(SinkError, match="gave up after 4 attempts"):
        open_sink("s3://sinks/rl", Settings(), FAST).write("q.jsonl", b"x", "application/x-ndjson")
    assert s3_server.plan.count("PUT", "/sinks/rl/q.jsonl") == 4


def test_s3_sink_fails_fast_on_a_missing_bucket(s3_server: S3Server) -> None:
    sink = open_sink("s3://no-such-bucket/rl", Settings(), FAST)
    with pytest.raises(SinkError, match="no-such-bucket"):
        sink.write("p.jsonl", b"x", "application/x-ndjson")
    assert s3_server.plan.count("PUT") == 1


def test_http_sink_posts_ndjson_with_the_part_name_as_idempotency_key(part_server: PartServer) -> None:
    sink = open_sink(part_server.url, Settings(), FAST)
    sink.write("episodes-1-2.jsonl", b'{"x": 1}\n{"x": 2}\n', "application/x-ndjson")
    assert part_server.parts == {"episodes-1-2.jsonl": b'{"x": 1}\n{"x": 2}\n'}
    headers = part_server.requests[0]
    assert headers["Content-Type"] == "application/x-ndjson"
    assert headers["X-Bhashaflow-Part"] == "episodes-1-2.jsonl"


def test_http_sink_retries_busy_and_failing_answers(part_server: PartServer) -> None:
    part_server.fail = [503, 429, 500]
    HttpSink(part_server.url, FAST).write("p.jsonl", b"{}\n", "application/x-ndjson")
    assert len(part_server.requests) == 4
    assert part_server.parts == {"p.jsonl": b"{}\n"}


def test_http_sink_gives_up_after_the_last_attempt(part_server: PartServer) -> None:
    part_server.fail = [503] * 10
    with pytest.raises(SinkError, match="gave up after 4 attempts.*503"):
        HttpSink(part_server.url, FAST).write("p.jsonl", b"{}\n", "application/x-ndjson")
    assert len(part_server.requests) == 4 and part_server.parts == {}


def test_http_sink_does_not_retry_a_refusal(part_server: PartServer) -> None:
    part_server.fail = [400]
    with pytest.raises(SinkError, match="answered 400"):
        HttpSink(part_server.url, FAST).write("p.jsonl", b"{}\n", "application/x-ndjson")
    assert len(part_server.requests) == 1


def test_http_sink_retries_connection_errors_then_gives_up() -> None:
    url = f"http://127.0.0.1:{_free_port()}/nobody-listens"
    with pytest.raises(SinkError, match="gave up after 4 attempts.*ConnectError"):
        HttpSink(url, FAST, timeout_s=2).write("p.jsonl", b"{}\n", "application/x-ndjson")


def test_backoff_delays_grow_within_their_caps() -> None:
    import random

    policy = RetryPolicy(attempts=6, base_delay_s=1.0, max_delay_s=5.0, rng=random.Random())
    caps = [1.0, 2.0, 4.0, 5.0, 5.0]
    for _ in range(50):
        delays = [policy.delay(failure) for failure in range(1, policy.attempts)]
        assert len(delays) == 5
        assert all(0.0 <= d <= cap for d, cap in zip(delays, caps, strict=True))


def test_with_retries_returns_the_first_success() -> None:
    from connectors.sinks import TransientSinkError

    calls: list[int] = []

    def op() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientSinkError("flaky")
        return json.dumps({"ok": len(calls)})

    assert with_retries(op, "test", FAST) == '{"ok": 3}'
