"""The promotion rule: gain >= min_gain chrF++ over base and incumbent promotes, anything less is refused."""

from __future__ import annotations

import math

import pytest

from bhashaflow.promotion import PromotionDecision, decide_promotion, should_promote


@pytest.mark.parametrize(
    ("candidate", "incumbent", "base", "min_gain", "expected"),
    [
        (45.0, None, 44.0, 0.5, True),  # first adapter, clear gain over base
        (44.5, None, 44.0, 0.5, True),  # exactly min_gain over base promotes
        (44.4, None, 44.0, 0.5, False),  # 0.4 < 0.5
        (44.0, None, 44.0, 0.0, True),  # min_gain 0: equal to base is enough
        (43.9, None, 44.0, 0.0, False),  # worse than base never promotes
        (46.0, 45.0, 44.0, 0.5, True),  # beats both
        (45.5, 45.0, 44.0, 0.5, True),  # exactly min_gain over incumbent promotes
        (45.4, 45.0, 44.0, 0.5, False),  # beats base by 1.4 but incumbent by only 0.4
        (45.0, 45.0, 44.0, 0.5, False),  # equal to incumbent
        (44.0, 45.0, 40.0, 0.5, False),  # worse than incumbent
        (44.6, 40.0, 44.5, 0.5, False),  # beats a weak incumbent, but not base by min_gain
        (11.7, None, 11.4, 0.3, True),  # 11.7 - 11.4 == 0.29999999999999893 in floats: still exactly min_gain
        (16.4, 15.9, 15.0, 0.5, True),  # 16.4 - 15.9 == 0.4999999999999982
    ],
)
def test_should_promote(
    candidate: float, incumbent: float | None, base: float, min_gain: float, expected: bool
) -> None:
    assert should_promote(candidate, incumbent, base, min_gain) is expected
    assert decide_promotion(candidate, incumbent, base, min_gain).promote is expected


def test_float_rounding_case_is_really_below_min_gain_in_floats() -> None:
    # Guards the tolerance cases above: without it they would be refused.
    assert 11.7 - 11.4 < 0.3
    assert 16.4 - 15.9 < 0.5


def test_decision_explains_refusal_against_incumbent() -> None:
    decision = decide_promotion(45.4, 45.0, 44.0, 0.5)

    assert decision == PromotionDecision(
        promote=False,
        reason="refused: candidate chrF++ 45.40 gains +0.40 over incumbent 45.00, less than the required 0.50",
        candidate=45.4,
        incumbent=45.0,
        base=44.0,
        min_gain=0.5,
    )


def test_decision_explains_refusal_against_base_first() -> None:
    decision = decide_promotion(44.2, 50.0, 44.0, 0.5)

    assert decision.reason == "refused: candidate chrF++ 44.20 gains +0.20 over base 44.00, less than the required 0.50"


def test_decision_explains_promotion() -> None:
    with_incumbent = decide_promotion(46.0, 45.0, 44.0, 0.5)
    first = decide_promotion(45.0, None, 44.0, 0.5)

    assert with_incumbent.reason == (
        "promoted: candidate chrF++ 46.00 gains +2.00 over base 44.00 and +1.00 over incumbent 45.00, min gain 0.50"
    )
    assert first.reason == "promoted: candidate chrF++ 45.00 gains +1.00 over base 44.00 (no incumbent), min gain 0.50"


@pytest.mark.parametrize("candidate", [math.nan, math.inf, -math.inf])
def test_non_finite_candidate_is_refused_not_raised(candidate: float) -> None:
    decision = decide_promotion(candidate, None, 44.0, 0.5)

    assert decision.promote is False
    assert decision.reason == f"refused: candidate chrF++ is {candidate!r}, not a number"


@pytest.mark.parametrize(
    ("incumbent", "base", "min_gain", "message"),
    [
        (None, math.nan, 0.5, "base chrF\\+\\+ must be a finite number"),
        (math.nan, 44.0, 0.5, "incumbent chrF\\+\\+ must be a finite number"),
        (None, 44.0, -0.1, "min_gain must be a finite number >= 0"),
        (None, 44.0, math.nan, "min_gain must be a finite number >= 0"),
    ],
)
def test_invalid_gate_inputs_raise(incumbent: float | None, base: float, min_gain: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        should_promote(50.0, incumbent, base, min_gain)
