"""LoRA adapter training for one direction, streamed from Parquet shards, resumable, validated as it goes.

`train_adapter` reads as the algorithm: open a session (load the base, wrap it in LoRA, make the optimizer,
resume the latest checkpoint), replay the seeded data order to the checkpoint, fit (steps, logs, reports,
validations, checkpoints), and write the adapter folder from the best validated step (or the last).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bhashaflow.config import PipelineConfig
from bhashaflow.core.languages import parse_direction
from bhashaflow.core.memory import is_out_of_memory
from bhashaflow.core.names import ADAPTER_DIR, RNG_STATE, TRAIN_LOG, TRAINER_STATE
from bhashaflow.core.redact import redact_values
from bhashaflow.core.schedule import lr_at
from bhashaflow.core.settings import Settings, get_settings
from bhashaflow.data.batching import Step, collate, count_tokens, optimizer_steps
from bhashaflow.data.decontamination import Decontaminator
from bhashaflow.modeling.loaded import LoadedModel
from bhashaflow.modeling.loading import load_configured_base
from bhashaflow.registry.store import registry_for
from bhashaflow.training import TrainingError, TrainingOutOfMemory
from bhashaflow.training.checkpoints import (
    RunMirror,
    latest_checkpoint,
    load_adapter_weights,
    load_optimizer,
    remove_unfinished,
    save_checkpoint,
    truncate_log,
    write_adapter_dir,
)
from bhashaflow.training.lora import prepare_lora_model
from bhashaflow.training.loss import on_device, scored_token_count, translation_loss_sum
from bhashaflow.training.optim import AdapterOptimizer
from bhashaflow.training.preference import PreferenceStep, cpo_step, load_triplets, preference_steps
from bhashaflow.training.state import (
    ResolvedTraining,
    RunFingerprint,
    RunSummary,
    StepLogLine,
    TrainerState,
    ValidationLogLine,
    ValidationRecord,
)
from bhashaflow.training.stream import ExampleStream, eval_sentences, iter_shard_pairs
from bhashaflow.training.validate import HeldOutScorer, ValidationCallback, make_scorer

log = logging.getLogger(__name__)
KEEP_CHECKPOINTS = 2  # the latest checkpoints kept (besides the best validated one)
ProgressCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class ProgressReport:
    """Where a training run stands after its last reported step: what the CLI and the Prefect artifact show."""

    direction: str
    step: int
    max_steps: int
    loss: float  # of the last step
    lr: float
    tokens_per_s: float  # non-padding tokens per second since the previous report
    elapsed_s: float  # training seconds of the whole run so far, every session of it
    eta_s: float  # seconds left at the recent pace

    @property
    def fraction(self) -> float:
        return self.step / self.max_steps


ReportCallback = Callable[[ProgressReport], None]


@dataclass
class TrainResult:
    """What a training run produced."""

    adapter_dir: str  # the local folder
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
    validation: list[ValidationRecord] = field(default_factory=list)  # every validation: step, val_loss, val_chrf(_pp)
    adapter_uri: str = ""  # where later tasks read the adapter: its folder at the run URI (the local folder if local)
    direction: str = ""
    base_model: str = ""  # as configured
    base_revision: str | None = None  # hub revision, or the content hash of a local or built-in base
    objective: str = "sft"  # training.objective
    initialized_from: str | None = None  # the incumbent version training started from (training.init_from)
    host: str = ""  # the machine that trained it (the pipeline's task fills it in)
    reused: bool = False  # handed on from the adapter published at the run URI instead of trained again


def train_step(
    model: Any, optimizer: AdapterOptimizer, micro_batches: list[dict[str, torch.Tensor]], family: str, device: str
) -> torch.Tensor:
    """One optimizer step: the mean loss over every scored token of the micro-batches, then one update.

    Returns the step's loss as a tensor on `device`: reading it is a host sync, left to the caller.
    """
    scored = max(1, sum(scored_token_count(batch["labels"], family) for batch in micro_batches))

    def losses() -> Iterator[torch.Tensor]:
        for batch in micro_batches:
            on, tokens = on_device(batch, family, device)  # the scored tokens are found on the host: no sync
            yield translation_loss_sum(model, on, family, scored=tokens) / scored

    return optimizer.descend(losses(), device)


def _run_fingerprint(config: PipelineConfig, direction: str, lm: LoadedModel) -> RunFingerprint:
    # Neither the precision nor the device: a checkpoint resumes in another precision, on another kind of machine.
    return RunFingerprint(
        direction=direction,
        base_model=config.base_model,
        base_revision=lm.revision,
        training=config.training.model_dump(mode="json", exclude={"precision"}),
    )


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
    state: TrainerState
    resumed_from: int | None
    mirror: RunMirror


@dataclass(frozen=True)
class TrainHooks:
    """What a caller adds to a run besides its data: who watches it, how often, and what tests put in its place.

    Args:
        on_progress: called with (step, max_steps, loss) every `progress_every` steps and after the last.
        on_report: called with a ProgressReport (loss, tokens/s, ETA) when on_progress would be.
        progress_every: steps between progress calls; each reads the loss, a host sync on a GPU.
        on_validation: called with (step, {val_loss, val_chrf, val_chrf_pp, best_step, best_chrf_pp}).
        log_every: steps between log lines and lines of out_dir/train_log.jsonl (None: training.log_every).
        eval_texts: evaluation sentences by language, removed from training (None: the whole configured
            evaluation split of both languages).
        lm: an already loaded base to train on (it is wrapped in place; None: load config.base_model).
    """

    on_progress: ProgressCallback | None = None
    on_report: ReportCallback | None = None
    progress_every: int = 1
    on_validation: ValidationCallback | None = None
    log_every: int | None = None
    eval_texts: dict[str, list[str]] | None = None
    lm: LoadedModel | None = None

    @property
    def reporting(self) -> bool:
        return self.on_progress is not None or self.on_report is not None


def train_adapter(
    *,
    config: PipelineConfig,
    direction: str,
    shard_paths: list[str],
    out_dir: str,
    preference_paths: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    settings: Settings | None = None,
    publish_to: str | None = None,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Train a LoRA adapter for `direction`, resuming from the run's latest checkpoint when there is one.

    With `training.validation` the step of the best validation chrF++ is the candidate (see validate.py).

    Args:
        config: the pipeline config (base model, training section, evaluation set location).
        direction: e.g. eng_Latn-hin_Deva.
        shard_paths: Parquet shards with columns src, tgt, src_lang, tgt_lang (local paths or fsspec URLs).
        out_dir: local run folder; checkpoints go to out_dir/checkpoints/step-N, the adapter to out_dir/adapter.
        preference_paths: the direction's preference shards (training.objective cpo trains on their triplets).
        storage_options: fsspec options for remote shards.
        settings: hub token and cache dir for loading the base.
        publish_to: the direction's folder at the run URI when that is on an object store: checkpoints, log and
            adapter are published there, and a session elsewhere resumes from it (None: out_dir is the run folder).
        hooks: callbacks, how often the log, reports and checkpoints come, and the tests' substitutes (TrainHooks).
    """
    hooks = hooks or TrainHooks()
    mirror = RunMirror(publish_to, Path(out_dir), storage_options)
    session = _open_session(config, direction, out_dir, settings, hooks.lm, mirror)
    scorer, stream, steps = _data(session, shard_paths, hooks.eval_texts, storage_options, preference_paths or [])
    _fit(session, steps, hooks, scorer)
    return _finish(session, stream.pairs_removed, scorer)


