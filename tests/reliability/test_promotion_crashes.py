"""Crashes at every write of a promotion, and promotions racing each other: the registry stays valid.

A promotion (decide, register, move PROMOTED if the incumbent judged is still promoted: the pipeline's
promote_adapter) is first run once with every filesystem write counted (_crashpoints.WriteHook). Then
it is crashed before each write in turn, a write cut in half where the operation writes bytes, both by
an exception in this process and by os._exit in a forked process (no cleanup runs), with and without an
incumbent. After each crash the direction still has exactly one valid promoted version (the incumbent
until the PROMOTED rename, the candidate after it; none when there was none), nothing half-written is
reachable, the other direction is untouched, and running the promotion again finishes it without a
duplicate version. Then `promo_races` rounds of 3-4 processes promote different candidates of one
direction at once, each judging against whatever is promoted when it looks.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _crashpoints import BASE_CHRF, DIRECTION, HARD_EXIT, MIN_GAIN, Crash, WriteHook, promote_candidate
from _knobs import count
from safetensors.numpy import save_file

from bhashaflow.registry.promotion import decide_promotion
from bhashaflow.registry.store import Registry, RegistryError

OTHER = "hin_Deva-eng_Latn"
HERE = Path(__file__).resolve().parent
INCUMBENT_CHRF = 45.0
CANDIDATE_CHRF = 47.5
KINDS = ("makedirs", "create", "write", "fsync", "rename", "remove")  # the operations WriteHook counts


def make_adapter(path: Path, seed: int) -> Path:
    """A small LoRA-shaped adapter folder: config, weights, tokenizer."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    prefix = "base_model.model.encoder.layers.0.q_proj"
    save_file(
        {
            f"{prefix}.lora_A.weight": rng.standard_normal((4, 32), dtype=np.float32),
            f"{prefix}.lora_B.weight": rng.standard_normal((32, 4), dtype=np.float32),
        },
        str(path / "adapter_model.safetensors"),
    )
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "seed": seed}))
    (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": seed}}}))
    return path


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def seed_registry(root: Path, adapters: Path, *, incumbent: bool) -> Path:
    """A registry with the other direction promoted and, if `incumbent`, this direction's v0001 promoted."""
    registry = Registry(str(root))
    for direction, chrf, wanted in ((OTHER, 50.0, True), (DIRECTION, INCUMBENT_CHRF, incumbent)):
        if wanted:
            info = registry.register(
                direction,
                make_adapter(adapters / f"{direction}-v1", seed=len(direction)),
                base_model="tiny",
                base_revision=None,
                data_manifest_sha256="0" * 64,
                config={"adapter": "seed"},
                metrics={"candidate": {"chrf_pp": chrf}},
            )
            registry.promote(direction, info.version)
    return root


def run_harness(mode: str, spec: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    """_crashpoints.py as a real process: it forks one process per crash point or racer."""
    spec_path, result_path = tmp_path / f"{mode}-spec.json", tmp_path / f"{mode}-result.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}  # this tree's bhashaflow, as in this process
    done = subprocess.run(
        [sys.executable, str(HERE / "_crashpoints.py"), mode, str(spec_path), str(result_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return list(json.loads(result_path.read_text()))


def check_after_crash(
    root: Path,
    template: Path,
    adapter: Path,
    *,
    switched: bool,
    registered: bool,
    new_version: str,
    incumbent: str | None,
    where: str,
) -> None:
    registry = Registry(str(root))
    # Exactly one valid promoted version: the incumbent until the PROMOTED rename, the candidate after it.
    expected = new_version if switched else incumbent
    pointer = registry.pointer(DIRECTION)
    assert (pointer.version if pointer else None) == expected, f"{where}: PROMOTED is {pointer}"
    if expected is not None:
        fetched = registry.fetch_promoted(DIRECTION, root.parent / "cache")  # re-hashes every file
        assert fetched is not None and fetched[0].version == expected, where
    assert (root / OTHER / "PROMOTED").read_bytes() == (template / OTHER / "PROMOTED").read_bytes(), where
    assert registry.promoted(OTHER) is not None, where

    # Nothing half-written is reachable: a version without its manifest is invisible and refused.
    complete = {v.version for v in registry.versions(DIRECTION)}
    assert (new_version in complete) == registered, f"{where}: versions {sorted(complete)}"
    versions = root / DIRECTION / "versions"
    for version_dir in sorted(versions.iterdir()) if versions.is_dir() else []:
        version = version_dir.name
        if version in complete:
            registry.verify(DIRECTION, version)
            continue
        with pytest.raises(RegistryError, match="no manifest"):
            registry.verify(DIRECTION, version)
        with pytest.raises(RegistryError, match="no manifest"):
            registry.promote(DIRECTION, version)
        with pytest.raises(RegistryError, match="no manifest"):
            registry.fetch(DIRECTION, version, root.parent / "cache")

    # Running the promotion again finishes it, reusing the version the crashed run completed.
    again = promote_candidate(str(root), str(adapter), CANDIDATE_CHRF, incumbent, INCUMBENT_CHRF if incumbent else None)
    assert again["promoted"], f"{where}: re-run not promoted: {again['reason']}"
    promoted = registry.promoted(DIRECTION)
    assert promoted is not None and promoted.version == again["version"], where
    assert promoted.files == hashes(adapter), where
    if registered:
        assert again["version"] == new_version, f"{where}: re-run registered a duplicate {again['version']}"
    assert sorted(p.name for p in (root / DIRECTION).iterdir()) == ["PROMOTED", "claims", "versions"], where


@pytest.mark.parametrize("incumbent", [True, False], ids=["with-incumbent", "first-promotion"])
def test_crash_at_every_write_of_a_promotion(tmp_path: Path, incumbent: bool, record: Any) -> None:
    template = seed_registry(tmp_path / "template", tmp_path / "adapters", incumbent=incumbent)
    adapter = make_adapter(tmp_path / "candidate", seed=7)
    current = "v0001" if incumbent else None
    new_version = "v0002" if incumbent else "v0001"

    # Enumerate: one clean promotion with every write counted.
    clean = tmp_path / "clean"
    shutil.copytree(template, clean)
    with WriteHook().installed() as hook:
        result = promote_candidate(
            str(clean), str(adapter), CANDIDATE_CHRF, current, INCUMBENT_CHRF if incumbent else None
        )
    assert result["promoted"] and result["version"] == new_version
    ops = hook.ops
    manifest_rename = ops.index(f"rename to {new_version}/manifest.json") + 1  # 1-based, as crash points are
    pointer_rename = ops.index(f"rename to {DIRECTION}/PROMOTED") + 1
    assert ops.count("fsync") >= 6 and manifest_rename < pointer_rename

    def check(root: Path, k: int, how: str) -> None:
        check_after_crash(
            root,
            template,
            adapter,
            switched=k > pointer_rename,
            registered=k > manifest_rename,
            new_version=new_version,
            incumbent=current,
            where=f"crash ({how}) at write {k}/{len(ops)} {ops[k - 1]!r}",
        )

    for k in range(1, len(ops) + 1):
        root = tmp_path / f"raise-{k}" / "registry"
        shutil.copytree(template, root)
        with pytest.raises(Crash), WriteHook(k).installed():
            promote_candidate(str(root), str(adapter), CANDIDATE_CHRF, current, INCUMBENT_CHRF if incumbent else None)
        check(root, k, "exception")

    points = [{"crash_at": k, "root": str(tmp_path / f"exit-{k}" / "registry")} for k in range(1, len(ops) + 2)]
    spec = {
        "template": str(template),
        "adapter": str(adapter),
        "candidate": CANDIDATE_CHRF,
        "incumbent": current,
        "incumbent_chrf": INCUMBENT_CHRF if incumbent else None,
        "points": points,
    }
    for point in run_harness("crash", spec, tmp_path):
        k = point["crash_at"]
        if k > len(ops):  # past the last write: the promotion simply finished
            assert point["exit"] == 0
            assert Registry(point["root"]).promoted(DIRECTION).version == new_version  # type: ignore[union-attr]
            continue
        assert point["exit"] == HARD_EXIT, f"write {k}: the forked promotion exited {point['exit']}"
        check(Path(point["root"]), k, "os._exit")

    kinds = {kind: sum(op.startswith(kind) for op in ops) for kind in KINDS}
    record(
        f"crash at every write of a promotion ({'with incumbent' if incumbent else 'first promotion'})",
        area="promotion",
        tried=2 * len(ops),
        lost=0,
        writes_enumerated=len(ops),
        crash_points=f"{len(ops)} by exception + {len(ops)} by os._exit",
        pointer_switch_at=pointer_rename,
        manifest_at=manifest_rename,
        **kinds,
    )


def test_concurrent_promotions_of_one_direction(tmp_path: Path, seed: int, record: Any) -> None:
    rounds = count("promo_races", 10, 100)
    pool = [make_adapter(tmp_path / "adapters" / f"c{i}", seed=100 + i) for i in range(4)]
    spec_rounds = []
    for r in range(rounds):
        rng = random.Random(seed + r)
        here = tmp_path / f"round-{r}"
        initial = "v0001" if rng.random() < 0.5 else None
        if initial:
            seed_registry(here / "registry", here / "seed-adapters", incumbent=True)
        (here / "outcomes").mkdir(parents=True)
        n = rng.choice([3, 4])
        candidates = [{"adapter": str(pool[i]), "chrf_pp": round(rng.uniform(42.0, 52.0), 1)} for i in range(n)]
        spec_rounds.append(
            {
                "root": str(here / "registry"),
                "outcomes": str(here / "outcomes"),
                "seed": seed + r,
                "initial": initial,
                "candidates": candidates,
                "jitter_s": rng.choice([0.0, 0.002, 0.01, 0.03]),
            }
        )
    results = run_harness("race", {"rounds": spec_rounds}, tmp_path)

    processes = promotions = stale = below_gate = 0
    for r, (spec, result) in enumerate(zip(spec_rounds, results, strict=True)):
        where = f"seed {seed}, round {r}"
        assert result["exits"] == [0] * len(spec["candidates"]), f"{where}: racers failed {result['exits']}"
        outcomes = [json.loads(p.read_text()) for p in sorted(Path(spec["outcomes"]).iterdir())]
        registry = Registry(spec["root"])
        initial = spec["initial"]
        chrf = {"v0001": INCUMBENT_CHRF} if initial else {}
        processes += len(outcomes)

        # Versions: one per racer plus the seed, numbered without gaps, each holding its racer's files.
        versions = registry.versions(DIRECTION)
        assert [v.number for v in versions] == list(range(1, len(outcomes) + 1 + bool(initial))), where
        assert len({o["version"] for o in outcomes}) == len(outcomes), f"{where}: two racers share a version"
        claims = sorted(p.name for p in (Path(spec["root"]) / DIRECTION / "claims").iterdir())
        assert claims == [v.version for v in versions], f"{where}: claims {claims}"
        for o in outcomes:
            info = registry.verify(DIRECTION, o["version"])
            assert info.files == hashes(Path(o["adapter"])), f"{where}: {o['version']} holds another racer's files"
            assert info.metrics["candidate"]["chrf_pp"] == o["candidate"], f"{where}: interleaved manifest"
            chrf[o["version"]] = o["candidate"]

        # Promotions form one chain from the initial incumbent: none was decided against a replaced version.
        promoted = {o["judged_against"]: o for o in outcomes if o["promoted"]}
        assert len(promoted) == sum(o["promoted"] for o in outcomes), f"{where}: two promotions judged one incumbent"
        head, chain = initial, []
        while head in promoted:
            step = promoted.pop(head)
            assert decide_promotion(step["candidate"], chrf.get(head) if head else None, BASE_CHRF, MIN_GAIN).promote
            head = step["version"]
            chain.append(head)
        assert promoted == {}, f"{where}: promotions off the chain {promoted}"
        final = registry.fetch_promoted(DIRECTION, tmp_path / "cache")
        assert (final[0].version if final else None) == head, f"{where}: PROMOTED is not the chain's end {chain}"
        if any(o["decision"] for o in outcomes):
            assert chain, f"{where}: candidates passed the gate, yet none was promoted"
        if initial:
            assert registry.promoted(OTHER) is not None, f"{where}: the other direction lost its promoted version"
        leftovers = [p.name for p in (Path(spec["root"]) / DIRECTION).iterdir() if p.name.startswith(".")]
        assert leftovers == [], f"{where}: temporary files left {leftovers}"
        promotions += len(chain)
        stale += sum(o["decision"] and not o["promoted"] for o in outcomes)
        below_gate += sum(not o["decision"] for o in outcomes)

    record(
        "concurrent promotions of one direction",
        area="promotion",
        tried=rounds,
        lost=0,
        processes=processes,
        promotions=promotions,
        refused_as_stale=stale,
        refused_by_gate=below_gate,
    )
