"""Preference tuning with CPO (Contrastive Preference Optimization, Xu et al., ICML 2024).

A triplet is (source, chosen, rejected): from served feedback, the user's correction preferred over what the
adapter said. The loss of a step, with log pi(y|x) the summed log-probability of a translation:

    L = mean_triplets( -log sigmoid(beta * (log pi(chosen|x) - log pi(rejected|x))) )
        + nll_weight * (token-mean cross-entropy of the chosen translations)
        + token-mean cross-entropy of the step's SFT pairs (its `sft_share` of plain pairs, against forgetting)

No reference model is kept: memory is that of SFT on the same number of sequences. Both the triplets' order
and the SFT pairs' are pure functions of the seed, so a resumed run replays exactly the steps it missed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F

from bhashaflow.config import CPOConfig
from bhashaflow.data.batching import Example, collate, count_tokens, length_grouped_batches
from bhashaflow.data.decontamination import Decontaminator
from bhashaflow.data.holdout import Holdout
from bhashaflow.modeling.encoding import encode_pair
from bhashaflow.modeling.loaded import LoadedModel
from bhashaflow.training import TrainingError
from bhashaflow.training.loss import on_device, scored_token_count, sequence_log_probs, translation_loss_sum
from bhashaflow.training.optim import AdapterOptimizer

Triplet = tuple[str, str, str]  # (source, chosen, rejected)


def iter_triplets(
    paths: list[str], src_lang: str, tgt_lang: str, storage_options: dict[str, Any] | None = None
) -> Iterator[Triplet]:
    """(src, chosen, rejected) of one direction from preference shards (tgt is the chosen translation)."""
    import fsspec
    import pyarrow.parquet as pq

    for path in paths:
        with fsspec.open(path, "rb", **(storage_options or {})) as fh:
            for batch in pq.ParquetFile(fh).iter_batches(
                batch_size=2048, columns=["src", "tgt", "rejected", "src_lang", "tgt_lang"]
            ):
                cols = batch.to_pydict()
                for src, tgt, rej, sl, tl in zip(
                    cols["src"], cols["tgt"], cols["rejected"], cols["src_lang"], cols["tgt_lang"], strict=True
                ):
                    if sl == src_lang and tl == tgt_lang and rej is not None:
                        yield src, tgt, rej


@dataclass(frozen=True)
class PreferenceExample:
    """A triplet tokenized: the chosen and the rejected translation as training examples of the same source."""

    chosen: Example
    rejected: Example


@dataclass(frozen=True)
class PreferenceStep:
    """One optimizer step of CPO: micro-batches of triplets, each with its share of plain SFT examples."""

    micro: list[tuple[list[PreferenceExample], list[Example]]]


def load_triplets(
    lm: LoadedModel,
    paths: list[str],
    langs: tuple[str, str],
    decon: Decontaminator,
    max_length: int,
    storage_options: dict[str, Any] | None,
    holdout: Holdout | None = None,
) -> list[PreferenceExample]:
    """A direction's triplets, tokenized, without evaluation leaks or validation pairs (in memory: feedback is small)."""
    out = []
    for src, chosen, rejected in iter_triplets(paths, *langs, storage_options):
        if decon.is_contaminated(src, chosen) or decon.is_contaminated(src, rejected):
            decon.removed += 1
            continue
        if holdout is not None and (src, chosen) in holdout:
            continue
        out.append(
            PreferenceExample(
                encode_pair(lm, src, chosen, *langs, max_length), encode_pair(lm, src, rejected, *langs, max_length)
            )
        )
    if not out:
        raise TrainingError(
            f"training.objective cpo: no preference triplets for {langs[0]}-{langs[1]} in {len(paths)} shard(s) "
            "(they come from an rl_logs source's corrected episodes)"
        )
    return out


def preference_steps(
    triplets: list[PreferenceExample],
    sft: Iterable[Example],
    *,
    batch_size: int,
    grad_accum_steps: int,
    cpo: CPOConfig,
    seed: int,
) -> Iterator[PreferenceStep]:
    """Endless CPO steps: each micro-batch takes `batch_size` examples, an `sft_share` of them plain pairs."""
    n_sft = min(batch_size - 1, round(batch_size * cpo.sft_share))
    n_pref = batch_size - n_sft
    rng = random.Random(seed)
    sft_batches = length_grouped_batches(sft, n_sft, random.Random(seed + 1)) if n_sft else iter(())

    def endless() -> Iterator[PreferenceExample]:
        epoch = 0
        while True:
            yield from random.Random(seed * 1_000_003 + epoch).sample(triplets, len(triplets))
            epoch += 1

    ordered = endless()
    while True:
        micro = []
        for _ in range(grad_accum_steps):
            prefs = list(islice(ordered, n_pref))
            rng.shuffle(prefs)
            micro.append((prefs, next(sft_batches, []) if n_sft else []))
        yield PreferenceStep(micro)


def cpo_step(
    model: Any, optimizer: AdapterOptimizer, step: PreferenceStep, pad_id: int, family: str, device: str, cpo: CPOConfig
) -> tuple[torch.Tensor, int]:
    """One optimizer step of the CPO loss over the step's micro-batches; (its loss on `device`, tokens processed)."""
    tokens = [0]
    parts = len(step.micro)

    def losses() -> Iterator[torch.Tensor]:
        for prefs, plain in step.micro:
            # Counted and located on the host, before the batches move: nothing here waits for the device.
            chosen = collate([p.chosen for p in prefs], pad_id)
            rejected = collate([p.rejected for p in prefs], pad_id)
            logp_chosen, scored = _log_probs(model, chosen, family, device)
            logp_rejected, _ = _log_probs(model, rejected, family, device)
            prefer = -F.logsigmoid(cpo.beta * (logp_chosen - logp_rejected)).mean()
            nll = -logp_chosen.sum() / scored.sum().clamp(min=1)
            loss = prefer + cpo.nll_weight * nll
            tokens[0] += count_tokens(chosen, family) + count_tokens(rejected, family)
            if plain:
                batch = collate(plain, pad_id)
                moved, located = on_device(batch, family, device)
                plain_loss = translation_loss_sum(model, moved, family, scored=located)
                loss = loss + plain_loss / max(1, scored_token_count(batch["labels"], family))
                tokens[0] += count_tokens(batch, family)
            yield loss / parts

    total = optimizer.descend(losses(), device)
    return total, tokens[0]


def _log_probs(model: Any, batch: dict[str, torch.Tensor], family: str, device: str) -> tuple[torch.Tensor, ...]:
    """sequence_log_probs of a host batch, moved to `device` with its scored tokens located on the host."""
    moved, scored = on_device(batch, family, device)
    return sequence_log_probs(model, moved, family, scored=scored)
