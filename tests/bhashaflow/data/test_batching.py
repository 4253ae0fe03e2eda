"""Optimizer steps from the example stream: fixed pairs, token budgets, micro-batches; nothing lost, same order."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bhashaflow.config import ConfigError, config_from_dict
from bhashaflow.data.batching import (
    Example,
    collate,
    example_tokens,
    length_grouped_batches,
    optimizer_steps,
    split_micro_batches,
    token_budget_batches,
)


def examples(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    # Distinct examples (the first id numbers them) of mixed lengths, like a real corpus.
    return [([i] + [1] * rng.randint(2, 60), [2] * rng.randint(2, 60)) for i in range(n)]


def ids(batches: list[list[Example]]) -> Counter[int]:
    return Counter(ex[0][0] for batch in batches for ex in batch)


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_token_budget_batches_stay_within_the_budget_and_lose_nothing(family: str) -> None:
    data = examples(3000)
    batches = list(token_budget_batches(data, 1024, random.Random(0), family))
    assert ids(batches) == Counter(range(3000))  # every example exactly once
    sizes = [sum(example_tokens(ex, family) for ex in batch) for batch in batches]
    assert max(sizes) <= 1024
    assert sum(sizes) / len(sizes) > 0.9 * 1024  # budgets are filled, not a few pairs each
    # Length grouping: the pairs of one batch are close in length (source + target, the sort key).
    lengths = [[len(x) + len(y) for x, y in b] for b in batches]
    spread = sorted(max(b) - min(b) for b in lengths)
    assert spread[len(spread) // 2] <= 4


def test_an_example_larger_than_the_budget_is_a_batch_of_its_own() -> None:
    data = [([1] * 10, [2] * 10), ([1] * 300, [2] * 300), ([1] * 12, [2] * 12)]
    batches = list(token_budget_batches(data, 100, random.Random(0), "seq2seq"))
    assert sorted(len(b) for b in batches) == [1, 2]
    assert [len(b[0][0]) for b in batches if len(b) == 1] == [300]


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7])
def test_micro_batches_split_a_step_into_equal_token_shares(parts: int) -> None:
    step = examples(40)
    micro = split_micro_batches(step, parts, "seq2seq")
    assert len(micro) == parts and all(micro)
    assert ids(micro) == Counter(range(40))
    shares = [sum(example_tokens(ex, "seq2seq") for ex in m) for m in micro]
    total = sum(shares)
    assert max(shares) <= total / parts + 2 * 122  # within one longest example of an equal share


def test_fewer_examples_than_micro_batches_gives_one_example_each() -> None:
    assert [len(m) for m in split_micro_batches(examples(3), 8, "causal")] == [1, 1, 1]


@pytest.mark.parametrize(
    ("budget", "accum"), [(None, 1), (None, 3), (1500, 1), (1500, 4)], ids=["pairs", "pairs-accum", "tokens", "tokens-accum"]
)


def test_steps_are_a_pure_function_of_the_seed_and_cover_the_stream(budget: int | None, accum: int) -> None:
    data = examples(2000)

    def steps(seed: int) -> list[list[list[Example]]]:
        stream = optimizer_steps(data, batch_size=8, batch_tokens=budget, grad_accum_steps=accum,
                                 rng=random.Random(seed), family="seq2seq")
        return list(stream)

    first, again, other = steps(0), steps(0), steps(1)
    assert first == again and first != other
    assert all(1 <= len(step) <= accum for step in first)
    assert Counter(i for step in first for micro in step for i in ids([micro])) == Counter(range(2000))
    if budget is None:
        assert all(len(micro) == 8 for step in first[:-1] for micro in step[:-1])
    else:
        assert all(sum(example_tokens(ex, "seq2seq") for micro in step for ex in micro) <= budget for step in first)


def test_a_budget_below_the_longest_pair_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"training: .*batch_tokens \(200\) must be at least 2 x max_length \(256\)"):
        config_from_dict({"directions": ["eng_Latn-hin_Deva"], "training": {"batch_tokens": 200, "max_length": 128}})
    config = config_from_dict({"directions": ["eng_Latn-hin_Deva"], "training": {"batch_tokens": 4096, "grad_accum_steps": 4}})
    assert config.training.batch_tokens == 4096 and config.training.grad_accum_steps == 4


def test_length_grouping_pads_less_than_arrival_order() -> None:
    import random

    rng = random.Random(0)
    examples = [([1] * n, [2] * n) for n in (rng.randint(3, 60) for _ in range(400))]
    grouped = list(length_grouped_batches(examples, 8, random.Random(0)))
    arrival = random.Random(0).sample(examples, len(examples))  # the same examples, batched as they come
    plain = [arrival[i : i + 8] for i in range(0, len(arrival), 8)]
    assert sorted(map(len, examples)) == sorted(len(ex) for b in grouped for ex in b)  # nothing lost or repeated
    cells = lambda batches: sum(collate(b, 0)["input_ids"].numel() for b in batches)  # noqa: E731
    assert cells(grouped) < 0.7 * cells(plain)


def test_collate_pads_inputs_and_masks_labels() -> None:
    batch = collate([([5, 6, 7], [8, 9]), ([5], [8, 9, 10])], pad_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[8, 9, -100], [8, 9, 10]]
    assert collate([([5], [8])], pad_id=1, pad_to=4)["input_ids"].tolist() == [[5, 1, 1, 1]]