def _data(
    session: _Session,
    shard_paths: list[str],
    eval_texts: dict[str, list[str]] | None,
    storage_options: dict[str, Any] | None,
    preference_paths: list[str],
) -> tuple[HeldOutScorer | None, ExampleStream, Iterator[Step | PreferenceStep]]:
    """The validation slice, the training stream without it, and its optimizer steps replayed to the checkpoint."""
    config, lm = session.config, session.lm
    train_cfg = config.training
    langs = parse_direction(session.direction)
    leaks = eval_sentences(config, langs, eval_texts)
    pairs = Decontaminator(leaks).filter(iter_shard_pairs(shard_paths, *langs, storage_options))
    scorer = make_scorer(config, langs, pairs, session.direction)
    stream = ExampleStream(
        lm,
        shard_paths,
        langs,
        Decontaminator(leaks),
        train_cfg.max_length,
        train_cfg.seed,
        storage_options,
        scorer.holdout if scorer else None,
    )
    steps: Iterator[Step | PreferenceStep]
    if train_cfg.objective == "cpo":
        triplets = load_triplets(
            lm,
            preference_paths,
            langs,
            Decontaminator(leaks),
            train_cfg.max_length,
            storage_options,
            scorer.holdout if scorer else None,
        )
        steps = preference_steps(
            triplets,
            stream,
            batch_size=train_cfg.batch_size,
            grad_accum_steps=train_cfg.grad_accum_steps,
            cpo=train_cfg.cpo_settings,
            seed=train_cfg.seed,
        )
    else:
        steps = optimizer_steps(
            stream,
            batch_size=train_cfg.batch_size,
            batch_tokens=train_cfg.batch_tokens,
            grad_accum_steps=train_cfg.grad_accum_steps,
            rng=random.Random(train_cfg.seed),
            family=lm.family,
        )
    # Replaying the seeded data order up to the checkpoint puts the resumed run on the very next step.
    for _ in range(session.state.step):
        next(steps)
    return scorer, stream, steps


