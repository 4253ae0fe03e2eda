"""Versioned, checksummed LoRA adapters per translation direction, on a local disk or an object store.

Layout under the registry URI (any fsspec URL; a local directory by default):

    <direction>/versions/<version>/    adapter_config.json, adapter_model.safetensors, tokenizer files, manifest.json
    <direction>/claims/<version>       written exclusively to allocate the version number
    <direction>/PROMOTED               {"version", "manifest_sha256", "promoted_at"}

A version is valid only once its `manifest.json` exists; the manifest is written last and lists the
sha256 of every file. Every read that serves a model (`verify`, `promote`, `promoted`, `fetch`)
re-hashes the files, so a tampered or half-copied version is refused with RegistryError: serving
never loads it. What a version may hold is checked by manifest.py.

PROMOTED moves by compare-and-swap (`Storage.swap`: under flock locally, by conditional PUT on object
stores), so `promote_if` never silently replaces an incumbent that a concurrent promotion put there
after the candidate was judged against another.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Unpack

from bhashaflow.config import PipelineConfig
from bhashaflow.core import fsio
from bhashaflow.core.hashing import sha256_bytes, sha256_file
from bhashaflow.core.languages import parse_direction
from bhashaflow.core.names import PROMOTED, VERSION_MANIFEST
from bhashaflow.core.settings import Settings, get_settings
from bhashaflow.registry.local_disk import LocalDisk, folder_entries
from bhashaflow.registry.manifest import (
    VERSION_RE,
    PromotedPointer,
    Provenance,
    ProvenanceFields,
    RegistryError,
    VersionInfo,
    adapter_files,
    check_direction,
    check_version,
    compare_files,
    parse_manifest,
    parse_pointer,
    provenance_of,
)
from bhashaflow.registry.object_store import ObjectStore

# The registry's public names; the manifest's models and errors are re-exported from here.
__all__ = [
    "PromotedPointer",
    "PromotionConflict",
    "Provenance",
    "Registry",
    "RegistryError",
    "Storage",
    "VersionInfo",
    "open_storage",
    "registry_for",
]

MAX_CLAIM_ATTEMPTS = 1000
MAX_SWAP_ATTEMPTS = 50


class PromotionConflict(RegistryError):
    """PROMOTED no longer points at the incumbent a conditional promotion was decided against."""


class Storage(Protocol):
    """Where a registry's files live, each named by its path parts under the root (`direction`, `versions`, ...)."""

    uri: str  # the root, as a local path or an fsspec URL
    reads_in_place: bool  # loaders can read the stored files where they are: fetch verifies, never downloads

    def uri_of(self, *parts: str) -> str:
        """The URI of a path under the root."""

    def escapes(self, *parts: str) -> bool:
        """Whether the path resolves outside the root (through a symlink)."""

    def is_symlink(self, *parts: str) -> bool:
        """Whether the path is a symlink."""

    def entries(self, *parts: str) -> dict[str, str]:
        """Names in a directory -> 'file' | 'directory' (| 'symlink' | 'other'); {} when there is none."""

    def read(self, *parts: str) -> bytes:
        """A file's bytes (FileNotFoundError when it is missing)."""

    def get(self, dest: Path, *parts: str) -> None:
        """Copy a file to the local path `dest`."""

    def create(self, data: bytes, *parts: str) -> None:
        """Create a file, raising FileExistsError when it exists: one creator wins each name."""

    def put(self, data: bytes, *parts: str) -> None:
        """Write a new file into a directory that its manifest, written last, will publish."""

    def publish(self, data: bytes, *parts: str) -> None:
        """Replace a file at once: readers see the old or the new bytes, never a mix."""

    def swap(self, data: bytes, settled: Callable[[], bool], *parts: str) -> bool:
        """One compare-and-swap: judge the file with `settled()` (True: leave it; it may raise), then
        replace it with `data` only if nobody changed it since. False when somebody did: judge again."""


def open_storage(uri: str, storage_options: dict[str, Any] | None = None) -> Storage:
    """The storage holding `uri`: the local disk for paths and `file://` URLs, else an object store."""
    fs, root = fsio.open_fs(uri, storage_options)
    if fsio.is_local(fs):
        return LocalDisk(root)
    return ObjectStore(fs, root, storage_options)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _json_fields(provenance: Provenance) -> Provenance:
    """`provenance` as it reads back from a manifest, refused unless its config and metrics are JSON-serialisable."""
    try:
        fields = json.loads(fsio.dumps_json({"config": provenance.config, "metrics": provenance.metrics}))
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"config and metrics must be JSON-serialisable: {exc}") from None
    return dataclasses.replace(provenance, config=fields["config"], metrics=fields["metrics"])


