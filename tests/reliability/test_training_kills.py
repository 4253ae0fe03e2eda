"""SIGKILL at random points of LoRA fine-tuning, then run it again: it resumes and ends with the right adapter.

One training run folder is killed `train_kills` times (random steps, mid-checkpoint writes, start-up and
the final adapter write), each re-run resuming where the last complete checkpoint left it. After every
kill whatever lies on disk is offered to a registry, which must refuse anything half-written. The run
that finally finishes must hold the adapter an uninterrupted run produces, bit for bit: both run the same
float operations in the same order on one CPU thread, and every piece of state (LoRA weights, AdamW
moments, step count, RNG, data position) is restored exactly, so the tolerance is zero.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import os
import random
import re
import signal
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _train_child
import pytest
import torch
from _knobs import count
from safetensors.torch import load_file
from tiny_models import dev_lines, write_shard
from training_helpers import ADAPTER_FILES, CHECKPOINT_FILES, DIRECTION

from bhashaflow.config import config_from_dict
from bhashaflow.core.names import INCOMPLETE
from bhashaflow.registry.store import Registry, RegistryError
from bhashaflow.training.checkpoints import latest_checkpoint

CHECKPOINT_EVERY = 3
RUN_TIMEOUT_S = 180
Event = tuple[str, Any, float]  # (event, step or result, monotonic time) from _train_child


@pytest.fixture(scope="module")
def trainers() -> Iterator[multiprocessing.context.ForkServerContext]:
    """A fork server with torch and the trainer preloaded: each killed run starts in a fraction of a second."""
    server = multiprocessing.forkserver._forkserver  # type: ignore[attr-defined]
    server._stop()  # a server another test started lacks the preload (none runs while this module does)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["_train_child"])
    here = Path(__file__).resolve().parent
    # Python 3.11's fork server imports its preload before it applies our sys.path: hand it over by environment.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join(map(str, [here.parents[1], here.parent, here])))
        server.ensure_running()
    yield ctx
    server._stop()  # free the preloaded server's memory for the rest of the suite (it restarts on demand)


@dataclass
class Plan:
    """When to kill: `delay_s` after the event (`on`, step), or after the process starts when `on` is None."""

    phase: str
    on: tuple[str, Any] | None
    delay_s: float


@dataclass
class Run:
    events: list[Event] = field(default_factory=list)
    exitcode: int | None = None

    @property
    def killed(self) -> bool:
        return self.exitcode == -signal.SIGKILL

    @property
    def result(self) -> dict[str, Any] | None:
        return next((value for kind, value, _ in self.events if kind == "done"), None)

    def steps(self, kind: str = "step") -> list[int]:
        return [value for k, value, _ in self.events if k == kind]

    def times(self, kind: str) -> list[float]:
        return [t for k, _, t in self.events if k == kind]


def train(ctx: multiprocessing.context.ForkServerContext, args: dict[str, Any], plan: Plan | None) -> Run:
    """One training session in a forked process, SIGKILLed as `plan` says (None: left to finish)."""
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_train_child.train, args=(args, writer))
    proc.start()
    writer.close()
    run = Run()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    kill_at = time.monotonic() + plan.delay_s if plan and plan.on is None else None
    try:
        while kill_at is None or time.monotonic() < kill_at:
            assert time.monotonic() < deadline, f"training session stuck; events {run.events[-3:]}"
            wait = 0.2 if kill_at is None else max(0.0, kill_at - time.monotonic())
            if not reader.poll(wait):
                continue
            try:
                event = reader.recv()
            except (EOFError, OSError):
                break  # the trainer exited
            run.events.append(event)
            if plan and plan.on == event[:2]:
                kill_at = time.monotonic() + plan.delay_s
        else:
            proc.kill()  # SIGKILL, wherever the trainer is now
    finally:
        proc.join(60)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
    while reader.poll(0):  # what it reported before it died
        try:
            run.events.append(reader.recv())
        except (EOFError, OSError):
            break
    reader.close()
    run.exitcode = proc.exitcode
    return run


@dataclass
class Timings:
    """How long the phases of an uninterrupted session take, to aim kills inside them."""

    startup_s: float
    step_s: float
    checkpoint_s: float  # the whole checkpoint write
    checkpoint_rest_s: float  # from its weights being written to its end
    adapter_s: float
    adapter_rest_s: float

    @classmethod
    def of(cls, run: Run) -> Timings:
        steps = run.times("step")
        checkpoint_weights = [t for k, v, t in run.events if k == "weights" and v != "adapter"]
        adapter_weights = [t for k, v, t in run.events if k == "weights" and v == "adapter"]
        return cls(
            startup_s=steps[0] - run.times("start")[0],
            step_s=statistics.median(b - a for a, b in zip(steps, steps[1:], strict=False)),
            checkpoint_s=statistics.median(
                b - a for a, b in zip(run.times("checkpoint"), run.times("checkpoint_done"), strict=True)
            ),
            checkpoint_rest_s=statistics.median(
                b - a for a, b in zip(checkpoint_weights, run.times("checkpoint_done"), strict=True)
            ),
            adapter_s=run.times("adapter_done")[0] - run.times("adapter")[0],
            adapter_rest_s=run.times("adapter_done")[0] - adapter_weights[0],
        )


def plan_kill(rng: random.Random, nth: int, kills: int, resumes_at: int, max_steps: int, timings: Timings) -> Plan:
    """Kill number `nth`: a random point in the nth slice of training; the last kill hits the final adapter write.

    Writes are aimed at from their start or from the moment their weights are on disk (the rest of the
    folder still to come), so that kills land throughout them.
    """
    if nth == kills - 1 or resumes_at >= max_steps:
        if rng.random() < 0.5:
            return Plan("adapter", ("adapter", 0), rng.uniform(0, timings.adapter_s))
        return Plan("adapter", ("weights", "adapter"), rng.uniform(0, timings.adapter_rest_s))
    lo = max(resumes_at + 1, nth * max_steps // kills + 1)
    hi = min(max(lo, (nth + 1) * max_steps // kills), max_steps - 1)
    target = rng.randint(min(lo, hi), hi)
    phase = rng.choices(["checkpoint", "step", "startup"], weights=[3, 2, 1])[0]
    if phase == "checkpoint":
        at = min(-(-target // CHECKPOINT_EVERY) * CHECKPOINT_EVERY, max_steps)
        if rng.random() < 0.5:
            return Plan(phase, ("checkpoint", at), rng.uniform(0, timings.checkpoint_s))
        return Plan(phase, ("weights", at), rng.uniform(0, timings.checkpoint_rest_s))
    if phase == "step" and target - 1 > resumes_at:
        return Plan(phase, ("step", target - 1), rng.uniform(0, timings.step_s))
    return Plan("startup", None, rng.uniform(0, timings.startup_s + timings.step_s))


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def unfinished(out: Path) -> list[Path]:
    """Folders a killed session left half-written or half-deleted (partial and old copies, marked checkpoints)."""
    found = [
        p
        for parent in (out, out / "checkpoints")
        if parent.is_dir()
        for p in parent.iterdir()
        if re.search(r"\.(partial|old)-\d+$", p.name)
    ]
    found += [p for p in (out / "checkpoints").glob("step-*") if (p / INCOMPLETE).exists()]
    return sorted(found)


def loads(folder: Path, files: list[str]) -> bool:
    """Whether `folder` holds exactly `files`, each safetensors and JSON file whole."""
    if listing(folder) != files:
        return False
    try:
        for name in files:
            if name.endswith(".safetensors"):
                load_file(str(folder / name))
            elif name.endswith(".json"):
                json.loads((folder / name).read_text())
    except Exception:  # noqa: BLE001 - any failure to load is "not whole"
        return False
    return True


def checkpoint_step(out: Path) -> int:
    latest = latest_checkpoint(out)
    return int(latest.name.removeprefix("step-")) if latest else 0


def offer_to_registry(registry: Registry, candidates: list[Path], cache: Path) -> tuple[int, int]:
    """Register and promote every candidate folder; only whole ones may get in. Returns (refused, accepted)."""
    refused = accepted = 0
    for folder in candidates:
        whole = loads(folder, ADAPTER_FILES) or loads(folder, CHECKPOINT_FILES)
        before = registry.versions(DIRECTION)
        try:
            info = registry.register(
                DIRECTION,
                folder,
                base_model="tiny",
                base_revision=None,
                data_manifest_sha256="0" * 64,
                config={},
                metrics={},
            )
        except RegistryError:
            refused += 1
            assert registry.versions(DIRECTION) == before, f"a refused {folder.name} left a version behind"
            continue
        accepted += 1
        assert whole, f"the registry took a half-written {folder}: {listing(folder)}"
        registry.promote(DIRECTION, info.version)
        assert registry.fetch_promoted(DIRECTION, cache) == (info, info.uri)
    return refused, accepted


def test_sigkill_at_random_points_of_training_resumes_to_the_uninterrupted_adapter(
    trainers: multiprocessing.context.ForkServerContext, tiny_base: str, tmp_path: Path, seed: int, record: Any
) -> None:
    kills = count("train_kills", 10, 30)
    max_steps = 4 * kills
    pairs = list(zip(dev_lines("eng_Latn", 48), dev_lines("hin_Deva", 48), strict=True))
    shard = write_shard(tmp_path / "shard.parquet", pairs, "eng_Latn", "hin_Deva")
    training = {
        "max_steps": max_steps,
        "batch_size": 4,
        "checkpoint_every": CHECKPOINT_EVERY,
        "learning_rate": 1e-3,
        "max_length": 32,
        "seed": seed % 1000,
    }
    config = config_from_dict({"directions": [DIRECTION], "base_model": tiny_base, "training": training})
    args = {"config": config.model_dump(mode="json"), "direction": DIRECTION, "shards": [shard]}

    straight = train(trainers, {**args, "out": str(tmp_path / "straight")}, None)
    assert straight.result is not None, f"uninterrupted run failed: exit {straight.exitcode}"
    timings = Timings.of(straight)

    out = tmp_path / "killed"
    killed = {"checkpoint": 0, "step": 0, "startup": 0, "adapter": 0}
    half_written = refused = accepted = finished_first = sessions = 0
    resumed_at: list[int] = []
    delivered = 0
    while delivered < kills:
        where = f"seed {seed}, session {sessions}"
        rng = random.Random(seed + sessions)
        sessions += 1
        assert sessions <= 3 * kills, f"{where}: kills keep missing the trainer"
        resumes_at = checkpoint_step(out)
        plan = plan_kill(rng, delivered, kills, resumes_at, max_steps, timings)
        run = train(trainers, {**args, "out": str(out)}, plan)
        steps = run.steps()
        # It went on from the last complete checkpoint: never from step 0 once one exists, never from a later one.
        assert steps[:1] in ([], [resumes_at + 1]), f"{where}: resumed at step {steps[:1]}, checkpoint was {resumes_at}"
        if resumes_at >= max_steps:
            assert steps == [], f"{where}: a finished run trained again"
        if steps:
            resumed_at.append(resumes_at)
        if not run.killed:
            assert run.exitcode == 0 and run.result is not None, f"{where}: trainer failed, exit {run.exitcode}"
            finished_first += 1  # it finished before the kill landed; the next session rewrites the adapter
            continue
        delivered += 1
        killed[plan.phase] += 1

        completed = max(run.steps("checkpoint_done"), default=resumes_at)
        now = checkpoint_step(out)
        assert now >= max(completed, resumes_at), f"{where}: checkpoint {completed} was complete, {now} is latest"
        if now:
            latest = out / "checkpoints" / f"step-{now}"
            assert loads(latest, CHECKPOINT_FILES), f"{where}: the checkpoint to resume from is not whole"
            assert json.loads((latest / "trainer_state.json").read_text())["step"] == now
        leftovers = unfinished(out)
        half_written += bool(leftovers)
        candidates = [p for p in [out / "adapter", *leftovers] if p.is_dir()]
        r, a = offer_to_registry(Registry(str(tmp_path / f"registry-{delivered}")), candidates, tmp_path / "cache")
        refused, accepted = refused + r, accepted + a

    resumes_at = checkpoint_step(out)
    final = train(trainers, {**args, "out": str(out)}, None)
    assert final.result is not None, f"seed {seed}: the last session failed, exit {final.exitcode}"
    assert final.result["resumed_from"] == resumes_at and final.result["steps"] == max_steps
    assert unfinished(out) == [], "the finished run left half-written folders behind"
    last_periodic = (max_steps - 1) // CHECKPOINT_EVERY * CHECKPOINT_EVERY
    assert listing(out / "checkpoints") == sorted([f"step-{last_periodic}", f"step-{max_steps}"])  # keep_checkpoints=2
    assert loads(out / "adapter", ADAPTER_FILES)

    resumed = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    reference = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    assert resumed.keys() == reference.keys()
    max_abs_diff = max(float((resumed[k] - reference[k]).abs().max()) for k in resumed)
    for key in resumed:
        assert torch.equal(resumed[key], reference[key]), f"seed {seed}: {key} differs by {max_abs_diff}"
    log = (out / "train_log.jsonl").read_text().splitlines()
    assert log == (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()  # every step, same loss

    registry = Registry(str(tmp_path / "registry-final"))
    info = registry.register(
        DIRECTION,
        out / "adapter",
        base_model="tiny",
        base_revision=None,
        data_manifest_sha256="0" * 64,
        config={},
        metrics={},
    )
    registry.promote(DIRECTION, info.version)
    assert registry.fetch_promoted(DIRECTION, tmp_path / "cache") == (info, info.uri)

    record(
        "SIGKILL during fine-tuning, re-run resumes",
        area="training",
        tried=delivered,
        lost=0,
        sessions=sessions + 2,
        killed_mid_checkpoint=killed["checkpoint"],
        killed_mid_step=killed["step"],
        killed_at_startup=killed["startup"],
        killed_mid_adapter_write=killed["adapter"],
        finished_before_kill=finished_first,
        kills_leaving_half_written_folders=half_written,
        registry_refused=refused,
        registry_accepted_whole=accepted,
        resumed_at=resumed_at,
        max_abs_diff_vs_uninterrupted=max_abs_diff,
    )
