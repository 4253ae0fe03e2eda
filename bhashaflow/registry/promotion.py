"""The promotion gate: a candidate adapter replaces the served one only when its chrF++ clearly improves.

Rule (chrF++ points, 0-100): promote when the candidate gains at least `min_gain` over the base
model AND at least `min_gain` over the incumbent (when there is one). A gain of exactly `min_gain`
promotes; a smaller gain, no gain, or a loss is refused. Gains are compared with a 1e-9 tolerance so
that float rounding (11.7 - 11.4 == 0.29999999999999893) does not turn "exactly min_gain" into a refusal.

`promote_adapter` acts on a decision: it registers the candidate and moves PROMOTED only if the incumbent
the candidate was judged against is still the promoted one, so concurrent promotions never let a
candidate replace a version it was not compared with, and a re-run after a crash finishes the job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Unpack

from bhashaflow.registry.manifest import Provenance, ProvenanceFields, provenance_of
from bhashaflow.registry.store import PromotionConflict, Registry

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


def gate_corrections(
    decision: PromotionDecision, candidate: float, reference: float, against: str, max_regression: float
) -> PromotionDecision:
    """The second yardstick: a candidate that passed on FLORES but loses more than `max_regression` chrF++ on the
    held-out corrections against `reference` (the incumbent's, or the base's without one) is not promoted."""
    if not decision.promote:
        return decision
    loss = reference - candidate
    if math.isfinite(candidate) and loss <= max_regression + _TOLERANCE:
        note = f"; held-out corrections chrF++ {candidate:.2f} ({candidate - reference:+.2f} against {against})"
        return replace(decision, reason=decision.reason + note)
    return replace(
        decision,
        promote=False,
        reason=(
            f"refused: candidate passes on FLORES but its held-out corrections chrF++ {candidate:.2f} loses "
            f"{loss:.2f} against {against} {reference:.2f}, more than promotion.max_regression {max_regression:.2f}"
        ),
    )


@dataclass(frozen=True)
class PromotionOutcome:
    """What a promotion did: the version holding the candidate, and whether PROMOTED points at it."""

    version: str
    promoted: bool
    reason: str
    adapter_uri: str = field(default="", compare=False)  # the version's folder: derived from the version
    host: str = field(default="", compare=False)  # the machine that promoted it (the pipeline's task fills it in)


def promote_adapter(
    registry: Registry,
    direction: str,
    adapter_dir: str | Path,
    decision: PromotionDecision,
    provenance: Provenance | None = None,
    *,
    judged_against: str | None,
    **fields: Unpack[ProvenanceFields],
) -> PromotionOutcome:
    """Register the candidate, then promote it if `decision` says so and `judged_against` is still promoted.

    Running it again after a crash reuses the version the crashed run registered, so the retry ends
    where the uninterrupted run would have.

    Args:
        registry: Where versions and the PROMOTED pointer live.
        direction: `src-tgt` FLORES-200 codes.
        adapter_dir: The trained adapter directory.
        decision: The promotion rule's verdict (`decide_promotion`).
        provenance: What the version's manifest records: base model and revision, the training data manifest's
            sha256, the config and the metrics (or its fields as keyword arguments, as `Registry.register` takes).
        judged_against: The incumbent version the candidate was evaluated against (None: none was promoted).
    """
    info = registry.register(direction, adapter_dir, provenance_of(provenance, fields), reuse=True)
    uri = registry.adapter_uri(direction, info.version)
    if not decision.promote:
        return PromotionOutcome(info.version, False, decision.reason, uri)
    try:
        registry.promote_if(direction, info.version, incumbent=judged_against)
    except PromotionConflict as exc:
        return PromotionOutcome(info.version, False, f"refused: {exc}; evaluate it again to compare", uri)
    return PromotionOutcome(info.version, True, decision.reason, uri)