def _local_copy_ok(target: Path, info: VersionInfo, manifest_bytes: bytes) -> bool:
    """Whether local directory `target` holds exactly this version: its manifest and every file intact."""
    manifest = target / VERSION_MANIFEST
    if not target.is_dir() or target.is_symlink() or not manifest.is_file() or manifest.is_symlink():
        return False
    if manifest.read_bytes() != manifest_bytes:
        return False
    try:
        compare_files(str(target), info.files, folder_entries(str(target)), lambda n: sha256_file(target / n))
    except RegistryError:
        return False
    return True


def _replace_dir(src: Path, target: Path) -> None:
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    os.replace(src, target)


class Registry:
    """Adapter versions per direction under one fsspec URL, with an atomically replaced PROMOTED pointer.

    Args:
        uri: Registry location: a local directory or an fsspec URL such as `s3://bucket/registry`.
        storage_options: Options for remote filesystems (credentials, `client_kwargs.endpoint_url`).
    """

    def __init__(self, uri: str = "registry", storage_options: dict[str, Any] | None = None) -> None:
        self.storage_options = storage_options
        self._store = open_storage(uri, storage_options)
        self.uri: str = self._store.uri

    def adapter_uri(self, direction: str, version: str) -> str:
        """URI of a version's directory.

        Args:
            direction: `src-tgt` FLORES-200 codes.
            version: `v0001`-style version.
        """
        check_direction(direction)
        check_version(version)
        return self._store.uri_of(direction, "versions", version)

    def _refuse_escape(self, where: str, *parts: str) -> None:
        if self._store.escapes(*parts):  # a direction or version directory that is a symlink to elsewhere
            raise RegistryError(f"{where}: resolves outside the registry {self.uri}")

    # -- writing -----------------------------------------------------------------------------------

    def register(
        self,
        direction: str,
        adapter_dir: str | Path,
        provenance: Provenance | None = None,
        *,
        reuse: bool = False,
        **fields: Unpack[ProvenanceFields],
    ) -> VersionInfo:
        """Copy an adapter directory into a new version; its manifest is written last.

        Args:
            direction: `src-tgt` FLORES-200 codes.
            adapter_dir: Local directory with adapter_config.json, adapter_model.safetensors and tokenizer files.
            provenance: What the adapter was made from and how it scored (base model and revision, the training
                data manifest's sha256, the config and the metrics, JSON-serialisable); or give its fields as
                keyword arguments instead (`base_model=..., base_revision=..., ..., metrics=...`).
            reuse: Return an intact version that already holds these very files and fields instead of
                copying them again (a re-run of a promotion that crashed after registering).
        """
        made_of = provenance_of(provenance, fields)
        check_direction(direction)
        files = adapter_files(Path(adapter_dir))
        stored = _json_fields(made_of)
        self._refuse_escape(direction, direction)
        if reuse:
            found = self._intact_version_with(direction, {src.name: sha256_file(src) for src in files}, stored)
            if found is not None:
                return found
        version = self._claim_version(direction)
        hashes = {src.name: self._copy_in(src, direction, version) for src in files}
        data = fsio.dumps_json(VersionInfo.new(direction, version, made_of, hashes, _now()).stored())
        # Last: until the manifest lands, the version is incomplete and invisible to readers.
        self._store.publish(data, direction, "versions", version, VERSION_MANIFEST)
        return self._info(direction, version, data)

    def _intact_version_with(self, direction: str, files: dict[str, str], provenance: Provenance) -> VersionInfo | None:
        """The newest intact version whose manifest holds these `files` (name -> sha256) and `provenance`, if any."""
        for existing in reversed(self.versions(direction)):
            if existing.files == files and existing.provenance == provenance:
                try:
                    return self.verify(direction, existing.version)
                except RegistryError:
                    continue  # damaged since: register a fresh copy instead
        return None

    def _numbers(self, direction: str, kind: str) -> set[int]:
        return {int(n[1:]) for n in self._store.entries(direction, kind) if VERSION_RE.fullmatch(n)}

    def _claim_version(self, direction: str) -> str:
        taken = self._numbers(direction, "claims") | self._numbers(direction, "versions")
        number = max(taken, default=0) + 1
        claim = fsio.dumps_json({"claimed_at": _now(), "host": socket.gethostname(), "pid": os.getpid()})
        for _ in range(MAX_CLAIM_ATTEMPTS):
            version = f"v{number:04d}"
            try:
                self._store.create(claim, direction, "claims", version)  # one winner per number
                return version
            except FileExistsError:
                number += 1
        raise RegistryError(f"{direction}: could not claim a version after {MAX_CLAIM_ATTEMPTS} attempts")

    def _copy_in(self, src: Path, direction: str, version: str) -> str:
        """Copy local `src` into a claimed version, returning the sha256 of exactly the bytes written."""
        data = src.read_bytes()
        self._store.put(data, direction, "versions", version, src.name)
        return sha256_bytes(data)

    def promote(self, direction: str, version: str) -> VersionInfo:
        """Verify a version, then atomically point PROMOTED at it (the previous pointer survives any failure).

        Unconditional, as a rollback is; use `promote_if` when the choice was made against an incumbent.

        Args:
            direction: `src-tgt` FLORES-200 codes.
            version: Version to serve.
        """
        return self._switch(direction, version, lambda current: True)

    def promote_if(self, direction: str, version: str, *, incumbent: str | None) -> VersionInfo:
        """Point PROMOTED at `version` only while `incumbent` is still the promoted version (compare-and-swap).

        Raises PromotionConflict when another promotion moved the pointer since `incumbent` was judged.
        When `version` itself is already promoted (a re-run after a crash), nothing changes.

        Args:
            direction: `src-tgt` FLORES-200 codes.
            version: Version to serve.
            incumbent: The promoted version the candidate was compared with; None when nothing was promoted.
        """
        return self._switch(direction, version, lambda current: current == incumbent)

    def _switch(self, direction: str, version: str, allowed: Callable[[str | None], bool]) -> VersionInfo:
        info = self.verify(direction, version)
        data = fsio.dumps_json({"version": version, "manifest_sha256": info.manifest_sha256, "promoted_at": _now()})

        def settled() -> bool:
            """True when `version` is promoted already; raises PromotionConflict when the switch is not allowed."""
            current = self.pointer(direction)
            name = current.version if current else None
            if name == version and current and current.manifest_sha256 == info.manifest_sha256:
                return True
            if not allowed(name):
                raise PromotionConflict(f"{direction}: {name or 'nothing'} is promoted now, not the incumbent judged")
            return False

        for _ in range(MAX_SWAP_ATTEMPTS):
            if self._store.swap(data, settled, direction, PROMOTED):
                return info
        raise RegistryError(f"{direction}: PROMOTED changed under all {MAX_SWAP_ATTEMPTS} tries to promote {version}")

    # -- reading -----------------------------------------------------------------------------------

    def _info(self, direction: str, version: str, data: bytes) -> VersionInfo:
        return parse_manifest(direction, version, self._store.uri_of(direction, "versions", version), data)

    def _read_manifest(self, direction: str, version: str) -> VersionInfo:
        return self._info(direction, version, self._manifest_bytes(direction, version))

    def _manifest_bytes(self, direction: str, version: str) -> bytes:
        check_direction(direction)
        check_version(version)
        where = f"{direction}/{version}"
        self._refuse_escape(where, direction, "versions", version)
        if self._store.is_symlink(direction, "versions", version, VERSION_MANIFEST):
            raise RegistryError(f"{where}: manifest is a symlink")
        try:
            return self._store.read(direction, "versions", version, VERSION_MANIFEST)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise RegistryError(f"{where}: no manifest (version missing or incomplete)") from None

    def verify(self, direction: str, version: str) -> VersionInfo:
        """Check a version's files against its manifest: none missing, none extra, every sha256 equal.

        Raises RegistryError on any difference; returns the version's info when it is intact.

        Args:
            direction: `src-tgt` FLORES-200 codes.
            version: Version to check.
        """
        info = self._read_manifest(direction, version)
        compare_files(
            f"{direction}/{version}",
            info.files,
            self._store.entries(direction, "versions", version),
            lambda name: sha256_file(self._store.uri_of(direction, "versions", version, name), self.storage_options),
        )
        return info

    def pointer(self, direction: str) -> PromotedPointer | None:
        """The PROMOTED pointer as stored, unverified (None when nothing is promoted): cheap to poll for changes.

        Args:
            direction: `src-tgt` FLORES-200 codes.
        """
        check_direction(direction)
        if self._store.is_symlink(direction, PROMOTED):
            raise RegistryError(f"{direction}: PROMOTED is a symlink")
        self._refuse_escape(direction, direction, PROMOTED)
        try:
            data = self._store.read(direction, PROMOTED)
        except FileNotFoundError:
            return None
        return parse_pointer(direction, data)

    def promoted(self, direction: str) -> VersionInfo | None:
        """The promoted version, verified; None when nothing was promoted.

        Raises RegistryError when the promoted version's files or manifest changed since promotion:
        a tampered version is never handed out, and the caller keeps what it already serves.

        Args:
            direction: `src-tgt` FLORES-200 codes.
        """
        p = self.pointer(direction)
        if p is None:
            return None
        info = self.verify(direction, p.version)
        if info.manifest_sha256 != p.manifest_sha256:
            raise RegistryError(f"{direction}/{p.version}: manifest changed since it was promoted")
        return info

    def versions(self, direction: str) -> list[VersionInfo]:
        """Complete versions (with a well-formed manifest), oldest first; files are not hashed here.

        Args:
            direction: `src-tgt` FLORES-200 codes.
        """
        check_direction(direction)
        out = []
        for name, kind in self._store.entries(direction, "versions").items():
            if kind != "directory" or not VERSION_RE.fullmatch(name):
                continue
            try:
                out.append(self._read_manifest(direction, name))
            except RegistryError:
                continue  # incomplete (still being written, or crashed): not a version yet
        return sorted(out, key=lambda v: v.number)

    def directions(self) -> list[str]:
        """Directions that have anything registered."""
        out = []
        for name, kind in self._store.entries().items():
            if kind != "directory":
                continue
            try:
                parse_direction(name)
            except ValueError:
                continue
            out.append(name)
        return sorted(out)

    def fetch(self, direction: str, version: str, dest_dir: str | Path) -> str:
        """A verified local directory holding the version's files, ready to load.

        Local registries verify in place and return the version's own directory. Remote ones
        download into `dest_dir/<direction>/<version>` (reused when an intact copy is there) and
        hash the downloaded bytes, so what is returned is exactly what the manifest lists.

        Args:
            direction: `src-tgt` FLORES-200 codes.
            version: Version to fetch.
            dest_dir: Local cache directory for remote registries.
        """
        if self._store.reads_in_place:
            return self.verify(direction, version).uri
        return self._download(direction, version, Path(dest_dir))

    def _download(self, direction: str, version: str, dest_dir: Path) -> str:
        manifest_bytes = self._manifest_bytes(direction, version)
        info = self._info(direction, version, manifest_bytes)
        where = f"{direction}/{version}"
        stored = self._store.entries(direction, "versions", version)
        # Names only here; the bytes are checked after download instead of reading the store twice.
        compare_files(where, info.files, stored, lambda name: info.files[name])
        target = dest_dir / direction / version
        if _local_copy_ok(target, info, manifest_bytes):
            return str(target)
        tmp = target.parent / f".{version}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            for name in info.files:
                self._store.get(tmp / name, direction, "versions", version, name)
            (tmp / VERSION_MANIFEST).write_bytes(manifest_bytes)
            compare_files(where, info.files, folder_entries(str(tmp)), lambda name: sha256_file(tmp / name))
            if _local_copy_ok(target, info, manifest_bytes):
                # Another fetcher (a second serving worker) finished first and may be loading it: keep theirs.
                return str(target)
            _replace_dir(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return str(target)

    def fetch_promoted(self, direction: str, dest_dir: str | Path) -> tuple[VersionInfo, str] | None:
        """The promoted version and a verified local directory of it (None when nothing is promoted).

        Reads a remote store once (download, then hash locally) where `promoted()` + `fetch()` would read twice.

        Args:
            direction: `src-tgt` FLORES-200 codes.
            dest_dir: Local cache directory for remote registries.
        """
        p = self.pointer(direction)
        if p is None:
            return None
        path = self.fetch(direction, p.version, dest_dir)
        # Judge the manifest that sits beside the verified files, not a second read of the store.
        info = self._info(direction, p.version, Path(path, VERSION_MANIFEST).read_bytes())
        if info.manifest_sha256 != p.manifest_sha256:
            raise RegistryError(f"{direction}/{p.version}: manifest changed since it was promoted")
        return info, path


def registry_for(config: PipelineConfig, settings: Settings | None = None) -> Registry:
    """The registry that `config.registry` names, opened with this machine's storage options for it.

    Args:
        config: the pipeline config (its `registry` URI).
        settings: this process's settings (credentials); `get_settings()` when None.
    """
    settings = settings or get_settings()
    return Registry(config.registry, settings.storage_options_for(config.registry))
