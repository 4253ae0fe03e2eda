"""Will this config's training fit this machine? Real training steps on the worst case, measured, and the largest
micro-batch that fits found by trying.

`bhashaflow fit CONFIG` loads the configured base on the device, wraps it in the configured LoRA and runs
training steps (the training loop's own `train_step`) on micro-batches of the longest examples the config
allows: sources and targets of `max_length` tokens (prompts and answers for decoder-only bases). On CUDA it
reports the allocator's peak allocated and reserved memory at the configured micro-batch, the card's total and
tokens/s, then searches the largest micro-batch that fits (grow by doubling until a step runs out of memory, then
bisect) under the allocator settings training uses, and suggests a `training.batch_tokens` a safety margin below
it. A CPU cannot say anything about GPU memory, and the report says so.
"""

from __future__ import annotations

import random
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bhashaflow.config import PipelineConfig
from bhashaflow.core.memory import is_out_of_memory, release_memory
from bhashaflow.core.settings import Settings
from bhashaflow.data.batching import Example, collate, count_tokens
from bhashaflow.modeling.loaded import LoadedModel
from bhashaflow.modeling.loading import load_configured_base, prefer_expandable_segments
from bhashaflow.training.loop import train_step
from bhashaflow.training.lora import prepare_lora_model
from bhashaflow.training.optim import AdapterOptimizer

GIB = 2**30
SAFETY_MARGIN = 0.10  # share of the largest micro-batch that fits left unplanned: fragmentation, longer-lived peaks
MAX_SEARCH_TOKENS = 2**20  # the search stops growing at micro-batches of this many tokens


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
    first_step_s: float | None  # None: the configured micro-batch ran out of memory
    step_ms: float | None  # median of the steps after the first
    tokens_per_s: float | None  # over the same steps
    gpu_memory_measured: bool
    peak_allocated_gib: float | None
    peak_reserved_gib: float | None
    device_total_gib: float | None
    device_free_gib: float | None  # free before the base was loaded
    peak_rss_gib: float | None  # CPU: this process's peak resident memory (Python and libraries included)
    fits: bool | None  # the configured micro-batch ran without running out of memory (None: not known)
    batch_tokens_max: int | None  # largest training.batch_tokens that fits with the safety margin (None: no search)
    note: str
    largest_micro_batch_pairs: int | None = None  # the search's largest worst-case micro-batch that ran (0: none)
    search_tries: int = 0  # training steps the search ran

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


def _measure(
    lm: LoadedModel, model: Any, optimizer: AdapterOptimizer, pairs: int, max_length: int, steps: int
) -> tuple[list[float], int]:
    """Step durations (s) of `steps` training steps on `pairs` worst-case pairs, and the tokens of one step."""
    batch = collate(worst_case_examples(lm, pairs, max_length), int(lm.tokenizer.pad_token_id))
    tokens = count_tokens(batch, lm.family)
    durations = []
    for _ in range(steps):
        started = time.perf_counter()
        float(train_step(model, optimizer, [batch], lm.family, lm.device))  # the read waits for the GPU
        durations.append(time.perf_counter() - started)
    return durations, tokens


def largest_fitting(fits: Callable[[int], bool], *, start: int, limit: int) -> tuple[int, int]:
    """The largest n in [0, limit] for which `fits(n)` holds (memory grows with n, so fits is monotone): grow by
    doubling from `start` until a try fails, then bisect between the last success and the first failure.

    Returns (n, tries); n is 0 when not even 1 fits.
    """
    good, bad, tries = 0, limit + 1, 0
    n = max(1, min(start, limit))
    while n <= limit:  # grow
        tries += 1
        if not fits(n):
            bad = n
            break
        good = n
        if n == limit:
            break
        n = min(limit, n * 2)
    while bad - good > 1:  # bisect
        mid = (good + bad) // 2
        tries += 1
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good, tries


def step_probe(lm: LoadedModel, model: Any, optimizer: AdapterOptimizer, max_length: int) -> Callable[[int], bool]:
    """`fits(pairs)`: does one training step on `pairs` worst-case pairs run without running out of memory?"""

    def fits(pairs: int) -> bool:
        try:
            _measure(lm, model, optimizer, pairs, max_length, 1)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failed = True
        else:
            failed = False
        if failed:  # outside the except block: the traceback no longer holds the failed step's tensors
            optimizer.zero_grad()  # a backward pass cut short leaves gradients behind
            release_memory()
        return not failed

    return fits


