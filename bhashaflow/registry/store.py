"""Versioned, checksummed LoRA adapters per translation direction, on a local disk or an object store.

Layout under the registry URI (any fsspec URL; a local directory by default):

    <direction>/versions/<version>/    adapter_config.json, adapter_model.safetensors, tokenizer files, manifest.json
    <direction>/claims/<version>       written exclusively to allocate the version number
    <direction>/PROMOTED               {"version", "manifest_sha256", "promoted_at"}

A version is valid only once its `manifest.json` exists; the manifest is written last and lists the
sha256 of every file. Every read that serves a model (`verify`, `promote`, `promoted`, `fetch`)
re-hashes the files, so a tampered or half-copied version is refused with RegistryError: serving
never loads it. Only safetensors, JSON and tokenizer text files are accepted, never pickles, and never
a directory that holds `.incomplete` (the mark of one still being written, or whose writer died).

PROMOTED moves under a per-direction lock (flock locally, conditional PUTs on object stores), so
`promote_if` is a compare-and-swap: a promotion decided against one incumbent never silently replaces
another that a concurrent promotion put there in between.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from bhashaflow.core import fsio
from bhashaflow.core.hashing import sha256_bytes, sha256_file
from bhashaflow.core.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS, INCOMPLETE, PICKLE_SUFFIXES, PROMOTED
from bhashaflow.core.names import VERSION_MANIFEST as MANIFEST
from bhashaflow.core.languages import parse_direction

REQUIRED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
# Weights in safetensors, configs in JSON, tokenizers as JSON/text/sentencepiece protobuf, peft's README.md.
ALLOWED_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".spm", ".jinja", ".tiktoken", ".md")
MAX_CLAIM_ATTEMPTS = 1000
MAX_SWAP_ATTEMPTS = 50

_VERSION_RE = re.compile(r"v\d{4,12}")  # bounded: a 300-digit version from a tampered pointer is no path
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


class RegistryError(Exception):
    """A registry operation refused: invalid name, missing, incomplete or tampered version."""


class PromotionConflict(RegistryError):
    """PROMOTED no longer points at the incumbent a conditional promotion was decided against."""


@dataclass(frozen=True)
class VersionInfo:
    """One registered adapter version, as its manifest describes it."""

    direction: str
    version: str
    uri: str
    base_model: str
    base_revision: str | None
    data_manifest_sha256: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    files: dict[str, str]
    created_at: str
    manifest_sha256: str

    @property
    def number(self) -> int:
        return int(self.version[1:])


@dataclass(frozen=True)
class PromotedPointer:
    """The content of a direction's PROMOTED file (not verified: use it to notice changes only)."""

    version: str
    manifest_sha256: str
    promoted_at: str


