"""The learning-rate schedule of every training in bhashaflow: adapters and the built-in bases alike."""

from __future__ import annotations

import math


def lr_at(step: int, *, peak: float, warmup: int, max_steps: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to a tenth of it at `max_steps`.

    The closed form of torch's `SequentialLR(LinearLR(1/warmup, 1, warmup - 1), CosineAnnealingLR(max_steps - warmup,
    peak / 10), milestones=[warmup])` (tests/bhashaflow/core/test_schedule.py checks it step by step), kept as a
    function of the step: a resumed run gets its rate from the checkpoint's step, with no scheduler state to save,
    and torch's recursive updates drift from it by up to 3e-14 (the built-in bases' weights would change).
    transformers' `get_cosine_schedule_with_warmup` is not this schedule: its first step has rate 0 (here peak /
    warmup), it decays to 0 (its min-lr variant too starts at 0) and it rises again after `max_steps`.
    """
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
