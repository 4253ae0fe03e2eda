"""Every filesystem write of a promotion, counted, and a crash injected at the k-th one.

`WriteHook(crash_at, hard)` wraps the calls the registry writes through (os.makedirs, os.open with
O_CREAT, open() for writing and each write() on such a file, os.fsync, os.replace, os.remove) in
bhashaflow.registry.local_disk and bhashaflow.core.fsio (the modules that call open() to write a
promotion's files), records each as an operation and, at operation `crash_at`,
crashes: a write is cut in half first (a torn write); then it raises Crash, or with `hard` the process
dies on the spot (os._exit: no finally, no cleanup) as it would on a kill or a power cut.

Run as a script, it is the harness of the hard crashes and of the promotion races, which need real
processes: `python _crashpoints.py crash|race SPEC.json RESULT.json`. It imports no torch and starts
no threads, so it forks cheaply and safely.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import random
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bhashaflow.core import fsio
from bhashaflow.registry import local_disk
from bhashaflow.registry.promotion import decide_promotion, promote_adapter
from bhashaflow.registry.store import Registry

HARD_EXIT = 86  # the exit status of a process that crashed on purpose
DIRECTION = "eng_Latn-hin_Deva"
BASE_CHRF = 40.0
MIN_GAIN = 0.5


class Crash(Exception):
    """The injected crash."""


class _CountedFile:
    """A file opened for writing whose write() calls are counted (and may be torn)."""

    def __init__(self, hook: WriteHook, fh: Any, name: str) -> None:
        self._hook, self._fh, self._name = hook, fh, name

    def write(self, data: bytes) -> int:
        self._hook.hit(f"write {self._name}", torn=lambda: (self._fh.write(data[: len(data) // 2]), self._fh.flush()))
        return int(self._fh.write(data))

    def __enter__(self) -> _CountedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def _label(path: Any) -> str:
    """A stable name for a path: its last two parts, temp-file suffixes cut."""
    parts = str(path).rstrip("/").split("/")[-2:]
    return "/".join(p.split(".tmp-")[0] for p in parts)


class WriteHook:
    """Counts the registry's filesystem writes; crashes at operation `crash_at` (1-based; None: never)."""

    def __init__(self, crash_at: int | None = None, *, hard: bool = False) -> None:
        self.crash_at, self.hard = crash_at, hard
        self.ops: list[str] = []
        self._fds: dict[int, str] = {}

    def hit(self, op: str, torn: Any = None) -> None:
        self.ops.append(op)
        if len(self.ops) != self.crash_at:
            return
        if torn is not None:
            torn()  # half of the bytes reach the file, then the crash
        if self.hard:
            os._exit(HARD_EXIT)
        raise Crash(f"injected crash at write {self.crash_at}: {op}")

    @contextlib.contextmanager
    def installed(self) -> Iterator[WriteHook]:
        real = {name: getattr(os, name) for name in ("makedirs", "open", "fdopen", "fsync", "replace", "remove")}
        real_open = builtins.open

        def makedirs(path: Any, *args: Any, **kwargs: Any) -> None:
            self.hit(f"makedirs {_label(path)}")
            real["makedirs"](path, *args, **kwargs)

        def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & os.O_CREAT:
                self.hit(f"create {_label(path)}")
            fd = int(real["open"](path, flags, *args, **kwargs))
            self._fds[fd] = _label(path)
            return fd

        def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            fh = real["fdopen"](fd, mode, *args, **kwargs)
            return _CountedFile(self, fh, self._fds.get(fd, "fd")) if set(mode) & set("wxa") else fh

        def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if not set(mode) & set("wxa"):
                return real_open(file, mode, *args, **kwargs)
            self.hit(f"create {_label(file)}")
            return _CountedFile(self, real_open(file, mode, *args, **kwargs), _label(file))

        def fsync(fd: int) -> None:
            self.hit("fsync")
            real["fsync"](fd)

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            self.hit(f"rename to {_label(dst)}")
            real["replace"](src, dst, *args, **kwargs)

        def remove(path: Any, *args: Any, **kwargs: Any) -> None:
            self.hit(f"remove {_label(path)}")
            real["remove"](path, *args, **kwargs)

        patched = {
            "makedirs": makedirs,
            "open": os_open,
            "fdopen": fdopen,
            "fsync": fsync,
            "replace": replace,
            "remove": remove,
        }
        for name, fn in patched.items():
            setattr(os, name, fn)
        local_disk.open = open_  # type: ignore[attr-defined]  # module globals shadow the builtin
        fsio.open = open_  # type: ignore[attr-defined]
        try:
            yield self
        finally:
            for name, fn in real.items():
                setattr(os, name, fn)
            del local_disk.open  # type: ignore[attr-defined]
            del fsio.open  # type: ignore[attr-defined]


