"""Small fsspec helpers: one way to open, write atomically and join paths on local disks and object stores."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any

import fsspec
from fsspec import AbstractFileSystem


def open_fs(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """The filesystem holding `uri` and the path inside it.

    Args:
        uri: A local path, `file://` URL or any fsspec URL (`s3://bucket/key`, `memory://...`).
        storage_options: Options for the remote filesystem (credentials, endpoint); ignored for local paths.
    """
    protocol = fsspec.core.split_protocol(uri)[0]
    if protocol in (None, "file", "local"):
        # Local paths take no options; passing s3 credentials through would only fork fsspec's instance cache.
        return fsspec.core.url_to_fs(uri)
    return fsspec.core.url_to_fs(uri, **(storage_options or {}))


def is_local(fs: AbstractFileSystem) -> bool:
    """Whether `fs` is the local disk (where renames are atomic and symlinks exist)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols


def join(uri: str, *parts: str) -> str:
    """Join URI parts with '/', without doubling separators (`join("s3://b/x/", "y")` -> `s3://b/x/y`)."""
    out = uri.rstrip("/") if uri not in ("/", "") else uri
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}" if out and not out.endswith("/") else f"{out}{part}"
    return out


def _fsync_dir(directory: str) -> None:
    # Persist the rename itself; not every platform can open a directory, which only loses durability.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Replace the file at `uri` with `data` so readers see the old or the new bytes, never a mix.

    Args:
        uri: Destination path or URL; local parent directories are created.
        data: The whole new content.
        storage_options: Options for remote filesystems.
    """
    fs, path = open_fs(uri, storage_options)
    if not is_local(fs):
        # A single PUT is atomic per object on S3-compatible stores.
        fs.pipe_file(path, data)
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def write_bytes_exclusive(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Create the file at `uri` with `data`, raising FileExistsError when it already exists.

    Object stores need conditional writes (`If-None-Match: *`; AWS S3, MinIO and moto have them).

    Args:
        uri: Destination path or URL; local parent directories are created.
        data: The content.
        storage_options: Options for remote filesystems.
    """
    fs, path = open_fs(uri, storage_options)
    if not is_local(fs):
        fs.pipe_file(path, data, mode="create")
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def read_json(uri: str, storage_options: dict[str, Any] | None = None) -> Any:
    """Parse the JSON file at `uri`."""
    fs, path = open_fs(uri, storage_options)
    return json.loads(fs.cat_file(path))


def dumps_json(obj: Any) -> bytes:
    """Canonical UTF-8 JSON (sorted keys, indented) so equal objects give equal bytes and hashes."""
    return (json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_json_atomic(uri: str, obj: Any, storage_options: dict[str, Any] | None = None) -> None:
    """Write `obj` as canonical JSON to `uri`, atomically (see `write_bytes_atomic`)."""
    write_bytes_atomic(uri, dumps_json(obj), storage_options)
