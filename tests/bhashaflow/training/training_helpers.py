"""What the training tests share: the direction, the files a run writes, a config maker, a kill harness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bhashaflow.config import PipelineConfig, config_from_dict

DIRECTION = "eng_Latn-hin_Deva"

ADAPTER_FILES = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_config.json",
]

CHECKPOINT_FILES = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "optimizer.json",
    "optimizer.safetensors",
    "rng.safetensors",
    "trainer_state.json",
]

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def make_config(base: Path, **training: object) -> PipelineConfig:
    settings = {
        "max_steps": 2,
        "batch_size": 4,
        "checkpoint_every": 1,
        "learning_rate": 1e-3,
        "max_length": 48,
        **training,
    }
    return config_from_dict({"directions": [DIRECTION], "base_model": str(base), "training": settings})


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def no_pickles(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.suffix in PICKLE_SUFFIXES]


def kill_when_marked(script: str, args: dict[str, object], marker: Path) -> None:
    """Run a training `script` in a subprocess and SIGKILL it as soon as it writes `marker` (then stalls)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(args)], env=env)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, "the training subprocess died before the kill point"
            assert time.monotonic() < deadline, "the training subprocess never reached the kill point"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


VALIDATED = {"validation": {"pairs": 8}, "eval_every": 2, "checkpoint_every": 4, "learning_rate": 1e-2}


def validated_config(base: Path, **training: object) -> PipelineConfig:
    """make_config with validation, and short greedy translations (a random tiny model never says </s>)."""
    config = make_config(base, **{**VALIDATED, **training})
    return config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"max_new_tokens": 12})})