def _open_session(
    config: PipelineConfig,
    direction: str,
    out_dir: str,
    settings: Settings | None,
    lm: LoadedModel | None,
    mirror: RunMirror,
) -> _Session:
    """Load the base (unless given), wrap it in LoRA, make the optimizer, and resume the latest checkpoint."""
    train_cfg = config.training
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_unfinished(run_dir)
    if lm is None:
        lm = load_configured_base(config, settings)
    fingerprint = _run_fingerprint(config, direction, lm)
    model, targets = prepare_lora_model(lm, config)
    lm.model = model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = AdapterOptimizer(train_cfg.optimizer, params, train_cfg.learning_rate, lm.device)
    state = TrainerState(fingerprint)
    session = _Session(config, direction, run_dir, lm, model, targets, optimizer, state, None, mirror)
    pulled = mirror.pull_latest()  # a session on another machine goes on from the run URI's newest checkpoint
    if pulled is not None:
        log.info("%s: fetched checkpoint step-%d from %s", direction, pulled, mirror.uri)
    _resume(session)
    if session.resumed_from is None and train_cfg.init_from == "incumbent":
        _start_from_incumbent(session, settings)
    return session


def _start_from_incumbent(session: _Session, settings: Settings | None) -> None:
    """Load the direction's promoted adapter into the fresh LoRA weights (nothing promoted: from scratch)."""
    config = session.config
    settings = settings or get_settings()
    registry = registry_for(config, settings)
    found = registry.fetch_promoted(session.direction, session.run_dir / "incumbent")
    if found is None:
        log.info("%s: training.init_from incumbent, but nothing is promoted: starting from scratch", session.direction)
        return
    try:
        load_adapter_weights(session.model, Path(found[1]), session.optimizer)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise TrainingError(
            f"{session.direction}: the incumbent {found[0].version} does not fit this run's LoRA shape "
            f"(training.lora r and target_modules must match it): {str(exc).splitlines()[0]}"
        ) from None
    session.state.initialized_from = found[0].version
    log.info("%s: starting from the incumbent %s", session.direction, found[0].version)


def _resume(session: _Session) -> None:
    """Restore weights, optimizer, RNG and trainer state (best step and patience too) from the latest checkpoint."""
    checkpoint = latest_checkpoint(session.run_dir)
    if checkpoint is None:
        return
    saved = TrainerState.from_json((checkpoint / TRAINER_STATE).read_text(), checkpoint / TRAINER_STATE)
    if saved.fingerprint != session.state.fingerprint:
        raise TrainingError(
            f"{checkpoint} was written by a different direction, base or training config; "
            "use a new run folder or delete its checkpoints"
        )
    from safetensors.torch import load_file

    load_adapter_weights(session.model, checkpoint, session.optimizer)
    load_optimizer(session.optimizer, checkpoint)
    rng = load_file(str(checkpoint / RNG_STATE))
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    session.state = saved
    session.resumed_from = saved.step
    log.info("resuming %s from %s", session.direction, checkpoint)