def promote_candidate(
    root: str, adapter: str, candidate: float, incumbent: str | None, incumbent_chrf: float | None
) -> dict[str, Any]:
    """One promotion as the pipeline does it: decide against `incumbent`, register, promote if still allowed."""
    decision = decide_promotion(candidate, incumbent_chrf, BASE_CHRF, MIN_GAIN)
    outcome = promote_adapter(
        Registry(root),
        DIRECTION,
        adapter,
        decision,
        judged_against=incumbent,
        base_model="tiny",
        base_revision=None,
        data_manifest_sha256="0" * 64,
        config={"adapter": Path(adapter).name},
        metrics={"candidate": {"chrf_pp": candidate}, "incumbent": incumbent_chrf},
    )
    return {
        "version": outcome.version,
        "promoted": outcome.promoted,
        "reason": outcome.reason,
        "candidate": candidate,
        "judged_against": incumbent,
        "decision": decision.promote,
    }


@contextlib.contextmanager
def _child() -> Iterator[None]:
    """The body of a forked child: it never returns into the parent's loop, whatever happens."""
    try:
        yield
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _wait(pid: int) -> int:
    status = os.waitpid(pid, 0)[1]
    return os.waitstatus_to_exitcode(status)


def crash(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """For each crash point: copy the template registry, fork, die at that write; report the exit codes."""
    out = []
    for point in spec["points"]:
        shutil.copytree(spec["template"], point["root"], symlinks=True)
        pid = os.fork()
        if pid == 0:
            with _child():
                with WriteHook(point["crash_at"], hard=True).installed():
                    promote_candidate(
                        point["root"], spec["adapter"], spec["candidate"], spec["incumbent"], spec["incumbent_chrf"]
                    )
        out.append({**point, "exit": _wait(pid)})
    return out


def race(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Rounds of processes promoting different candidates of one direction at the same moment."""
    rounds = []
    for rnd in spec["rounds"]:
        gate_r, gate_w = os.pipe()
        pids = []
        for i, candidate in enumerate(rnd["candidates"]):
            pid = os.fork()
            if pid == 0:
                with _child():
                    os.close(gate_w)
                    os.read(gate_r, 1)  # every process waits here until the gate opens
                    rng = random.Random(rnd["seed"] * 100 + i)
                    time.sleep(rng.uniform(0, rnd["jitter_s"]))
                    # Evaluation: judge against whatever is promoted now (as evaluate_direction_task does).
                    current = Registry(rnd["root"]).promoted(DIRECTION)
                    incumbent_chrf = current.metrics["candidate"]["chrf_pp"] if current else None
                    time.sleep(rng.uniform(0, rnd["jitter_s"]))
                    result = promote_candidate(
                        rnd["root"],
                        candidate["adapter"],
                        candidate["chrf_pp"],
                        current.version if current else None,
                        incumbent_chrf,
                    )
                    Path(rnd["outcomes"], f"{i}.json").write_text(json.dumps({**result, **candidate}))
            pids.append(pid)
        os.close(gate_r)
        os.close(gate_w)  # open the gate: all of them go at once
        rounds.append({"root": rnd["root"], "exits": [_wait(pid) for pid in pids]})
    return rounds


def main(argv: list[str]) -> int:
    mode, spec_path, result_path = argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    result = crash(spec) if mode == "crash" else race(spec)
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
