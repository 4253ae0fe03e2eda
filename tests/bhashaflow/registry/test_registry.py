"""The adapter registry on a local disk and on S3 (moto's S3 server over HTTP): versions, checksums, promotion."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file
from servers import S3Server

from bhashaflow.config import PipelineConfig
from bhashaflow.core import fsio
from bhashaflow.core.settings import Settings
from bhashaflow.registry.store import (
    PromotionConflict,
    Provenance,
    Registry,
    RegistryError,
    Storage,
    VersionInfo,
    open_storage,
    registry_for,
)

DIRECTION = "eng_Latn-hin_Deva"
BUCKET = "bhashaflow-test"


def make_adapter(path: Path, seed: int = 0) -> Path:
    """A small adapter directory shaped like peft's save_pretrained plus a tokenizer."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    save_file(
        {
            "base_model.model.encoder.layers.0.q_proj.lora_A.weight": rng.standard_normal((4, 32), dtype=np.float32),
            "base_model.model.encoder.layers.0.q_proj.lora_B.weight": np.zeros((32, 4), dtype=np.float32),
        },
        str(path / "adapter_model.safetensors"),
    )
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": seed}}}))
    (path / "README.md").write_text("# adapter\n")
    return path


def register(
    registry: Registry, adapter: Path, direction: str = DIRECTION, chrf_pp: float = 40.0, *, reuse: bool = False
) -> VersionInfo:
    return registry.register(
        direction,
        adapter,
        base_model="builtin:tiny-seq2seq",
        base_revision=None,
        data_manifest_sha256="ab" * 32,
        config={"training": {"max_steps": 3}},
        metrics={"chrf_pp": chrf_pp},
        reuse=reuse,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    return make_adapter(tmp_path / "adapter")


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(str(tmp_path / "registry"))


# -- local round trip ------------------------------------------------------------------------------


def test_register_promote_promoted_round_trip(registry: Registry, adapter: Path, tmp_path: Path) -> None:
    info = register(registry, adapter)

    vdir = tmp_path / "registry" / DIRECTION / "versions" / "v0001"
    assert info.version == "v0001"
    assert info.uri == str(vdir) == registry.adapter_uri(DIRECTION, "v0001")
    assert sorted(p.name for p in vdir.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
        "tokenizer.json",
    ]
    expected_files = {p.name: sha256(p) for p in adapter.iterdir()}
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["files"] == expected_files == info.files
    assert {k: manifest[k] for k in ("direction", "version", "base_model", "base_revision", "metrics")} == {
        "direction": DIRECTION,
        "version": "v0001",
        "base_model": "builtin:tiny-seq2seq",
        "base_revision": None,
        "metrics": {"chrf_pp": 40.0},
    }
    assert manifest["data_manifest_sha256"] == "ab" * 32
    assert manifest["config"] == {"training": {"max_steps": 3}}
    assert info.manifest_sha256 == sha256(vdir / "manifest.json")
    assert registry.promoted(DIRECTION) is None

    promoted = registry.promote(DIRECTION, "v0001")

    pointer = json.loads((tmp_path / "registry" / DIRECTION / "PROMOTED").read_text())
    assert pointer["version"] == "v0001"
    assert pointer["manifest_sha256"] == info.manifest_sha256
    assert promoted == info == registry.promoted(DIRECTION)
    assert registry.versions(DIRECTION) == [info]
    assert registry.directions() == [DIRECTION]
    assert registry.fetch(DIRECTION, "v0001", tmp_path / "cache") == str(vdir)
    assert not (tmp_path / "cache").exists()  # local registries serve in place
    fetched = registry.fetch_promoted(DIRECTION, tmp_path / "cache")
    assert fetched == (info, str(vdir))


def test_versions_increase_and_promotion_can_roll_back(registry: Registry, tmp_path: Path) -> None:
    first = register(registry, make_adapter(tmp_path / "a1", seed=1), chrf_pp=40.0)
    second = register(registry, make_adapter(tmp_path / "a2", seed=2), chrf_pp=41.0)
    other = register(registry, make_adapter(tmp_path / "a3", seed=3), direction="hin_Deva-eng_Latn")

    assert [first.version, second.version, other.version] == ["v0001", "v0002", "v0001"]
    assert [v.version for v in registry.versions(DIRECTION)] == ["v0001", "v0002"]
    assert registry.directions() == [DIRECTION, "hin_Deva-eng_Latn"]

    registry.promote(DIRECTION, "v0002")
    assert registry.promoted(DIRECTION) == second
    registry.promote(DIRECTION, "v0001")
    assert registry.promoted(DIRECTION) == first
    assert registry.promoted("hin_Deva-eng_Latn") is None


# -- tampering -------------------------------------------------------------------------------------


def test_tampered_version_is_never_promoted(registry: Registry, tmp_path: Path) -> None:
    register(registry, make_adapter(tmp_path / "a1", seed=1))
    register(registry, make_adapter(tmp_path / "a2", seed=2))
    registry.promote(DIRECTION, "v0001")
    flip_last_byte(tmp_path / "registry" / DIRECTION / "versions" / "v0002" / "adapter_model.safetensors")

    with pytest.raises(RegistryError, match=r"v0002: adapter_model.safetensors sha256 mismatch"):
        registry.promote(DIRECTION, "v0002")

    assert registry.promoted(DIRECTION).version == "v0001"  # type: ignore[union-attr]


def test_tampering_after_promotion_is_refused_by_promoted_and_fetch(
    registry: Registry, adapter: Path, tmp_path: Path
) -> None:
    register(registry, adapter)
    registry.promote(DIRECTION, "v0001")
    flip_last_byte(tmp_path / "registry" / DIRECTION / "versions" / "v0001" / "adapter_config.json")

    with pytest.raises(RegistryError, match="adapter_config.json sha256 mismatch"):
        registry.promoted(DIRECTION)
    with pytest.raises(RegistryError, match="adapter_config.json sha256 mismatch"):
        registry.fetch(DIRECTION, "v0001", tmp_path / "cache")
    with pytest.raises(RegistryError, match="adapter_config.json sha256 mismatch"):
        registry.fetch_promoted(DIRECTION, tmp_path / "cache")


def test_consistently_rewritten_manifest_is_caught_by_the_promoted_pointer(
    registry: Registry, adapter: Path, tmp_path: Path
) -> None:
    register(registry, adapter)
    registry.promote(DIRECTION, "v0001")
    vdir = tmp_path / "registry" / DIRECTION / "versions" / "v0001"
    # An attacker swaps a file and re-hashes it into the manifest: the version verifies on its own...
    (vdir / "tokenizer.json").write_text('{"evil": true}')
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["tokenizer.json"] = sha256(vdir / "tokenizer.json")
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    registry.verify(DIRECTION, "v0001")

    # ...but not as the version that was promoted.
    with pytest.raises(RegistryError, match="manifest changed since it was promoted"):
        registry.promoted(DIRECTION)
    with pytest.raises(RegistryError, match="manifest changed since it was promoted"):
        registry.fetch_promoted(DIRECTION, tmp_path / "cache")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda v: (v / "extra.json").write_text("{}"), "files not in the manifest: extra.json"),
        (lambda v: (v / "tokenizer.json").unlink(), "files missing: tokenizer.json"),
        (lambda v: (v / "sub").mkdir(), r"not regular files: sub \(directory\)"),
        (lambda v: (v / "manifest.json").write_text("{not json"), "malformed manifest"),
        (lambda v: (v / "manifest.json").write_text('{"direction": 1}'), "malformed manifest"),
        (lambda v: (v / "manifest.json").unlink(), "no manifest"),
    ],
)
def test_verify_refuses_damaged_versions(
    registry: Registry, adapter: Path, tmp_path: Path, damage: Callable[[Path], Any], message: str
) -> None:
    register(registry, adapter)
    damage(tmp_path / "registry" / DIRECTION / "versions" / "v0001")

    with pytest.raises(RegistryError, match=message):
        registry.verify(DIRECTION, "v0001")
    with pytest.raises(RegistryError, match=message):
        registry.promote(DIRECTION, "v0001")
    assert not (tmp_path / "registry" / DIRECTION / "PROMOTED").exists()


