"""Folders published to a run URI (any fsspec URL) so that no reader, on any machine, sees one half-written.

A published folder `<uri>/` is vouched for by its sibling `<uri>.manifest.json`, which lists each file's
size and sha256. A publish removes that manifest first, uploads the files, and writes the manifest last; a
reader takes a folder only with its manifest, and downloads it into a local cache checking every byte
against it. So a kill at any moment of a publish leaves the previous complete folder (it was never touched)
or none (the manifest went first): never a mix. The registry's verify-on-fetch is the model.

On a local disk the writers already publish by rename (written beside, renamed into place), so a local
folder is its own copy and needs no manifest.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from bhashaflow.core.fsio import dumps_json, is_local, open_fs, read_json
from bhashaflow.core.hashing import sha256_file
from bhashaflow.core.names import FOLDER_MANIFEST_SUFFIX, INCOMPLETE

FOLDER_MANIFEST_VERSION = 1


class FolderError(RuntimeError):
    """A published folder that cannot be trusted or read; the message names it and the file."""


def manifest_uri(uri: str) -> str:
    """Where the manifest of the folder at `uri` lives: beside it, so the folder holds only its own files."""
    return uri.rstrip("/") + FOLDER_MANIFEST_SUFFIX


def is_remote(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether `uri` is on an object store or other non-local filesystem (where folders need manifests)."""
    fs, _ = open_fs(uri, storage_options)
    return not is_local(fs)


def _listing(folder: Path) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            raise FolderError(f"{folder}: {entry.name} is a folder; published folders are flat")
        if entry.name == INCOMPLETE:
            raise FolderError(f"{folder} is still being written ({INCOMPLETE} is there)")
        files[entry.name] = {"size": entry.stat().st_size, "sha256": sha256_file(entry)}
    return files


def publish_folder(local: Path, uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy a finished local folder to `uri` (replacing what is there); returns the manifest written.

    Args:
        local: the complete local folder (flat: files only).
        uri: where it is published (an object store URL; a local path is published by rename instead).
        storage_options: fsspec options for `uri`.
    """
    files = _listing(local)
    manifest: dict[str, Any] = {"version": FOLDER_MANIFEST_VERSION, "files": files}
    fs, path = open_fs(uri, storage_options)
    if is_local(fs):
        _publish_locally(local, Path(path))
        return manifest
    _, manifest_path = open_fs(manifest_uri(uri), storage_options)
    if fs.exists(manifest_path):
        fs.rm(manifest_path)  # from here until the last line, readers see no folder: never a mix of two
    for stale in set(_remote_names(fs, path)) - set(files):
        fs.rm(f"{path}/{stale}")
    for name in files:
        fs.put_file(str(local / name), f"{path}/{name}")
    fs.pipe_file(manifest_path, dumps_json(manifest))
    return manifest


def _publish_locally(local: Path, target: Path) -> None:
    if target.exists() and target.resolve() == local.resolve():
        return  # the folder is its own published copy
    partial = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex}")
    shutil.copytree(local, partial)
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)


def _remote_names(fs: Any, path: str) -> list[str]:
    fs.invalidate_cache(path)
    try:
        return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []


def read_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest of the published folder at `uri`, or None when none is published (or one is under way)."""
    fs, path = open_fs(manifest_uri(uri), storage_options)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return None
    manifest: dict[str, Any] = read_json(manifest_uri(uri), storage_options)
    if manifest.get("version") != FOLDER_MANIFEST_VERSION or not isinstance(manifest.get("files"), dict):
        raise FolderError(f"{manifest_uri(uri)}: not a folder manifest this version of bhashaflow reads")
    return manifest


def fetch_folder(uri: str, cache: Path, storage_options: dict[str, Any] | None = None) -> Path | None:
    """A verified local copy of the folder published at `uri`, or None when none is published.

    A local `uri` is returned as it is when complete. A remote one is downloaded into `cache` (reused when an
    intact copy of the same manifest is there) and every file checked against the manifest.

    Args:
        uri: the published folder.
        cache: the local folder to hold the copy (created; replaced when stale).
        storage_options: fsspec options for `uri`.
    """
    fs, path = open_fs(uri, storage_options)
    if is_local(fs):
        folder = Path(path)
        return folder if folder.is_dir() and not (folder / INCOMPLETE).exists() else None
    manifest = read_manifest(uri, storage_options)
    if manifest is None:
        return None
    if _cached_copy_matches(cache, manifest):
        return cache
    partial = cache.with_name(f".{cache.name}.partial-{uuid.uuid4().hex}")
    partial.mkdir(parents=True)
    try:
        for name, expected in manifest["files"].items():
            fs.get_file(f"{path}/{name}", str(partial / name))
            if sha256_file(partial / name) != expected["sha256"]:
                raise FolderError(f"{uri}/{name} does not match its manifest (a publish under way, or tampering)")
        (partial.parent / (partial.name + FOLDER_MANIFEST_SUFFIX)).write_bytes(dumps_json(manifest))
        _replace(partial, cache)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        (partial.parent / (partial.name + FOLDER_MANIFEST_SUFFIX)).unlink(missing_ok=True)
    return cache


def _cached_copy_matches(cache: Path, manifest: dict[str, Any]) -> bool:
    copy = cache.parent / (cache.name + FOLDER_MANIFEST_SUFFIX)
    if not cache.is_dir() or not copy.is_file() or copy.read_bytes() != dumps_json(manifest):
        return False
    try:
        return _listing(cache) == manifest["files"]
    except FolderError:
        return False


def _replace(partial: Path, cache: Path) -> None:
    manifest_copy = cache.parent / (cache.name + FOLDER_MANIFEST_SUFFIX)
    manifest_copy.unlink(missing_ok=True)
    if cache.exists():
        shutil.rmtree(cache)
    os.replace(partial, cache)
    os.replace(partial.parent / (partial.name + FOLDER_MANIFEST_SUFFIX), manifest_copy)


def remove_published(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Unpublish the folder at `uri`: its manifest first (readers stop taking it), then its files."""
    fs, path = open_fs(uri, storage_options)
    if is_local(fs):
        shutil.rmtree(path, ignore_errors=True)
        return
    _, manifest_path = open_fs(manifest_uri(uri), storage_options)
    if fs.exists(manifest_path):
        fs.rm(manifest_path)
    for name in _remote_names(fs, path):
        fs.rm(f"{path}/{name}")


def published_names(parent: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Names of the folders published under `parent` (those with a manifest), sorted."""
    fs, path = open_fs(parent, storage_options)
    return sorted(
        name.removesuffix(FOLDER_MANIFEST_SUFFIX)
        for name in _remote_names(fs, path)
        if name.endswith(FOLDER_MANIFEST_SUFFIX)
    )
