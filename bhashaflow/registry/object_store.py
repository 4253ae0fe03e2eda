"""A registry's storage on an object store through fsspec (S3 and compatible): conditional PUTs and ETags.

Other writers (trainers, CI) change the store at any time, so listings and ETags are read past fsspec's
cache. Keys hold no links, so nothing here can lead out of the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem

from bhashaflow.core import fsio


class ObjectStore:
    """Registry objects under a prefix of a bucket (the `Storage` of store.py)."""

    reads_in_place = False

    def __init__(self, fs: AbstractFileSystem, root: str, storage_options: dict[str, Any] | None) -> None:
        self._fs = fs
        self._root = root.rstrip("/")
        self._storage_options = storage_options
        self.uri: str = fs.unstrip_protocol(self._root)

    def _path(self, *parts: str) -> str:
        return "/".join([self._root, *parts])

    def uri_of(self, *parts: str) -> str:
        return fsio.join(self.uri, *parts)

    def escapes(self, *parts: str) -> bool:
        return False

    def is_symlink(self, *parts: str) -> bool:
        return False

    def entries(self, *parts: str) -> dict[str, str]:
        path = self._path(*parts)
        self._fs.invalidate_cache(path)
        try:
            listing = self._fs.ls(path, detail=True)
        except FileNotFoundError:
            return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e["type"] for e in listing if e["name"].rstrip("/") != path}

    def read(self, *parts: str) -> bytes:
        return bytes(self._fs.cat_file(self._path(*parts)))

    def get(self, dest: Path, *parts: str) -> None:
        self._fs.get_file(self._path(*parts), str(dest))

    def create(self, data: bytes, *parts: str) -> None:
        fsio.write_bytes_exclusive(self.uri_of(*parts), data, self._storage_options)  # If-None-Match: *

    def put(self, data: bytes, *parts: str) -> None:
        with self._fs.open(self._path(*parts), "wb") as fh:
            fh.write(data)

    def publish(self, data: bytes, *parts: str) -> None:
        fsio.write_bytes_atomic(self.uri_of(*parts), data, self._storage_options)  # one PUT is atomic per object

    def swap(self, data: bytes, settled: Callable[[], bool], *parts: str) -> bool:
        path = self._path(*parts)
        etag = self._etag(path)
        if settled():
            return True
        try:
            # Conditional PUT: it lands only if the object is still what was just judged.
            if etag is None:
                self._fs.pipe_file(path, data, mode="create")
            else:
                self._fs.pipe_file(path, data, IfMatch=etag)
        except OSError:
            if self._etag(path) == etag:
                raise  # the store refused the write itself, not a concurrent writer
            return False
        return True

    def _etag(self, path: str) -> str | None:
        self._fs.invalidate_cache(path)
        try:
            return str(self._fs.info(path)["ETag"])
        except FileNotFoundError:
            return None
