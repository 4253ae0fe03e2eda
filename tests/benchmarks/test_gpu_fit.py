"""benchmarks/gpu_fit.py measures what it says: kernel time from the device rows only, batches cycled, the shipped
token budget by default."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import EventList, FunctionEvent

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpu_fit = _load("gpu_fit")


def _event(**fields: object) -> FunctionEvent:
    return FunctionEvent(use_device="cuda", stack=[], input_shapes=[], **fields)  # type: ignore[arg-type]


def test_kernel_time_comes_from_the_device_rows_as_torchs_own_total_counts_it() -> None:
    # What the profiler records for two ops on a GPU: each CPU op carries its kernel's time, and each kernel has
    # its own device row; summing every row (as gpu_fit did) counts each kernel twice.
    mm = _event(id=1, name="aten::mm", thread=1, start_us=0, end_us=50)
    mm.append_kernel("gemm", 0, 400)
    add = _event(id=3, name="aten::add", thread=1, start_us=60, end_us=70)
    add.append_kernel("add_kernel", 0, 100)
    kernels = [
        _event(id=2, name="gemm", thread=7, start_us=10, end_us=410, device_type=DeviceType.CUDA),
        _event(id=4, name="add_kernel", thread=7, start_us=420, end_us=520, device_type=DeviceType.CUDA),
    ]
    events = EventList([mm, kernels[0], add, kernels[1]], use_device="cuda")
    events._build_tree()
    averages = events.key_averages()

    assert gpu_fit.torch_device_total_us(averages) == 500.0  # torch's own "Self CUDA time total"
    assert gpu_fit.device_time_us(averages) == 500.0
    assert sum(e.self_device_time_total for e in averages if e.self_device_time_total > 0) == 1000  # the old sum


def test_a_cpu_profile_has_no_device_time() -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.randn(64, 64) @ torch.randn(64, 64)
    assert gpu_fit.device_time_us(prof.key_averages()) == 0.0
    assert gpu_fit.torch_device_total_us(prof.key_averages()) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_kernel_time_matches_torchs_own_total() -> None:
    from torch.profiler import ProfilerActivity, profile

    a = torch.randn(2048, 2048, device="cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            a = (a @ a).tanh()
        torch.cuda.synchronize()
    events = prof.key_averages()
    total = gpu_fit.torch_device_total_us(events)
    assert total is not None and total > 0
    assert gpu_fit.device_time_us(events) == pytest.approx(total, rel=1e-3)  # the table prints 3 decimals


def test_the_default_token_budget_is_the_shipped_profiles() -> None:
    assert gpu_fit.shipped_batch_tokens() == 4096


def test_a_run_that_needs_more_batches_than_the_data_makes_cycles_them(tmp_path: Path) -> None:
    flores = tmp_path / "flores"
    (flores / "dev").mkdir(parents=True)
    for lang in gpu_fit.DIRECTION:
        lines = (ROOT / "data" / "flores200" / "dev" / f"{lang}.dev").read_text().splitlines()[:40]
        (flores / "dev" / f"{lang}.dev").write_text("\n".join(lines) + "\n")
    base = tmp_path / "base"
    gpu_fit.build_base("nllb-600m", "tiny", str(flores), base)
    case = {
        "name": "cycled",
        "shape": "nllb-600m",
        "base": str(base),
        "quantization": "none",
        "checkpointing": True,
        "path": "after",
        "steps": 2,
        "batching": "4096 tokens",
        "batch_size": 16,
        "batch_tokens": 4096,
        "max_length": 32,
        "flores": str(flores),
        "out": str(tmp_path),
        "memory_gib": None,
    }
    result = gpu_fit.run_case(case)  # 3 warm-up steps, 2 timed and 1 profiled: 6 steps from 1 batch
    assert result["batches"] == 1 and result["tokens_per_s"] > 0
    assert result["gpu_busy"] is None and result["fit_batch_tokens"] is None  # nothing a CPU can say
    assert (tmp_path / "profile-cycled.txt").is_file()
