"""Real local servers for tests: a file server and a reverse proxy that both inject faults on demand.

Both are plain threaded `http.server`s on 127.0.0.1 and a free port. A `FaultPlan` tells them to answer
errors, drop connections mid-body, stall, or cut a body short for the next N matching requests.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from bhashaflow.core.hashing import sha256_bytes

FaultKind = Literal["status", "drop", "slow", "truncate"]
_CHUNK = 256 * 1024
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


@dataclass
class Fault:
    """One planned misbehaviour, used up by the next `times` requests that match it."""

    kind: FaultKind
    times: int
    status: int = 500
    after_bytes: int = 0
    delay_s: float = 0.0
    retry_after: str | None = None  # the Retry-After header of a status fault
    method: str | None = None
    path_contains: str | None = None
    after: int = 0  # matching requests to let through untouched first

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path_contains is None or self.path_contains in path
        )


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    range: str | None
    fault: FaultKind | None


@dataclass
class FaultPlan:
    """Faults for the next requests, in the order they were planned; thread-safe. Also logs every request."""

    faults: list[Fault] = field(default_factory=list)
    requests: list[LoggedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fail(
        self,
        times: int = 1,
        status: int = 500,
        *,
        method: str | None = None,
        path: str | None = None,
        after: int = 0,
        retry_after: str | None = None,
    ) -> None:
        """Answer `status` (default 500) instead of the real response, with a `Retry-After` header if given.

        `method` and `path` (a substring) pick the requests a fault applies to; the first `after` of those
        pass untouched. The same holds for every kind of fault.
        """
        self._add(
            Fault(
                "status", times, status=status, retry_after=retry_after, method=method, path_contains=path, after=after
            )
        )

    def drop(
        self,
        after_bytes: int,
        times: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        after: int = 0,
        linger_s: float = 0.0,
    ) -> None:
        """Announce the full body, send `after_bytes` of it, then close the connection.

        `linger_s` waits before closing, so a client that reports the close before handing out buffered
        bytes (aiohttp) has read them by then and the test knows how far it got.
        """
        self._add(
            Fault(
                "drop", times, after_bytes=after_bytes, delay_s=linger_s, method=method, path_contains=path, after=after
            )
        )

    def slow(
        self, delay_s: float, times: int = 1, *, method: str | None = None, path: str | None = None, after: int = 0
    ) -> None:
        """Wait `delay_s` before answering."""
        self._add(Fault("slow", times, delay_s=delay_s, method=method, path_contains=path, after=after))

    def truncate(
        self, after_bytes: int, times: int = 1, *, method: str | None = None, path: str | None = None, after: int = 0
    ) -> None:
        """Answer a complete-looking response whose body (and Content-Length) stops after `after_bytes`."""
        self._add(Fault("truncate", times, after_bytes=after_bytes, method=method, path_contains=path, after=after))

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    def take(self, method: str, path: str, range_header: str | None = None) -> Fault | None:
        """Log a request and use up the first planned fault it matches."""
        with self._lock:
            chosen = None
            for fault in self.faults:
                if not fault.matches(method, path):
                    continue
                if fault.after > 0:
                    fault.after -= 1
                    continue
                chosen = fault
                break
            if chosen is not None:
                chosen.times -= 1
                if chosen.times == 0:
                    self.faults.remove(chosen)
            self.requests.append(LoggedRequest(method, path, range_header, chosen.kind if chosen else None))
            return chosen

    @property
    def pending(self) -> int:
        """Fault uses still planned."""
        with self._lock:
            return sum(f.times for f in self.faults)

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """Requests seen, optionally only those with this method and containing `path`."""
        with self._lock:
            return sum(
                1 for r in self.requests if (method is None or r.method == method) and (path is None or path in r.path)
            )

    def _add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _FaultyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass

    @property
    def plan(self) -> FaultPlan:
        return self.server.plan  # type: ignore[attr-defined, no-any-return]

    def _apply_leading_fault(self) -> Fault | None:
        """Take this request's fault; answer it here when it replaces the response. None: go on normally."""
        fault = self.plan.take(self.command, self.path, self.headers.get("Range"))
        if fault is None:
            return None
        if fault.kind == "slow":
            time.sleep(fault.delay_s)
            return None
        if fault.kind == "status":
            self._send_error_body(fault.status, fault.retry_after)
            return fault  # answered
        return fault  # drop/truncate apply to the body

    def _send_error_body(self, status: int, retry_after: str | None = None) -> None:
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
            b"<Message>injected fault</Message><RequestId>fault</RequestId></Error>"
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _write_body(self, chunks: Iterator[bytes], fault: Fault | None) -> None:
        """Write a body, dropping the connection part-way when the fault says so."""
        limit = fault.after_bytes if fault is not None and fault.kind in ("drop", "truncate") else None
        sent = 0
        try:
            for chunk in chunks:
                if limit is not None and sent + len(chunk) >= limit:
                    self.wfile.write(chunk[: limit - sent])
                    sent = limit
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
            if fault is not None and fault.kind == "drop":
                self.wfile.flush()
                time.sleep(fault.delay_s)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _FileHandler(_FaultyHandler):
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        fault = self._apply_leading_fault()
        if fault is not None and fault.kind == "status":
            return
        server: FaultyHTTPServer = self.server.owner  # type: ignore[attr-defined]
        path = (server.root / unquote(urlsplit(self.path).path).lstrip("/")).resolve()
        if not path.is_file() or server.root.resolve() not in path.parents:
            self._send_error_body(404)
            return
        size = path.stat().st_size
        start, end, status = 0, size, 200
        range_header = self.headers.get("Range")
        if server.ranges and range_header:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if match and match.group(1):
                start = int(match.group(1))
                end = min(size, int(match.group(2)) + 1) if match.group(2) else size
            elif match and match.group(2):  # suffix range: the last N bytes
                start = max(0, size - int(match.group(2)))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        length = end - start
        if fault is not None and fault.kind == "truncate":
            length = min(length, fault.after_bytes)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if server.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        self._write_body(_read_file(path, start, start + length), fault)


