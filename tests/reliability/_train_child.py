"""The trainer that test_training_kills SIGKILLs: train_adapter in a forked process that reports where it is.

A fork server preloads this module, so each forked trainer starts with torch, transformers and peft
already imported (a fraction of a second instead of several). The reports only observe: they wrap the
checkpoint and adapter writers without changing what they write.
"""

from __future__ import annotations

import dataclasses
import re
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import peft  # noqa: F401  (preloaded for the forked trainers)
import safetensors.torch  # noqa: F401
import torch
import transformers.models.m2m_100.modeling_m2m_100  # noqa: F401

from bhashaflow.config import config_from_dict
from bhashaflow.training import checkpoints, loop
from bhashaflow.training.state import TrainerState


def train(args: dict[str, Any], conn: Connection) -> None:
    """Run one training session, sending (event, step, monotonic time) for every step and write."""
    torch.set_num_threads(1)  # one thread: the same float operations in the same order in every session

    def send(event: str, value: Any = 0) -> None:
        conn.send((event, value, time.monotonic()))

    save_checkpoint, write_adapter = loop.save_checkpoint, loop.write_adapter_dir
    save_weights = checkpoints.save_adapter

    def saving_weights(model: Any, folder: Path) -> None:
        save_weights(model, folder)
        step = re.search(r"step-(\d+)", folder.name)
        send("weights", int(step.group(1)) if step else "adapter")  # the rest of the folder is still to come

    def saving(model: Any, optimizer: Any, state: TrainerState, out_dir: Any, keep: int) -> Any:
        send("checkpoint", state.step)
        path = save_checkpoint(model, optimizer, state, out_dir, keep)
        send("checkpoint_done", state.step)
        return path

    def writing(*args: Any) -> None:
        send("adapter")
        write_adapter(*args)
        send("adapter_done")

    loop.save_checkpoint = saving  # type: ignore[assignment]  # looked up by the loop at each call
    loop.write_adapter_dir = writing  # type: ignore[assignment]
    checkpoints.save_adapter = saving_weights  # type: ignore[assignment]  # the checkpoint and adapter writers' own
    send("start")
    result = loop.train_adapter(
        config=config_from_dict(args["config"]),
        direction=args["direction"],
        shard_paths=args["shards"],
        out_dir=args["out"],
        hooks=loop.TrainHooks(on_progress=lambda step, total, loss: send("step", step), log_every=1, eval_texts={}),
    )
    send("done", dataclasses.asdict(result))
