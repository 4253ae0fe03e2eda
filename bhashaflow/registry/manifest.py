"""What a registered version is, and what it may hold: its manifest (VersionInfo, with the Provenance it records)
and PROMOTED pointer models, and file checks.

A version's `manifest.json` names each of its files with its sha256. Only safetensors, JSON and tokenizer
text files are accepted, never pickles, symlinks or subdirectories, and never a directory that holds
`.incomplete` (the mark of one still being written, or whose writer died). Names and digests read back
from a store are untrusted: a manifest or pointer that does not parse, or names a path, is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from bhashaflow.core.hashing import sha256_bytes
from bhashaflow.core.languages import parse_direction
from bhashaflow.core.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS, INCOMPLETE, PICKLE_SUFFIXES, VERSION_MANIFEST

REQUIRED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
# Weights in safetensors, configs in JSON, tokenizers as JSON/text/sentencepiece protobuf, peft's README.md.
ALLOWED_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".spm", ".jinja", ".tiktoken", ".md")

VERSION_RE = re.compile(r"v\d{4,12}")  # bounded: a 300-digit version from a tampered pointer is no path
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class RegistryError(Exception):
    """A registry operation refused: invalid name, missing, incomplete or tampered version."""


@dataclass(frozen=True)
class Provenance:
    """What a registered version was made from and how it scored, as its manifest records it (at the top level)."""

    base_model: str  # the base the adapter was trained on
    base_revision: str | None  # its revision (None for builtin or local bases)
    data_manifest_sha256: str  # the training data's manifest, by content (bhashaflow.data.manifest)
    config: dict[str, Any]  # the run's configuration, JSON-serialisable (credentials redacted by the caller)
    metrics: dict[str, Any]  # the evaluation's scores, JSON-serialisable


class ProvenanceFields(TypedDict, total=False):
    """A Provenance's fields as keyword arguments (`Registry.register(..., base_model=..., metrics=...)`)."""

    base_model: str
    base_revision: str | None
    data_manifest_sha256: str
    config: dict[str, Any]
    metrics: dict[str, Any]


def provenance_of(provenance: Provenance | None, fields: ProvenanceFields) -> Provenance:
    """`provenance`, or one made of its fields given as keyword arguments: one of the two, not both."""
    if provenance is None:
        return Provenance(**fields)
    if fields:
        raise TypeError(f"pass a Provenance or its fields, not both (got {', '.join(sorted(fields))} too)")
    return provenance


# What the registry adds to a stored manifest when it reads one: never written into the file.
_ADDED = frozenset({"uri", "manifest_sha256"})


class VersionInfo(BaseModel):
    """One registered adapter version: its manifest as stored, plus where it is (`uri`) and the digest of the
    manifest's bytes (`manifest_sha256`), which the registry adds when it reads it."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    direction: str
    version: str
    base_model: str
    base_revision: str | None
    data_manifest_sha256: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    files: dict[str, str]
    created_at: str
    uri: str = ""
    manifest_sha256: str = ""

    @field_validator("files")
    @classmethod
    def _safe_files(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            if not _FILE_NAME_RE.fullmatch(name) or name == VERSION_MANIFEST:
                raise ValueError(f"unsafe file name {name!r}")
            if not name.lower().endswith(ALLOWED_SUFFIXES):  # a pickle listed by a rewritten manifest
                raise ValueError(f"{name!r} is not an allowed adapter file")
            if not _SHA256_RE.fullmatch(digest):
                raise ValueError(f"{name}: {digest!r} is not a sha256 hex digest")
        return files

    @classmethod
    def new(
        cls, direction: str, version: str, provenance: Provenance, files: dict[str, str], created_at: str
    ) -> VersionInfo:
        """A version about to be stored (no uri or digest yet)."""
        return cls(
            direction=direction, version=version, files=files, created_at=created_at, **dataclasses.asdict(provenance)
        )

    @property
    def number(self) -> int:
        return int(self.version[1:])

    @property
    def provenance(self) -> Provenance:
        return Provenance(self.base_model, self.base_revision, self.data_manifest_sha256, self.config, self.metrics)

    def stored(self) -> dict[str, Any]:
        """The manifest's JSON object, as `manifest.json` holds it."""
        return self.model_dump(exclude=set(_ADDED))


@dataclass(frozen=True)
class PromotedPointer:
    """The content of a direction's PROMOTED file (not verified: use it to notice changes only)."""

    version: str
    manifest_sha256: str
    promoted_at: str


