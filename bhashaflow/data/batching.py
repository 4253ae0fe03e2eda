"""Cutting a stream of tokenized examples into optimizer steps of length-grouped micro-batches.

A step is either `batch_size` pairs per micro-batch times `grad_accum_steps` micro-batches, or a budget of
non-padding tokens (`batch_tokens`) split into `grad_accum_steps` micro-batches of about equal tokens.
Both orders are pure functions of the stream and the seeded generator, so a resumed run replays them exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from itertools import islice

import torch

Example = tuple[list[int], list[int]]  # (input_ids, labels)
Step = list[list[Example]]  # the micro-batches of one optimizer step

POOL_BATCHES = 50  # batches' worth of examples shuffled and sorted together


def example_tokens(example: Example, family: str) -> int:
    """Non-padding tokens the model processes for one example: inputs, plus decoder tokens for seq2seq."""
    ids, labels = example
    return len(ids) + len(labels) if family == "seq2seq" else len(ids)


def count_tokens(batch: dict[str, torch.Tensor], family: str) -> int:
    """Non-padding tokens of a collated batch, counted like `example_tokens`."""
    tokens = int(batch["attention_mask"].sum())
    if family == "seq2seq":
        tokens += int((batch["labels"] != -100).sum())
    return tokens


def collate(batch: list[Example], pad_id: int, *, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example (dynamic padding), or to `pad_to` tokens."""
    width_in = pad_to or max(len(x) for x, _ in batch)
    width_out = pad_to or max(len(y) for _, y in batch)
    ids = torch.full((len(batch), width_in), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width_in), dtype=torch.long)
    labels = torch.full((len(batch), width_out), -100, dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
        labels[i, : len(y)] = torch.tensor(y)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _length(example: Example) -> int:
    return len(example[0]) + len(example[1])


def length_grouped_batches(
    examples: Iterable[Example], batch_size: int, rng: random.Random, *, pool_batches: int = POOL_BATCHES
) -> Iterator[list[Example]]:
    """Cut a stream into batches: a pool of `pool_batches` batches is shuffled, sorted by length, cut, and the
    batches are shuffled again, so each batch holds similar lengths (little padding) without a fixed order."""
    stream = iter(examples)
    while True:
        pool = list(islice(stream, batch_size * pool_batches))
        if not pool:
            return
        rng.shuffle(pool)
        pool.sort(key=_length)
        batches = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        rng.shuffle(batches)
        yield from batches


def token_budget_batches(
    examples: Iterable[Example], batch_tokens: int, rng: random.Random, family: str, *, pool_batches: int = POOL_BATCHES
) -> Iterator[list[Example]]:
    """Like `length_grouped_batches`, but each batch takes sorted examples while their tokens fit `batch_tokens`
    (an example larger than the budget makes a batch of its own)."""
    stream = iter(examples)
    pool_tokens = batch_tokens * pool_batches
    while True:
        pool: list[Example] = []
        filled = 0
        for example in stream:
            pool.append(example)
            filled += example_tokens(example, family)
            if filled >= pool_tokens:
                break
        if not pool:
            return
        rng.shuffle(pool)
        pool.sort(key=_length)
        batches: list[list[Example]] = [[]]
        used = 0
        for example in pool:
            tokens = example_tokens(example, family)
            if batches[-1] and used + tokens > batch_tokens:
                batches.append([])
                used = 0
            batches[-1].append(example)
            used += tokens
        rng.shuffle(batches)
        yield from batches


def split_micro_batches(examples: list[Example], parts: int, family: str) -> list[list[Example]]:
    """Cut one step's examples (sorted by length) into at most `parts` runs of about equal tokens."""
    ordered = sorted(examples, key=_length)
    parts = max(1, min(parts, len(ordered)))
    total = sum(example_tokens(ex, family) for ex in ordered)
    micro: list[list[Example]] = [[]]
    used = 0
    for i, example in enumerate(ordered):
        left_examples, left_parts = len(ordered) - i, parts - len(micro)
        boundary = total * len(micro) / parts
        # Close the current micro-batch at its share of the tokens, keeping one example for every part left.
        if micro[-1] and left_parts > 0 and (used >= boundary or left_examples <= left_parts):
            micro.append([])
        micro[-1].append(example)
        used += example_tokens(example, family)
    return micro


def optimizer_steps(
    examples: Iterable[Example],
    *,
    batch_size: int,
    batch_tokens: int | None,
    grad_accum_steps: int,
    rng: random.Random,
    family: str,
) -> Iterator[Step]:
    """Endless optimizer steps, each a list of micro-batches.

    Args:
        examples: the tokenized training stream.
        batch_size: pairs per micro-batch (when batch_tokens is None).
        batch_tokens: non-padding tokens per optimizer step, or None.
        grad_accum_steps: micro-batches per step.
        rng: the seeded generator that orders pools and batches.
        family: seq2seq or causal (how tokens are counted).
    """
    if batch_tokens is None:
        batches = length_grouped_batches(examples, batch_size, rng)
        while True:
            step = list(islice(batches, grad_accum_steps))
            if not step:
                return
            yield step
    for batch in token_budget_batches(examples, batch_tokens, rng, family):
        yield split_micro_batches(batch, grad_accum_steps, family)