class _Manifest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    direction: str
    version: str
    base_model: str
    base_revision: str | None
    data_manifest_sha256: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    files: dict[str, str]
    created_at: str

    @field_validator("files")
    @classmethod
    def _safe_files(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            if not _FILE_NAME_RE.fullmatch(name) or name == MANIFEST:
                raise ValueError(f"unsafe file name {name!r}")
            if not name.lower().endswith(ALLOWED_SUFFIXES):  # a pickle listed by a rewritten manifest
                raise ValueError(f"{name!r} is not an allowed adapter file")
            if not _SHA256_RE.fullmatch(digest):
                raise ValueError(f"{name}: {digest!r} is not a sha256 hex digest")
        return files


class _Pointer(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    version: str
    manifest_sha256: str
    promoted_at: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _check_direction(direction: str) -> None:
    try:
        parse_direction(direction)
    except (ValueError, AttributeError) as exc:
        raise RegistryError(f"invalid direction {direction!r}: {exc}") from None


def _check_version(version: str) -> None:
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise RegistryError(f"invalid version {version!r}: expected v followed by 4 to 12 digits, e.g. v0001")


def _check_safetensors(path: Path) -> None:
    # A safetensors file opens with an 8-byte little-endian header length and a JSON header; a
    # renamed pickle does not, so this refuses it before it reaches a loader.
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 0 or n > size - 8:
            raise RegistryError(f"{path.name}: not a safetensors file (bad header length)")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        raise RegistryError(f"{path.name}: not a safetensors file (header is not a JSON object)")
    # The tensors' byte ranges must end exactly at the end of the file: a truncated copy is refused here.
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise RegistryError(f"{path.name}: not a safetensors file (bad tensor offsets)") from None
    if 8 + n + end != size:
        raise RegistryError(
            f"{path.name}: truncated safetensors file ({size} bytes, its header describes {8 + n + end})"
        )


def _adapter_files(adapter_dir: Path) -> list[Path]:
    """The files of `adapter_dir` to register, refusing anything that is not a safe adapter file."""
    if not adapter_dir.is_dir():
        raise RegistryError(f"adapter directory {adapter_dir} does not exist")
    if os.path.lexists(adapter_dir / INCOMPLETE):
        raise RegistryError(f"{adapter_dir} is incomplete: {INCOMPLETE} marks a directory still being written")
    files = []
    for entry in sorted(adapter_dir.iterdir()):
        name = entry.name
        if entry.is_symlink():
            raise RegistryError(f"{name}: symlinks are refused; copy the file into {adapter_dir}")
        if entry.is_dir():
            raise RegistryError(f"{name}: subdirectories are refused; an adapter directory is flat")
        if name.lower().endswith(PICKLE_SUFFIXES):
            raise RegistryError(f"{name}: pickle-format files are refused; save with safe_serialization=True")
        if name == MANIFEST or not _FILE_NAME_RE.fullmatch(name) or not name.lower().endswith(ALLOWED_SUFFIXES):
            raise RegistryError(f"{name}: not an allowed adapter file (allowed: {', '.join(ALLOWED_SUFFIXES)})")
        if name.endswith(".safetensors"):
            _check_safetensors(entry)
        elif name.endswith(".json"):
            try:
                json.loads(entry.read_bytes())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RegistryError(f"{name}: not valid JSON ({exc})") from None
        files.append(entry)
    missing = [n for n in REQUIRED_FILES if not (adapter_dir / n).is_file()]
    if missing:
        raise RegistryError(f"{adapter_dir} lacks {', '.join(missing)}")
    return files


def _compare_files(where: str, expected: dict[str, str], present: dict[str, str], sha256: Callable[[str], str]) -> None:
    """Raise unless `present` (name -> kind) holds exactly the `expected` files with matching sha256."""
    odd = sorted(n for n, kind in present.items() if kind != "file")
    if odd:
        kinds = ", ".join(f"{n} ({present[n]})" for n in odd)
        raise RegistryError(f"{where}: refused entries that are not regular files: {kinds}")
    names = set(present) - {MANIFEST}
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if missing:
        raise RegistryError(f"{where}: files missing: {', '.join(missing)}")
    if extra:
        raise RegistryError(f"{where}: files not in the manifest: {', '.join(extra)}")
    for name, digest in sorted(expected.items()):
        actual = sha256(name)
        if actual != digest:
            raise RegistryError(f"{where}: {name} sha256 mismatch (manifest {digest[:12]}..., file {actual[:12]}...)")


def _local_entries(path: str) -> dict[str, str]:
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


class Registry:
    """Adapter versions per direction under one fsspec URL, with an atomically replaced PROMOTED pointer.

    Args:
        uri: Registry location: a local directory or an fsspec URL such as `s3://bucket/registry`.
        storage_options: Options for remote filesystems (credentials, `client_kwargs.endpoint_url`).
    """

    def __init__(self, uri: str = "registry", storage_options: dict[str, Any] | None = None) -> None:
        self.storage_options = storage_options
        self._fs, root = fsio.open_fs(uri, storage_options)
        self._local = fsio.is_local(self._fs)
        # Local registries are pinned to their resolved path so symlinks are judged against it.
        self._root = os.path.realpath(root) if self._local else root.rstrip("/")
        self.uri: str = self._root if self._local else self._fs.unstrip_protocol(self._root)

    # -- paths -------------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join([self._root, *parts])

    def _uri(self, *parts: str) -> str:
        return fsio.join(self.uri, *parts)

    def _inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self._root or real.startswith(self._root + os.sep)

    def _entries(self, path: str) -> dict[str, str]:
        """Names in directory `path` -> 'file' | 'directory' (| 'symlink' | 'other' on local disks)."""
        if self._local:
            return _local_entries(path)
        self._fs.invalidate_cache(path)  # other writers (trainers, CI) change the store under us
        try:
            listing = self._fs.ls(path, detail=True)
        except FileNotFoundError:
            return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e["type"] for e in listing if e["name"].rstrip("/") != path}

    def adapter_uri(self, direction: str, version: str) -> str:
        """URI of a version's directory.

        Args:
            direction: `src-tgt` FLORES-200 codes.
            version: `v0001`-style version.
        """
        _check_direction(direction)
        _check_version(version)
        return self._uri(direction, "versions", version)

    # -- writing -----------------------------------------------------------------------------------

    def _numbers(self, direction: str, kind: str) -> set[int]:
        return {int(n[1:]) for n in self._entries(self._path(direction, kind)) if _VERSION_RE.fullmatch(n)}

    def _claim_version(self, direction: str) -> str:
        taken = self._numbers(direction, "claims") | self._numbers(direction, "versions")
        number = max(taken, default=0) + 1
        claim = fsio.dumps_json({"claimed_at": _now(), "host": socket.gethostname(), "pid": os.getpid()})
        for _ in range(MAX_CLAIM_ATTEMPTS):
            version = f"v{number:04d}"
            try:
                # Exclusive create (O_EXCL locally, If-None-Match on object stores): one winner per number.
                fsio.write_bytes_exclusive(self._uri(direction, "claims", version), claim, self.storage_options)
                return version
            except FileExistsError:
                number += 1
        raise RegistryError(f"{direction}: could not claim a version after {MAX_CLAIM_ATTEMPTS} attempts")

    def _copy_in(self, src: Path, dest: str) -> str:
        """Copy local `src` to registry path `dest`, returning the sha256 of exactly the bytes written."""
        digest = hashlib.sha256()
        with src.open("rb") as fin:
            if self._local:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                # "x": a freshly claimed version directory is empty; a file there means a bug, not a retry.
                with open(dest, "xb") as fout:
                    while chunk := fin.read(_CHUNK):
                        digest.update(chunk)
                        fout.write(chunk)
                    fout.flush()
                    os.fsync(fout.fileno())
            else:
                with self._fs.open(dest, "wb") as fout:
                    while chunk := fin.read(_CHUNK):
                        digest.update(chunk)
                        fout.write(chunk)
        return digest.hexdigest()

    def register(
        self,
        direction: str,
        adapter_dir: str | Path,
        *,
        base_model: str,
        base_revision: str | None,
        data_manifest_sha256: str,
        config: dict[str, Any],
        metrics: dict[str, Any],
        reuse: bool = False,
    ) -> VersionInfo:
        """Copy an adapter directory into a new version; its manifest is written last.

        Args:
            direction: `src-tgt` FLORES-200 codes.
            adapter_dir: Local directory with adapter_config.json, adapter_model.safetensors and tokenizer files.
            base_model: Base model the adapter was trained on.
            base_revision: Revision of the base model (None for builtin or local bases).
            data_manifest_sha256: sha256 of the training data manifest.
            config: Training configuration (JSON-serialisable).
            metrics: Evaluation metrics (JSON-serialisable), e.g. chrF and chrF++.
            reuse: Return an intact version that already holds these very files and fields instead of
                copying them again (a re-run of a promotion that crashed after registering).
        """
        _check_direction(direction)
        files = _adapter_files(Path(adapter_dir))
        try:
            fields = json.loads(fsio.dumps_json({"config": config, "metrics": metrics}))
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"config and metrics must be JSON-serialisable: {exc}") from None
        if self._local and not self._inside(self._path(direction)):
            raise RegistryError(f"{direction}: resolves outside the registry {self._root}")
        if reuse:
            wanted = {
                "files": {src.name: sha256_file(src) for src in files}, "base_model": base_model,
                "base_revision": base_revision, "data_manifest_sha256": data_manifest_sha256, **fields,
            }
            for existing in reversed(self.versions(direction)):
                if all(getattr(existing, key) == value for key, value in wanted.items()):
                    try:
                        return self.verify(direction, existing.version)
                    except RegistryError:
                        continue  # damaged since: register a fresh copy instead
        version = self._claim_version(direction)
        hashes = {src.name: self._copy_in(src, self._path(direction, "versions", version, src.name)) for src in files}
        manifest = {
            "direction": direction,
            "version": version,
            "base_model": base_model,
            "base_revision": base_revision,
            "data_manifest_sha256": data_manifest_sha256,
            "config": config,
            "metrics": metrics,
            "files": hashes,
            "created_at": _now(),
        }
        data = fsio.dumps_json(manifest)
        # Last: until the manifest lands, the version is incomplete and invisible to readers.
        fsio.write_bytes_atomic(self._uri(direction, "versions", version, MANIFEST), data, self.storage_options)
        return self._info(direction, version, data)

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

        def settled(current: PromotedPointer | None) -> bool:
            """True when `version` is promoted already; raises PromotionConflict when the switch is not allowed."""
            name = current.version if current else None
            if name == version and current and current.manifest_sha256 == info.manifest_sha256:
                return True
            if not allowed(name):
                raise PromotionConflict(f"{direction}: {name or 'nothing'} is promoted now, not the incumbent judged")
            return False

        path = self._path(direction, PROMOTED)
        if self._local:
            with self._promotion_lock(direction):
                if not settled(self.pointer(direction)):
                    fsio.write_bytes_atomic(self._uri(direction, PROMOTED), data)
            return info
        for _ in range(MAX_SWAP_ATTEMPTS):
            etag = self._etag(path)
            if settled(self.pointer(direction)):
                return info
            try:
                # Conditional PUT: it lands only if PROMOTED is still what was just judged.
                if etag is None:
                    self._fs.pipe_file(path, data, mode="create")
                else:
                    self._fs.pipe_file(path, data, IfMatch=etag)
                return info
            except OSError:
                if self._etag(path) == etag:
                    raise  # the store refused the write itself, not a concurrent promotion
        raise RegistryError(f"{direction}: PROMOTED changed under all {MAX_SWAP_ATTEMPTS} tries to promote {version}")

    def _etag(self, path: str) -> str | None:
        self._fs.invalidate_cache(path)
        try:
            return str(self._fs.info(path)["ETag"])
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _promotion_lock(self, direction: str) -> Iterator[None]:
        # flock on the direction's folder: promotions take turns, and a crashed holder's lock dies with it.
        directory = self._path(direction)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for name, kind in _local_entries(directory).items():
                if kind == "file" and name.startswith(f".{PROMOTED}.tmp-"):
                    os.remove(os.path.join(directory, name))  # a crashed promoter's temporary pointer
            yield
        finally:
            os.close(fd)

    # -- reading -----------------------------------------------------------------------------------

    def _info(self, direction: str, version: str, data: bytes) -> VersionInfo:
        where = f"{direction}/{version}"
        try:
            m = _Manifest.model_validate_json(data)
        except ValidationError as exc:
            raise RegistryError(f"{where}: malformed manifest: {exc.errors()[0]['msg']}") from None
        if (m.direction, m.version) != (direction, version):
            raise RegistryError(f"{where}: manifest names {m.direction}/{m.version}")
        return VersionInfo(
            direction=direction,
            version=version,
            uri=self._uri(direction, "versions", version),
            base_model=m.base_model,
            base_revision=m.base_revision,
            data_manifest_sha256=m.data_manifest_sha256,
            config=m.config,
            metrics=m.metrics,
            files=m.files,
            created_at=m.created_at,
            manifest_sha256=sha256_bytes(data),
        )

    def _read_manifest(self, direction: str, version: str) -> VersionInfo:
        return self._info(direction, version, self._manifest_bytes(direction, version))

    def _manifest_bytes(self, direction: str, version: str) -> bytes:
        _check_direction(direction)
        _check_version(version)
        where = f"{direction}/{version}"
        vdir = self._path(direction, "versions", version)
        manifest = self._path(direction, "versions", version, MANIFEST)
        if self._local:
            if not self._inside(vdir):
                raise RegistryError(f"{where}: resolves outside the registry {self._root}")
            if os.path.islink(manifest):
                raise RegistryError(f"{where}: manifest is a symlink")
        try:
            data = self._fs.cat_file(manifest)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise RegistryError(f"{where}: no manifest (version missing or incomplete)") from None
        return bytes(data)

    def verify(self, direction: str, version: str) -> VersionInfo:
        """Check a version's files against its manifest: none missing, none extra, every sha256 equal.

        Raises RegistryError on any difference; returns the version's info when it is intact.

        Args:
            direction: `src-tgt` FLORES-200 codes.
            version: Version to check.
        """
        info = self._read_manifest(direction, version)
        vdir = self._path(direction, "versions", version)
        _compare_files(
            f"{direction}/{version}",
            info.files,
            self._entries(vdir),
            lambda name: sha256_file(self._uri(direction, "versions", version, name), self.storage_options),
        )
        return info

    def pointer(self, direction: str) -> PromotedPointer | None:
        """The PROMOTED pointer as stored, unverified (None when nothing is promoted): cheap to poll for changes.

        Args:
            direction: `src-tgt` FLORES-200 codes.
        """
        _check_direction(direction)
        path = self._path(direction, PROMOTED)
        if self._local and os.path.islink(path):
            raise RegistryError(f"{direction}: PROMOTED is a symlink")
        if self._local and not self._inside(path):  # a direction folder that is a symlink to elsewhere
            raise RegistryError(f"{direction}: resolves outside the registry {self._root}")
        try:
            data = self._fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            p = _Pointer.model_validate_json(data)
        except ValidationError as exc:
            raise RegistryError(f"{direction}: malformed PROMOTED pointer: {exc.errors()[0]['msg']}") from None
        _check_version(p.version)
        if not _SHA256_RE.fullmatch(p.manifest_sha256):
            raise RegistryError(f"{direction}: malformed PROMOTED pointer: bad manifest_sha256")
        return PromotedPointer(p.version, p.manifest_sha256, p.promoted_at)

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
        _check_direction(direction)
        out = []
        for name, kind in self._entries(self._path(direction, "versions")).items():
            if kind != "directory" or not _VERSION_RE.fullmatch(name):
                continue
            try:
                out.append(self._read_manifest(direction, name))
            except RegistryError:
                continue  # incomplete (still being written, or crashed): not a version yet
        return sorted(out, key=lambda v: v.number)

    def directions(self) -> list[str]:
        """Directions that have anything registered."""
        out = []
        for name, kind in self._entries(self._root).items():
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
        if self._local:
            return self.verify(direction, version).uri
        manifest_bytes = self._manifest_bytes(direction, version)
        info = self._info(direction, version, manifest_bytes)
        where = f"{direction}/{version}"
        remote = self._entries(self._path(direction, "versions", version))
        # Names only here; the bytes are checked after download instead of reading the store twice.
        _compare_files(where, info.files, remote, lambda name: info.files[name])
        target = Path(dest_dir) / direction / version
        if self._cached_copy_ok(target, info, manifest_bytes):
            return str(target)
        tmp = target.parent / f".{version}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            for name in info.files:
                self._fs.get_file(self._path(direction, "versions", version, name), str(tmp / name))
            (tmp / MANIFEST).write_bytes(manifest_bytes)
            _compare_files(where, info.files, _local_entries(str(tmp)), lambda name: sha256_file(tmp / name))
            if self._cached_copy_ok(target, info, manifest_bytes):
                # Another fetcher (a second serving worker) finished first and may be loading it: keep theirs.
                return str(target)
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return str(target)

    @staticmethod
    def _cached_copy_ok(target: Path, info: VersionInfo, manifest_bytes: bytes) -> bool:
        manifest = target / MANIFEST
        if not target.is_dir() or target.is_symlink() or not manifest.is_file() or manifest.is_symlink():
            return False
        if manifest.read_bytes() != manifest_bytes:
            return False
        try:
            _compare_files(str(target), info.files, _local_entries(str(target)), lambda n: sha256_file(target / n))
        except RegistryError:
            return False
        return True

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
        info = self._info(direction, p.version, Path(path, MANIFEST).read_bytes())
        if info.manifest_sha256 != p.manifest_sha256:
            raise RegistryError(f"{direction}/{p.version}: manifest changed since it was promoted")
        return info, path
