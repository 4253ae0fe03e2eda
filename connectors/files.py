"""One file's bytes wherever it lives: a local path, s3://, http(s):// or any other fsspec URL.

The aligned and TMX sources read through these stores: a file's chunks from a byte offset (so a plain file
resumes right where it stopped), whether a name exists, a folder's listing, and which failures are worth a
retry. http(s) goes through the http connector's GET (Range, status checks, Retry-After, cut bodies) and s3
through the s3 connector's streaming GET, so a file there is read exactly as those sources read theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import httpx

from bhashaflow.config import AlignedSource, RlLogsSource, SourceRetryConfig, TmxSource
from bhashaflow.core.fsio import open_fs
from bhashaflow.core.records import Position, RawRecord
from bhashaflow.core.redact import install_log_filter, redact_uri
from bhashaflow.core.settings import Settings
from connectors import http, s3
from connectors.base import SourceError
from connectors.retry import RetryPolicy, one_line, stream_with_retries

CHUNK_BYTES = 1 << 20
GLOB_CHARS = frozenset("*?[")
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def file_name(uri: str) -> str:
    """The last part of a path or URL, as refs show it (`https://x/en-hi/train.en.gz?sig=1` -> `train.en.gz`)."""
    path = unquote(urlsplit(uri).path) if "://" in uri else uri
    return PurePosixPath(path).name or redact_uri(uri)


def is_transient(exc: BaseException) -> bool:
    """Whether a failure of any store is worth a retry: dropped connections, 5xx, throttling, cut streams."""
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    return http.is_transient(exc) or s3.is_transient(exc) or isinstance(exc, TimeoutError | ConnectionError)


class FileStore(Protocol):
    """Where a source's files live: read, probe and list them by URI."""

    def chunks(self, uri: str, offset: int) -> Iterator[bytes]:
        """The file's bytes from `offset` on (none when `offset` is its size)."""
        ...

    def exists(self, uri: str) -> bool:
        """Whether `uri` names a file."""
        ...

    def list_files(self, folder: str, recursive: bool) -> list[str]:
        """The names of the files in `folder` (in its subfolders too when `recursive`), relative to it, sorted."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class HttpStore:
    """Files on a web server, read with the http connector's GET; a web server cannot be listed."""

    def __init__(self, source_name: str, timeout_s: float) -> None:
        install_log_filter("httpx")  # httpx logs every request's full URL at INFO: mask credentials in it
        self.source_name = source_name
        self.client = http.streaming_client(timeout_s)

    def _what(self, method: str, uri: str) -> str:
        return f"source {self.source_name!r}: {method} {redact_uri(uri)}"

    def chunks(self, uri: str, offset: int) -> Iterator[bytes]:
        what = self._what("GET", uri)
        with _http_errors(what), http.open_body(self.client, uri, what, offset) as body:
            yield from body

    def exists(self, uri: str) -> bool:
        what = self._what("HEAD", uri)
        with _http_errors(what):
            return http.head_exists(self.client, uri, what)

    def list_files(self, folder: str, recursive: bool) -> list[str]:
        raise SourceError(
            f"source {self.source_name!r}: a web server cannot be listed ({redact_uri(folder)}); use a pattern "
            "without wildcards, or name the files with files: {src: ..., tgt: ...}"
        )

    def close(self) -> None:
        self.client.close()


@contextmanager
def _http_errors(what: str) -> Iterator[None]:
    """httpx failures that no retry can cure (a redirect loop, an invalid URL) as a SourceError."""
    try:
        yield
    except httpx.HTTPError as exc:
        if is_transient(exc):
            raise
        raise SourceError(f"{what}: {one_line(exc)}") from None


class S3Store:
    """Objects in S3 or an S3-compatible store, read with the s3 connector's streaming GET."""

    def __init__(self, source_name: str, storage_options: dict[str, Any], timeout_s: float) -> None:
        self.source_name = source_name
        self.fs = s3.s3_filesystem(storage_options, timeout_s)

    def chunks(self, uri: str, offset: int) -> Iterator[bytes]:
        key = uri[len("s3://") :]
        with _storage_errors(self.source_name, "read", uri):
            if offset and _at_end(self.fs.info(key)["size"], offset, self.source_name, uri):
                return
            yield from s3.stream_object(self.fs, key, offset, CHUNK_BYTES)

    def exists(self, uri: str) -> bool:
        with _storage_errors(self.source_name, "look up", uri):
            try:
                return bool(self.fs.info(uri[len("s3://") :])["type"] == "file")
            except FileNotFoundError:
                return False

    def list_files(self, folder: str, recursive: bool) -> list[str]:
        with _storage_errors(self.source_name, "list", folder):
            return _relative_files(self.fs, folder[len("s3://") :].rstrip("/"), recursive)

    def close(self) -> None:
        pass