def _fit(
    session: _Session, steps: Iterator[Step | PreferenceStep], hooks: TrainHooks, scorer: HeldOutScorer | None
) -> None:
    """Train to max_steps or an early stop. Losses stay on the device between the steps that need them."""
    train_cfg = session.config.training
    state, lm = session.state, session.lm
    log_every = hooks.log_every or train_cfg.log_every
    log_path = session.run_dir / TRAIN_LOG
    truncate_log(log_path, state.step)
    pad_id = int(lm.tokenizer.pad_token_id)
    pending: list[torch.Tensor] = []
    session.model.train()
    window = _Window(time.perf_counter(), state.step, state.tokens)
    while state.step < train_cfg.max_steps and not state.stopped_early:
        lr = lr_at(
            state.step, peak=train_cfg.learning_rate, warmup=train_cfg.warmup_steps, max_steps=train_cfg.max_steps
        )
        session.optimizer.set_lr(lr)
        step = next(steps)
        try:
            loss, tokens = _run_step(session, step, pad_id)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            raise _out_of_memory(session, step) from None  # one line; the last checkpoint stays as it is
        pending.append(loss)
        state.advance(tokens)
        done, last = state.step, state.step == train_cfg.max_steps
        logs = done % log_every == 0 or last
        reports = hooks.reporting and (done % hooks.progress_every == 0 or last)
        validates = scorer is not None and (done % scorer.every == 0 or last)
        checkpoints = done % train_cfg.checkpoint_every == 0 or last or validates  # a validated step can be the best
        if not (logs or reports or checkpoints):
            continue
        values = _read_losses(pending, done)
        pending.clear()
        seconds = window.seconds()
        state.record_losses(values, seconds)
        report = window.report(session, seconds, values[-1], lr)
        if logs:
            # The log is a record of the run that a resumed run reproduces byte for byte: no wall-clock figures in it.
            _log_line(log_path, StepLogLine(step=done, loss=round(values[-1], 5), lr=lr, tokens=state.tokens))
            log.info(
                "%s step %d/%d loss %.4f, %.0f tokens/s",
                session.direction,
                done,
                train_cfg.max_steps,
                values[-1],
                report.tokens_per_s,
            )
        if validates and scorer is not None:
            _validate(session, scorer, hooks, log_path)
        if reports:
            _report(hooks, report)
        if checkpoints:
            folder = save_checkpoint(session.model, session.optimizer, state, session.run_dir, KEEP_CHECKPOINTS)
            session.mirror.push_checkpoint(folder, state)
        window.open(time.perf_counter(), state.step, state.tokens)


def _out_of_memory(session: _Session, step: Step | PreferenceStep) -> TrainingOutOfMemory:
    """Why training stopped, what to lower, and where a rerun goes on from."""
    cfg, lm = session.config.training, session.lm
    checkpoint = latest_checkpoint(session.run_dir)
    kept = f"{checkpoint.name} is kept and a rerun resumes from it" if checkpoint else "no checkpoint was written yet"
    if isinstance(step, PreferenceStep):
        what = "a preference step"
    else:
        micro = max(step, key=len)
        tokens = sum(len(src) + (len(tgt) if lm.family == "seq2seq" else 0) for src, tgt in micro)
        what = f"a micro-batch of {len(micro)} pairs, {tokens} tokens"
    budget = (
        (
            f"training.batch_tokens (now {cfg.batch_tokens}) or max_length (now {cfg.max_length}), or raise "
            f"grad_accum_steps (now {cfg.grad_accum_steps})"
        )
        if cfg.batch_tokens
        else (
            f"training.batch_size (now {cfg.batch_size}) or max_length (now {cfg.max_length}); raise grad_accum_steps "
            "to keep the step's size, or set training.batch_tokens"
        )
    )
    return TrainingOutOfMemory(
        f"{session.direction}: out of memory at step {session.state.step + 1} on {lm.device} ({what}); {kept}. "
        f"Lower {budget}; `bhashaflow fit CONFIG` finds the largest training.batch_tokens that fits this device"
    )


def _run_step(session: _Session, step: Step | PreferenceStep, pad_id: int) -> tuple[torch.Tensor, int]:
    """One optimizer step of the configured objective: its loss (on the device) and the tokens it processed."""
    lm = session.lm
    if isinstance(step, PreferenceStep):
        cpo = session.config.training.cpo_settings
        return cpo_step(session.model, session.optimizer, step, pad_id, lm.family, lm.device, cpo)
    micro = [collate(examples, pad_id) for examples in step]
    loss = train_step(session.model, session.optimizer, micro, lm.family, lm.device)
    return loss, sum(count_tokens(batch, lm.family) for batch in micro)


@dataclass
class _Window:
    """The steps since the last host sync: their wall time and tokens (checkpoints and validations excluded)."""

    started: float
    step: int
    tokens: int

    def open(self, now: float, step: int, tokens: int) -> None:
        self.started, self.step, self.tokens = now, step, tokens

    def seconds(self) -> float:
        return max(time.perf_counter() - self.started, 1e-9)

    def report(self, session: _Session, seconds: float, loss: float, lr: float) -> ProgressReport:
        """The run as it stands, the window's `seconds` already counted in the state's training time."""
        state, max_steps = session.state, session.config.training.max_steps
        steps = max(1, state.step - self.step)
        return ProgressReport(
            direction=session.direction,
            step=state.step,
            max_steps=max_steps,
            loss=loss,
            lr=lr,
            tokens_per_s=(state.tokens - self.tokens) / seconds,
            elapsed_s=state.train_seconds,
            eta_s=(max_steps - state.step) * seconds / steps,
        )


