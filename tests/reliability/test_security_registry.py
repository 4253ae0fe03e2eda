"""Registry files that try to escape the registry, pickles where weights belong, and model code from a folder.

A tampered registry must be refused by the library (`Registry.fetch_promoted`, with a message naming the
problem) and by the running service (a reload answers 409 and keeps serving what it served). Files planted
outside the registry have their access time set into the past first: if anything read them, it moved.
Pickles are traps whose unpickling creates a marker file; model code creates a marker when imported.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _knobs import count
from fastapi.testclient import TestClient
from serving_helpers import EN_HI, ENGINES, Clients, make_adapter, register, serving_config

from bhashaflow.config import PipelineConfig
from bhashaflow.core.settings import Settings
from bhashaflow.modeling.adapters import load_adapter
from bhashaflow.modeling.loaded import BaseModelError
from bhashaflow.modeling.loading import load_base
from bhashaflow.registry.store import Registry, RegistryError
from serving.app import create_app

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DAY = 86400.0


class _Trap:
    """Unpickling it opens (creates) `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def trap(marker: Path) -> bytes:
    return pickle.dumps(_Trap(marker))


def test_the_pickle_trap_is_armed(tmp_path: Path) -> None:
    """The control: unpickling a trap does create its marker, so an absent marker means it was never loaded."""
    pickle.loads(trap(tmp_path / "control"))  # noqa: S301 - the point of the test
    assert (tmp_path / "control").exists()


@pytest.fixture(scope="module")
def adapter_dir(tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_base, tmp_path_factory.mktemp("security-adapter") / "a", seed=1)


@pytest.fixture(scope="module")
def pristine(tiny_base: str, adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with v0001 promoted and v0002 registered for en-hi, copied before each tampering."""
    root = tmp_path_factory.mktemp("pristine") / "registry"
    register(str(root), EN_HI, adapter_dir, tiny_base)
    register(str(root), EN_HI, adapter_dir, tiny_base, promote=False)
    return root


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _point(registry: Path, version: str, manifest: bytes | None = None) -> None:
    """Rewrite PROMOTED by hand, as a tamperer would (consistent with `manifest` when given)."""
    digest = _sha(manifest) if manifest is not None else "0" * 64
    pointer = {"version": version, "manifest_sha256": digest, "promoted_at": "2030-01-01T00:00:00+00:00"}
    (registry / EN_HI / "PROMOTED").write_text(json.dumps(pointer))


def _rewrite_manifest(vdir: Path, change: Callable[[dict[str, Any]], None]) -> bytes:
    manifest = json.loads((vdir / "manifest.json").read_text())
    change(manifest)
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (vdir / "manifest.json").write_bytes(data)
    return data


EVIL_VERSIONS = [
    "../x",
    "/etc",
    "/etc/passwd",
    "..",
    ".",
    "v0001/../../x",
    "v0002/../v0001",
    "v0001\x00",
    "v0001/",
    "./v0001",
    "%2e%2e",
    "V0001",
    " v0001",
    "v0001\n",
    "v0001/../../../../outside",
    "v-001",
    "",
    "v" + "9" * 300,
]
EVIL_NAMES = [
    "../../outside/secret.txt",
    "/etc/passwd",
    "../PROMOTED",
    "../../v0001/adapter_model.safetensors",
    "..",
    ".",
    "sub/x.json",
    "x\x00.json",
    "a" * 200 + ".json",
    "..\\x.json",
    " adapter_config.json",
    "adapter_model.bin",
    "evil.pkl",
    "pytorch_model.bin",
    "model.pt",
    ".hidden.json",
    "~/x.json",
    "%2e%2e%2fx.json",
]


class Tamper:
    """One way to make the registry point outside itself; each returns the message the refusal must match."""

    def __init__(self, registry: Path, outside: Path, marker: Path, rng: random.Random) -> None:
        self.registry, self.outside, self.marker, self.rng = registry, outside, marker, rng
        self.direction = registry / EN_HI
        self.v2 = self.direction / "versions" / "v0002"

    def pointer_version(self) -> str:
        _point(self.registry, self.rng.choice(EVIL_VERSIONS + [self._random_version()]))
        return r"invalid version|malformed PROMOTED"

    def _random_version(self) -> str:
        parts = [self.rng.choice(["..", "v0001", "v0002", "outside", "%2e", "", "\x00", "etc"]) for _ in range(3)]
        return self.rng.choice(["", "/", "v0001/"]) + self.rng.choice(["/", "\\"]).join(parts)

    def version_symlink(self) -> str:
        copy = self.outside / "v0003"
        shutil.copytree(self.v2, copy)
        data = _rewrite_manifest(copy, lambda m: m.update(version="v0003"))
        (self.direction / "versions" / "v0003").symlink_to(copy, target_is_directory=True)
        _point(self.registry, "v0003", data)
        return r"v0003: resolves outside the registry"

    def file_symlink(self) -> str:
        name = self.rng.choice(sorted(p.name for p in self.v2.iterdir() if p.name != "manifest.json"))
        shutil.copy(self.v2 / name, self.outside / name)
        (self.v2 / name).unlink()
        (self.v2 / name).symlink_to(self.outside / name)
        _point(self.registry, "v0002", (self.v2 / "manifest.json").read_bytes())
        return rf"not regular files: {re.escape(name)} \(symlink\)"

    def manifest_symlink(self) -> str:
        shutil.copy(self.v2 / "manifest.json", self.outside / "manifest.json")
        (self.v2 / "manifest.json").unlink()
        (self.v2 / "manifest.json").symlink_to(self.outside / "manifest.json")
        _point(self.registry, "v0002", (self.outside / "manifest.json").read_bytes())
        return r"manifest is a symlink"

    def manifest_names(self) -> str:
        evil = self.rng.choice(EVIL_NAMES)
        (self.outside / "secret.txt").write_text("outside")
        digest = _sha(b"outside")

        def change(manifest: dict[str, Any]) -> None:
            if self.rng.random() < 0.5:
                manifest["files"][evil] = digest
            else:  # renamed: the evil name replaces a real one
                real = self.rng.choice(sorted(manifest["files"]))
                manifest["files"][evil] = manifest["files"].pop(real)

        _point(self.registry, "v0002", _rewrite_manifest(self.v2, change))
        return r"malformed manifest"

    def direction_symlink(self) -> str:
        moved = self.outside / EN_HI
        shutil.move(self.direction, moved)
        self.direction.symlink_to(moved, target_is_directory=True)
        return r"resolves outside the registry"

    def versions_symlink(self) -> str:
        moved = self.outside / "versions"
        shutil.move(self.direction / "versions", moved)
        (self.direction / "versions").symlink_to(moved, target_is_directory=True)
        _point(self.registry, "v0002", (moved / "v0002" / "manifest.json").read_bytes())
        return r"resolves outside the registry"

    def pickle_listed(self) -> str:
        name = self.rng.choice(["adapter_model.bin", "pytorch_model.bin", "optimizer.pt", "state.pkl"])
        data = trap(self.marker)
        (self.v2 / name).write_bytes(data)
        _point(self.registry, "v0002", _rewrite_manifest(self.v2, lambda m: m["files"].update({name: _sha(data)})))
        return rf"malformed manifest: .*{re.escape(name)}.* not an allowed adapter file"

    def pickle_unlisted(self) -> str:
        name = self.rng.choice(["adapter_model.bin", "pytorch_model.bin", "model.pkl"])
        (self.v2 / name).write_bytes(trap(self.marker))
        _point(self.registry, "v0002", (self.v2 / "manifest.json").read_bytes())
        return rf"files not in the manifest: {re.escape(name)}"

    KINDS = (
        "pointer_version",
        "version_symlink",
        "file_symlink",
        "manifest_symlink",
        "manifest_names",
        "direction_symlink",
        "versions_symlink",
        "pickle_listed",
        "pickle_unlisted",
    )


def _age(root: Path) -> dict[Path, float]:
    """Set the access time of everything under `root` two days back (relatime then records any read)."""
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        os.utime(path, (st.st_mtime - 2 * DAY, st.st_mtime), follow_symlinks=False)
        out[path] = path.lstat().st_atime
    return out


def _read_since(aged: dict[Path, float]) -> list[str]:
    return sorted(str(p) for p, atime in aged.items() if p.exists() and p.lstat().st_atime != atime)


def _atime_works(tmp_path: Path) -> bool:
    probe = tmp_path / "atime-probe"
    probe.write_text("x")
    aged = _age(probe)
    probe.read_text()
    return bool(_read_since(aged))


@pytest.fixture
def service(tmp_path: Path, tiny_base: str, engine: str, cache_dir: Path) -> Iterator[Callable[[str], TestClient]]:
    clients = Clients()

    def start(registry: str) -> TestClient:
        config = serving_config(tmp_path, tiny_base, registry, engine=engine)
        return clients.start(config, Settings(api_token=TOKEN))  # type: ignore[call-arg]

    yield start
    clients.close()


@ENGINES
def test_registry_files_cannot_point_outside_the_registry(
    pristine: Path, tmp_path: Path, service: Callable[[str], TestClient], seed: int, record: Any
) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(pristine, registry, symlinks=True)
    client = service(str(registry))
    assert client.get("/v1/adapters", headers=AUTH).json()["adapters"][0]["version"] == "v0001"
    watch_reads = _atime_works(tmp_path)
    n = count("registry_path_runs", 45, 450)
    tried = served_outside = 0
    kinds: dict[str, int] = {}
    for i in range(n):
        rng = random.Random(seed + i)
        kind = Tamper.KINDS[i % len(Tamper.KINDS)] if i < len(Tamper.KINDS) else rng.choice(Tamper.KINDS)
        kinds[kind] = kinds.get(kind, 0) + 1
        where = f"seed {seed} run {i} ({kind})"
        if registry.is_symlink():
            registry.unlink()
        shutil.rmtree(registry / EN_HI, ignore_errors=True)
        if (registry / EN_HI).is_symlink():
            (registry / EN_HI).unlink()
        shutil.copytree(pristine / EN_HI, registry / EN_HI, symlinks=True)
        outside = tmp_path / f"outside-{i}"
        outside.mkdir()
        marker = tmp_path / f"unpickled-{i}"
        expected = getattr(Tamper(registry, outside, marker, rng), kind)()
        aged = _age(outside)

        with pytest.raises(RegistryError) as refused:
            Registry(str(registry)).fetch_promoted(EN_HI, tmp_path / "cache")
        assert re.search(expected, str(refused.value)), f"{where}: {refused.value}"
        resp = client.post("/v1/adapters/reload", headers=AUTH)
        body = resp.json()
        tried += 1
        assert resp.status_code == 409, f"{where}: {resp.status_code} {body}"
        assert re.search(expected, body["errors"][EN_HI]), f"{where}: {body['errors']}"
        served = {a["direction"]: a["version"] for a in body["adapters"]}
        served_outside += served[EN_HI] != "v0001"
        assert served[EN_HI] == "v0001", f"{where}: now serving {served[EN_HI]}"
        assert not marker.exists(), f"{where}: a pickle was loaded"
        if watch_reads:
            assert _read_since(aged) == [], f"{where}: read outside the registry: {_read_since(aged)}"
    # Still translating with v0001 after all that.
    ok = client.post(
        "/v1/translate", json={"texts": ["hi"], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}, headers=AUTH
    )
    assert ok.status_code == 200 and ok.json()["adapter"]["version"] == "v0001"
    record(
        "paths: registry files pointing outside (pointers, symlinks, manifests, pickles)",
        area="security",
        tried=tried,
        lost=served_outside,
        kinds=len(kinds),
        reads_watched=watch_reads,
    )


# -- only safetensors ------------------------------------------------------------------------------------------


PICKLE_NAMES = ["adapter_model.bin", "pytorch_model.bin", "model.pt", "state.pkl", "weights.pth", "optimizer.ckpt"]


@pytest.mark.parametrize("name", PICKLE_NAMES)
def test_an_adapter_folder_with_a_pickle_is_refused_unloaded(
    tiny_base: str, adapter_dir: Path, tmp_path: Path, name: str
) -> None:
    folder = tmp_path / "adapter"
    shutil.copytree(adapter_dir, folder)
    marker = tmp_path / "unpickled"
    (folder / name).write_bytes(trap(marker))
    lm = load_base(tiny_base, languages=[])
    with pytest.raises(BaseModelError, match=rf"pickle-format files \({re.escape(name)}\)"):
        load_adapter(lm, str(folder), "evil")
    with pytest.raises(RegistryError, match=f"{re.escape(name)}: pickle-format files are refused"):
        register(str(tmp_path / "registry"), EN_HI, folder, tiny_base)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(BaseModelError, match="only safetensors adapters are loaded"):
        load_adapter(lm, str(folder), "evil")
    assert lm.adapters == []
    assert not marker.exists()


def test_a_base_folder_with_pickled_weights_is_refused_unloaded(tiny_base: str, tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    marker = tmp_path / "unpickled"
    (base / "pytorch_model.bin").write_bytes(trap(marker))
    # Beside safetensors weights the pickle is ignored: the safetensors are what is loaded.
    assert load_base(str(base), languages=[]).model is not None
    (base / "model.safetensors").unlink()
    with pytest.raises(BaseModelError, match=r"no safetensors weights \(found pytorch_model.bin"):
        load_base(str(base), languages=[])
    assert not marker.exists()


# -- trust_remote_code -----------------------------------------------------------------------------------------


def _evil_base(tiny_base: str, folder: Path, marker: Path, *, known_type: bool = False) -> Path:
    """A copy of the tiny base whose config.json maps to custom code that creates `marker` when imported."""
    shutil.copytree(tiny_base, folder)
    config = json.loads((folder / "config.json").read_text())
    if not known_type:
        config["model_type"] = "bhashaflow_evil"
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForSeq2SeqLM": "modeling_evil.EvilModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    touch = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    (folder / "configuration_evil.py").write_text(
        touch + "from transformers import M2M100Config\n\n\nclass EvilConfig(M2M100Config):\n"
        "    model_type = 'bhashaflow_evil'\n"
    )
    (folder / "modeling_evil.py").write_text(
        touch
        + "from transformers import M2M100ForConditionalGeneration\n\nfrom .configuration_evil import EvilConfig\n\n\n"
        "class EvilModel(M2M100ForConditionalGeneration):\n    config_class = EvilConfig\n"
    )
    return folder


@pytest.fixture
def modules_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """transformers copies remote code into HF_MODULES_CACHE: keep it (and sys.path) to this test."""
    import transformers.dynamic_module_utils as dmu

    cache = tmp_path / "hf-modules"
    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return cache


def test_model_code_in_a_base_folder_runs_only_with_trust_remote_code(
    tiny_base: str, tmp_path: Path, modules_cache: Path
) -> None:
    assert PipelineConfig.model_fields["trust_remote_code"].default is False
    marker = tmp_path / "code-ran"
    evil = _evil_base(tiny_base, tmp_path / f"evil_{os.getpid()}_{time.monotonic_ns()}", marker)
    with pytest.raises(BaseModelError, match="needs its own Python code .* trust_remote_code is off"):
        load_base(str(evil), languages=[])
    assert not marker.exists()

    # A known model type with an auto_map: loaded with transformers' own code, the folder's never imported.
    known_marker = tmp_path / "known-code-ran"
    known = _evil_base(
        tiny_base, tmp_path / f"known_{os.getpid()}_{time.monotonic_ns()}", known_marker, known_type=True
    )
    assert type(load_base(str(known), languages=[]).model).__name__ == "M2M100ForConditionalGeneration"
    assert not known_marker.exists()

    # The switch does something: a config that opts in lets the folder's code run (and the model load).
    opted_in = PipelineConfig.model_validate(
        {"run_name": "t", "directions": ["eng_Latn-hin_Deva"], "base_model": str(evil), "trust_remote_code": True}
    )
    lm = load_base(opted_in.base_model, languages=[], trust_remote_code=opted_in.trust_remote_code)
    assert marker.exists()
    assert type(lm.model).__name__ == "EvilModel"


def test_the_service_refuses_model_code_by_default(tiny_base: str, tmp_path: Path, modules_cache: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = _evil_base(tiny_base, tmp_path / f"evil_{os.getpid()}_{time.monotonic_ns()}", marker)
    config = serving_config(tmp_path, str(evil), str(tmp_path / "registry"))
    assert config.trust_remote_code is False
    with TestClient(create_app(config, Settings(api_token=TOKEN)), raise_server_exceptions=False) as client:  # type: ignore[call-arg]
        deadline = time.monotonic() + 60
        while (health := client.get("/health").json())["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert health["status"] == "failed" and "trust_remote_code is off" in health["error"], health
    assert not marker.exists()


def test_every_from_pretrained_gets_trust_remote_code(tiny_base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_base passes the flag explicitly (never None, which would make transformers prompt) to every loader."""
    import transformers

    calls: list[tuple[str, Any]] = []
    for cls in (
        transformers.AutoConfig,
        transformers.AutoTokenizer,
        transformers.AutoModelForSeq2SeqLM,
        transformers.AutoModelForCausalLM,
    ):
        real = cls.from_pretrained

        def spy(*args: Any, _real: Any = real, _name: str = cls.__name__, **kwargs: Any) -> Any:
            calls.append((_name, kwargs.get("trust_remote_code", "missing")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    for flag in (False, True):
        calls.clear()
        load_base(tiny_base, languages=[], trust_remote_code=flag)
        # (AutoTokenizer and the model class also read the config through AutoConfig: those calls count too.)
        assert {name for name, _ in calls} == {"AutoConfig", "AutoTokenizer", "AutoModelForSeq2SeqLM"}, calls
        assert all(value is flag for _, value in calls), calls


def test_every_caller_of_load_base_passes_the_configured_flag() -> None:
    """Where a config exists (training, evaluation, serving), its trust_remote_code is what load_base gets.

    Those callers go through the one `load_configured_base`, whose load_base call passes the config's flag.
    """
    callers, configured = [], []
    for folder in ("bhashaflow", "serving", "tasks", "flows"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                name = getattr(node.func, "id", getattr(node.func, "attr", "")) if isinstance(node, ast.Call) else ""
                if name == "load_base":
                    passed = {k.arg: ast.unparse(k.value) for k in node.keywords}
                    callers.append((path.relative_to(REPO).as_posix(), passed.get("trust_remote_code")))
                elif name == "load_configured_base":
                    configured.append(path.relative_to(REPO).as_posix())
    assert len(callers) + len(configured) >= 3, (callers, configured)
    assert {"serving/engine.py", "tasks/evaluate.py", "bhashaflow/training/loop.py"} <= set(configured), configured
    assert all(value is not None and value.endswith("trust_remote_code") for _, value in callers), callers
