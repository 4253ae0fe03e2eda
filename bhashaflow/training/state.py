"""The trainer's state: what a checkpoint's `trainer_state.json` holds, and the one place it changes.

The file's keys and their order are those runs have always written (a run folder from before this module
resumes): step, tokens, train_seconds, recent_losses, fingerprint, validation, best_step, best_chrf_pp,
evals_since_best, stopped_early, and initialized_from only when training started from the incumbent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from bhashaflow.training import TrainingError

RECENT_LOSSES = 20  # the losses kept for the run's final loss (their mean)
_KEYS = (  # trainer_state.json's keys, in the order runs write them (initialized_from follows when set)
    "step",
    "tokens",
    "train_seconds",
    "recent_losses",
    "fingerprint",
    "validation",
    "best_step",
    "best_chrf_pp",
    "evals_since_best",
    "stopped_early",
)


class RunFingerprint(TypedDict):
    """What a checkpoint must have been written by to resume: the direction, the base and the training section."""

    direction: str
    base_model: str
    base_revision: str | None
    training: dict[str, Any]  # the training section as JSON (precision left out), compared as a whole


class ValidationScores(TypedDict):
    """One scoring of the held-out slice."""

    val_loss: float
    val_chrf: float
    val_chrf_pp: float


class ValidationRecord(TypedDict):
    """One validation of a run: in trainer_state.json, training_config.json and TrainResult.validation."""

    step: int
    val_loss: float
    val_chrf: float
    val_chrf_pp: float


class ValidationUpdate(TypedDict):
    """What a run's `on_validation` callback receives with the step: the scores and the best step so far."""

    val_loss: float
    val_chrf: float
    val_chrf_pp: float
    best_step: int | None
    best_chrf_pp: float | None


class StepLogLine(TypedDict):
    """A line of train_log.jsonl every `log_every` steps (pipeline/curves.py reads them back)."""

    step: int
    loss: float  # of that step, rounded to 5 places
    lr: float
    tokens: int  # trained on so far


class ValidationLogLine(TypedDict):
    """A line of train_log.jsonl after each validation: its scores rounded to 5 places and the best step so far."""

    step: int
    val_loss: float
    val_chrf: float
    val_chrf_pp: float
    best_step: int | None


@dataclass
class TrainerState:
    """Where a direction's training stands; saved with each checkpoint and restored from it."""

    fingerprint: RunFingerprint
    step: int = 0
    tokens: int = 0  # non-padding tokens trained on
    train_seconds: float = 0.0  # wall time of the training steps, every session of the run
    recent_losses: list[float] = field(default_factory=list)
    validation: list[ValidationRecord] = field(default_factory=list)
    best_step: int | None = None
    best_chrf_pp: float | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    initialized_from: str | None = None  # the incumbent version training started from

    def advance(self, tokens: int) -> None:
        """One optimizer step done on `tokens` tokens."""
        self.step += 1
        self.tokens += tokens

    def record_losses(self, losses: list[float], seconds: float) -> None:
        """The losses of the steps since the last host sync, and the wall time they took."""
        self.recent_losses = (self.recent_losses + losses)[-RECENT_LOSSES:]
        self.train_seconds += seconds

    def record_validation(self, scores: ValidationScores, patience: int | None, max_steps: int) -> ValidationUpdate:
        """Append this step's validation, move the best step on a strictly better chrF++, count patience."""
        self.validation.append(ValidationRecord(step=self.step, **scores))
        if self.best_chrf_pp is None or scores["val_chrf_pp"] > self.best_chrf_pp:
            self.best_step, self.best_chrf_pp, self.evals_since_best = self.step, scores["val_chrf_pp"], 0
        else:
            self.evals_since_best += 1
            if patience is not None and self.evals_since_best >= patience and self.step < max_steps:
                self.stopped_early = True
        return ValidationUpdate(**scores, best_step=self.best_step, best_chrf_pp=self.best_chrf_pp)

    @property
    def final_loss(self) -> float:
        """The mean loss of the last steps (nan before the first)."""
        return sum(self.recent_losses) / len(self.recent_losses) if self.recent_losses else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    def to_json(self) -> str:
        """trainer_state.json's text, key for key as runs have always written it."""
        saved: dict[str, Any] = {key: getattr(self, key) for key in _KEYS}
        if self.initialized_from is not None:
            saved["initialized_from"] = self.initialized_from
        return json.dumps(saved, indent=1)

    @classmethod
    def from_json(cls, text: str, path: Path | str) -> TrainerState:
        """The state `to_json` wrote to `path` (named in the error when a key is missing)."""
        saved = json.loads(text)
        missing = [key for key in _KEYS if key not in saved] if isinstance(saved, dict) else list(_KEYS)
        if missing:
            raise TrainingError(f"{path} lacks {', '.join(missing)}; use a new run folder or delete its checkpoints")
        return cls(**{key: saved[key] for key in _KEYS}, initialized_from=saved.get("initialized_from"))


class RunSummary(TypedDict):
    """What a finished run sums up: in training_config.json and in TrainResult (pipeline/reuse.py reads it back)."""

    steps: int
    resumed_from: int | None
    final_loss: float
    tokens_per_s: float
    decontaminated: int
    validation_pairs: int
    best_step: int | None
    best_chrf_pp: float | None
    stopped_early: bool
    validation: list[ValidationRecord]


class ResolvedTraining(RunSummary):
    """An adapter folder's training_config.json: what trained it, the run's summary, and the redacted config."""

    direction: str
    src_lang: str
    tgt_lang: str
    family: str
    base_model: str
    base_path: str
    base_revision: str | None
    target_modules: list[str]
    config: dict[str, Any]  # the whole pipeline config as JSON, secrets redacted (copied into the registry)
