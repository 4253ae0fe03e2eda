"""sha256, the one way: of bytes, of canonical JSON, of a file on any fsspec store, of a folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bhashaflow.core.fsio import open_fs

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of `obj` as JSON with sorted keys: equal objects, equal digests."""
    return sha256_bytes(json.dumps(obj, sort_keys=True).encode())


def sha256_file(uri: str | Path, storage_options: dict[str, Any] | None = None) -> str:
    """Hex sha256 of the file at `uri` (a local path or any fsspec URL), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    if isinstance(uri, Path):
        with uri.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()
    fs, path = open_fs(uri, storage_options)
    with fs.open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_dir(path: str | Path) -> str:
    """`sha256:` + hex sha256 over the relative names and contents of a folder's files, in name order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()