def suggest_batch_tokens(
    lm: LoadedModel, model: Any, optimizer: AdapterOptimizer, config: PipelineConfig, start_pairs: int
) -> tuple[int, int, int]:
    """Search the largest worst-case micro-batch that fits; returns (its pairs, the suggested
    training.batch_tokens a safety margin below it, the tries). The suggestion is 0 when not one pair fits."""
    train_cfg = config.training
    longest = 2 * train_cfg.max_length
    limit = max(start_pairs, MAX_SEARCH_TOKENS // longest)
    pairs, tries = largest_fitting(
        step_probe(lm, model, optimizer, train_cfg.max_length), start=start_pairs, limit=limit
    )
    safe_pairs = max(min(pairs, 1), int(pairs * (1 - SAFETY_MARGIN)))
    return pairs, safe_pairs * longest * train_cfg.grad_accum_steps, tries


def check_fit(
    config: PipelineConfig,
    *,
    steps: int = 3,
    device: str | None = None,
    settings: Settings | None = None,
    search: bool | None = None,
) -> FitReport:
    """Measure a few worst-case training steps of `config` on `device` (default: CUDA when present).

    Args:
        config: the pipeline config (base model, training section).
        steps: training steps to time (the first includes warm-up; at least 2 for a steady figure).
        device: cpu or cuda[:n].
        settings: hub token, offline mode and the built-in cache.
        search: search the largest micro-batch that fits (default: on CUDA; a CPU has no memory limit to find
            unless one is injected, as the tests do).
    """
    train_cfg = config.training
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    free_before = total = None
    if cuda:
        prefer_expandable_segments()  # before CUDA's first use: fit measures the allocator training runs on
        free_before, total = torch.cuda.mem_get_info(torch.device(device or "cuda"))
    lm = load_configured_base(config, settings, device)
    model, _ = prepare_lora_model(lm, config)
    lm.model = model
    optimizer = AdapterOptimizer(
        train_cfg.optimizer, [p for p in model.parameters() if p.requires_grad], train_cfg.learning_rate, lm.device
    )
    model.train()
    pairs = micro_batch_pairs(config)
    report = _measured_report(config, lm, model, optimizer, pairs, max(2, steps), cuda)
    if cuda:
        assert free_before is not None and total is not None
        _fill_cuda_figures(report, free_before, total)
    else:
        report.peak_rss_gib = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)
        report.note = (
            f"GPU memory cannot be measured on {lm.device}: peak_rss_gib is this process's peak resident memory "
            "(Python, libraries and the base included), not what a GPU would need; run the fit check on the GPU"
        )
    if search if search is not None else cuda:
        found, report.batch_tokens_max, report.search_tries = suggest_batch_tokens(lm, model, optimizer, config, pairs)
        report.largest_micro_batch_pairs = found
        report.fits = report.steps > 0  # under the limit the search ran against (on a CPU: an injected one)
    return report


def _measured_report(
    config: PipelineConfig, lm: LoadedModel, model: Any, optimizer: AdapterOptimizer, pairs: int, steps: int, cuda: bool
) -> FitReport:
    """The report of `steps` steps at the configured worst-case micro-batch (timings None if it ran out of memory)."""
    train_cfg = config.training
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        durations, tokens = _measure(lm, model, optimizer, pairs, train_cfg.max_length, steps)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        durations, tokens = [], pairs * 2 * train_cfg.max_length  # as count_tokens counts worst-case pairs
    fits = bool(durations)
    if not fits:
        optimizer.zero_grad()
        release_memory()
    steady = statistics.median(durations[1:]) if fits else None
    return FitReport(
        base_model=config.base_model,
        device=lm.device,
        device_name=_device_name(lm.device),
        family=lm.family,
        quantization=train_cfg.quantization,
        gradient_checkpointing=train_cfg.gradient_checkpointing,
        optimizer=train_cfg.optimizer,
        max_length=train_cfg.max_length,
        micro_batch_pairs=pairs,
        micro_batch_tokens=tokens,
        grad_accum_steps=train_cfg.grad_accum_steps,
        steps=len(durations),
        first_step_s=round(durations[0], 3) if fits else None,
        step_ms=round(steady * 1000, 1) if steady is not None else None,
        tokens_per_s=round(tokens / steady, 1) if steady else None,
        gpu_memory_measured=cuda,
        peak_allocated_gib=None,
        peak_reserved_gib=None,
        device_total_gib=None,
        device_free_gib=None,
        peak_rss_gib=None,
        fits=fits if (cuda or not fits) else None,
        batch_tokens_max=None,
        note="" if fits else "the configured micro-batch ran out of memory",
    )


def _fill_cuda_figures(report: FitReport, free_before: int, total: int) -> None:
    """Peak memory at the configured micro-batch (read before the search, which moves the peaks)."""
    report.peak_allocated_gib = round(torch.cuda.max_memory_allocated() / GIB, 3)
    report.peak_reserved_gib = round(torch.cuda.max_memory_reserved() / GIB, 3)
    report.device_total_gib = round(total / GIB, 3)
    report.device_free_gib = round(free_before / GIB, 3)
    verdict = "fits" if report.fits else "does NOT fit (ran out of memory)"
    report.note = f"peak reserved {report.peak_reserved_gib} GiB of {report.device_free_gib} GiB free: {verdict}"


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
    ]
    if report.step_ms is not None and report.first_step_s is not None and report.tokens_per_s is not None:
        lines.append(
            f"first step {report.first_step_s:.2f} s, steady {report.step_ms:.0f} ms per micro-batch, "
            f"{report.tokens_per_s:,.0f} tokens/s"
        )
    else:
        lines.append("the configured micro-batch ran out of memory: no timings")
    if report.gpu_memory_measured:
        lines.append(
            f"peak allocated {report.peak_allocated_gib:.2f} GiB, peak reserved {report.peak_reserved_gib:.2f} GiB, "
            f"device {report.device_total_gib:.2f} GiB ({report.device_free_gib:.2f} GiB free before loading)"
        )
        lines.append(report.note)
    else:
        lines.append(report.note + f" (peak RSS {report.peak_rss_gib:.2f} GiB)")
    if report.batch_tokens_max is not None:
        budget = "none fits" if report.batch_tokens_max == 0 else report.batch_tokens_max
        lines.append(
            f"largest micro-batch that ran: {report.largest_micro_batch_pairs} worst-case pairs ({report.search_tries} "
            f"tries); largest training.batch_tokens that fits with a {SAFETY_MARGIN:.0%} margin: {budget}"
        )
    return "\n".join(lines)
