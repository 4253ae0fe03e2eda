"""Writers of named, immutable parts to a folder, an S3 bucket or an HTTP endpoint, each write verified.

A part written twice under the same name replaces the first copy (folder, S3) or carries the same
`Idempotency-Key` (HTTP), which is what lets an interrupted export re-send a part without duplicating it.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import httpx

from bhashaflow.core.fsio import join, open_fs, write_bytes_atomic
from bhashaflow.core.hashing import sha256_bytes, sha256_file
from bhashaflow.core.redact import install_log_filter, redact_uri
from bhashaflow.core.settings import Settings
from bhashaflow.episodes.export import PartSink
from connectors.retry import RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)

T = TypeVar("T")

# Each part's write: fewer and shorter waits than a source's; an export that still fails re-sends the part next run.
SINK_RETRY = RetryPolicy(attempts=5, base_delay_s=0.5, max_delay_s=10.0)

# Statuses worth another try: the server is busy, overloaded or briefly failing.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class SinkError(RuntimeError):
    """A part that could not be written or verified; the message names the target and the part."""


class TransientSinkError(SinkError):
    """A failure worth retrying (dropped connection, 5xx, a read-back that does not match)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def with_retries(op: Callable[[], T], what: str, policy: RetryPolicy) -> T:
    """Run `op`, retrying TransientSinkError with backoff; the last failure is raised as SinkError.

    Args:
        op: the write-and-verify to attempt.
        what: names the part and target in log lines and errors.
        policy: how often and how long to wait.
    """
    attempt = 1
    while True:
        try:
            return op()
        except TransientSinkError as exc:
            if attempt >= policy.attempts:
                raise SinkError(f"{what}: gave up after {attempt} attempts: {exc}") from exc
            delay = policy.delay(attempt, exc.retry_after_s)
            log.warning("%s: attempt %d failed (%s); retrying in %.2fs", what, attempt, exc, delay)
            time.sleep(delay)
            attempt += 1


class FolderSink(PartSink):
    """Parts as files in a local folder, written atomically and read back."""

    def __init__(self, target: str, directory: str, policy: RetryPolicy) -> None:
        self.target = target
        self.directory = directory
        self.policy = policy

    def write(self, name: str, data: bytes, content_type: str) -> None:
        path = os.path.join(self.directory, name)
        expected = sha256_bytes(data)

        def attempt() -> None:
            try:
                write_bytes_atomic(path, data)
                got = sha256_file(Path(path))
            except OSError as exc:
                raise SinkError(f"cannot write {path}: {exc.strerror or exc}") from exc
            if got != expected:
                raise TransientSinkError(f"{path} reads back different bytes than were written")

        with_retries(attempt, f"part {name} to {self.target}", self.policy)
        # An export killed mid-write left write_bytes_atomic's temporary (`.<name>.tmp-<hex>`); this
        # rewrite of the same part is what supersedes it.
        for stale in glob.glob(os.path.join(glob.escape(self.directory), f".{glob.escape(name)}.tmp-*")):
            with contextlib.suppress(OSError):
                os.remove(stale)


class S3Sink(PartSink):
    """Parts as objects under an s3:// prefix, each checked by its size after the upload."""

    def __init__(self, target: str, storage_options: dict[str, object], policy: RetryPolicy) -> None:
        self.target = target.rstrip("/")
        # `policy` is the one retry layer: botocore's own (5 attempts, its own backoff) would multiply it,
        # and a store failing half the requests then stalled a 10-part export for minutes.
        config = storage_options.get("config_kwargs")
        config_kwargs = {**(config if isinstance(config, dict) else {}), "retries": {"total_max_attempts": 1}}
        self.storage_options = {**storage_options, "config_kwargs": config_kwargs}
        self.policy = policy

    def write(self, name: str, data: bytes, content_type: str) -> None:
        uri = join(self.target, name)

        def attempt() -> None:
            try:
                fs, path = open_fs(uri, self.storage_options)
                fs.pipe_file(path, data, ContentType=content_type)
                fs.invalidate_cache(path)
                size = fs.info(path)["size"]
            except (FileNotFoundError, PermissionError) as exc:
                # No such bucket, or access denied: another try gives the same answer.
                raise SinkError(f"cannot write {uri}: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - s3fs/botocore raise many kinds for a dropped connection
                raise TransientSinkError(f"upload of {uri} failed: {type(exc).__name__}: {exc}") from exc
            if size != len(data):
                raise TransientSinkError(f"{uri} holds {size} bytes after the upload, expected {len(data)}")

        with_retries(attempt, f"part {name} to {self.target}", self.policy)


class HttpSink(PartSink):
    """Parts POSTed to an endpoint, one request each, with the part name as `Idempotency-Key`.

    The endpoint must answer 2xx only once it has stored the part, and treat a repeated key as the
    same part (replace, or ignore the copy); that is what makes a re-sent part no duplicate.
    """

    def __init__(self, url: str, policy: RetryPolicy, timeout_s: float = 30.0) -> None:
        install_log_filter("httpx")  # httpx logs each request's full URL: mask credentials in it
        self.target = url
        self.shown = redact_uri(url)  # for messages: no userinfo or secret query values
        self.policy = policy
        self.timeout_s = timeout_s

    def write(self, name: str, data: bytes, content_type: str) -> None:
        headers = {
            "Content-Type": content_type,
            "Idempotency-Key": name,
            "X-Bhashaflow-Part": name,
            "Content-SHA256": sha256_bytes(data),
        }

        def attempt() -> None:
            try:
                with httpx.Client(timeout=self.timeout_s) as client:
                    resp = client.post(self.target, content=data, headers=headers)
            except httpx.TransportError as exc:
                raise TransientSinkError(f"POST {self.shown}: {type(exc).__name__}: {exc}") from exc
            if resp.is_success:
                return
            detail = f"POST {self.shown} answered {resp.status_code}: {resp.text[:200]}"
            if resp.status_code in RETRY_STATUSES:
                raise TransientSinkError(detail, parse_retry_after(resp.headers.get("Retry-After")))
            raise SinkError(detail)

        with_retries(attempt, f"part {name} to {self.shown}", self.policy)


def open_sink(target: str, settings: Settings, policy: RetryPolicy = SINK_RETRY) -> PartSink:
    """The sink for a target: s3://bucket/prefix, http(s)://endpoint, file:///dir or a plain folder path.

    Args:
        target: where parts go.
        settings: credentials and the S3 endpoint.
        policy: retries of each part's write.
    """
    scheme = urlsplit(target).scheme.lower()
    if scheme == "s3":
        return S3Sink(target, settings.storage_options(), policy)
    if scheme in ("http", "https"):
        try:
            url = settings.expand_env(target)  # `${NAME}`: a credential kept in the environment, not the config
        except KeyError as exc:
            raise SinkError(f"target {redact_uri(target)!r} names ${{{exc.args[0]}}}, which is not set") from None
        return HttpSink(url, policy)
    if scheme == "file":
        parts = urlsplit(target)
        if parts.netloc not in ("", "localhost"):
            raise SinkError(f"target {target!r}: file:// URLs must name a local path (file:///dir)")
        return FolderSink(target, unquote(parts.path), policy)
    if scheme and len(scheme) > 1:  # one letter is a Windows drive, i.e. a path
        raise SinkError(f"target {target!r}: unsupported scheme {scheme!r} (use s3://, http(s)://, file:// or a path)")
    return FolderSink(target, os.path.expanduser(target), policy)
