"""The adapter's optimizer: fp32 masters for half-precision LoRA weights, and a state that resumes bit for bit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from bhashaflow.training.optim import AdapterOptimizer


def params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(8, 4).to(dtype)), torch.nn.Parameter(torch.randn(4).to(dtype))]


def steps(optimizer: AdapterOptimizer, weights: list[torch.nn.Parameter], n: int, seed: int) -> None:
    """`n` steps whose gradients are seeded random numbers (a loss sum(w * g) has gradient g)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        grads = [torch.randn(w.shape, generator=gen) / 64 for w in weights]  # scaled for fp16, it must not overflow
        optimizer.descend(
            [sum(((w.float() * g).sum() for w, g in zip(weights, grads, strict=True)), torch.zeros(()))], "cpu"
        )


def test_bf16_weights_are_stepped_through_fp32_masters() -> None:
    weights = params(torch.bfloat16)
    optimizer = AdapterOptimizer("adamw", weights, 1e-4, "cpu")
    assert optimizer.mixed and all(m.dtype == torch.float32 for m in optimizer.masters)
    before = [w.detach().clone() for w in weights]
    steps(optimizer, weights, 3, seed=1)
    # Updates of 1e-4 vanish in bf16 arithmetic, not in the masters: the weights are the masters rounded.
    for w, m in zip(weights, optimizer.masters, strict=True):
        assert w.dtype == torch.bfloat16 and torch.equal(w.detach(), m.detach().to(torch.bfloat16))
    assert any(not torch.equal(m.detach(), b.float()) for m, b in zip(optimizer.masters, before, strict=True))


def test_fp32_weights_are_their_own_masters_and_save_the_one_state_form() -> None:
    weights = params(torch.float32)
    optimizer = AdapterOptimizer("adamw", weights, 1e-3, "cpu")
    steps(optimizer, weights, 2, seed=1)
    assert not optimizer.mixed and optimizer.masters == optimizer.params
    state = optimizer.state_dict()
    assert set(state) == {"optimizer", "master_params", "loss_scale"}  # the same keys as in mixed precision
    assert set(state["optimizer"]) == {"state", "param_groups"} and state["loss_scale"] == {}
    assert all(torch.equal(m, w.detach()) for m, w in zip(state["master_params"], weights, strict=True))


