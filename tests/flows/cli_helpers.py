"""The `bhashaflow` console script run as a user runs it, and the `--set`s that keep a run in a test's folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BHASHAFLOW = str(Path(sys.executable).parent / "bhashaflow")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`bhashaflow ARGS` from the repository root: its exit code, stdout and stderr."""
    return subprocess.run(
        [BHASHAFLOW, *args], cwd=ROOT, env=env or dict(os.environ), capture_output=True, text=True, timeout=300
    )


def sets(**values: object) -> list[str]:
    """`--set key=value` arguments; a double underscore in a name is a dot (training__max_steps)."""
    return [a for key, value in values.items() for a in ("--set", f"{key.replace('__', '.')}={value}")]


def local_run(tmp_path: Path, base: str, direction: str = "eng_Latn-hin_Deva") -> list[str]:
    """The `--set`s that run a shipped config on `base`, for one direction, in `tmp_path`."""
    return sets(base_model=base, workdir=tmp_path / "runs", registry=tmp_path / "registry", directions=f"[{direction}]")
