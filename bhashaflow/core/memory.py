"""Running out of device memory as a handled event: recognise it, free what it left, halve the batch and go on.

`AllocationCap` raises the error CUDA's allocator raises (`torch.OutOfMemoryError`) on any device once an op's
output would pass a cap: how the tests and benchmarks/gpu_check.py reach these paths without a small GPU.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA out-of-memory, or a library's own (CTranslate2 and bitsandbytes raise a RuntimeError)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_memory() -> None:
    """Free what a failed step left: its tensors once unreachable, and the CUDA cache (never initialising CUDA)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def in_halving_batches(count: int, batch_size: int, run: Callable[[int, int], None], *, what: str) -> int:
    """Call `run(start, stop)` over [0, count) in batches; a batch that runs out of memory is retried at half the
    size, and the rest goes on at that size. Re-raises only when a single item runs out of memory alone.

    Returns the batch size it ended with.
    """
    start = 0
    while start < count:
        stop = min(count, start + batch_size)
        try:
            run(start, stop)
        except Exception as exc:
            if not is_out_of_memory(exc) or stop - start == 1:
                raise
            failed = True
        else:
            failed = False
        if failed:  # outside the except block: the traceback no longer holds the failed batch's tensors
            release_memory()
            batch_size = max(1, (stop - start) // 2)
            log.warning("%s: out of memory at %d per batch; going on at %d", what, stop - start, batch_size)
            continue
        start = stop
    return batch_size


class AllocationCap(TorchDispatchMode):
    """Raise `torch.OutOfMemoryError` when an op's new output storage would take more than `max_bytes` (None: no cap).

    A stand-in for a card too small for a batch: activations grow with the batch, so a cap on the largest
    single allocation fails large batches and passes small ones, deterministically. `max_bytes` may be changed
    while the mode is active; `raised` counts the errors it raised, `largest` is the largest output it let
    through (with no cap: what a workload needs). Like every dispatch mode it acts only in the
    thread that entered it.
    """

    def __init__(self, max_bytes: int | None) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.raised = 0
        self.largest = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {_storage(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        # Views and in-place results share an input's storage: only new storage is an allocation.
        sizes = [
            t.untyped_storage().nbytes()
            for t in tree_leaves(out)
            if isinstance(t, torch.Tensor) and _storage(t) not in inputs
        ]
        size = max(sizes, default=0)
        if self.max_bytes is not None and size > self.max_bytes:
            self.raised += 1
            raise torch.OutOfMemoryError(
                f"out of memory (injected): {func} would allocate {size} bytes; the cap is {self.max_bytes}"
            )
        self.largest = max(self.largest, size)
        return out


def _storage(tensor: torch.Tensor) -> int:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # a tensor without storage (meta, sparse): never an allocation here
        return 0
