"""The validation slice: chosen by a seeded hash of each pair, so the same pairs in any order and on any run."""

from __future__ import annotations

import random

import pytest

from bhashaflow.config import ConfigError, ValidationConfig, config_from_dict
from bhashaflow.data.holdout import holdout_rank, select_holdout


def corpus(n: int) -> list[tuple[str, str]]:
    return [(f"source sentence {i}", f"target sentence {i}") for i in range(n)]


def test_a_share_holds_out_about_that_share_the_same_in_any_order() -> None:
    pairs = corpus(4000)
    held = select_holdout(pairs, ValidationConfig(share=0.1, max_pairs=10_000))
    shuffled = random.Random(3).sample(pairs, len(pairs))
    assert select_holdout(shuffled, ValidationConfig(share=0.1, max_pairs=10_000)).pairs == held.pairs
    assert 340 <= len(held.pairs) <= 460  # a binomial(4000, 0.1): far inside 5 sigma
    assert held.total == 4000 and held.training_pairs == 4000 - len(held.pairs)
    assert all(holdout_rank(0, *p) < 0.1 for p in held.pairs)
    assert sum(p in held for p in pairs) == len(held.pairs)


def test_a_count_holds_out_exactly_that_many_with_the_smallest_keys() -> None:
    pairs = corpus(500)
    held = select_holdout(pairs, ValidationConfig(pairs=25))
    assert len(held.pairs) == 25
    smallest = sorted(pairs, key=lambda p: holdout_rank(0, *p))[:25]
    assert held.pairs == smallest  # in key order


def test_max_pairs_caps_a_share_and_the_seed_changes_the_slice() -> None:
    pairs = corpus(2000)
    capped = select_holdout(pairs, ValidationConfig(share=0.5, max_pairs=30))
    assert len(capped.pairs) == 30
    other = select_holdout(pairs, ValidationConfig(share=0.5, max_pairs=30, seed=1))
    assert len(other.pairs) == 30 and set(other.pairs) != set(capped.pairs)


def test_a_repeated_pair_is_held_out_once() -> None:
    pairs = corpus(50) * 2
    held = select_holdout(pairs, ValidationConfig(pairs=10))
    assert len(held.pairs) == len(set(held.pairs)) == 10


@pytest.mark.parametrize(
    ("validation", "message"),
    [({}, "exactly one of share or pairs"), ({"share": 0.1, "pairs": 5}, "exactly one of share or pairs"),
     ({"share": 0}, "share"), ({"share": 1.5}, "share")],
)
def test_validation_settings_are_checked_by_name(validation: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"directions": ["eng_Latn-hin_Deva"], "training": {"validation": validation}})
    with pytest.raises(ConfigError, match="training.eval_every and training.patience need training.validation"):
        config_from_dict({"directions": ["eng_Latn-hin_Deva"], "training": {"patience": 3}})
