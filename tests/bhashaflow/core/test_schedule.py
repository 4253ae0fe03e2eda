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


@pytest.mark.parametrize(
    ("peak", "warmup", "max_steps"), [(1.0, 4, 20), (2e-4, 0, 100), (5e-4, 50, 1000), (3e-4, 200, 400)]
)
def test_it_is_torchs_linear_warm_up_then_cosine_annealing_step_by_step(
    peak: float, warmup: int, max_steps: int
) -> None:
    """lr_at is the closed form of torch's schedulers for every step a training takes (and the last)."""
    import torch

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_steps - warmup, eta_min=peak / 10)
    scheduler: torch.optim.lr_scheduler.LRScheduler = cosine
    if warmup:
        linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup - 1)
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
    for step in range(max_steps + 1):
        assert lr_at(step, peak=peak, warmup=warmup, max_steps=max_steps) == pytest.approx(
            optimizer.param_groups[0]["lr"], rel=1e-12
        ), step
        optimizer.step()
        scheduler.step()