class _Pointer(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    version: str
    manifest_sha256: str
    promoted_at: str


def check_direction(direction: str) -> None:
    """Raise RegistryError unless `direction` is `src-tgt` in FLORES-200 codes."""
    try:
        parse_direction(direction)
    except (ValueError, AttributeError) as exc:
        raise RegistryError(f"invalid direction {direction!r}: {exc}") from None


def check_version(version: str) -> None:
    """Raise RegistryError unless `version` is `v` and 4 to 12 digits."""
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise RegistryError(f"invalid version {version!r}: expected v followed by 4 to 12 digits, e.g. v0001")


def parse_manifest(direction: str, version: str, uri: str, data: bytes) -> VersionInfo:
    """The version that manifest bytes `data` describe, refused unless it names `direction`/`version`."""
    where = f"{direction}/{version}"
    try:
        m = VersionInfo.model_validate_json(data)
    except ValidationError as exc:
        raise RegistryError(f"{where}: malformed manifest: {exc.errors()[0]['msg']}") from None
    if (m.direction, m.version) != (direction, version):
        raise RegistryError(f"{where}: manifest names {m.direction}/{m.version}")
    return m.model_copy(update={"uri": uri, "manifest_sha256": sha256_bytes(data)})


def parse_pointer(direction: str, data: bytes) -> PromotedPointer:
    """The PROMOTED pointer in `data`, refused unless its version and digest are well-formed."""
    try:
        p = _Pointer.model_validate_json(data)
    except ValidationError as exc:
        raise RegistryError(f"{direction}: malformed PROMOTED pointer: {exc.errors()[0]['msg']}") from None
    check_version(p.version)
    if not _SHA256_RE.fullmatch(p.manifest_sha256):
        raise RegistryError(f"{direction}: malformed PROMOTED pointer: bad manifest_sha256")
    return PromotedPointer(p.version, p.manifest_sha256, p.promoted_at)


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


def _check_adapter_file(entry: Path) -> None:
    """Raise unless `entry` of an adapter directory is a regular, allowed, well-formed file."""
    name = entry.name
    if entry.is_symlink():
        raise RegistryError(f"{name}: symlinks are refused; copy the file into {entry.parent}")
    if entry.is_dir():
        raise RegistryError(f"{name}: subdirectories are refused; an adapter directory is flat")
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise RegistryError(f"{name}: pickle-format files are refused; save with safe_serialization=True")
    if name == VERSION_MANIFEST or not _FILE_NAME_RE.fullmatch(name) or not name.lower().endswith(ALLOWED_SUFFIXES):
        raise RegistryError(f"{name}: not an allowed adapter file (allowed: {', '.join(ALLOWED_SUFFIXES)})")
    if name.endswith(".safetensors"):
        _check_safetensors(entry)
    elif name.endswith(".json"):
        try:
            json.loads(entry.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{name}: not valid JSON ({exc})") from None


def adapter_files(adapter_dir: Path) -> list[Path]:
    """The files of `adapter_dir` to register, refusing anything that is not a safe adapter file."""
    if not adapter_dir.is_dir():
        raise RegistryError(f"adapter directory {adapter_dir} does not exist")
    if os.path.lexists(adapter_dir / INCOMPLETE):
        raise RegistryError(f"{adapter_dir} is incomplete: {INCOMPLETE} marks a directory still being written")
    files = sorted(adapter_dir.iterdir())
    for entry in files:
        _check_adapter_file(entry)
    missing = [n for n in REQUIRED_FILES if not (adapter_dir / n).is_file()]
    if missing:
        raise RegistryError(f"{adapter_dir} lacks {', '.join(missing)}")
    return files


def compare_files(where: str, expected: dict[str, str], present: dict[str, str], sha256: Callable[[str], str]) -> None:
    """Raise unless `present` (name -> kind) holds exactly the `expected` files with matching sha256."""
    odd = sorted(n for n, kind in present.items() if kind != "file")
    if odd:
        kinds = ", ".join(f"{n} ({present[n]})" for n in odd)
        raise RegistryError(f"{where}: refused entries that are not regular files: {kinds}")
    names = set(present) - {VERSION_MANIFEST}
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if missing:
        raise RegistryError(f"{where}: files missing: {', '.join(missing)}")
    if extra:
        raise RegistryError(f"{where}: files not in the manifest: {', '.join(extra)}")
    for name, digest in sorted(expected.items()):
        actual = sha256(name)
        if actual != digest:
            raise RegistryError(f"{where}: {name} sha256 mismatch (manifest {digest[:12]}..., file {actual[:12]}...)")