def test_manifest_with_traversing_file_name_is_refused(registry: Registry, adapter: Path, tmp_path: Path) -> None:
    register(registry, adapter)
    manifest_path = tmp_path / "registry" / DIRECTION / "versions" / "v0001" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../../../outside.json"] = "00" * 32
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(
        RegistryError, match="malformed manifest: Value error, unsafe file name '../../../outside.json'"
    ):
        registry.verify(DIRECTION, "v0001")


# -- incomplete versions and crashes ---------------------------------------------------------------


def test_version_without_manifest_is_ignored(registry: Registry, tmp_path: Path) -> None:
    register(registry, make_adapter(tmp_path / "a1", seed=1))
    register(registry, make_adapter(tmp_path / "a2", seed=2))
    (tmp_path / "registry" / DIRECTION / "versions" / "v0002" / "manifest.json").unlink()

    assert [v.version for v in registry.versions(DIRECTION)] == ["v0001"]
    with pytest.raises(RegistryError, match="v0002: no manifest"):
        registry.promote(DIRECTION, "v0002")
    # The number stays taken: the next registration never reuses a half-written version.
    assert register(registry, make_adapter(tmp_path / "a3", seed=3)).version == "v0003"


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", ["after_first_file", "at_manifest"])
def test_crash_during_register_leaves_an_invisible_version(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    register(registry, make_adapter(tmp_path / "a1", seed=1))
    registry.promote(DIRECTION, "v0001")
    adapter2 = make_adapter(tmp_path / "a2", seed=2)
    real_fsync, real_write = os.fsync, fsio.write_bytes_atomic
    calls = {"fsync": 0}

    def fsync(fd: int) -> None:
        calls["fsync"] += 1
        if calls["fsync"] == 3:  # 1: the claim, 2: first adapter file, 3: second file
            raise Crash("power loss")
        real_fsync(fd)

    def write_bytes_atomic(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
        if uri.endswith("manifest.json"):
            raise Crash("power loss")
        real_write(uri, data, storage_options)

    with monkeypatch.context() as m:
        if crash_at == "after_first_file":
            m.setattr(os, "fsync", fsync)
        else:
            m.setattr(fsio, "write_bytes_atomic", write_bytes_atomic)
        with pytest.raises(Crash):
            register(registry, adapter2)

    vdir = tmp_path / "registry" / DIRECTION / "versions" / "v0002"
    assert vdir.is_dir() and not (vdir / "manifest.json").exists()
    assert [v.version for v in registry.versions(DIRECTION)] == ["v0001"]
    assert registry.promoted(DIRECTION).version == "v0001"  # type: ignore[union-attr]
    assert register(registry, adapter2).version == "v0003"


@pytest.mark.parametrize("op", ["fsync", "replace"])
def test_crash_while_promoting_keeps_the_previous_pointer(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str
) -> None:
    first = register(registry, make_adapter(tmp_path / "a1", seed=1))
    register(registry, make_adapter(tmp_path / "a2", seed=2))
    registry.promote(DIRECTION, "v0001")
    direction_dir = tmp_path / "registry" / DIRECTION
    before = (direction_dir / "PROMOTED").read_bytes()

    def boom(*args: Any) -> None:
        raise Crash(f"crash in os.{op}")

    with monkeypatch.context() as m:
        m.setattr(os, op, boom)
        with pytest.raises(Crash):
            registry.promote(DIRECTION, "v0002")

    assert (direction_dir / "PROMOTED").read_bytes() == before
    assert registry.promoted(DIRECTION) == first
    assert sorted(p.name for p in direction_dir.iterdir()) == ["PROMOTED", "claims", "versions"]  # no temp left
    registry.promote(DIRECTION, "v0002")
    assert registry.promoted(DIRECTION).version == "v0002"  # type: ignore[union-attr]


# -- path safety -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "direction",
    ["../eng_Latn-hin_Deva", "eng_Latn-hin_Deva/../..", "/etc", "eng_Latn-../../x", "eng_Latn-eng_Latn", ""],
)
def test_bad_directions_are_refused(registry: Registry, adapter: Path, tmp_path: Path, direction: str) -> None:
    for call in (
        lambda: register(registry, adapter, direction=direction),
        lambda: registry.verify(direction, "v0001"),
        lambda: registry.promote(direction, "v0001"),
        lambda: registry.promoted(direction),
        lambda: registry.versions(direction),
        lambda: registry.adapter_uri(direction, "v0001"),
        lambda: registry.fetch(direction, "v0001", tmp_path / "cache"),
    ):
        with pytest.raises(RegistryError, match="invalid direction"):
            call()
    assert not (tmp_path / "registry").exists()


@pytest.mark.parametrize("version", ["../v0001", "v0001/..", "v1", "/etc/passwd", "v0001/manifest.json", "V0001", ""])
def test_bad_versions_are_refused(registry: Registry, adapter: Path, tmp_path: Path, version: str) -> None:
    register(registry, adapter)
    for call in (
        lambda: registry.verify(DIRECTION, version),
        lambda: registry.promote(DIRECTION, version),
        lambda: registry.adapter_uri(DIRECTION, version),
        lambda: registry.fetch(DIRECTION, version, tmp_path / "cache"),
    ):
        with pytest.raises(RegistryError, match="invalid version"):
            call()


def test_symlinks_in_the_registry_are_refused(registry: Registry, tmp_path: Path) -> None:
    register(registry, make_adapter(tmp_path / "a1", seed=1))
    versions = tmp_path / "registry" / DIRECTION / "versions"
    # A file replaced by a symlink to identical bytes outside the registry.
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(versions / "v0001" / "tokenizer.json", outside / "tokenizer.json")
    (versions / "v0001" / "tokenizer.json").unlink()
    (versions / "v0001" / "tokenizer.json").symlink_to(outside / "tokenizer.json")

    with pytest.raises(RegistryError, match=r"not regular files: tokenizer.json \(symlink\)"):
        registry.verify(DIRECTION, "v0001")

    # A whole version directory pointing outside the registry, complete and consistent there.
    shutil.copytree(versions / "v0001", outside / "v0002", symlinks=False)
    manifest = json.loads((outside / "v0002" / "manifest.json").read_text())
    (outside / "v0002" / "manifest.json").write_text(json.dumps({**manifest, "version": "v0002"}))
    (versions / "v0002").symlink_to(outside / "v0002", target_is_directory=True)

    with pytest.raises(RegistryError, match="v0002: resolves outside the registry"):
        registry.promote(DIRECTION, "v0002")
    # versions() lists complete versions without hashing: v0001 shows (verify refuses it), v0002 does not.
    assert [v.version for v in registry.versions(DIRECTION)] == ["v0001"]


def test_register_refuses_a_direction_symlinked_outside(registry: Registry, adapter: Path, tmp_path: Path) -> None:
    (tmp_path / "registry").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "registry" / DIRECTION).symlink_to(tmp_path / "outside", target_is_directory=True)

    with pytest.raises(RegistryError, match=f"{DIRECTION}: resolves outside the registry"):
        register(registry, adapter)
    assert list((tmp_path / "outside").iterdir()) == []


