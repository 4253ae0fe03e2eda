"""Will this config's training fit this machine? A few real training steps on the worst case, measured.

`bhashaflow fit CONFIG` loads the configured base on the device, wraps it in the configured LoRA and runs
training steps (the training loop's own `train_step`) on micro-batches of the longest examples the config
allows: sources and targets of `max_length` tokens (prompts and answers for decoder-only bases). On CUDA it
reports the allocator's peak allocated and reserved memory, the card's total, tokens/s and the largest
`training.batch_tokens` that fits with a safety margin; a CPU cannot say anything about GPU memory, and
the report says so.
"""

from __future__ import annotations

import random
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bhashaflow.config import PipelineConfig
from bhashaflow.core.settings import Settings
from bhashaflow.data.batching import Example, collate, count_tokens
from bhashaflow.modeling.loaded import LoadedModel
from bhashaflow.modeling.loading import load_configured_base
from bhashaflow.training.loop import train_step
from bhashaflow.training.lora import prepare_lora_model
from bhashaflow.training.optim import AdapterOptimizer

GIB = 2**30
SAFETY_MARGIN = 0.10  # share of the free device memory left unplanned: fragmentation, kernels' workspaces


@dataclass
class FitReport:
    """What `bhashaflow fit` measured (the JSON of `--json`)."""

    base_model: str
    device: str
    device_name: str
    family: str
    quantization: str
    gradient_checkpointing: bool
    optimizer: str
    max_length: int
    micro_batch_pairs: int  # worst-case pairs per micro-batch
    micro_batch_tokens: int  # their non-padding tokens
    grad_accum_steps: int
    steps: int
    first_step_s: float
    step_ms: float  # median of the steps after the first
    tokens_per_s: float  # over the same steps
    gpu_memory_measured: bool
    peak_allocated_gib: float | None
    peak_reserved_gib: float | None
    device_total_gib: float | None
    device_free_gib: float | None  # free before the base was loaded
    peak_rss_gib: float | None  # CPU: this process's peak resident memory (Python and libraries included)
    fits: bool | None
    batch_tokens_max: int | None  # largest training.batch_tokens that fits with the safety margin
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst_case_examples(lm: LoadedModel, pairs: int, max_length: int, seed: int = 0) -> list[Example]:
    """`pairs` examples as long as training ever makes them (token ids drawn at random from the vocabulary)."""
    rng = random.Random(seed)
    vocab = len(lm.tokenizer)
    pad = int(lm.tokenizer.pad_token_id)

    def ids(n: int) -> list[int]:
        return [t if t != pad else (t + 1) % vocab for t in (rng.randrange(vocab) for _ in range(n))]

    examples: list[Example] = []
    for _ in range(pairs):
        if lm.family == "seq2seq":
            examples.append((ids(max_length), ids(max_length)))
        else:
            prompt, answer = ids(max_length), ids(max_length)
            examples.append((prompt + answer, [-100] * max_length + answer))
    return examples


