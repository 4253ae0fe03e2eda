"""LoRA adapter training for one translation direction, streamed from Parquet shards, resumable.

The run folder holds `checkpoints/step-N/` (adapter weights, optimizer state, trainer state) and, at the
end, `adapter/` (adapter_config.json, adapter_model.safetensors, training_config.json, the tokenizer).
Nothing is pickled: weights and optimizer tensors are safetensors, everything else JSON. Running the same
training again picks up from the latest checkpoint; data order is a pure function of the seed, so the
resumed run sees exactly the batches the uninterrupted one would have.

Both kinds of folder are written beside their final name with an `.incomplete` mark (which the registry
refuses), synced, and renamed into place, so a kill at any instant leaves each one complete or absent;
the next run deletes what a killed one left half-written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bhashaflow.config import EvaluationConfig, PipelineConfig
from bhashaflow.core.languages import parse_direction
from bhashaflow.core.names import ADAPTER_WEIGHTS, INCOMPLETE, TRAINER_STATE, TRAINING_CONFIG
from bhashaflow.core.redact import redact_values
from bhashaflow.core.settings import Settings
from bhashaflow.data.batching import Example, Step, collate, count_tokens, optimizer_steps
from bhashaflow.data.batching import length_grouped_batches as length_grouped_batches  # re-exported
from bhashaflow.data.decontamination import Decontaminator
from bhashaflow.data.holdout import Holdout, select_holdout
from bhashaflow.modeling.loading import LoadedModel, default_target_modules, encode_pair, load_base
from bhashaflow.training.loss import scored_token_count, translation_loss_sum
from bhashaflow.training.optim import AdapterOptimizer, lr_at

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, float], None]

ADAPTER_NAME = "default"  # peft's name for the adapter get_peft_model creates
_STEP_DIR = re.compile(r"step-(\d+)")
_UNFINISHED = re.compile(r"\.(step-\d+|adapter)\.(partial|old)-\d+|adapter\.partial-\d+")


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why."""


@dataclass
class TrainResult:
    """What a training run produced."""

    adapter_dir: str
    steps: int
    resumed_from: int | None  # the checkpoint step training went on from, None for a fresh start
    final_loss: float  # mean loss of the last steps
    tokens_per_s: float  # non-padding tokens per second of training, over every session of the run
    files: list[str]  # files in adapter_dir, relative names
    decontaminated: int = 0  # training pairs dropped because they leak evaluation sentences
    target_modules: list[str] = field(default_factory=list)
    validation_pairs: int = 0  # pairs held out of training for validation (0: no validation)
    best_step: int | None = None  # the validated step whose adapter is the candidate (None: no validation)
    best_chrf_pp: float | None = None  # its validation chrF++
    stopped_early: bool = False  # training.patience validations passed without a better chrF++
    validation: list[dict[str, float]] = field(default_factory=list)  # every validation: step, val_loss, val_chrf(_pp)


# ---------------------------------------------------------------- data


def iter_shard_pairs(
    shard_paths: list[str], src_lang: str, tgt_lang: str, storage_options: dict[str, Any] | None = None
) -> Iterator[tuple[str, str]]:
    """Stream (src, tgt) of one direction from Parquet shards (local paths or fsspec URLs), batch by batch."""
    import fsspec
    import pyarrow.parquet as pq

    for path in shard_paths:
        with fsspec.open(path, "rb", **(storage_options or {})) as fh:
            parquet = pq.ParquetFile(fh)
            for batch in parquet.iter_batches(batch_size=2048, columns=["src", "tgt", "src_lang", "tgt_lang"]):
                cols = batch.to_pydict()
                for src, tgt, sl, tl in zip(cols["src"], cols["tgt"], cols["src_lang"], cols["tgt_lang"], strict=True):
                    if sl == src_lang and tl == tgt_lang:
                        yield src, tgt


