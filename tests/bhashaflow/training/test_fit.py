"""The fit check: real training steps on the worst case the config allows, and plain words where it cannot measure."""

from __future__ import annotations

from pathlib import Path

import pytest

from bhashaflow.config import config_from_dict
from bhashaflow.modeling.loading import load_base
from bhashaflow.training.fit import check_fit, format_fit, largest_fitting, micro_batch_pairs, worst_case_examples


def fit_config(base: Path, **training: object):  # noqa: ANN201
    return config_from_dict(
        {
            "directions": ["eng_Latn-hin_Deva"],
            "base_model": str(base),
            "training": {"max_length": 24, "batch_size": 3, **training},
        }
    )


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_worst_case_examples_are_as_long_as_training_allows(tiny_bases: dict[str, Path], family: str) -> None:
    lm = load_base(str(tiny_bases[family]), languages=[])
    examples = worst_case_examples(lm, 4, 24)
    assert len(examples) == 4
    for ids, labels in examples:
        if family == "seq2seq":
            assert len(ids) == 24 and len(labels) == 24
        else:  # a prompt of max_length and an answer of max_length; only the answer is scored
            assert len(ids) == 48 and labels[:24] == [-100] * 24 and -100 not in labels[24:]
        assert lm.tokenizer.pad_token_id not in ids and all(0 <= t < len(lm.tokenizer) for t in ids)


def test_the_micro_batch_follows_batch_size_or_the_token_budget(tiny_bases: dict[str, Path]) -> None:
    base = tiny_bases["seq2seq"]
    assert micro_batch_pairs(fit_config(base)) == 3
    assert micro_batch_pairs(fit_config(base, batch_tokens=480, grad_accum_steps=2)) == 5  # 240 tokens / 48 per pair
    assert micro_batch_pairs(fit_config(base, batch_tokens=48)) == 1


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_on_cpu_it_measures_steps_and_says_gpu_memory_cannot_be_measured(
    tiny_bases: dict[str, Path], family: str
) -> None:
    report = check_fit(fit_config(tiny_bases[family], gradient_checkpointing=True), steps=3, device="cpu")

    assert report.device == "cpu" and report.family == family and report.steps == 3
    assert report.micro_batch_pairs == 3 and report.micro_batch_tokens == 3 * 48
    assert report.gradient_checkpointing is True and report.quantization == "none"
    assert report.first_step_s > 0 and report.step_ms > 0 and report.tokens_per_s > 0
    assert report.gpu_memory_measured is False
    assert report.peak_allocated_gib is None and report.peak_reserved_gib is None and report.device_total_gib is None
    assert report.fits is None and report.batch_tokens_max is None
    assert report.peak_rss_gib is not None and report.peak_rss_gib > 0.1
    assert report.note.startswith("GPU memory cannot be measured on cpu")
    text = format_fit(report)
    assert "3 pairs of 24+24 tokens per micro-batch (144 tokens)" in text
    assert "GPU memory cannot be measured on cpu" in text


def test_largest_fitting_grows_then_bisects_to_the_exact_boundary() -> None:
    for boundary in (0, 1, 2, 3, 7, 8, 9, 100, 1000):
        tried: list[int] = []

        def fits(n: int, boundary: int = boundary, tried: list[int] = tried) -> bool:
            tried.append(n)
            return n <= boundary

        found, tries = largest_fitting(fits, start=3, limit=1000)
        assert found == boundary and tries == len(tried) == len(set(tried))
    assert largest_fitting(lambda n: True, start=3, limit=20) == (20, 4)  # 3, 6, 12, 20: stops at the limit


def test_the_search_finds_the_largest_micro_batch_under_an_injected_memory_cap(tiny_bases: dict[str, Path]) -> None:
    from bhashaflow.core.memory import AllocationCap
    from bhashaflow.training.fit import step_probe
    from bhashaflow.training.lora import prepare_lora_model
    from bhashaflow.training.optim import AdapterOptimizer

    config = fit_config(tiny_bases["seq2seq"], batch_size=2)
    lm = load_base(str(tiny_bases["seq2seq"]), languages=[])
    lm.model, _ = prepare_lora_model(lm, config)
    optimizer = AdapterOptimizer("adamw", [p for p in lm.model.parameters() if p.requires_grad], 1e-3, "cpu")
    lm.model.train()
    with AllocationCap(None) as free:
        assert step_probe(lm, lm.model, optimizer, 24)(1)
    per_pair = free.largest  # the largest single allocation of a step grows with the pairs in it
    with AllocationCap(per_pair * 13 + per_pair // 2) as cap:
        report = check_fit(config, steps=2, device="cpu", search=True)  # its own model, the same shapes
        probe = step_probe(lm, lm.model, optimizer, 24)
        found = report.largest_micro_batch_pairs
        assert found is not None and probe(found) and not probe(found + 1)  # the exact boundary
    assert cap.raised > 0 and report.fits is True  # 2 pairs fit
    assert report.batch_tokens_max == int(found * 0.9) * 48
    assert f"largest training.batch_tokens that fits with a 10% margin: {report.batch_tokens_max}" in format_fit(report)
    assert report.note.startswith("GPU memory cannot be measured on cpu")  # the search says nothing about a GPU


def test_a_configured_micro_batch_that_runs_out_of_memory_is_reported_not_raised(tiny_bases: dict[str, Path]) -> None:
    from bhashaflow.core.memory import AllocationCap
    from bhashaflow.training.fit import step_probe
    from bhashaflow.training.lora import prepare_lora_model
    from bhashaflow.training.optim import AdapterOptimizer

    config = fit_config(tiny_bases["seq2seq"], batch_size=4, max_length=96)  # activations outgrow the weights
    lm = load_base(str(tiny_bases["seq2seq"]), languages=[])
    lm.model, _ = prepare_lora_model(lm, config)
    optimizer = AdapterOptimizer("adamw", [p for p in lm.model.parameters() if p.requires_grad], 1e-3, "cpu")
    with AllocationCap(None) as free:
        assert step_probe(lm, lm.model, optimizer, 96)(4)
    with AllocationCap(free.largest - 1):  # 4 pairs do not fit
        report = check_fit(config, steps=2, device="cpu", search=True)
    assert report.fits is False and report.step_ms is None and report.steps == 0
    assert report.largest_micro_batch_pairs is not None and 1 <= report.largest_micro_batch_pairs < 4
    assert report.batch_tokens_max == max(1, int(report.largest_micro_batch_pairs * 0.9)) * 192
    text = format_fit(report)
    assert "the configured micro-batch ran out of memory" in text
    assert f"largest training.batch_tokens that fits with a 10% margin: {report.batch_tokens_max}" in text
