"""The adapter's optimizer: AdamW (fused where the device has it) or bitsandbytes' paged 8-bit AdamW, over
fp32 master copies when the LoRA weights themselves are half precision.

On a GPU the LoRA weights live in the base's compute dtype (bf16) so that no layer casts its activations;
an update of 2e-4 on a weight of 0.03 is below bf16's resolution, so the optimizer keeps fp32 masters,
steps them, and copies them back in one fused copy per step (a few MB for a rank-16 adapter).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
_HALF = (torch.float16, torch.bfloat16)
# The keys of a saved optimizer state (checkpoints/step-N/optimizer.json and .safetensors).
OPTIMIZER_KEY, MASTERS_KEY, LOSS_SCALE_KEY = "optimizer", "master_params", "loss_scale"


def make_torch_optimizer(name: str, params: list[torch.Tensor], lr: float, device: str) -> torch.optim.Optimizer:
    """`adamw` (torch, fused kernels on CUDA) or `paged_adamw_8bit` (bitsandbytes; paging needs CUDA)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=device.startswith("cuda") or None)
    import bitsandbytes as bnb

    if not device.startswith("cuda"):
        # bitsandbytes falls back to an un-paged 8-bit AdamW on CPU; paging only exists with CUDA.
        log.warning(
            "paged_adamw_8bit: paging needs CUDA; running bitsandbytes' 8-bit AdamW without paging on %s", device
        )
    return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=0.0)


class AdapterOptimizer:
    """Clips, steps and zeroes the trainable parameters; fp32 masters stand in for half-precision ones.

    Gradients are summed in fp32 across a step's micro-batches (in the masters' gradients, each micro-batch's
    half-precision gradient added as it comes). fp16 weights (training.precision fp16, GPUs without fast bf16)
    also get loss scaling: their gradients would underflow otherwise, and a step whose scaled gradients overflow
    is skipped while the scale backs off.

    Whatever sets the weights (a fresh adapter, the incumbent, a checkpoint) sets them inside `setting_weights`,
    so the masters take the same values at full precision. `state_dict` always holds the inner optimizer's state,
    the masters and the loss scale, whatever the precision, so a checkpoint resumes in any other precision and
    on any device; the two forms older checkpoints have are read too.
    """

    def __init__(self, name: str, params: list[torch.nn.Parameter], lr: float, device: str) -> None:
        self.params: list[torch.Tensor] = list(params)
        self.mixed = any(p.dtype in _HALF for p in params)
        self.masters: list[torch.Tensor] = (
            [p.detach().float().clone().requires_grad_(True) for p in params] if self.mixed else list(params)
        )
        self.inner = make_torch_optimizer(name, self.masters, lr, device)
        fp16 = any(p.dtype == torch.float16 for p in params)
        self.scaler = torch.amp.GradScaler(torch.device(device).type, enabled=fp16)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    def set_lr(self, lr: float) -> None:
        for group in self.inner.param_groups:
            group["lr"] = lr

    @contextmanager
    def setting_weights(self) -> Iterator[None]:
        """Weights copied into the parameters inside this block land in the fp32 masters unrounded (the masters
        stand in for the parameters' storage), and are rounded into the half-precision parameters after it."""
        if not self.mixed:
            yield
            return
        halves = [p.data for p in self.params]
        for param, master in zip(self.params, self.masters, strict=True):
            param.data = master.data
        try:
            yield
        finally:
            for param, half in zip(self.params, halves, strict=True):
                param.data = half
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.masters)

    def accumulate(self) -> None:
        """Add the parameters' gradients of the last backward pass into the fp32 masters' (mixed precision)."""
        if not self.mixed:
            return
        sums: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        for master, param in zip(self.masters, self.params, strict=True):
            if param.grad is None:
                continue
            if master.grad is None:
                master.grad = torch.zeros_like(master)
            sums.append(master.grad)
            grads.append(param.grad)
            param.grad = None
        if grads:
            torch._foreach_add_(sums, grads)  # a few fused kernels, not one per LoRA matrix

    def step(self) -> torch.Tensor:
        """Clip the gradients to norm 1 and update; returns the gradient norm before clipping (a tensor)."""
        self.accumulate()
        self.scaler.unscale_(self.inner)
        norm = torch.nn.utils.clip_grad_norm_(self.masters, MAX_GRAD_NORM)
        self.scaler.step(self.inner)  # skipped when the scaled gradients overflowed (fp16 only)
        self.scaler.update()
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
                self.scaler.scale(loss).backward()
                self.accumulate()
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
        """The inner optimizer's state, the fp32 masters and the loss scale: one form for every precision."""
        return {
            OPTIMIZER_KEY: self.inner.state_dict(),
            MASTERS_KEY: [m.detach() for m in self.masters],
            LOSS_SCALE_KEY: self.scaler.state_dict(),  # empty unless fp16
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state of any precision; the weights must already be set (`setting_weights`)."""
        if "param_groups" in state:
            # Written by fp32 training before the masters were always saved: the weights are the masters.
            self.inner.load_state_dict(state)
            return
        self.inner.load_state_dict(state[OPTIMIZER_KEY])
        with self.setting_weights(), torch.no_grad():
            for param, saved in zip(self.params, state[MASTERS_KEY], strict=True):
                param.copy_(saved)
        if self.scaler.is_enabled() and state.get(LOSS_SCALE_KEY):
            self.scaler.load_state_dict(state[LOSS_SCALE_KEY])
