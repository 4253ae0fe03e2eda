"""The one learning-rate schedule: linear warm-up, then cosine decay to a tenth of the peak."""

from __future__ import annotations

import pytest

from bhashaflow.core.schedule import lr_at


def test_warm_up_is_linear_and_reaches_the_peak() -> None:
    values = [lr_at(step, peak=1.0, warmup=4, max_steps=20) for step in range(6)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[4] == pytest.approx(1.0)  # the first step after warm-up starts the decay at the peak


def test_cosine_decay_ends_at_a_tenth_and_stays_there() -> None:
    values = [lr_at(step, peak=2e-4, warmup=0, max_steps=100) for step in range(0, 121)]
    assert values[0] == pytest.approx(2e-4)
    assert values[50] == pytest.approx(2e-4 * 0.55)  # half way: the mean of peak and floor
    assert values[100] == pytest.approx(2e-5) and values[120] == pytest.approx(2e-5)
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
