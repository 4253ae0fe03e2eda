"""The adapter's optimizer: fp32 masters for half-precision LoRA weights, and a state that resumes bit for bit."""

from __future__ import annotations

import torch

from bhashaflow.training.optim import AdapterOptimizer


def params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(8, 4).to(dtype)), torch.nn.Parameter(torch.randn(4).to(dtype))]


def steps(optimizer: AdapterOptimizer, weights: list[torch.nn.Parameter], n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for w in weights:
            w.grad = torch.randn(w.shape, generator=gen).to(w.dtype)
        optimizer.step()
        optimizer.zero_grad()


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


def test_fp32_weights_have_no_masters_and_a_plain_torch_state() -> None:
    weights = params(torch.float32)
    optimizer = AdapterOptimizer("adamw", weights, 1e-3, "cpu")
    steps(optimizer, weights, 2, seed=1)
    assert not optimizer.mixed and optimizer.masters == optimizer.params
    assert set(optimizer.state_dict()) == {"state", "param_groups"}


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
            w.grad = torch.randn(w.shape, generator=gen_state).to(w.dtype)
        resumed.step()
        resumed.zero_grad()
    for a, b in zip(resumed.masters, straight.masters, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(resumed_w, straight_w, strict=True):
        assert torch.equal(a, b)