def test_promoted_pointer_symlink_is_refused(registry: Registry, adapter: Path, tmp_path: Path) -> None:
    register(registry, adapter)
    registry.promote(DIRECTION, "v0001")
    pointer = tmp_path / "registry" / DIRECTION / "PROMOTED"
    shutil.move(pointer, tmp_path / "elsewhere")
    pointer.symlink_to(tmp_path / "elsewhere")

    with pytest.raises(RegistryError, match="PROMOTED is a symlink"):
        registry.promoted(DIRECTION)


# -- what an adapter directory may hold ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("pytorch_model.bin", pickle.dumps({"w": 1}), "pytorch_model.bin: pickle-format files are refused"),
        ("optimizer.pt", pickle.dumps({"w": 1}), "optimizer.pt: pickle-format files are refused"),
        ("state.pkl", pickle.dumps({"w": 1}), "state.pkl: pickle-format files are refused"),
        ("adapter_model.safetensors", pickle.dumps({"w": 1}), "adapter_model.safetensors: not a safetensors file"),
        ("adapter_config.json", pickle.dumps({"w": 1}), "adapter_config.json: not valid JSON"),
        ("run.sh", b"rm -rf /", "run.sh: not an allowed adapter file"),
        ("manifest.json", b"{}", "manifest.json: not an allowed adapter file"),
        (".hidden.json", b"{}", ".hidden.json: not an allowed adapter file"),
    ],
)
def test_unsafe_adapter_files_are_refused_before_a_version_is_claimed(
    registry: Registry, adapter: Path, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    (adapter / name).write_bytes(content)

    with pytest.raises(RegistryError, match=message):
        register(registry, adapter)

    assert not (tmp_path / "registry").exists()


def test_truncated_weights_are_refused(registry: Registry, adapter: Path, tmp_path: Path) -> None:
    weights = adapter / "adapter_model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-5])  # a copy cut short: the header still parses

    message = rf"truncated safetensors file \({len(whole) - 5} bytes, its header describes {len(whole)}\)"
    with pytest.raises(RegistryError, match=message):
        register(registry, adapter)
    assert not (tmp_path / "registry").exists()


def test_a_directory_marked_incomplete_is_refused(registry: Registry, adapter: Path, tmp_path: Path) -> None:
    # Training marks the folders it is still writing; every file in this one is whole, yet it is refused.
    (adapter / ".incomplete").touch()

    with pytest.raises(RegistryError, match="is incomplete: .incomplete marks a directory still being written"):
        register(registry, adapter)
    assert not (tmp_path / "registry").exists()


def test_reuse_returns_the_intact_identical_version(registry: Registry, adapter: Path, tmp_path: Path) -> None:
    first = register(registry, adapter, reuse=True)
    assert register(registry, adapter, reuse=True) == first  # a re-run after a crash: no duplicate
    assert register(registry, adapter, chrf_pp=41.0, reuse=True).version == "v0002"  # other metrics: a new version
    assert register(registry, adapter).version == "v0003"  # without reuse, always a new version
    flip_last_byte(tmp_path / "registry" / DIRECTION / "versions" / "v0001" / "tokenizer.json")
    # v0003 is the newest identical one; once it is damaged too, a fresh copy is made.
    assert register(registry, adapter, reuse=True).version == "v0003"
    flip_last_byte(tmp_path / "registry" / DIRECTION / "versions" / "v0003" / "tokenizer.json")
    assert register(registry, adapter, reuse=True).version == "v0004"


def test_adapter_dir_needs_config_and_weights_and_no_links(registry: Registry, adapter: Path, tmp_path: Path) -> None:
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(RegistryError, match="lacks adapter_config.json"):
        register(registry, adapter)

    (adapter / "adapter_config.json").symlink_to(tmp_path / "adapter" / "tokenizer.json")
    with pytest.raises(RegistryError, match="adapter_config.json: symlinks are refused"):
        register(registry, adapter)

    with pytest.raises(RegistryError, match="does not exist"):
        register(registry, tmp_path / "missing")


# -- concurrency -----------------------------------------------------------------------------------


def test_concurrent_registrations_get_distinct_versions(registry: Registry, tmp_path: Path) -> None:
    adapters = [make_adapter(tmp_path / f"a{i}", seed=i) for i in range(8)]
    barrier = threading.Barrier(len(adapters))
    results: dict[int, VersionInfo] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = register(registry, adapters[i])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(adapters))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert errors == []
    assert sorted(r.version for r in results.values()) == [f"v{n:04d}" for n in range(1, 9)]
    for i, info in results.items():
        # Each version holds the adapter its registrant copied, not a neighbour's.
        assert info.files["adapter_model.safetensors"] == sha256(adapters[i] / "adapter_model.safetensors")
        assert registry.verify(DIRECTION, info.version) == info


