"""Stream a JSONL or TSV file (gzip allowed) over http(s), resuming after dropped connections.

A plain file resumes at the exact byte after the last record with a `Range` request; when the server
ignores ranges, or the file is gzip (which cannot be entered mid-stream), the body is re-read from the
start and what was already handed out is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import httpx

from bhashaflow.config import HttpSource, SourceRetryConfig
from bhashaflow.core.records import Position, RawRecord
from bhashaflow.core.redact import install_log_filter, redact_uri
from bhashaflow.core.settings import Settings
from connectors.base import SourceError
from connectors.formats import (
    FormatError,
    TextFormat,
    TruncatedStreamError,
    infer_format,
    iter_text_records,
    mark_last,
    sniff_gzip,
)
from connectors.retry import RetryPolicy, one_line, parse_retry_after, stream_with_retries

_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")
_RETRY_STATUSES = {408, 425, 429}


class RetryableStatus(IOError):
    """A response worth retrying (5xx, 429, 408)."""

    def __init__(self, status: int, reason: str, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {status} {reason}".strip())
        self.retry_after_s = retry_after_s  # the server's Retry-After, which the backoff honours


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | TruncatedStreamError | RetryableStatus)


def _skip_bytes(chunks: Iterator[bytes], count: int) -> Iterator[bytes]:
    for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:] if count else chunk
        count = 0
        break
    yield from chunks


def streaming_client(timeout_s: float) -> httpx.Client:
    """The client a source streams files with: bytes as stored (no transport compression), redirects followed."""
    headers = {"Accept-Encoding": "identity", "User-Agent": "bhashaflow"}
    return httpx.Client(timeout=timeout_s, follow_redirects=True, headers=headers)


@contextmanager
def open_body(client: httpx.Client, url: str, what: str, offset: int = 0) -> Iterator[Iterator[bytes]]:
    """GET `url` and hand over its body's chunks from byte `offset` on (none when `offset` is its size).

    Resumes with a Range request; a server that ignores it sends the whole body and what comes before `offset`
    is dropped here. Raises RetryableStatus for answers worth retrying and SourceError for the others, each
    message opening with `what` ("source 'web': GET https://x/pairs.jsonl").
    """
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset:
            _check_finished(response, offset, what)
            yield iter(())
            return
        _check_status(response, what)
        chunks = _body(response)
        if offset and response.status_code == 206:
            _check_range_start(response, offset, what)
        elif offset:  # the server ignored Range: read from the start, drop what was handed out
            chunks = _skip_bytes(chunks, offset)
        yield chunks


def head_exists(client: httpx.Client, url: str, what: str) -> bool:
    """Whether `url` names a file (HEAD answers 2xx; 404 or 410: no); other answers as `open_body` raises them."""
    response = client.head(url)
    if response.status_code in (404, 410):
        return False
    _check_status(response, what)
    return True


def _check_status(response: httpx.Response, what: str) -> None:
    status = response.status_code
    if status in (200, 206):
        return
    if status >= 500 or status in _RETRY_STATUSES:
        retry_after_s = parse_retry_after(response.headers.get("retry-after"))
        raise RetryableStatus(status, response.reason_phrase, retry_after_s)
    raise SourceError(f"{what} answered {status} {response.reason_phrase}")


def _check_range_start(response: httpx.Response, offset: int, what: str) -> None:
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    if not match or match.group(1) is None or int(match.group(1)) != offset:
        raise SourceError(
            f"{what} answered bytes {response.headers.get('content-range')!r} to a request for bytes {offset}-"
        )


def _check_finished(response: httpx.Response, offset: int, what: str) -> None:
    # 416 to "bytes=N-" means N is at or past the end: fine only if N is exactly the size.
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    if not match or match.group(2) == "*" or int(match.group(2)) != offset:
        size = match.group(2) if match else "unknown"
        raise SourceError(
            f"{what}: the file is now {size} bytes long but was read up to byte {offset}; "
            "it changed since the position was taken"
        )


def _body(response: httpx.Response) -> Iterator[bytes]:
    expected = response.headers.get("content-length")
    received = 0
    for chunk in response.iter_raw():
        received += len(chunk)
        yield chunk
    if expected is not None and expected.isdigit() and received < int(expected):
        raise TruncatedStreamError(f"body ended after {received} of {expected} bytes")


class HttpConnector:
    """Streams one JSONL or TSV file from an http(s) URL, with retries that resume where they left off.

    Positions are `{"line": lines consumed, "offset": byte after the last record}` for plain files and
    `{"line": ...}` for gzip; TSV positions also carry the `header`.
    """

    def __init__(
        self,
        source: HttpSource,
        settings: Settings | None = None,
        retry: SourceRetryConfig | None = None,
    ) -> None:
        """Check the URL and format; nothing is contacted until `iter_records`.

        Args:
            source: an http source; `uri` is the file's URL.
            settings: resolves `${NAME}` references to environment variables in the uri (credentials).
            retry: backoff, attempts before giving up with TransientSourceError, and the timeout to connect
                and between received bytes (the defaults when None).
        """
        install_log_filter("httpx")  # httpx logs every request's full URL at INFO: mask credentials in it
        self.name = source.name
        try:
            # `${NAME}` in the uri names a credential in the environment (the config never holds it).
            self.url = (settings or Settings()).expand_env(source.uri)
        except KeyError as exc:
            raise SourceError(f"source {self.name!r}: its uri names ${{{exc.args[0]}}}, which is not set") from None
        # What messages show: the URL without its userinfo or secret query values.
        self.shown = redact_uri(self.url)
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise SourceError(f"source {self.name!r}: {self.shown!r} is not an http(s) URL")
        path = unquote(urlsplit(self.url).path)
        self.file_name = PurePosixPath(path).name or self.shown
        try:
            fmt = infer_format(path, source.format)
        except FormatError as exc:
            raise SourceError(f"source {self.name!r}: {exc}") from None
        if fmt == "parquet":
            raise SourceError(
                f"source {self.name!r}: Parquet needs random access and is not streamed over http; "
                "use an s3 source or a local path"
            )
        self.format: TextFormat = fmt
        retry = retry or SourceRetryConfig()
        self.policy = RetryPolicy.from_config(retry)
        self.timeout = retry.timeout_s

    def iter_records(self, start: Position | None = None) -> Iterator[RawRecord]:
        """Yield every row after `start` (from the beginning when None), each with its resume position."""
        if start is not None and not isinstance(start.get("line"), int):
            raise SourceError(f"source {self.name!r}: {start!r} is not a position of an http source")
        with streaming_client(self.timeout) as client:
            yield from stream_with_retries(
                lambda position: self._read_from(client, position),
                start,
                policy=self.policy,
                is_transient=is_transient,
                what=f"source {self.name!r}: GET {self.shown}",
            )

    def _read_once(self, client: httpx.Client, position: Position | None) -> Iterator[RawRecord]:
        position = position or {}
        if position.get("done"):
            return
        line: int = position.get("line", 0)
        offset: int | None = position.get("offset")
        header: list[str] | None = position.get("header")
        by_bytes = offset is not None and offset > 0
        with open_body(client, self.url, f"source {self.name!r}: GET {self.shown}", offset or 0) as chunks:
            if by_bytes:
                records = iter_text_records(
                    chunks, self.format, self.file_name, line=line, offset=offset, header=header
                )
            else:
                gzipped, chunks = sniff_gzip(chunks, named_gz=self.file_name.lower().endswith(".gz"))
                records = iter_text_records(
                    chunks,
                    self.format,
                    self.file_name,
                    offset=None if gzipped else 0,
                    skip_to_line=line,
                    header=header,
                )
            try:
                yield from mark_last(records)
            except FormatError as exc:
                raise SourceError(f"source {self.name!r}: {self.shown}: {exc}") from None

    def _read_from(self, client: httpx.Client, position: Position | None) -> Iterator[RawRecord]:
        try:
            yield from self._read_once(client, position)
        except httpx.HTTPError as exc:  # a refused redirect loop, an invalid URL: not worth retrying
            if is_transient(exc):
                raise
            raise SourceError(f"source {self.name!r}: GET {self.shown}: {one_line(exc)}") from None