def _eval_sentences(config: PipelineConfig, langs: tuple[str, str], eval_texts: dict[str, list[str]] | None) -> list[str]:
    if eval_texts is not None:
        return [s for texts in eval_texts.values() for s in texts]
    # Default to the whole evaluation split of both languages, not only the scored prefix.
    root = Path(config.evaluation.flores_dir) / config.evaluation.split
    sentences: list[str] = []
    for lang in langs:
        path = root / f"{lang}.{config.evaluation.split}"
        if path.is_file():
            sentences.extend(path.read_text(encoding="utf-8").splitlines())
    return sentences


_CACHE_PAIRS = 200_000  # corpora up to this many pairs are kept in memory after the first pass


class _ExampleStream:
    """Endless tokenized examples: epoch after epoch over the shards in a seeded order, decontaminated."""

    def __init__(
        self,
        lm: LoadedModel,
        shard_paths: list[str],
        langs: tuple[str, str],
        decon: Decontaminator,
        max_length: int,
        seed: int,
        storage_options: dict[str, Any] | None,
        holdout: Holdout | None = None,
    ) -> None:
        self.lm, self.shard_paths, self.langs, self.decon = lm, shard_paths, langs, decon
        self.max_length, self.seed, self.storage_options = max_length, seed, storage_options
        self.holdout = holdout
        self.epoch = 0
        self._first_epoch_removed = 0

    @property
    def pairs_removed(self) -> int:
        """Pairs dropped as evaluation leaks in one pass over the data (later passes drop the same ones)."""
        return self.decon.removed if self.epoch == 0 else self._first_epoch_removed

    def __iter__(self) -> Iterator[Example]:
        cache: list[tuple[str, str]] | None = []  # a small corpus is kept after one pass instead of re-read
        while True:
            epoch = self.epoch
            if cache is not None and epoch > 0:
                pairs: Iterable[tuple[str, str]] = random.Random(self.seed * 1_000_003 + epoch).sample(cache, len(cache))
            else:
                paths = list(self.shard_paths)
                random.Random(self.seed * 1_000_003 + epoch).shuffle(paths)
                pairs = self.decon.filter(iter_shard_pairs(paths, *self.langs, storage_options=self.storage_options))
            kept = 0
            for src, tgt in pairs:
                if self.holdout is not None and (src, tgt) in self.holdout:
                    continue  # a validation pair: never trained on
                kept += 1
                if cache is not None and epoch == 0:
                    # Past _CACHE_PAIRS pairs the corpus is streamed from the shards on every pass.
                    if len(cache) < _CACHE_PAIRS:
                        cache.append((src, tgt))
                    else:
                        cache = None
                yield encode_pair(self.lm, src, tgt, *self.langs, self.max_length)
            if epoch == 0:
                self._first_epoch_removed = self.decon.removed
            if kept == 0:
                held = f", {len(self.holdout.pairs)} held out for validation" if self.holdout is not None else ""
                raise TrainingError(
                    f"no training pairs for {self.langs[0]}-{self.langs[1]} in {len(self.shard_paths)} shard(s)"
                    f" ({self.decon.removed} removed as evaluation leaks{held})"
                )
            self.epoch += 1


# ---------------------------------------------------------------- checkpoints


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
    raise TrainingError(f"optimizer state holds a {type(obj).__name__} at {prefix}, which cannot be saved without pickle")


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
    save_file(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps(skeleton))


