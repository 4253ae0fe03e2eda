"""Validation during training: the held-out slice scored every `eval_every` steps (the best step and patience are
the trainer state's, state.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from bhashaflow.config import EvaluationConfig, PipelineConfig
from bhashaflow.core.memory import in_halving_batches
from bhashaflow.data.batching import collate
from bhashaflow.data.holdout import Holdout, select_holdout
from bhashaflow.evaluation.chrf import score_chrf
from bhashaflow.modeling.encoding import encode_pair
from bhashaflow.modeling.generation import translate
from bhashaflow.modeling.loaded import LoadedModel
from bhashaflow.training import TrainingError
from bhashaflow.training.lora import ADAPTER_NAME
from bhashaflow.training.loss import on_device, scored_token_count, translation_loss_sum
from bhashaflow.training.state import ValidationScores, ValidationUpdate

ValidationCallback = Callable[[int, ValidationUpdate], None]


@dataclass
class HeldOutScorer:
    """Scores the held-out slice: teacher-forced loss, and chrF++ of greedy translations (as evaluation does)."""

    holdout: Holdout
    every: int
    patience: int | None
    langs: tuple[str, str]
    evaluation: EvaluationConfig
    max_length: int

    def run(self, lm: LoadedModel) -> ValidationScores:
        sources = [src for src, _ in self.holdout.pairs]
        references = [tgt for _, tgt in self.holdout.pairs]
        lm.model.eval()  # no dropout; greedy decoding uses no random numbers, so the training RNG is untouched
        try:
            loss = self._loss(lm)
            hypotheses = translate(
                lm,
                sources,
                src_lang=self.langs[0],
                tgt_lang=self.langs[1],
                adapter=ADAPTER_NAME,
                batch_size=self.evaluation.batch_size,
                num_beams=1,
                max_new_tokens=self.evaluation.max_new_tokens,
            )
        finally:
            lm.model.train()
        score = score_chrf(hypotheses, references, self.langs[1])
        return ValidationScores(val_loss=loss, val_chrf=score.chrf, val_chrf_pp=score.chrf_pp)

    def _loss(self, lm: LoadedModel) -> float:
        examples = sorted(
            (encode_pair(lm, src, tgt, *self.langs, self.max_length) for src, tgt in self.holdout.pairs),
            key=lambda ex: len(ex[0]) + len(ex[1]),
        )
        pad_id = int(lm.tokenizer.pad_token_id)
        total = torch.zeros((), device=lm.device)
        scored = 0

        def run(start: int, stop: int) -> None:
            nonlocal total, scored
            batch = collate(examples[start:stop], pad_id)
            moved, tokens = on_device(batch, lm.family, lm.device)  # the scored tokens found on the host: no sync
            total = total + translation_loss_sum(lm.model, moved, lm.family, scored=tokens)  # counted only once it fits
            scored += scored_token_count(batch["labels"], lm.family)

        with torch.no_grad():
            # A batch that runs out of memory is retried at half the size (the sum over tokens is the same).
            in_halving_batches(len(examples), self.evaluation.batch_size, run, what=f"validation loss {self.langs}")
        return float(total) / max(1, scored)


def make_scorer(
    config: PipelineConfig, langs: tuple[str, str], pairs: Iterable[tuple[str, str]], direction: str
) -> HeldOutScorer | None:
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
    return HeldOutScorer(holdout, every, train_cfg.patience, langs, config.evaluation, train_cfg.max_length)
