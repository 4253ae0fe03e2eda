"""The adapter's optimizer: AdamW (fused where the device has it) or bitsandbytes' paged 8-bit AdamW, over
fp32 master copies when the LoRA weights themselves are half precision.

On a GPU the LoRA weights live in the base's compute dtype (bf16) so that no layer casts its activations;
an update of 2e-4 on a weight of 0.03 is below bf16's resolution, so the optimizer keeps fp32 masters,
steps them, and copies them back in one fused copy per step (a few MB for a rank-16 adapter).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
_HALF = (torch.float16, torch.bfloat16)


def make_torch_optimizer(name: str, params: list[torch.Tensor], lr: float, device: str) -> torch.optim.Optimizer:
    """`adamw` (torch, fused kernels on CUDA) or `paged_adamw_8bit` (bitsandbytes; paging needs CUDA)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=device.startswith("cuda") or None)
    import bitsandbytes as bnb

    if not device.startswith("cuda"):
        # bitsandbytes falls back to an un-paged 8-bit AdamW on CPU; paging only exists with CUDA.
        log.warning("paged_adamw_8bit: paging needs CUDA; running bitsandbytes' 8-bit AdamW without paging on %s", device)
    return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=0.0)


class AdapterOptimizer:
    """Clips, steps and zeroes the trainable parameters; fp32 masters stand in for half-precision ones.

    Its `state_dict` holds the inner optimizer's state (and the masters, when there are any), so a resumed
    run continues from exactly the same numbers.
    """

    def __init__(self, name: str, params: list[torch.nn.Parameter], lr: float, device: str) -> None:
        self.params: list[torch.Tensor] = list(params)
        self.mixed = any(p.dtype in _HALF for p in params)
        self.masters: list[torch.Tensor] = (
            [p.detach().float().clone().requires_grad_(True) for p in params] if self.mixed else list(params)
        )
        self.inner = make_torch_optimizer(name, self.masters, lr, device)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    def set_lr(self, lr: float) -> None:
        for group in self.inner.param_groups:
            group["lr"] = lr

    def step(self) -> torch.Tensor:
        """Clip the gradients to norm 1 and update; returns the gradient norm before clipping (a tensor)."""
        if self.mixed:
            for master, param in zip(self.masters, self.params, strict=True):
                master.grad = None if param.grad is None else param.grad.float()
        norm = torch.nn.utils.clip_grad_norm_(self.masters, MAX_GRAD_NORM)
        self.inner.step()
        if self.mixed:
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.masters)
        return norm

    def descend(self, losses: Iterable[torch.Tensor], device: str) -> torch.Tensor:
        """Back-propagate each micro-batch's loss as it comes (its graph freed before the next is built), then
        take one step; returns the summed loss on `device` (reading it is a host sync, left to the caller)."""
        total = torch.zeros((), device=device)
        learned = False
        for loss in losses:
            if loss.requires_grad:
                loss.backward()
                learned = True
            # else: LayerDrop (on in some bases' configs) skipped every adapted layer; nothing to learn from it.
            total += loss.detach()
        if learned:
            self.step()
        self.zero_grad()
        return total

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None
        if self.mixed:
            for master in self.masters:
                master.grad = None

    def state_dict(self) -> dict[str, Any]:
        state = self.inner.state_dict()
        if not self.mixed:
            return state
        return {"optimizer": state, "master_params": [m.detach() for m in self.masters]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.mixed:
            self.inner.load_state_dict(state)
            return
        self.inner.load_state_dict(state["optimizer"])
        with torch.no_grad():
            for master, saved in zip(self.masters, state["master_params"], strict=True):
                master.copy_(saved)
            torch._foreach_copy_(self.params, self.masters)