def load_optimizer(optimizer: Any, folder: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "optimizer.safetensors"))
    optimizer.load_state_dict(_unflatten_state(json.loads((folder / "optimizer.json").read_text()), tensors))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step (its trainer state exists and no `.incomplete` mark)."""
    root = Path(out_dir) / "checkpoints"
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


def _remove_unfinished(run_dir: Path) -> None:
    # Folders a killed run was writing or deleting; one trainer uses a run folder at a time.
    for parent in (run_dir, run_dir / "checkpoints"):
        for child in parent.iterdir() if parent.is_dir() else []:
            if child.is_dir() and _UNFINISHED.fullmatch(child.name):
                _remove_dir(child)
    for child in (run_dir / "checkpoints").glob("step-*"):
        if (child / INCOMPLETE).exists():
            _remove_dir(child)  # pruning was killed half-way


def _save_checkpoint(model: Any, optimizer: Any, state: dict[str, Any], out_dir: Path, keep: int) -> Path:
    from safetensors.torch import save_file

    root = out_dir / "checkpoints"
    final = root / f"step-{state['step']}"
    partial = root / f".step-{state['step']}.partial-{os.getpid()}"
    _start_partial(partial)
    _save_adapter(model, partial)
    save_optimizer(optimizer, partial)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(partial / "rng.safetensors"))
    (partial / TRAINER_STATE).write_text(json.dumps(state, indent=1))
    _publish(partial, final)
    steps = sorted(int(m.group(1)) for c in root.iterdir() if (m := _STEP_DIR.fullmatch(c.name)))
    for old in steps[:-keep]:
        if old != state.get("best_step"):  # the best validated checkpoint is the candidate: never pruned
            _remove_dir(root / f"step-{old}")
    return final


def _save_adapter(model: Any, folder: Path) -> None:
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # peft's empty model card


def _load_adapter_weights(model: Any, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(folder / ADAPTER_WEIGHTS)))


# ---------------------------------------------------------------- the model


def _fingerprint(config: PipelineConfig, direction: str, lm: LoadedModel) -> dict[str, Any]:
    return {
        "direction": direction,
        "base_model": config.base_model,
        "base_revision": lm.revision,
        "training": config.training.model_dump(mode="json"),
    }


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant checkpoints) instead of keeping them."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def prepare_lora_model(lm: LoadedModel, config: PipelineConfig) -> tuple[Any, list[str]]:
    """Wrap the base in a fresh LoRA adapter ("default"): the base frozen as loaded, the adapter in its dtype.

    Nothing of the base is upcast (peft's k-bit preparation would turn the 262M-parameter shared embedding
    and every norm into fp32), and the LoRA weights take the compute dtype, so no layer casts activations.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    train_cfg = config.training
    model = lm.model
    model.requires_grad_(False)
    if train_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    targets = train_cfg.lora.target_modules
    resolved = default_target_modules(model) if targets == "auto" else list(targets)
    lora = LoraConfig(
        r=train_cfg.lora.r,
        lora_alpha=train_cfg.lora.alpha,
        lora_dropout=train_cfg.lora.dropout,
        target_modules=resolved,
        task_type=TaskType.SEQ_2_SEQ_LM if lm.family == "seq2seq" else TaskType.CAUSAL_LM,
    )
    torch.manual_seed(train_cfg.seed)  # LoRA A matrices are random: same seed, same adapter
    wrapped = get_peft_model(model, lora, autocast_adapter_dtype=False)
    dtype = lm.compute_dtype
    for param in wrapped.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)  # beside int8/NF4 weights peft leaves LoRA in fp32
    return wrapped, resolved


# ---------------------------------------------------------------- one step


def train_step(
    model: Any, optimizer: AdapterOptimizer, micro_batches: list[dict[str, torch.Tensor]], family: str, device: str
) -> torch.Tensor:
    """One optimizer step: the mean loss over every scored token of the micro-batches, then one update.

    Returns the step's loss as a tensor on `device`: reading it is a host sync, left to the caller.
    """
    scored = max(1, sum(scored_token_count(batch["labels"], family) for batch in micro_batches))
    total = torch.zeros((), device=device)
    learned = False
    for batch in micro_batches:
        on_device = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss = translation_loss_sum(model, on_device, family) / scored
        if loss.requires_grad:
            loss.backward()
            learned = True
        # else: LayerDrop (on in some bases' configs) skipped every adapted layer; nothing to learn from it.
        total += loss.detach()
    if learned:
        optimizer.step()
    optimizer.zero_grad()
    return total


# ---------------------------------------------------------------- validation


ValidationCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class _Validator:
    """Scores the held-out slice: teacher-forced loss, and chrF++ of greedy translations (as evaluation does)."""

    holdout: Holdout
    every: int
    patience: int | None
    langs: tuple[str, str]
    evaluation: EvaluationConfig
    max_length: int

    def run(self, lm: LoadedModel) -> dict[str, float]:
        from bhashaflow.evaluation.chrf import score_chrf
        from bhashaflow.modeling.generation import translate

        sources = [src for src, _ in self.holdout.pairs]
        references = [tgt for _, tgt in self.holdout.pairs]
        lm.model.eval()  # no dropout; greedy decoding uses no random numbers, so the training RNG is untouched
        try:
            loss = self._loss(lm)
            hypotheses = translate(
                lm, sources, src_lang=self.langs[0], tgt_lang=self.langs[1], adapter=ADAPTER_NAME,
                batch_size=self.evaluation.batch_size, num_beams=1, max_new_tokens=self.evaluation.max_new_tokens,
            )  # fmt: skip
        finally:
            lm.model.train()
        score = score_chrf(hypotheses, references, self.langs[1])
        return {"val_loss": loss, "val_chrf": score.chrf, "val_chrf_pp": score.chrf_pp}

    def _loss(self, lm: LoadedModel) -> float:
        examples = sorted(
            (encode_pair(lm, src, tgt, *self.langs, self.max_length) for src, tgt in self.holdout.pairs),
            key=lambda ex: len(ex[0]) + len(ex[1]),
        )
        pad_id = int(lm.tokenizer.pad_token_id)
        total = torch.zeros((), device=lm.device)
        scored = 0
        with torch.no_grad():
            for start in range(0, len(examples), self.evaluation.batch_size):
                batch = collate(examples[start : start + self.evaluation.batch_size], pad_id)
                scored += scored_token_count(batch["labels"], lm.family)
                on_device = {k: v.to(lm.device) for k, v in batch.items()}
                total += translation_loss_sum(lm.model, on_device, lm.family)
        return float(total) / max(1, scored)


def _record_validation(
    state: dict[str, Any], step: int, result: dict[str, float], patience: int | None, max_steps: int
) -> None:
    """Append a validation, move the best step on a strictly better chrF++, count patience."""
    state["validation"].append({"step": step, **result})
    if state["best_chrf_pp"] is None or result["val_chrf_pp"] > state["best_chrf_pp"]:
        state["best_step"], state["best_chrf_pp"], state["evals_since_best"] = step, result["val_chrf_pp"], 0
        return
    state["evals_since_best"] += 1
    if patience is not None and state["evals_since_best"] >= patience and step < max_steps:
        state["stopped_early"] = True


def _make_validator(
    config: PipelineConfig, langs: tuple[str, str], pairs: Iterable[tuple[str, str]], direction: str
) -> _Validator | None:
    """The direction's validation slice (one pass over its decontaminated pairs), or None without validation."""
    train_cfg = config.training
    if train_cfg.validation is None:
        return None
    holdout = select_holdout(pairs, train_cfg.validation)
    if holdout.training_pairs <= 0:
        raise TrainingError(
            f"{direction}: training.validation holds out all {holdout.total} pairs of the direction and leaves none "
            "to train on; lower training.validation.share or .pairs"
        )
    if not holdout.pairs:
        raise TrainingError(f"{direction}: training.validation holds out no pair of {holdout.total}; raise its share")
    every = train_cfg.eval_every or train_cfg.checkpoint_every
    return _Validator(holdout, every, train_cfg.patience, langs, config.evaluation, train_cfg.max_length)


# ---------------------------------------------------------------- a run


@dataclass
class _Session:
    """What one training session of a direction works with."""

    config: PipelineConfig
    direction: str
    run_dir: Path
    lm: LoadedModel
    model: Any
    targets: list[str]
    optimizer: AdapterOptimizer
    state: dict[str, Any]
    resumed_from: int | None


@dataclass
class _Hooks:
    """The caller's view of a run: progress, validations, and how often the log and the reports come."""

    on_progress: ProgressCallback | None
    progress_every: int
    on_validation: ValidationCallback | None
    log_every: int
    keep_checkpoints: int
    pad_to: int | None


