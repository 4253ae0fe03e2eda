"""The learning-rate schedule of every training in bhashaflow: adapters and the built-in bases alike."""

from __future__ import annotations

import math


def lr_at(step: int, *, peak: float, warmup: int, max_steps: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to a tenth of it at `max_steps`."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
