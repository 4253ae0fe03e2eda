"""Stream JSONL, TSV or Parquet objects (gzip allowed) from S3 or an S3-compatible store.

The uri names one key, a prefix (`s3://bucket/dir/`) or a glob (`s3://corpora/indic/*.jsonl.gz`); files are
read in sorted key order, so a position (file key plus the place inside it) stays meaningful across runs.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import functools
from collections.abc import Iterator
from typing import Any

from bhashaflow.config import FileFormat, S3Source, SourceRetryConfig
from bhashaflow.core.records import Position, RawRecord
from bhashaflow.core.settings import Settings
from connectors.base import SourceError
from connectors.formats import (
    FormatError,
    TruncatedStreamError,
    infer_format,
    iter_parquet_records,
    iter_text_records,
    mark_last,
    sniff_gzip,
)
from connectors.retry import RetryPolicy, one_line, stream_with_retries

_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_GLOB_CHARS = frozenset("*?[")


def is_transient(exc: BaseException) -> bool:
    """5xx answers, throttling, timeouts and dropped connections; not missing keys, refusals or bad requests."""
    import aiohttp
    import botocore.exceptions as boto

    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    if isinstance(exc, TruncatedStreamError | TimeoutError | asyncio.TimeoutError | aiohttp.ClientError):
        return True
    if isinstance(exc, boto.NoCredentialsError | boto.ParamValidationError | boto.PartialCredentialsError):
        return False
    if isinstance(exc, boto.BotoCoreError):
        return True
    if isinstance(exc, boto.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status == 429 or exc.response.get("Error", {}).get("Code") == "SlowDown"
    # s3fs turns error codes into OSErrors: EINVAL for malformed requests, EIO/EREMOTEIO for 5xx and unknowns.
    return isinstance(exc, OSError) and exc.errno != errno.EINVAL


async def _read_up_to(body: Any, size: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < size:
        part = await body.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


async def _close(body: Any) -> None:
    body.close()


@functools.cache
def _service_models() -> Any:
    from botocore.loaders import create_loader

    return create_loader()


def _session() -> Any:
    """A fresh aiobotocore session (credentials resolved anew) whose service models are parsed only once.

    Each session otherwise re-reads botocore's S3 model, a few MB of JSON: a tenth of a second or more per
    connector, paid again by every retried task.
    """
    from aiobotocore.session import AioSession

    session = AioSession()
    session.register_component("data_loader", _service_models())
    return session


def is_storage_error(exc: BaseException) -> bool:
    import botocore.exceptions as boto

    return isinstance(exc, OSError | boto.BotoCoreError | boto.ClientError)


def s3_filesystem(storage_options: dict[str, Any], timeout_s: float) -> Any:
    """An s3fs filesystem for streaming reads under our own retry loop.

    Our loop retries with backoff and resumes from the last record; botocore retrying underneath would only
    multiply the waits. A private instance keeps listings fresh between runs.
    """
    import s3fs

    return s3fs.S3FileSystem(
        **storage_options,
        session=_session(),
        skip_instance_cache=True,
        use_listings_cache=False,
        config_kwargs={
            "retries": {"mode": "standard", "total_max_attempts": 1},
            "connect_timeout": timeout_s,
            "read_timeout": timeout_s,
        },
    )


def stream_object(fs: Any, key: str, start: int, chunk_bytes: int) -> Iterator[bytes]:
    """The object's bytes from `start`, in chunks, from one streaming GET.

    One GET per file rather than s3fs's ranged reads per block: fewer requests, and servers that copy the
    object per request (moto) stay fast. botocore checks the received length against Content-Length.
    """
    from fsspec.asyn import sync

    bucket, path, _ = fs.split_path(key)
    byte_range = {"Range": f"bytes={start}-"} if start else {}
    response = sync(fs.loop, fs._call_s3, "get_object", Bucket=bucket, Key=path, **byte_range)
    body = response["Body"]
    try:
        while chunk := sync(fs.loop, _read_up_to, body, chunk_bytes):
            yield chunk
    finally:
        try:
            sync(fs.loop, _close, body)
        except NotImplementedError:
            # Garbage-collected on fsspec's own loop thread, where sync() cannot wait: close there instead.
            fs.loop.create_task(_close(body))


class S3Connector:
    """Streams every matching object of an S3 uri, resuming inside the current file after a failure.

    Positions are `{"file_index", "key", ...}` plus the place inside the file: `line` (and `offset` for plain
    text, `header` for TSV) or `row` for Parquet; the last record of a file adds `"done": True`.
    """

    def __init__(
        self,
        source: S3Source,
        settings: Settings,
        retry: SourceRetryConfig | None = None,
        *,
        chunk_bytes: int = 1024 * 1024,
    ) -> None:
        """Build the connector; nothing is contacted until `iter_records`.

        Args:
            source: an s3 source; `uri` is a key, a prefix ending in '/', or a glob.
            settings: credentials and the default endpoint (`source.endpoint_url` overrides it).
            retry: backoff, attempts before giving up with TransientSourceError, and the timeout to connect
                and between received bytes (the defaults when None).
            chunk_bytes: bytes of a text file handled at a time.
        """
        self.name = source.name
        self.uri = source.uri
        if not self.uri.startswith("s3://") or len(self.uri) <= len("s3://"):
            raise SourceError(f"source {self.name!r}: {self.uri!r} is not an s3:// uri")
        self.format: FileFormat | None = source.format
        retry = retry or SourceRetryConfig()
        self.policy = RetryPolicy.from_config(retry)
        self.chunk_bytes = chunk_bytes
        self.timeout = retry.timeout_s
        self._storage_options = settings.storage_options(source.endpoint_url)

    def iter_records(self, start: Position | None = None) -> Iterator[RawRecord]:
        """Yield every row after `start` (from the beginning when None), each with its resume position."""
        if start is not None and not isinstance(start.get("key"), str):
            raise SourceError(f"source {self.name!r}: {start!r} is not a position of an s3 source")
        fs = self._filesystem()
        files: list[str] = []
        current = [self.uri]  # what is being read, for the message when retries run out

        def read_from(position: Position | None) -> Iterator[RawRecord]:
            if not files:
                current[0] = self.uri
                files.extend(self._list_files(fs))
            yield from self._read_files(fs, files, position, current)

        yield from stream_with_retries(
            read_from,
            start,
            policy=self.policy,
            is_transient=is_transient,
            what=lambda: f"source {self.name!r}: reading {current[0]}",
        )

    def _filesystem(self) -> Any:
        return s3_filesystem(self._storage_options, self.timeout)

    def _list_files(self, fs: Any) -> list[str]:
        path = self.uri[len("s3://") :]
        try:
            if _GLOB_CHARS & set(path):
                found = fs.glob(path, detail=True)
            elif path.endswith("/") or "/" not in path:
                found = fs.find(path, detail=True)
            else:
                info = fs.info(path)
                found = {path: info} if info["type"] == "file" else fs.find(path + "/", detail=True)
        except FileNotFoundError:
            found = {}
        except Exception as exc:
            if is_transient(exc) or not is_storage_error(exc):
                raise
            raise SourceError(f"source {self.name!r}: cannot list {self.uri}: {one_line(exc)}") from None
        # Keys starting with '_' or '.' are markers (_SUCCESS, .keep), not data.
        keys = sorted(
            key
            for key, info in found.items()
            if info.get("type") == "file" and not key.endswith("/") and key.rsplit("/", 1)[-1][:1] not in ("_", ".")
        )
        if not keys:
            raise SourceError(f"source {self.name!r}: no files match {self.uri}")
        return keys

    def _read_files(
        self, fs: Any, files: list[str], position: Position | None, current: list[str]
    ) -> Iterator[RawRecord]:
        first, resume = self._resume_point(files, position)
        for index in range(first, len(files)):
            key = files[index]
            current[0] = f"s3://{key}"
            yield from mark_last(self._read_file(fs, index, key, resume if index == first else None))

    def _resume_point(self, files: list[str], position: Position | None) -> tuple[int, Position | None]:
        if position is None:
            return 0, None
        key = position["key"]
        if position.get("done"):
            # Sorted keys make "everything after this key" well defined even if the listing changed.
            return bisect.bisect_right(files, key), None
        if key not in files:
            raise SourceError(f"source {self.name!r}: s3://{key}, being read at the resume position, is gone")
        return files.index(key), position

    def _read_file(self, fs: Any, index: int, key: str, resume: Position | None) -> Iterator[RawRecord]:
        base = {"file_index": index, "key": key}
        resume = resume or {}
        try:
            fmt = infer_format(key, self.format)
            if fmt == "parquet":
                # pyarrow reads a row group in one coalesced call; a read-ahead cache would only add bytes.
                with fs.open(key, "rb", cache_type="none") as file:
                    yield from iter_parquet_records(file, key, base=base, start_row=resume.get("row", 0))
                return
            offset = resume.get("offset")
            line, header = resume.get("line", 0), resume.get("header")
            if offset:  # plain text: start right at the byte after the last record
                size = fs.info(key)["size"]
                if offset >= size:
                    if offset > size:
                        raise SourceError(
                            f"source {self.name!r}: s3://{key} is now {size} bytes long but was read up to byte "
                            f"{offset}; it changed since the position was taken"
                        )
                    return
                yield from iter_text_records(
                    stream_object(fs, key, offset, self.chunk_bytes),
                    fmt,
                    key,
                    base=base,
                    line=line,
                    offset=offset,
                    header=header,
                )
            else:  # from the start; gzip is re-read and the lines already handed out skipped
                gzipped, chunks = sniff_gzip(
                    stream_object(fs, key, 0, self.chunk_bytes), named_gz=key.lower().endswith(".gz")
                )
                yield from iter_text_records(
                    chunks, fmt, key, base=base, offset=None if gzipped else 0, skip_to_line=line, header=header
                )
        except FormatError as exc:
            raise SourceError(f"source {self.name!r}: s3://{key}: {exc}") from None
        except Exception as exc:
            if is_transient(exc) or not is_storage_error(exc):
                raise
            raise SourceError(f"source {self.name!r}: cannot read s3://{key}: {one_line(exc)}") from None