def _report(hooks: TrainHooks, report: ProgressReport) -> None:
    if hooks.on_progress is not None:
        hooks.on_progress(report.step, report.max_steps, report.loss)
    if hooks.on_report is not None:
        hooks.on_report(report)


def _validate(session: _Session, scorer: HeldOutScorer, hooks: TrainHooks, log_path: Path) -> None:
    state, done = session.state, session.state.step
    scores = scorer.run(session.lm)
    update = state.record_validation(scores, scorer.patience, session.config.training.max_steps)
    _log_line(
        log_path,
        ValidationLogLine(
            step=done,
            val_loss=round(scores["val_loss"], 5),
            val_chrf=round(scores["val_chrf"], 5),
            val_chrf_pp=round(scores["val_chrf_pp"], 5),
            best_step=state.best_step,
        ),
    )
    log.info(
        "%s step %d validation chrF++ %.2f loss %.4f (best %.2f at step %d)",
        session.direction,
        done,
        scores["val_chrf_pp"],
        scores["val_loss"],
        state.best_chrf_pp,
        state.best_step,
    )
    if state.stopped_early:
        log.info(
            "%s: no better validation chrF++ in %d validations; stopping at step %d (best: step %d)",
            session.direction,
            scorer.patience,
            done,
            state.best_step,
        )
    if hooks.on_validation is not None:
        hooks.on_validation(done, update)


def _log_line(path: Path, entry: StepLogLine | ValidationLogLine) -> None:
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


def _finish(session: _Session, decontaminated: int, scorer: HeldOutScorer | None) -> TrainResult:
    """Write the adapter folder (the best validated step's weights, or the last step's) and sum the run up."""
    config, state, lm = session.config, session.state, session.lm
    src_lang, tgt_lang = parse_direction(session.direction)
    best_dir = None
    if scorer is not None:
        if state.best_step is None:  # the last step is always validated: only a foreign checkpoint lacks one
            raise TrainingError(
                f"{session.direction}: the latest checkpoint records no validated step; delete the "
                "run's checkpoints to retrain"
            )
        best_dir = session.mirror.pull(state.best_step)  # on another machine the best may be only at the run URI
        if not (best_dir / TRAINER_STATE).is_file():
            raise TrainingError(
                f"the best validated checkpoint {best_dir} is missing; delete the run's checkpoints to retrain"
            )
        load_adapter_weights(session.model, best_dir, session.optimizer)  # the candidate: the best step, in memory too
    adapter_dir = session.run_dir / ADAPTER_DIR
    summary = RunSummary(
        steps=state.step,
        resumed_from=session.resumed_from,
        final_loss=state.final_loss,
        tokens_per_s=state.tokens_per_s,
        decontaminated=decontaminated,
        validation_pairs=len(scorer.holdout.pairs) if scorer else 0,
        best_step=state.best_step,
        best_chrf_pp=state.best_chrf_pp,
        stopped_early=state.stopped_early,
        validation=state.validation,
    )
    resolved = ResolvedTraining(
        direction=session.direction,
        src_lang=src_lang,
        tgt_lang=tgt_lang,
        family=lm.family,
        base_model=config.base_model,
        base_path=lm.base_path,
        base_revision=lm.revision,
        target_modules=session.targets,
        **summary,
        config=redact_values(config.model_dump(mode="json")),  # it is copied into the registry
    )
    write_adapter_dir(session.model, lm.tokenizer, resolved, adapter_dir, best_dir)
    adapter_uri = session.mirror.push_adapter(adapter_dir)
    return TrainResult(
        adapter_dir=str(adapter_dir),
        files=sorted(p.relative_to(adapter_dir).as_posix() for p in adapter_dir.rglob("*") if p.is_file()),
        target_modules=session.targets,
        adapter_uri=adapter_uri,
        direction=session.direction,
        base_model=config.base_model,
        base_revision=lm.revision,
        objective=config.training.objective,
        initialized_from=state.initialized_from,
        **summary,
    )