def train_adapter(
    *,
    config: PipelineConfig,
    direction: str,
    shard_paths: list[str],
    out_dir: str,
    eval_texts: dict[str, list[str]] | None = None,
    on_progress: ProgressCallback | None = None,
    progress_every: int = 1,
    on_validation: ValidationCallback | None = None,
    storage_options: dict[str, Any] | None = None,
    settings: Settings | None = None,
    lm: LoadedModel | None = None,
    keep_checkpoints: int = 2,
    log_every: int = 10,
    group_by_length: bool = True,
    pad_to_max_length: bool = False,
) -> TrainResult:
    """Train a LoRA adapter for `direction`, resuming from the run's latest checkpoint when there is one.

    With `training.validation`, a slice of the direction's pairs is held out and scored every `eval_every`
    steps; the step of the best validation chrF++ is the candidate, and `patience` stops training early.

    Args:
        config: the pipeline config (base model, training section, evaluation set location).
        direction: e.g. eng_Latn-hin_Deva.
        shard_paths: Parquet shards with columns src, tgt, src_lang, tgt_lang (local paths or fsspec URLs).
        out_dir: local run folder; checkpoints go to out_dir/checkpoints/step-N, the adapter to out_dir/adapter.
        eval_texts: evaluation sentences by language, removed from training; default: the whole
            configured evaluation split of both languages.
        on_progress: called with (step, max_steps, loss) every `progress_every` steps and after the last.
        progress_every: steps between progress calls; each reads the loss, a host sync on a GPU.
        on_validation: called with (step, validation) after each validation; the dict holds val_loss, val_chrf,
            val_chrf_pp, best_step and best_chrf_pp.
        storage_options: fsspec options for remote shards.
        settings: hub token and cache dir for loading the base.
        lm: an already loaded base to train on (it is wrapped in place); default: load config.base_model.
        keep_checkpoints: how many of the latest checkpoints to keep (besides the best validated one).
        log_every: steps between lines of out_dir/train_log.jsonl.
        group_by_length: batch similar lengths together (off only to measure what it saves).
        pad_to_max_length: pad every batch to training.max_length instead of its longest example (likewise).
    """
    session = _open_session(config, direction, out_dir, settings, lm)
    langs = parse_direction(direction)
    eval_sentences = _eval_sentences(config, langs, eval_texts)
    train_cfg = config.training
    validator = _make_validator(
        config, langs, Decontaminator(eval_sentences).filter(iter_shard_pairs(shard_paths, *langs, storage_options)),
        direction,
    )
    stream = _ExampleStream(
        session.lm, shard_paths, langs, Decontaminator(eval_sentences), train_cfg.max_length, train_cfg.seed,
        storage_options, validator.holdout if validator else None,
    )  # fmt: skip
    steps = optimizer_steps(
        stream,
        batch_size=train_cfg.batch_size,
        batch_tokens=train_cfg.batch_tokens,
        grad_accum_steps=train_cfg.grad_accum_steps,
        rng=random.Random(train_cfg.seed),
        family=session.lm.family,
        group_by_length=group_by_length,
    )
    # Replaying the seeded data order up to the checkpoint puts the resumed run on the very next step.
    for _ in range(session.state["step"]):
        next(steps)
    pad_to = _padded_width(session.lm, train_cfg.max_length) if pad_to_max_length else None
    hooks = _Hooks(on_progress, progress_every, on_validation, log_every, keep_checkpoints, pad_to)
    _fit(session, steps, hooks, validator)
    return _finish(session, stream.pairs_removed, validator)


def _open_session(
    config: PipelineConfig, direction: str, out_dir: str, settings: Settings | None, lm: LoadedModel | None
) -> _Session:
    """Load the base (unless given), wrap it in LoRA, make the optimizer, and resume the latest checkpoint."""
    train_cfg = config.training
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_unfinished(run_dir)
    if lm is None:
        lm = load_base(
            config.base_model,
            languages=config.languages,
            quantization=train_cfg.quantization,
            revision=config.base_revision,
            trust_remote_code=config.trust_remote_code,
            settings=settings,
            flores_dir=config.evaluation.flores_dir,
        )
    fingerprint = _fingerprint(config, direction, lm)
    model, targets = prepare_lora_model(lm, config)
    lm.model = model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = AdapterOptimizer(train_cfg.optimizer, params, train_cfg.learning_rate, lm.device)
    state: dict[str, Any] = {
        "step": 0, "tokens": 0, "train_seconds": 0.0, "recent_losses": [], "fingerprint": fingerprint,
        "validation": [], "best_step": None, "best_chrf_pp": None, "evals_since_best": 0, "stopped_early": False,
    }  # fmt: skip
    session = _Session(config, direction, run_dir, lm, model, targets, optimizer, state, None)
    _resume(session)
    return session


