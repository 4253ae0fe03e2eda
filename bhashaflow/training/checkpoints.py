"""Checkpoints and the adapter folder: safetensors and JSON only (no pickle), published atomically.

A run folder holds `checkpoints/step-N/` (adapter weights, optimizer state, RNG, trainer state) and, at the
end, `adapter/` (adapter_config.json, adapter_model.safetensors, training_config.json, the tokenizer). Both
kinds of folder are written beside their final name with an `.incomplete` mark (which the registry refuses),
synced, and renamed into place, so a kill at any instant leaves each one complete or absent; the next run
deletes what a killed one left half-written.

When the run folder lives on an object store, training works in a local copy and `RunMirror` publishes each
checkpoint, the train log and the adapter to the run URI as they are finished (core/folders.py: a manifest
written last), and a session started on another machine pulls the newest published checkpoint first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from bhashaflow.core.folders import fetch_folder, publish_folder, published_names, remove_published
from bhashaflow.core.fsio import join, open_fs, write_bytes_atomic
from bhashaflow.core.names import (
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    CHECKPOINTS_DIR,
    INCOMPLETE,
    OPTIMIZER_SKELETON,
    OPTIMIZER_STATE,
    RNG_STATE,
    TRAIN_LOG,
    TRAINER_STATE,
    TRAINING_CONFIG,
)
from bhashaflow.training import TrainingError
from bhashaflow.training.optim import AdapterOptimizer
from bhashaflow.training.state import ResolvedTraining, TrainerState

_STEP_DIR = re.compile(r"step-(\d+)")
_UNFINISHED = re.compile(r"\.(step-\d+|adapter)\.(partial|old)-\d+|adapter\.partial-\d+")


def _flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON skeleton of a nested state with tensors moved into `tensors` (saved as safetensors)."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu").clone().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten_state(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        items = [_flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TrainingError(
        f"optimizer state holds a {type(obj).__name__} at {prefix}, which cannot be saved without pickle"
    )


def _unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_unflatten_state(v, tensors) for v in obj["__tuple__"])
        return {k: _unflatten_state(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten_state(v, tensors) for v in obj]
    return obj


def save_optimizer(optimizer: Any, folder: Path) -> None:
    """optimizer.safetensors (its tensors) + optimizer.json (the rest): no pickle."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten_state(optimizer.state_dict(), "opt", tensors)
    save_file(tensors, str(folder / OPTIMIZER_STATE))
    (folder / OPTIMIZER_SKELETON).write_text(json.dumps(skeleton))


def load_optimizer(optimizer: AdapterOptimizer, folder: Path) -> None:
    """Restore the optimizer state of a checkpoint whose weights are already set (`load_adapter_weights`)."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / OPTIMIZER_STATE))
    optimizer.load_state_dict(_unflatten_state(json.loads((folder / OPTIMIZER_SKELETON).read_text()), tensors))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step (its trainer state exists and no `.incomplete` mark)."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    found = []
    for child in root.glob("step-*") if root.is_dir() else []:
        match = _STEP_DIR.fullmatch(child.name)
        if match and (child / TRAINER_STATE).is_file() and not (child / INCOMPLETE).exists():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def _start_partial(partial: Path) -> None:
    _remove_dir(partial)
    partial.mkdir(parents=True)
    (partial / INCOMPLETE).touch()


def _publish(partial: Path, final: Path) -> None:
    """Rename a fully written `partial` folder to `final`; a kill at any instant leaves `final` complete or absent."""
    for child in partial.iterdir():
        if child.is_file() and child.name != INCOMPLETE:
            with child.open("rb") as fh:
                os.fsync(fh.fileno())  # the bytes reach the disk before the name that vouches for them
    (partial / INCOMPLETE).unlink()
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        _remove_dir(old)
        os.replace(final, old)  # the previous folder leaves in one step instead of file by file
        os.replace(partial, final)
        _remove_dir(old)
    else:
        os.replace(partial, final)
    _fsync_dir(final.parent)


def _remove_dir(folder: Path) -> None:
    """Delete a folder, marking it incomplete first so that no kill can leave it looking whole."""
    if not folder.is_dir():
        return
    (folder / INCOMPLETE).touch()
    for child in folder.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        elif child.name != INCOMPLETE:
            child.unlink()
    (folder / INCOMPLETE).unlink()
    folder.rmdir()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_unfinished(run_dir: Path) -> None:
    # Folders a killed run was writing or deleting; one trainer uses a run folder at a time.
    for parent in (run_dir, run_dir / CHECKPOINTS_DIR):
        for child in parent.iterdir() if parent.is_dir() else []:
            if child.is_dir() and _UNFINISHED.fullmatch(child.name):
                _remove_dir(child)
    for child in (run_dir / CHECKPOINTS_DIR).glob("step-*"):
        if (child / INCOMPLETE).exists():
            _remove_dir(child)  # pruning was killed half-way


def save_checkpoint(model: Any, optimizer: Any, state: TrainerState, out_dir: Path, keep: int) -> Path:
    """Write checkpoints/step-N of `state`'s step; keep the `keep` latest and the best validated one."""
    from safetensors.torch import save_file

    root = out_dir / CHECKPOINTS_DIR
    final = root / f"step-{state.step}"
    partial = root / f".step-{state.step}.partial-{os.getpid()}"
    _start_partial(partial)
    save_adapter(model, partial)
    save_optimizer(optimizer, partial)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(partial / RNG_STATE))
    (partial / TRAINER_STATE).write_text(state.to_json())
    _publish(partial, final)
    steps = sorted(int(m.group(1)) for c in root.iterdir() if (m := _STEP_DIR.fullmatch(c.name)))
    for old in steps[:-keep]:
        if old != state.best_step:  # the best validated checkpoint is the candidate: never pruned
            _remove_dir(root / f"step-{old}")
    return final