def test_a_restored_state_continues_exactly_as_the_uninterrupted_one() -> None:
    straight_w = params(torch.bfloat16)
    straight = AdapterOptimizer("adamw", straight_w, 1e-3, "cpu")
    steps(straight, straight_w, 4, seed=1)

    first_w = params(torch.bfloat16)
    first = AdapterOptimizer("adamw", first_w, 1e-3, "cpu")
    steps(first, first_w, 2, seed=1)
    saved = first.state_dict()
    resumed_w = params(torch.bfloat16)  # a new process: fresh weights, then the saved state
    resumed = AdapterOptimizer("adamw", resumed_w, 1e-3, "cpu")
    resumed.load_state_dict(saved)
    gen_state = torch.Generator().manual_seed(1)
    for _ in range(2):  # the gradients of steps 1 and 2 again, so that steps 3 and 4 get the same ones
        for w in resumed_w:
            torch.randn(w.shape, generator=gen_state)
    for _ in range(2):
        for w in resumed_w:
            w.grad = (torch.randn(w.shape, generator=gen_state) / 64).to(w.dtype)
        resumed.step()
        resumed.zero_grad()
    for a, b in zip(resumed.masters, straight.masters, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(resumed_w, straight_w, strict=True):
        assert torch.equal(a, b)


PRECISION_CHANGES = [
    (torch.bfloat16, torch.float32),
    (torch.float32, torch.bfloat16),
    (torch.float16, torch.bfloat16),
    (torch.bfloat16, torch.float16),
]


@pytest.mark.parametrize(("saved", "resumed"), PRECISION_CHANGES)
def test_a_state_resumes_in_another_precision_from_its_fp32_numbers(saved: torch.dtype, resumed: torch.dtype) -> None:
    first_w = params(saved)
    first = AdapterOptimizer("adamw", first_w, 1e-3, "cpu")
    steps(first, first_w, 2, seed=1)
    masters = [m.detach().clone() for m in first.masters]
    state = first.state_dict()

    again_w = params(resumed)  # a new process on another machine: fresh weights, then the checkpoint
    again = AdapterOptimizer("adamw", again_w, 1e-3, "cpu")
    with again.setting_weights(), torch.no_grad():
        for w, saved_w in zip(again_w, first_w, strict=True):
            w.copy_(saved_w)  # the checkpoint's adapter weights, in the precision they were saved in
    again.load_state_dict(state)
    for master, want, w in zip(again.masters, masters, again_w, strict=True):
        assert torch.equal(master.detach(), want)  # the fp32 numbers training had reached, not their rounding
        assert w.dtype == resumed and torch.equal(w.detach(), want.to(resumed))
    assert again.inner.state_dict()["state"][0]["step"] == 2
    steps(again, again_w, 1, seed=2)  # and it trains on


def test_the_two_older_state_forms_still_load() -> None:
    # What checkpoints written before the one form hold: fp32 training saved torch's own state (the weights were
    # the masters), mixed precision {"optimizer", "master_params"}.
    fp32_w = params(torch.float32)
    fp32 = AdapterOptimizer("adamw", fp32_w, 1e-3, "cpu")
    steps(fp32, fp32_w, 2, seed=1)
    bf16_w = params(torch.bfloat16)
    bf16 = AdapterOptimizer("adamw", bf16_w, 1e-3, "cpu")
    steps(bf16, bf16_w, 2, seed=1)
    mixed = {"optimizer": bf16.inner.state_dict(), "master_params": list(bf16.masters)}
    old_forms = {"fp32": (fp32_w, fp32.inner.state_dict()), "bf16": (bf16_w, mixed)}

    for name, (saved_w, old_state) in old_forms.items():
        for dtype in (torch.float32, torch.bfloat16):
            weights = params(dtype)
            resumed = AdapterOptimizer("adamw", weights, 1e-3, "cpu")
            with resumed.setting_weights(), torch.no_grad():
                for w, s in zip(weights, saved_w, strict=True):
                    w.copy_(s)
            resumed.load_state_dict(old_state)
            want = fp32.masters if name == "fp32" else bf16.masters
            for master, expected in zip(resumed.masters, want, strict=True):
                assert torch.equal(master.detach(), expected.detach()), (name, dtype)
            assert resumed.inner.state_dict()["state"][0]["step"] == 2


def test_weights_set_in_mixed_precision_reach_the_masters_unrounded() -> None:
    weights = params(torch.bfloat16)
    optimizer = AdapterOptimizer("adamw", weights, 1e-30, "cpu")  # a vanishing rate: a step changes nothing
    exact = [torch.full(w.shape, value) for w, value in zip(weights, (0.1234567, 5.0), strict=True)]
    with optimizer.setting_weights(), torch.no_grad():
        for w, value in zip(weights, exact, strict=True):
            w.copy_(value)
    assert [w.dtype for w in weights] == [torch.bfloat16, torch.bfloat16]
    for w, m, value in zip(weights, optimizer.masters, exact, strict=True):
        assert torch.equal(m.detach(), value) and torch.equal(w.detach(), value.to(torch.bfloat16))
    steps(optimizer, weights, 1, seed=1)
    for w, value in zip(weights, exact, strict=True):
        assert torch.equal(w.detach(), value.to(torch.bfloat16))  # the step started from them


def test_gradients_are_summed_in_fp32_across_micro_batches() -> None:
    weight = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = AdapterOptimizer("adamw", [weight], 1e-3, "cpu")
    summed: list[torch.Tensor] = []

    def losses() -> Iterator[torch.Tensor]:
        yield weight.sum()  # gradient 1
        for _ in range(256):
            yield weight.sum() / 512  # 1/512 each: bf16 rounds 1 + 1/512 back to 1, every time
        summed.append(optimizer.masters[0].grad.detach().clone())  # type: ignore[union-attr]

    optimizer.descend(losses(), "cpu")
    assert summed[0].dtype == torch.float32 and summed[0].tolist() == [1.5] * 4


def test_fp16_weights_get_loss_scaling_and_skip_a_step_that_overflows() -> None:
    weight = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    optimizer = AdapterOptimizer("adamw", [weight], 1e-2, "cpu")
    assert optimizer.scaler.is_enabled() and optimizer.scaler.get_scale() == 65536.0
    # A gradient of 1e-8 is below fp16's smallest number: unscaled it would vanish and the weight would not move.
    optimizer.descend([weight.float().sum() * 1e-8], "cpu")
    assert weight.dtype == torch.float16 and all(w < 1.0 for w in weight.tolist())
    before = weight.detach().clone()
    optimizer.descend([weight.float().sum() * 1e30], "cpu")  # scaled, its gradient overflows: the step is skipped
    assert torch.equal(weight.detach(), before) and optimizer.scaler.get_scale() == 32768.0
    state = optimizer.state_dict()
    assert state["loss_scale"]["scale"] == 32768.0
    resumed = AdapterOptimizer("adamw", [torch.nn.Parameter(before.clone())], 1e-2, "cpu")
    resumed.load_state_dict(state)
    assert resumed.scaler.get_scale() == 32768.0
    assert not AdapterOptimizer("adamw", params(torch.bfloat16), 1e-3, "cpu").scaler.is_enabled()