def _read_file(path: Path, start: int, end: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


class _ServerBase:
    _handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self.plan = FaultPlan()
        self._httpd = _Server(("127.0.0.1", 0), self._handler)
        self._httpd.plan = self.plan  # type: ignore[attr-defined]
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> _ServerBase:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> _ServerBase:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FaultyHTTPServer(_ServerBase):
    """Serves the files under `root` with Range support (switch off with `ranges = False`) and planned faults.

    `url("pairs.jsonl")` is a file's URL; `plan` injects faults and logs requests.
    """

    _handler = _FileHandler

    def __init__(self, root: Path, *, ranges: bool = True) -> None:
        self.root = Path(root)
        self.ranges = ranges
        super().__init__()

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"


class _ProxyHandler(_FaultyHandler):
    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _read_request_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            pieces: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(pieces)
                pieces.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self) -> None:
        body = self._read_request_body()
        fault = self._apply_leading_fault()
        if fault is not None and fault.kind == "status":
            return
        proxy: FaultyProxy = self.server.owner  # type: ignore[attr-defined]
        # Expect: 100-continue was answered here already; the body goes upstream in one piece.
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP and k.lower() != "expect"}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            length = response.getheader("Content-Length")
            data = None if length is not None or self.command == "HEAD" else response.read()
            if data is not None:
                length = str(len(data))
            if fault is not None and fault.kind == "truncate" and length is not None:
                length = str(min(int(length), fault.after_bytes))
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            if self.command == "HEAD" or response.status in (204, 304):
                return
            self._write_body(iter([data]) if data is not None else _read_response(response), fault)
        finally:
            upstream.close()


def _read_response(response: http.client.HTTPResponse) -> Iterator[bytes]:
    while chunk := response.read(_CHUNK):
        yield chunk


class FaultyProxy(_ServerBase):
    """A reverse proxy in front of another HTTP server (moto's S3), injecting the planned faults."""

    _handler = _ProxyHandler

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        super().__init__()

    @property
    def url(self) -> str:
        return self.base_url