class FsspecStore:
    """Files on the local disk or any other fsspec filesystem (file://, gs://, memory://, ...)."""

    def __init__(self, source_name: str, uri: str, storage_options: dict[str, Any] | None) -> None:
        self.source_name = source_name
        self.fs, _ = open_fs(uri, storage_options)

    def chunks(self, uri: str, offset: int) -> Iterator[bytes]:
        path = self._path(uri)
        with _storage_errors(self.source_name, "read", uri):
            if offset and _at_end(self.fs.size(path), offset, self.source_name, uri):
                return
            with self.fs.open(path, "rb") as file:
                file.seek(offset)
                while chunk := file.read(CHUNK_BYTES):
                    yield chunk

    def exists(self, uri: str) -> bool:
        with _storage_errors(self.source_name, "look up", uri):
            return bool(self.fs.isfile(self._path(uri)))

    def list_files(self, folder: str, recursive: bool) -> list[str]:
        with _storage_errors(self.source_name, "list", folder):
            return _relative_files(self.fs, self._path(folder).rstrip("/"), recursive)

    def _path(self, uri: str) -> str:
        return str(self.fs._strip_protocol(uri))

    def close(self) -> None:
        pass


def _relative_files(fs: Any, folder: str, recursive: bool) -> list[str]:
    """The files under `folder` of an fsspec filesystem (one listing), relative to it; none when it is missing."""
    try:
        found = fs.find(folder, detail=True) if recursive else {i["name"]: i for i in fs.ls(folder, detail=True)}
    except FileNotFoundError:
        return []
    prefix = folder + "/"
    return sorted(
        name[len(prefix) :] for name, info in found.items() if info.get("type") == "file" and name.startswith(prefix)
    )


def _at_end(size: int | None, offset: int, source_name: str, uri: str) -> bool:
    """Whether a resume at `offset` is at the file's very end; an error when the file is now shorter."""
    if size is not None and offset > size:
        raise SourceError(
            f"source {source_name!r}: {redact_uri(uri)} is now {size} bytes long but was read up to byte {offset}; "
            "it changed since the position was taken"
        )
    return size == offset


@contextmanager
def _storage_errors(source_name: str, doing: str, uri: str) -> Iterator[None]:
    """Storage failures that no retry can cure (a missing file, a refusal) as a SourceError."""
    try:
        yield
    except SourceError:
        raise
    except Exception as exc:
        if is_transient(exc) or not (isinstance(exc, OSError) or s3.is_storage_error(exc)):
            raise
        what = f"source {source_name!r}: cannot {doing} {redact_uri(uri)}"
        raise SourceError(
            f"{what}: no such file" if isinstance(exc, FileNotFoundError) else f"{what}: {one_line(exc)}"
        ) from None


class FileStores:
    """The stores of one read, opened on first use (none is contacted before) and closed together."""

    def __init__(
        self, source_name: str, settings: Settings, retry: SourceRetryConfig, endpoint_url: str | None = None
    ) -> None:
        self.source_name = source_name
        self.settings = settings
        self.timeout_s = retry.timeout_s
        self.endpoint_url = endpoint_url
        self._open: dict[str, FileStore] = {}

    def __enter__(self) -> FileStores:
        return self

    def __exit__(self, *exc: object) -> None:
        for store in self._open.values():
            store.close()
        self._open.clear()

    def for_uri(self, uri: str) -> FileStore:
        """The store holding `uri`."""
        scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
        kind = "http" if scheme in ("http", "https") else "s3" if scheme == "s3" else scheme or "local"
        if kind not in self._open:
            self._open[kind] = self._make(kind, uri)
        return self._open[kind]

    def _make(self, kind: str, uri: str) -> FileStore:
        if kind == "http":
            return HttpStore(self.source_name, self.timeout_s)
        if kind == "s3":
            return S3Store(self.source_name, self.settings.storage_options(self.endpoint_url), self.timeout_s)
        return FsspecStore(self.source_name, uri, self.settings.storage_options_for(uri))


def expand_uri(settings: Settings, uri: str, source_name: str) -> str:
    """`uri` with `${NAME}` references filled from the environment (credentials never sit in the config)."""
    try:
        return settings.expand_env(uri)
    except KeyError as exc:
        raise SourceError(f"source {source_name!r}: its uri names ${{{exc.args[0]}}}, which is not set") from None


class FileSource:
    """What the sources that read files through FileStores (aligned, tmx, rl_logs) share: the source's name and
    expanded uri, its stores, and its reads retried from the last position after each transient failure."""

    def __init__(
        self,
        source: AlignedSource | TmxSource | RlLogsSource,
        settings: Settings,
        retry: SourceRetryConfig | None = None,
    ) -> None:
        self.name = source.name
        self.settings = settings
        self.uri = expand_uri(settings, source.uri, source.name)
        self.endpoint_url = source.endpoint_url
        self.retry = retry or SourceRetryConfig()
        self.policy = RetryPolicy.from_config(self.retry)

    def stores(self) -> FileStores:
        """The stores of one read, opened on first use and closed together."""
        return FileStores(self.name, self.settings, self.retry, self.endpoint_url)

    def retried(
        self,
        read_from: Callable[[Position | None], Iterator[RawRecord]],
        start: Position | None,
        what: str | Callable[[], str],
    ) -> Iterator[RawRecord]:
        """`read_from(start)`, reopened at the last yielded position after each transient failure."""
        return stream_with_retries(read_from, start, policy=self.policy, is_transient=is_transient, what=what)
