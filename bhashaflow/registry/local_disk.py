"""A registry's storage on this machine's disk: flock, exclusive creates, write-then-rename, fsync.

The root is pinned to its resolved path, so a symlink that leads out of it is noticed (`escapes`), and
loaders read the stored files where they are.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from bhashaflow.core import fsio


def folder_entries(path: str) -> dict[str, str]:
    """Names in local directory `path` -> 'file' | 'directory' | 'symlink' | 'other' ({} when there is none)."""
    out: dict[str, str] = {}
    try:
        with os.scandir(path) as it:
            for entry in it:
                if entry.is_symlink():
                    out[entry.name] = "symlink"
                elif entry.is_dir(follow_symlinks=False):
                    out[entry.name] = "directory"
                elif entry.is_file(follow_symlinks=False):
                    out[entry.name] = "file"
                else:
                    out[entry.name] = "other"
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return out


class LocalDisk:
    """Registry files under a local directory (the `Storage` of store.py)."""

    reads_in_place = True

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.uri = self.root

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri_of(self, *parts: str) -> str:
        return fsio.join(self.uri, *parts)

    def escapes(self, *parts: str) -> bool:
        real = os.path.realpath(self._path(*parts))
        return not (real == self.root or real.startswith(self.root + os.sep))

    def is_symlink(self, *parts: str) -> bool:
        return os.path.islink(self._path(*parts))

    def entries(self, *parts: str) -> dict[str, str]:
        return folder_entries(self._path(*parts))

    def read(self, *parts: str) -> bytes:
        return Path(self._path(*parts)).read_bytes()

    def get(self, dest: Path, *parts: str) -> None:
        shutil.copyfile(self._path(*parts), dest)

    def create(self, data: bytes, *parts: str) -> None:
        fsio.write_bytes_exclusive(self.uri_of(*parts), data)  # O_EXCL, fsynced

    def put(self, data: bytes, *parts: str) -> None:
        path = self._path(*parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # "x": a freshly claimed version directory is empty; a file there means a bug, not a retry.
        with open(path, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def publish(self, data: bytes, *parts: str) -> None:
        fsio.write_bytes_atomic(self.uri_of(*parts), data)  # a fsynced temporary file renamed over the old

    def swap(self, data: bytes, settled: Callable[[], bool], *parts: str) -> bool:
        # Under the lock nobody else writes the file, so one judgement and one write always succeed.
        with self._locked(*parts):
            if not settled():
                fsio.write_bytes_atomic(self.uri_of(*parts), data)
        return True

    @contextlib.contextmanager
    def _locked(self, *parts: str) -> Iterator[None]:
        # flock on the file's directory: writers take turns, and a crashed holder's lock dies with it.
        directory = self._path(*parts[:-1])
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for name, kind in folder_entries(directory).items():
                if kind == "file" and name.startswith(f".{parts[-1]}.tmp-"):
                    os.remove(os.path.join(directory, name))  # a crashed writer's temporary file
            yield
        finally:
            os.close(fd)