class S3Server:
    """moto's S3 *server* (real HTTP, in a thread) behind a `FaultyProxy`.

    `endpoint_url` goes through the proxy, so `plan` faults apply; `client` talks to moto directly, so test
    setup never trips over a planned fault.
    """

    region = "us-east-1"
    access_key = "testing"
    secret_key = "testing"

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._proxy: FaultyProxy | None = None
        self.moto_url = ""

    def start(self) -> S3Server:
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        self._proxy = FaultyProxy(self.moto_url).start()  # type: ignore[assignment]
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
        self._moto.stop()

    @property
    def proxy(self) -> FaultyProxy:
        assert self._proxy is not None, "start() first"
        return self._proxy

    @property
    def endpoint_url(self) -> str:
        return self.proxy.url

    @property
    def plan(self) -> FaultPlan:
        return self.proxy.plan

    @property
    def client(self):  # type: ignore[no-untyped-def]  # a boto3 S3 client; boto3 ships no types
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.moto_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def reset(self) -> None:
        """Forget every bucket and object, and every planned fault."""
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.moto_url}/moto-api/reset", method="POST")).close()
        self.plan.clear()

    def create_bucket(self, bucket: str) -> None:
        self.client.create_bucket(Bucket=bucket)

    def put(self, bucket: str, key: str, data: bytes | Path) -> None:
        body = data.read_bytes() if isinstance(data, Path) else data
        self.client.put_object(Bucket=bucket, Key=key, Body=body)


PartAction = Literal["ok", "refuse", "lost", "drop", "stored-drop"]


class _PartHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        owner: PartServer = self.server.owner  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.headers.get("Idempotency-Key", "")
        answer = owner._take(key, dict(self.headers))
        digest = sha256_bytes(body)
        if self.headers.get("Content-SHA256", digest) != digest:
            self._answer(400)  # a body that does not match its digest is never stored
            return
        if isinstance(answer, int):
            store, status = 200 <= answer < 300, answer
        else:
            store, status = (
                answer in ("ok", "lost", "stored-drop"),
                {"ok": 200, "refuse": 503, "lost": 500}.get(answer, 0),
            )
        if store:
            owner._store(key, body)
        if answer in ("drop", "stored-drop"):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)  # no answer at all: the client sees a dropped connection
            except OSError:
                pass
            return
        self._answer(status)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


class PartServer(_ServerBase):
    """An idempotent endpoint for exported parts: a POSTed part is stored under its Idempotency-Key,
    replacing an earlier copy, once its body matches its Content-SHA256.

    `fail` scripts the statuses of the next POSTs (a 2xx stores the part; 429 says Retry-After: 0). When it
    is empty, `decide(key)` (if set) picks each POST's answer: "ok" (store, 200), "refuse" (503, not stored),
    "lost" (store, 500), "drop" (close without storing or answering), "stored-drop" (store, then close
    without answering). `requests` holds every POST's headers, `posts` their keys, `answers` counts them.
    `plan` is not used.
    """

    _handler = _PartHandler

    def __init__(self, path: str = "/v1/episodes") -> None:
        self.path = path
        self.parts: dict[str, bytes] = {}
        self.requests: list[dict[str, str]] = []
        self.posts: list[str] = []
        self.fail: list[int] = []
        self.decide: Callable[[str], PartAction] | None = None
        self.answers: dict[str, int] = {}
        self._lock = threading.Lock()
        super().__init__()

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def _take(self, key: str, headers: dict[str, str]) -> PartAction | int:
        with self._lock:
            self.requests.append(headers)
            self.posts.append(key)
            fail = self.fail.pop(0) if self.fail else None
        answer: PartAction | int = fail if fail is not None else self.decide(key) if self.decide else "ok"
        with self._lock:
            self.answers[str(answer)] = self.answers.get(str(answer), 0) + 1
        return answer

    def _store(self, key: str, body: bytes) -> None:
        with self._lock:
            self.parts[key] = body