def _resume(session: _Session) -> None:
    """Restore weights, optimizer, RNG and trainer state (best step and patience too) from the latest checkpoint."""
    checkpoint = latest_checkpoint(session.run_dir)
    if checkpoint is None:
        return
    saved = json.loads((checkpoint / TRAINER_STATE).read_text())
    if saved.get("fingerprint") != session.state["fingerprint"]:
        raise TrainingError(
            f"{checkpoint} was written by a different direction, base or training config; "
            "use a new run folder or delete its checkpoints"
        )
    from safetensors.torch import load_file

    _load_adapter_weights(session.model, checkpoint)
    load_optimizer(session.optimizer, checkpoint)
    rng = load_file(str(checkpoint / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    session.state = saved
    session.resumed_from = int(saved["step"])
    log.info("resuming %s from %s", session.direction, checkpoint)


def _fit(session: _Session, steps: Iterator[Step], hooks: _Hooks, validator: _Validator | None) -> None:
    """Train to max_steps or an early stop. Losses stay on the device between the steps that need them."""
    train_cfg = session.config.training
    state, lm = session.state, session.lm
    log_path = session.run_dir / "train_log.jsonl"
    _truncate_log(log_path, state["step"])
    pad_id = int(lm.tokenizer.pad_token_id)
    pending: list[torch.Tensor] = []
    session.model.train()
    window_start = time.perf_counter()
    while state["step"] < train_cfg.max_steps and not state["stopped_early"]:
        lr = lr_at(state["step"], peak=train_cfg.learning_rate, warmup=train_cfg.warmup_steps, max_steps=train_cfg.max_steps)
        session.optimizer.set_lr(lr)
        micro = [collate(examples, pad_id, pad_to=hooks.pad_to) for examples in next(steps)]
        pending.append(train_step(session.model, session.optimizer, micro, lm.family, lm.device))
        state["step"] += 1
        state["tokens"] += sum(count_tokens(batch, lm.family) for batch in micro)
        done, last = state["step"], state["step"] == train_cfg.max_steps
        logs = done % hooks.log_every == 0 or last
        reports = hooks.on_progress is not None and (done % hooks.progress_every == 0 or last)
        validates = validator is not None and (done % validator.every == 0 or last)
        checkpoints = done % train_cfg.checkpoint_every == 0 or last or validates  # a validated step can be the best
        if not (logs or reports or checkpoints):
            continue
        values = _read_losses(pending, done)
        pending.clear()
        state["train_seconds"] += time.perf_counter() - window_start
        state["recent_losses"] = (state["recent_losses"] + values)[-20:]
        if logs:
            _log_line(log_path, {"step": done, "loss": round(values[-1], 5), "lr": lr, "tokens": state["tokens"]})
            log.info("%s step %d/%d loss %.4f", session.direction, done, train_cfg.max_steps, values[-1])
        if validates and validator is not None:
            _validate(session, validator, hooks, log_path)
        if reports and hooks.on_progress is not None:
            hooks.on_progress(done, train_cfg.max_steps, values[-1])
        if checkpoints:
            _save_checkpoint(session.model, session.optimizer, state, session.run_dir, hooks.keep_checkpoints)
        window_start = time.perf_counter()


def _validate(session: _Session, validator: _Validator, hooks: _Hooks, log_path: Path) -> None:
    state, done = session.state, session.state["step"]
    result = validator.run(session.lm)
    _record_validation(state, done, result, validator.patience, session.config.training.max_steps)
    entry = {"step": done, **{k: round(v, 5) for k, v in result.items()}, "best_step": state["best_step"]}
    _log_line(log_path, entry)
    log.info("%s step %d validation chrF++ %.2f loss %.4f (best %.2f at step %d)", session.direction, done,
             result["val_chrf_pp"], result["val_loss"], state["best_chrf_pp"], state["best_step"])  # fmt: skip
    if state["stopped_early"]:
        log.info("%s: no better validation chrF++ in %d validations; stopping at step %d (best: step %d)",
                 session.direction, validator.patience, done, state["best_step"])  # fmt: skip
    if hooks.on_validation is not None:
        hooks.on_validation(done, {**result, "best_step": state["best_step"], "best_chrf_pp": state["best_chrf_pp"]})


def _log_line(path: Path, entry: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(entry) + "\n")


def _read_losses(pending: list[torch.Tensor], done: int) -> list[float]:
    """The losses of the steps since the last read (one host sync), refusing a non-finite one."""
    values: list[float] = torch.stack(pending).tolist()
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            step = done - len(values) + offset + 1
            raise TrainingError(f"loss is {value} at step {step}; lower training.learning_rate")
    return values


def _finish(session: _Session, decontaminated: int, validator: _Validator | None) -> TrainResult:
    """Write the adapter folder (the best validated step's weights, or the last step's) and sum the run up."""
    config, state, lm = session.config, session.state, session.lm
    src_lang, tgt_lang = parse_direction(session.direction)
    losses = state["recent_losses"]
    final_loss = sum(losses) / len(losses) if losses else float("nan")
    tokens_per_s = state["tokens"] / state["train_seconds"] if state["train_seconds"] > 0 else 0.0
    best_dir = None
    if validator is not None:
        best_dir = session.run_dir / "checkpoints" / f"step-{state['best_step']}"
        if not (best_dir / TRAINER_STATE).is_file():
            raise TrainingError(f"the best validated checkpoint {best_dir} is missing; delete the run's checkpoints to retrain")
        _load_adapter_weights(session.model, best_dir)  # the candidate is the best step, in memory too
    adapter_dir = session.run_dir / "adapter"
    validation_pairs = len(validator.holdout.pairs) if validator else 0
    summary = {
        "steps": state["step"], "resumed_from": session.resumed_from, "final_loss": final_loss,
        "tokens_per_s": tokens_per_s, "decontaminated": decontaminated, "validation_pairs": validation_pairs,
        "best_step": state["best_step"], "best_chrf_pp": state["best_chrf_pp"], "stopped_early": state["stopped_early"],
        "validation": state["validation"],
    }  # fmt: skip
    resolved = {
        "direction": session.direction, "src_lang": src_lang, "tgt_lang": tgt_lang, "family": lm.family,
        "base_model": config.base_model, "base_path": lm.base_path, "base_revision": lm.revision,
        "target_modules": session.targets, **summary,
        "config": redact_values(config.model_dump(mode="json")),  # it is copied into the registry
    }  # fmt: skip
    _write_adapter_dir(session.model, lm.tokenizer, resolved, adapter_dir, best_dir)
    return TrainResult(
        adapter_dir=str(adapter_dir),
        files=sorted(p.relative_to(adapter_dir).as_posix() for p in adapter_dir.rglob("*") if p.is_file()),
        target_modules=session.targets,
        **summary,
    )


def _padded_width(lm: LoadedModel, max_length: int) -> int:
    # A causal example holds prompt and answer, each up to max_length.
    return 2 * max_length if lm.family == "causal" else max_length


def _truncate_log(path: Path, step: int) -> None:
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


def _write_adapter_dir(
    model: Any, tokenizer: Any, resolved: dict[str, Any], adapter_dir: Path, weights_from: Path | None = None
) -> None:
    partial = adapter_dir.with_name(f".{adapter_dir.name}.partial-{os.getpid()}")
    _start_partial(partial)
    _save_adapter(model, partial)
    if weights_from is not None:  # the best checkpoint's weights, byte for byte
        shutil.copyfile(weights_from / ADAPTER_WEIGHTS, partial / ADAPTER_WEIGHTS)
    tokenizer.save_pretrained(str(partial))
    (partial / TRAINING_CONFIG).write_text(json.dumps(resolved, indent=1, ensure_ascii=False))
    _publish(partial, adapter_dir)
