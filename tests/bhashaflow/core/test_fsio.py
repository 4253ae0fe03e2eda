"""fsspec helpers: URL joining, atomic and exclusive writes, JSON and hashing on local disk and in memory."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from bhashaflow.core import fsio


@pytest.mark.parametrize(
    ("uri", "parts", "expected"),
    [
        ("s3://bucket/reg/", ("eng_Latn-hin_Deva", "PROMOTED"), "s3://bucket/reg/eng_Latn-hin_Deva/PROMOTED"),
        ("s3://bucket", ("/a/", "b"), "s3://bucket/a/b"),
        ("runs", ("x", "", "y"), "runs/x/y"),
        ("/", ("tmp",), "/tmp"),
        ("file:///tmp/r", ("v0001",), "file:///tmp/r/v0001"),
    ],
)
def test_join(uri: str, parts: tuple[str, ...], expected: str) -> None:
    assert fsio.join(uri, *parts) == expected


def test_open_fs_resolves_local_paths_and_ignores_remote_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    fs, path = fsio.open_fs("registry", {"key": "not-for-local"})
    fs2, path2 = fsio.open_fs(f"file://{tmp_path}/registry")

    assert isinstance(fs, LocalFileSystem) and fsio.is_local(fs)
    assert path == path2 == str(tmp_path / "registry")
    assert fs is fs2
    mem, mem_path = fsio.open_fs("memory://bhashaflow/x")
    assert isinstance(mem, MemoryFileSystem) and not fsio.is_local(mem)
    assert mem_path == "/bhashaflow/x"


def test_write_bytes_atomic_replaces_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "dir" / "PROMOTED"

    fsio.write_bytes_atomic(str(target), b"old")
    fsio.write_bytes_atomic(str(target), b"new")

    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["PROMOTED"]


def test_write_bytes_atomic_crash_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "PROMOTED"
    fsio.write_bytes_atomic(str(target), b"old")

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="disk full"):
            fsio.write_bytes_atomic(str(target), b"new")

    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["PROMOTED"]


@pytest.mark.parametrize("base", ["local", "memory"])
def test_write_bytes_exclusive_refuses_existing(tmp_path: Path, base: str) -> None:
    root = str(tmp_path) if base == "local" else f"memory://{uuid.uuid4().hex}"
    uri = fsio.join(root, "claims", "v0001")

    fsio.write_bytes_exclusive(uri, b"first")
    with pytest.raises(FileExistsError):
        fsio.write_bytes_exclusive(uri, b"second")

    fs, path = fsio.open_fs(uri)
    assert fs.cat_file(path) == b"first"


@pytest.mark.parametrize("base", ["local", "memory"])
def test_json_round_trip_is_canonical(tmp_path: Path, base: str) -> None:
    root = str(tmp_path) if base == "local" else f"memory://{uuid.uuid4().hex}"
    uri = fsio.join(root, "scores.json")
    obj = {"z": 1, "a": {"हिन्दी": [1.5, None]}}

    fsio.write_json_atomic(uri, obj)

    assert fsio.read_json(uri) == obj
    fs, path = fsio.open_fs(uri)
    assert fs.cat_file(path) == fsio.dumps_json({"a": {"हिन्दी": [1.5, None]}, "z": 1})
    assert fs.cat_file(path).decode("utf-8").startswith('{\n  "a": {\n    "हिन्दी"')
