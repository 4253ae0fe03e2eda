"""The promotion rule (gain >= min_gain chrF++ over base and incumbent promotes) and promote_adapter acting on it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.numpy import save_file

from bhashaflow.registry.promotion import (
    PromotionDecision,
    PromotionOutcome,
    decide_promotion,
    promote_adapter,
)
from bhashaflow.registry.store import Registry


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
def test_decide_promotion_gate(
    candidate: float, incumbent: float | None, base: float, min_gain: float, expected: bool
) -> None:
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
        decide_promotion(50.0, incumbent, base, min_gain)


DIRECTION = "eng_Latn-hin_Deva"


def adapter(path: Path, seed: int) -> Path:
    import numpy as np

    path.mkdir(parents=True)
    save_file({"lora_A.weight": np.full((2, 4), seed, dtype=np.float32)}, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "seed": seed}))
    return path


def promote(
    registry: Registry, folder: Path, candidate: float, judged_against: str | None, incumbent: float | None
) -> PromotionOutcome:
    return promote_adapter(
        registry,
        DIRECTION,
        folder,
        decide_promotion(candidate, incumbent, 40.0, 0.5),
        judged_against=judged_against,
        base_model="tiny",
        base_revision=None,
        data_manifest_sha256="0" * 64,
        config={},
        metrics={"chrf_pp": candidate},
    )


def test_promote_adapter_registers_and_promotes_only_past_the_gate_and_the_same_incumbent(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "registry"))
    first = promote(registry, adapter(tmp_path / "a", 1), 45.0, None, None)
    assert first == PromotionOutcome("v0001", True, decide_promotion(45.0, None, 40.0, 0.5).reason)

    weak = promote(registry, adapter(tmp_path / "b", 2), 45.2, "v0001", 45.0)
    assert (weak.version, weak.promoted) == ("v0002", False)
    assert weak.reason.startswith("refused: candidate chrF++ 45.20")

    # Judged against v0001, but another promotion put v0003 there meanwhile: not promoted, kept as a version.
    registry.promote(
        DIRECTION,
        registry.register(
            DIRECTION,
            adapter(tmp_path / "c", 3),
            base_model="tiny",
            base_revision=None,
            data_manifest_sha256="0" * 64,
            config={},
            metrics={},
        ).version,
    )
    stale = promote(registry, adapter(tmp_path / "d", 4), 48.0, "v0001", 45.0)
    conflict = f"{DIRECTION}: v0003 is promoted now, not the incumbent judged"
    assert stale == PromotionOutcome("v0004", False, f"refused: {conflict}; evaluate it again to compare")
    assert registry.promoted(DIRECTION).version == "v0003"  # type: ignore[union-attr]

    # Running a promotion again (after a crash past its registration) reuses its version and finishes it.
    assert promote(registry, tmp_path / "d", 48.0, "v0003", 45.0) == PromotionOutcome(
        "v0004", True, decide_promotion(48.0, 45.0, 40.0, 0.5).reason
    )
    assert promote(registry, tmp_path / "d", 48.0, "v0003", 45.0).version == "v0004"  # and again: still done
    assert [v.version for v in registry.versions(DIRECTION)] == ["v0001", "v0002", "v0003", "v0004"]


def test_held_out_corrections_block_a_candidate_that_regresses_beyond_max_regression() -> None:
    from bhashaflow.registry.promotion import decide_promotion, gate_corrections

    passed = decide_promotion(40.0, 38.0, 30.0, 0.5)
    assert passed.promote
    kept = gate_corrections(passed, 49.5, 50.0, "incumbent", 1.0)  # loses 0.5: within max_regression
    assert kept.promote and "held-out corrections chrF++ 49.50 (-0.50 against incumbent)" in kept.reason
    blocked = gate_corrections(passed, 48.0, 50.0, "incumbent", 1.0)
    assert not blocked.promote
    assert blocked.reason == (
        "refused: candidate passes on FLORES but its held-out corrections chrF++ 48.00 loses 2.00 "
        "against incumbent 50.00, more than promotion.max_regression 1.00"
    )
    refused = decide_promotion(38.1, 38.0, 30.0, 0.5)
    assert gate_corrections(refused, 10.0, 50.0, "base", 1.0) == refused  # the FLORES refusal stands as it was
    assert not gate_corrections(passed, float("nan"), 50.0, "base", 1.0).promote