def _lose_the_first_claim_race(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make another registrar win the first number this registry tries to claim."""
    real = fsio.write_bytes_exclusive
    raced: list[str] = []

    def racing(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
        if not raced:
            raced.append(uri)
            real(uri, b'{"by": "another registrar"}', storage_options)
        real(uri, data, storage_options)

    monkeypatch.setattr(fsio, "write_bytes_exclusive", racing)
    return raced


def test_a_lost_claim_race_moves_to_the_next_version(
    registry: Registry, adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raced = _lose_the_first_claim_race(registry, monkeypatch)

    assert register(registry, adapter).version == "v0002"
    assert raced == [registry.uri + f"/{DIRECTION}/claims/v0001"]


def check_compare_and_swap(reg: Registry, tmp_path: Path) -> None:
    for seed in (1, 2, 3):
        register(reg, make_adapter(tmp_path / f"a{seed}", seed=seed))

    reg.promote_if(DIRECTION, "v0001", incumbent=None)
    with pytest.raises(PromotionConflict, match=f"{DIRECTION}: v0001 is promoted now, not the incumbent judged"):
        reg.promote_if(DIRECTION, "v0002", incumbent=None)
    assert reg.promoted(DIRECTION).version == "v0001"  # type: ignore[union-attr]

    reg.promote_if(DIRECTION, "v0002", incumbent="v0001")
    pointer = reg.pointer(DIRECTION)
    assert reg.promote_if(DIRECTION, "v0002", incumbent="v0001").version == "v0002"  # a re-run: already done
    assert reg.pointer(DIRECTION) == pointer  # untouched, promoted_at included
    with pytest.raises(PromotionConflict, match="v0002 is promoted now"):
        reg.promote_if(DIRECTION, "v0003", incumbent="v0001")
    reg.promote(DIRECTION, "v0001")  # a rollback is unconditional
    assert reg.promoted(DIRECTION).version == "v0001"  # type: ignore[union-attr]


def test_promote_if_is_a_compare_and_swap(registry: Registry, tmp_path: Path) -> None:
    check_compare_and_swap(registry, tmp_path)


def test_a_crashed_promoters_temporary_pointer_is_removed(registry: Registry, adapter: Path, tmp_path: Path) -> None:
    register(registry, adapter)
    stale = tmp_path / "registry" / DIRECTION / ".PROMOTED.tmp-0123abcd"
    stale.write_text('{"version": "v0001"')  # what os._exit in the middle of a pointer write leaves

    registry.promote(DIRECTION, "v0001")

    assert sorted(p.name for p in stale.parent.iterdir()) == ["PROMOTED", "claims", "versions"]


# -- S3 through moto's server (tests/conftest.py: real HTTP, behind a fault-injecting proxy) -------------------


@pytest.fixture
def s3_registry(s3_server: S3Server) -> Registry:
    s3_server.create_bucket(BUCKET)
    uri = f"s3://{BUCKET}/registry"
    # The production path: credentials and endpoint come from the environment the fixture set.
    return Registry(uri, storage_options=Settings().storage_options_for(uri))


def test_s3_registry_round_trip(s3_registry: Registry, tmp_path: Path) -> None:
    reg = s3_registry
    adapter1, adapter2 = make_adapter(tmp_path / "a1", seed=1), make_adapter(tmp_path / "a2", seed=2)
    first = register(reg, adapter1)
    second = register(reg, adapter2)
    reg.promote(DIRECTION, "v0002")

    assert (first.version, second.version) == ("v0001", "v0002")
    assert second.uri == f"{reg.uri}/{DIRECTION}/versions/v0002"
    assert reg.uri.startswith(f"s3://{BUCKET}/")
    assert reg.promoted(DIRECTION) == second
    assert reg.versions(DIRECTION) == [first, second]
    assert reg.directions() == [DIRECTION]
    fs, root = fsio.open_fs(reg.uri, reg.storage_options)
    assert json.loads(fs.cat_file(f"{root}/{DIRECTION}/PROMOTED"))["version"] == "v0002"

    cache = tmp_path / "cache"
    path = reg.fetch(DIRECTION, "v0002", cache)

    local = Path(path)
    assert local == cache / DIRECTION / "v0002"
    assert {p.name: sha256(p) for p in local.iterdir() if p.name != "manifest.json"} == {
        p.name: sha256(p) for p in adapter2.iterdir()
    }
    assert sha256(local / "manifest.json") == second.manifest_sha256
    assert reg.fetch_promoted(DIRECTION, cache) == (second, path)

    # A damaged cached copy is replaced by a fresh, verified download.
    flip_last_byte(local / "adapter_model.safetensors")
    assert reg.fetch(DIRECTION, "v0002", cache) == path
    assert sha256(local / "adapter_model.safetensors") == sha256(adapter2 / "adapter_model.safetensors")
    assert sorted(p.name for p in (cache / DIRECTION).iterdir()) == ["v0002"]  # no temp directories left


def test_s3_tampered_object_is_refused(s3_registry: Registry, adapter: Path, tmp_path: Path) -> None:
    reg = s3_registry
    register(reg, adapter)
    reg.promote(DIRECTION, "v0001")
    fs, root = fsio.open_fs(reg.uri, reg.storage_options)
    fs.pipe_file(f"{root}/{DIRECTION}/versions/v0001/adapter_config.json", b'{"peft_type": "EVIL"}')

    with pytest.raises(RegistryError, match="adapter_config.json sha256 mismatch"):
        reg.promoted(DIRECTION)
    with pytest.raises(RegistryError, match="adapter_config.json sha256 mismatch"):
        reg.fetch(DIRECTION, "v0001", tmp_path / "cache")
    assert not (tmp_path / "cache" / DIRECTION / "v0001").exists()


def test_s3_failed_pointer_put_keeps_the_previous_pointer(
    s3_registry: Registry, s3_server: S3Server, tmp_path: Path
) -> None:
    reg = s3_registry
    first = register(reg, make_adapter(tmp_path / "a1", seed=1))
    register(reg, make_adapter(tmp_path / "a2", seed=2))
    reg.promote(DIRECTION, "v0001")
    # The store refuses the PUT of the new pointer (403: not retried), after every version file was read.
    s3_server.plan.fail(times=1, status=403, method="PUT", path="/PROMOTED")

    with pytest.raises(OSError, match="injected fault"):
        reg.promote(DIRECTION, "v0002")

    assert [r.method for r in s3_server.plan.requests if r.fault == "status"] == ["PUT"]
    assert reg.promoted(DIRECTION) == first
    reg.promote(DIRECTION, "v0002")
    assert reg.promoted(DIRECTION).version == "v0002"  # type: ignore[union-attr]


def test_s3_claims_are_exclusive(s3_registry: Registry, adapter: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raced = _lose_the_first_claim_race(s3_registry, monkeypatch)

    assert register(s3_registry, adapter).version == "v0002"
    assert raced == [f"{s3_registry.uri}/{DIRECTION}/claims/v0001"]
    assert [v.version for v in s3_registry.versions(DIRECTION)] == ["v0002"]


def test_s3_promote_if_is_a_compare_and_swap(s3_registry: Registry, tmp_path: Path) -> None:
    check_compare_and_swap(s3_registry, tmp_path)


def test_s3_promotion_racing_between_read_and_write_is_a_conflict(
    s3_registry: Registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reg = s3_registry
    for seed in (1, 2, 3):
        register(reg, make_adapter(tmp_path / f"a{seed}", seed=seed))
    reg.promote(DIRECTION, "v0001")
    rival = Registry(reg.uri, reg.storage_options)  # another process, as far as the store can tell
    read = reg.pointer

    def read_then_lose_the_race(direction: str) -> Any:
        current = read(direction)
        monkeypatch.setattr(reg, "pointer", read)
        rival.promote(DIRECTION, "v0003")  # lands after our read, before our conditional PUT
        return current

    monkeypatch.setattr(reg, "pointer", read_then_lose_the_race)
    with pytest.raises(PromotionConflict, match="v0003 is promoted now"):
        reg.promote_if(DIRECTION, "v0002", incumbent="v0001")
    assert reg.promoted(DIRECTION).version == "v0003"  # type: ignore[union-attr]


# -- the storage backends under the registry (store.Storage): one contract, on a local disk and on S3 --------


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(str(tmp_path / "store"))
    request.getfixturevalue("s3_server").create_bucket(BUCKET)
    uri = f"s3://{BUCKET}/store"
    return open_storage(uri, Settings().storage_options_for(uri))


def test_storage_backends_keep_one_contract(storage: Storage, tmp_path: Path) -> None:
    storage.create(b"first", "d", "claims", "v0001")
    with pytest.raises(FileExistsError):
        storage.create(b"second", "d", "claims", "v0001")
    storage.put(b"weights", "d", "versions", "v0001", "adapter_model.safetensors")
    storage.publish(b"{}", "d", "versions", "v0001", "manifest.json")
    storage.publish(b'{"v": 2}', "d", "versions", "v0001", "manifest.json")

    assert storage.read("d", "claims", "v0001") == b"first"
    assert storage.read("d", "versions", "v0001", "manifest.json") == b'{"v": 2}'
    assert storage.entries("d") == {"claims": "directory", "versions": "directory"}
    assert storage.entries("d", "versions", "v0001") == {"adapter_model.safetensors": "file", "manifest.json": "file"}
    assert storage.entries("missing") == {}
    with pytest.raises(FileNotFoundError):
        storage.read("d", "PROMOTED")
    storage.get(tmp_path / "copy", "d", "versions", "v0001", "adapter_model.safetensors")
    assert (tmp_path / "copy").read_bytes() == b"weights"
    assert storage.uri_of("d", "PROMOTED") == f"{storage.uri}/d/PROMOTED"
    assert not storage.escapes("d", "PROMOTED") and not storage.is_symlink("d", "PROMOTED")

    assert storage.swap(b"one", lambda: False, "d", "PROMOTED") is True  # not settled: written
    assert storage.swap(b"two", lambda: True, "d", "PROMOTED") is True  # settled: left as it is
    assert storage.read("d", "PROMOTED") == b"one"
    assert sorted(storage.entries("d")) == ["PROMOTED", "claims", "versions"]  # no temporary file left


def test_s3_swap_loses_to_a_write_after_its_judgement(s3_server: S3Server) -> None:
    s3_server.create_bucket(BUCKET)
    uri = f"s3://{BUCKET}/store"
    options = Settings().storage_options_for(uri)
    storage, rival = open_storage(uri, options), open_storage(uri, options)
    storage.publish(b"old", "d", "PROMOTED")

    def judged_then_overwritten() -> bool:
        rival.publish(b"rival", "d", "PROMOTED")  # lands after the ETag was read, before the conditional PUT
        return False

    assert storage.swap(b"mine", judged_then_overwritten, "d", "PROMOTED") is False  # the caller judges again
    assert storage.read("d", "PROMOTED") == b"rival"


def test_a_provenance_value_writes_the_manifest_its_fields_as_keywords_write(tmp_path):
    """`register(d, dir, Provenance(...))` and `register(d, dir, base_model=..., ...)` record the same manifest;
    both at once is refused, and the version's `provenance` reads the value back."""
    made_of = Provenance("builtin:tiny-seq2seq", None, "ab" * 32, {"training": {"max_steps": 3}}, {"chrf_pp": 40.0})
    by_value = Registry(str(tmp_path / "a")).register(DIRECTION, make_adapter(tmp_path / "ad"), made_of)
    by_keywords = register(Registry(str(tmp_path / "b")), tmp_path / "ad")
    stored = [json.loads(Path(info.uri, "manifest.json").read_bytes()) for info in (by_value, by_keywords)]
    assert [{k: v for k, v in m.items() if k != "created_at"} for m in stored] == [
        {k: v for k, v in stored[1].items() if k != "created_at"}
    ] * 2
    assert set(stored[0]) == {
        "direction",
        "version",
        "base_model",
        "base_revision",
        "data_manifest_sha256",
        "config",
        "metrics",
        "files",
        "created_at",
    }
    assert by_value.provenance == made_of == by_keywords.provenance
    with pytest.raises(TypeError, match="not both"):
        Registry(str(tmp_path / "c")).register(DIRECTION, tmp_path / "ad", made_of, base_model="other")


def test_registry_for_opens_the_registry_a_config_names(tmp_path):
    config = PipelineConfig.model_validate(
        {"run_name": "r", "registry": str(tmp_path / "reg"), "directions": [DIRECTION], "sources": []}
    )
    registry = registry_for(config, Settings())
    assert registry.uri == str(tmp_path / "reg")
    info = register(registry, make_adapter(tmp_path / "ad"))
    assert Registry(str(tmp_path / "reg")).versions(DIRECTION) == [info]
