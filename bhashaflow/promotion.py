"""The promotion gate: a candidate adapter replaces the served one only when its chrF++ clearly improves.

Rule (chrF++ points, 0-100): promote when the candidate gains at least `min_gain` over the base
model AND at least `min_gain` over the incumbent (when there is one). A gain of exactly `min_gain`
promotes; a smaller gain, no gain, or a loss is refused. Gains are compared with a 1e-9 tolerance so
that float rounding (11.7 - 11.4 == 0.29999999999999893) does not turn "exactly min_gain" into a refusal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_TOLERANCE = 1e-9


@dataclass(frozen=True)
class PromotionDecision:
    """Whether to promote, and why, in words a reviewer can read in a run log."""

    promote: bool
    reason: str
    candidate: float
    incumbent: float | None
    base: float
    min_gain: float


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} chrF++ must be a finite number, got {value!r}")


def decide_promotion(candidate: float, incumbent: float | None, base: float, min_gain: float) -> PromotionDecision:
    """Apply the promotion rule and explain the outcome.

    Args:
        candidate: chrF++ of the newly trained adapter.
        incumbent: chrF++ of the currently promoted adapter, or None when nothing is promoted yet.
        base: chrF++ of the base model without any adapter.
        min_gain: Least chrF++ gain required over both base and incumbent (>= 0).
    """
    _check_finite("base", base)
    if incumbent is not None:
        _check_finite("incumbent", incumbent)
    if not math.isfinite(min_gain) or min_gain < 0:
        raise ValueError(f"min_gain must be a finite number >= 0, got {min_gain!r}")

    def decision(promote: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(promote, reason, candidate, incumbent, base, min_gain)

    if not math.isfinite(candidate):
        # A broken evaluation (NaN) is a refusal, not a crash: the incumbent keeps serving.
        return decision(False, f"refused: candidate chrF++ is {candidate!r}, not a number")

    gates = [("base", base)] + ([("incumbent", incumbent)] if incumbent is not None else [])
    gains = [f"{candidate - ref:+.2f} over {name} {ref:.2f}" for name, ref in gates]
    for name, ref in gates:
        if candidate - ref < min_gain - _TOLERANCE:
            return decision(
                False,
                f"refused: candidate chrF++ {candidate:.2f} gains {candidate - ref:+.2f} over {name} {ref:.2f}, "
                f"less than the required {min_gain:.2f}",
            )
    first = "" if incumbent is not None else " (no incumbent)"
    return decision(
        True, f"promoted: candidate chrF++ {candidate:.2f} gains {' and '.join(gains)}{first}, min gain {min_gain:.2f}"
    )


def should_promote(candidate: float, incumbent: float | None, base: float, min_gain: float) -> bool:
    """True when `candidate` gains at least `min_gain` chrF++ over `base` and over `incumbent` (if any)."""
    return decide_promotion(candidate, incumbent, base, min_gain).promote