def save_adapter(model: Any, folder: Path) -> None:
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # peft's empty model card


def load_adapter_weights(model: Any, folder: Path, optimizer: AdapterOptimizer | None = None) -> None:
    """Set the LoRA weights from `folder`'s adapter (a checkpoint, the incumbent, the best step): the one way
    weights are set, so that an optimizer's fp32 masters take the same values (a later step starts from them)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(folder / ADAPTER_WEIGHTS))
    with optimizer.setting_weights() if optimizer is not None else nullcontext():
        set_peft_model_state_dict(model, weights)


def write_adapter_dir(
    model: Any, tokenizer: Any, resolved: ResolvedTraining, adapter_dir: Path, weights_from: Path | None = None
) -> None:
    partial = adapter_dir.with_name(f".{adapter_dir.name}.partial-{os.getpid()}")
    _start_partial(partial)
    save_adapter(model, partial)
    if weights_from is not None:  # the best checkpoint's weights, byte for byte
        shutil.copyfile(weights_from / ADAPTER_WEIGHTS, partial / ADAPTER_WEIGHTS)
    tokenizer.save_pretrained(str(partial))
    (partial / TRAINING_CONFIG).write_text(json.dumps(resolved, indent=1, ensure_ascii=False))
    _publish(partial, adapter_dir)


def truncate_log(path: Path, step: int) -> None:
    # A killed run may have logged steps past its last checkpoint; they are trained again.
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a crash
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)  # never an emptied log if killed while rewriting it


def checkpoint_steps(out_dir: Path) -> list[int]:
    """Steps of the complete local checkpoints, oldest first."""
    root = out_dir / CHECKPOINTS_DIR
    steps = []
    for child in root.glob("step-*") if root.is_dir() else []:
        match = _STEP_DIR.fullmatch(child.name)
        if match and (child / TRAINER_STATE).is_file() and not (child / INCOMPLETE).exists():
            steps.append(int(match.group(1)))
    return sorted(steps)


class RunMirror:
    """The run URI's copy of a local training folder, for runs whose folder is on an object store.

    Args:
        uri: the direction's training folder at the run URI (`<run_uri>/adapters/<direction>`), or None when
            the local folder is the run folder itself.
        run_dir: the local working copy.
        storage_options: fsspec options for `uri`.
    """

    def __init__(self, uri: str | None, run_dir: Path, storage_options: dict[str, Any] | None = None) -> None:
        self.uri, self.run_dir, self.storage_options = uri, run_dir, storage_options

    @property
    def enabled(self) -> bool:
        return self.uri is not None

    def _checkpoint_uri(self, step: int) -> str:
        assert self.uri is not None
        return join(self.uri, CHECKPOINTS_DIR, f"step-{step}")

    def published_steps(self) -> list[int]:
        """Steps of the checkpoints published at the run URI, oldest first."""
        if self.uri is None:
            return []
        names = published_names(join(self.uri, CHECKPOINTS_DIR), self.storage_options)
        return sorted(int(m.group(1)) for name in names if (m := _STEP_DIR.fullmatch(name)))

    def pull_latest(self) -> int | None:
        """Fetch the newest published checkpoint when it is newer than every local one; returns its step."""
        published = self.published_steps()
        local = checkpoint_steps(self.run_dir)
        if not published or (local and local[-1] >= published[-1]):
            return None
        self.pull(published[-1])
        self._pull_log()
        return published[-1]

    def _pull_log(self) -> None:
        # The history before the checkpoint travels with it (the loop cuts what lies past the checkpoint's step).
        assert self.uri is not None
        fs, path = open_fs(join(self.uri, TRAIN_LOG), self.storage_options)
        if fs.exists(path):
            write_bytes_atomic(str(self.run_dir / TRAIN_LOG), fs.cat_file(path))

    def pull(self, step: int) -> Path:
        """The checkpoint of `step` in the local folder, fetched from the run URI (verified) if missing."""
        folder = self.run_dir / CHECKPOINTS_DIR / f"step-{step}"
        if step in checkpoint_steps(self.run_dir) or self.uri is None:
            return folder
        fetched = fetch_folder(self._checkpoint_uri(step), folder, self.storage_options)
        if fetched is None:
            raise TrainingError(f"checkpoint step-{step} is published neither here nor at {self.uri}")
        return fetched

    def push_checkpoint(self, folder: Path, state: TrainerState) -> None:
        """Publish a finished checkpoint and the train log, then unpublish what local pruning removed."""
        if self.uri is None:
            return
        publish_folder(folder, self._checkpoint_uri(state.step), self.storage_options)
        self.push_log()
        kept = set(checkpoint_steps(self.run_dir))
        for old in self.published_steps():
            if old not in kept and old != state.best_step:
                remove_published(self._checkpoint_uri(old), self.storage_options)

    def push_log(self) -> None:
        log = self.run_dir / TRAIN_LOG
        if self.uri is not None and log.is_file():
            write_bytes_atomic(join(self.uri, TRAIN_LOG), log.read_bytes(), self.storage_options)

    def push_adapter(self, folder: Path) -> str:
        """Publish the adapter folder, then unpublish the checkpoints; returns its URI (the local folder when there
        is no run URI). Until the adapter is published a session elsewhere resumes from them; after, it reuses it."""
        if self.uri is None:
            return str(folder)
        uri = join(self.uri, ADAPTER_DIR)
        publish_folder(folder, uri, self.storage_options)
        self.push_log()
        for step in self.published_steps():
            remove_published(self._checkpoint_uri(step), self.storage_options)
        return uri