def micro_batch_pairs(config: PipelineConfig) -> int:
    """Worst-case pairs of one micro-batch: batch_size, or as many longest pairs as batch_tokens allows."""
    train_cfg = config.training
    if train_cfg.batch_tokens is None:
        return train_cfg.batch_size
    per_micro = train_cfg.batch_tokens / train_cfg.grad_accum_steps
    return max(1, int(per_micro // (2 * train_cfg.max_length)))


def _measure(lm: LoadedModel, model: Any, optimizer: AdapterOptimizer, pairs: int, max_length: int, steps: int) -> tuple[list[float], int]:
    """Step durations (s) of `steps` training steps on `pairs` worst-case pairs, and the tokens of one step."""
    batch = collate(worst_case_examples(lm, pairs, max_length), int(lm.tokenizer.pad_token_id))
    tokens = count_tokens(batch, lm.family)
    durations = []
    for _ in range(steps):
        started = time.perf_counter()
        float(train_step(model, optimizer, [batch], lm.family, lm.device))  # the read waits for the GPU
        durations.append(time.perf_counter() - started)
    return durations, tokens


def check_fit(config: PipelineConfig, *, steps: int = 3, device: str | None = None, settings: Settings | None = None) -> FitReport:
    """Measure a few worst-case training steps of `config` on `device` (default: CUDA when present).

    Args:
        config: the pipeline config (base model, training section).
        steps: training steps to time (the first includes warm-up; at least 2 for a steady figure).
        device: cpu or cuda[:n].
        settings: hub token, offline mode and the built-in cache.
    """
    train_cfg = config.training
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    free_before = total = None
    if cuda:
        free_before, total = torch.cuda.mem_get_info()
    lm = load_configured_base(config, settings, device)
    model, _ = prepare_lora_model(lm, config)
    lm.model = model
    optimizer = AdapterOptimizer(
        train_cfg.optimizer, [p for p in model.parameters() if p.requires_grad], train_cfg.learning_rate, lm.device
    )
    model.train()
    pairs = micro_batch_pairs(config)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    durations, tokens = _measure(lm, model, optimizer, pairs, train_cfg.max_length, max(2, steps))
    steady = statistics.median(durations[1:])
    report = FitReport(
        base_model=config.base_model, device=lm.device, device_name=_device_name(lm.device), family=lm.family,
        quantization=train_cfg.quantization, gradient_checkpointing=train_cfg.gradient_checkpointing,
        optimizer=train_cfg.optimizer, max_length=train_cfg.max_length, micro_batch_pairs=pairs,
        micro_batch_tokens=tokens, grad_accum_steps=train_cfg.grad_accum_steps, steps=len(durations),
        first_step_s=round(durations[0], 3), step_ms=round(steady * 1000, 1), tokens_per_s=round(tokens / steady, 1),
        gpu_memory_measured=cuda, peak_allocated_gib=None, peak_reserved_gib=None, device_total_gib=None,
        device_free_gib=None, peak_rss_gib=None, fits=None, batch_tokens_max=None, note="",
    )  # fmt: skip
    if not cuda:
        report.peak_rss_gib = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)
        report.note = (
            f"GPU memory cannot be measured on {lm.device}: peak_rss_gib is this process's peak resident memory "
            "(Python, libraries and the base included), not what a GPU would need; run the fit check on the GPU"
        )
        return report
    assert free_before is not None and total is not None
    _fill_cuda_figures(report, lm, model, optimizer, config, pairs, tokens, free_before, total)
    return report


def _fill_cuda_figures(
    report: FitReport, lm: LoadedModel, model: Any, optimizer: AdapterOptimizer, config: PipelineConfig,
    pairs: int, tokens: int, free_before: int, total: int,
) -> None:  # fmt: skip
    """Peak memory at the configured micro-batch, and the largest token budget a straight-line fit allows."""
    allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    usable = free_before * (1 - SAFETY_MARGIN)
    report.peak_allocated_gib = round(allocated / GIB, 3)
    report.peak_reserved_gib = round(reserved / GIB, 3)
    report.device_total_gib = round(total / GIB, 3)
    report.device_free_gib = round(free_before / GIB, 3)
    report.fits = reserved <= usable
    # A second probe at another micro-batch size gives memory per token (activations grow linearly with tokens).
    other = pairs // 2 if pairs > 1 else 2
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    _, other_tokens = _measure(lm, model, optimizer, other, config.training.max_length, 2)
    other_reserved = torch.cuda.max_memory_reserved()
    per_token = (reserved - other_reserved) / (tokens - other_tokens) if tokens != other_tokens else 0.0
    if per_token > 0:
        fixed = reserved - per_token * tokens
        micro_tokens = int((usable - fixed) / per_token)
        step_tokens = max(0, micro_tokens) * config.training.grad_accum_steps
        longest = 2 * config.training.max_length
        report.batch_tokens_max = step_tokens // longest * longest if step_tokens >= longest else 0
    verdict = "fits" if report.fits else "does NOT fit"
    report.note = (
        f"peak reserved {report.peak_reserved_gib} GiB of {report.device_free_gib} GiB free: {verdict} "
        f"with a {SAFETY_MARGIN:.0%} margin"
    )


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(torch.device(device)))
    import platform

    return platform.processor() or platform.machine()


def format_fit(report: FitReport) -> str:
    """The human-readable lines of `bhashaflow fit`."""
    ckpt = "on" if report.gradient_checkpointing else "off"
    lines = [
        f"fit check: {report.base_model} ({report.family}) on {report.device} ({report.device_name}), "
        f"quantization {report.quantization}, optimizer {report.optimizer}, gradient checkpointing {ckpt}",
        f"worst case: {report.micro_batch_pairs} pairs of {report.max_length}+{report.max_length} tokens per micro-batch "
        f"({report.micro_batch_tokens} tokens), {report.grad_accum_steps} micro-batch(es) per step",
        f"first step {report.first_step_s:.2f} s, steady {report.step_ms:.0f} ms per micro-batch, "
        f"{report.tokens_per_s:,.0f} tokens/s",
    ]
    if report.gpu_memory_measured:
        lines.append(
            f"peak allocated {report.peak_allocated_gib:.2f} GiB, peak reserved {report.peak_reserved_gib:.2f} GiB, "
            f"device {report.device_total_gib:.2f} GiB ({report.device_free_gib:.2f} GiB free before loading)"
        )
        budget = "none fits" if report.batch_tokens_max == 0 else report.batch_tokens_max
        lines.append(f"{report.note}; largest training.batch_tokens that fits: {budget}")
    else:
        lines.append(report.note + f" (peak RSS {report.peak_rss_gib:.2f} GiB)")
    return "\n".join(lines)
