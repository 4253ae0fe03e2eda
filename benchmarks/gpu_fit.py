"""Does the shipped profile fit a 6 GB GPU, and how busy does it keep it? Both real base shapes, each quantization.

    python benchmarks/gpu_fit.py                       # CUDA when present, else CPU (peak RSS instead of CUDA memory)
    python benchmarks/gpu_fit.py --before              # the training step as it was before (f9c9b7d) beside each row
    python benchmarks/gpu_fit.py --shapes nllb-600m --quantizations none --steps 20
    python benchmarks/gpu_fit.py --small               # real vocabularies, 2-layer bodies: a quick CPU run
    python benchmarks/gpu_fit.py --batchings tokens    # only the shipped profile's token budget (default: also 16 pairs)
    python benchmarks/gpu_fit.py --memory-gib 6        # the card limited to 6 GiB: fit's search finds a 6 GB card's limit

Models with facebook/nllb-200-distilled-600M's and bigscience/bloomz-560m's exact architectures (configs written
out here: no hub, random weights) are saved in bf16 by a child process. Each case (shape x quantization x
gradient checkpointing, and with --before the old step) then runs in a fresh child process, so peak memory
is that case's alone: load the base as the training task does, wrap it in LoRA r 16 on the default targets,
train on FLORES-200 dev eng->hin (max_length 128) in two batchings, each a row: the shipped profile's token budget
(`training.batch_tokens` of configs/gpu-nllb-600m.yaml, 4096) and length-grouped batches of 16 pairs; batches are
cycled when a run needs more than the dev set makes. Each row measures:

- peak allocated and peak reserved CUDA memory (on CPU: the child's peak RSS, and its rise over the loaded base);
- steady tokens/s and step ms (steps after warm-up, timed together), and the first step's seconds;
- the share of a step the GPU is busy: kernel time over wall time of one profiled step (torch.profiler), the kernel
  time from the device rows only, as torch's own "Self CUDA time total" counts it (a kernel's time also appears on
  the CPU op that launched it); each case's profiler table is written to --out;
- beside the peak, the training.batch_tokens `bhashaflow fit` would suggest (its search, on CUDA; with
  --memory-gib the card is limited first, so the search finds a smaller card's limit).

The targets (issue #10): shipped profiles at most 4.0 GiB allocated and 5.0 GiB reserved, >= 10x the tokens/s
of the old step, the GPU busy at least half of a step. The "before" rows reproduce the old step: peft's k-bit
preparation (fp32 embeddings, LM head and norms), fp32 LoRA weights beside a bf16 base, the model's own loss
over full logits, un-fused AdamW and a host sync every step.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared small CPU spinning threads slow torch a lot.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# facebook/nllb-200-distilled-600M's config.json, field by field (615M parameters).
NLLB_600M = {
    "vocab_size": 256206,
    "d_model": 1024,
    "encoder_layers": 12,
    "decoder_layers": 12,
    "encoder_attention_heads": 16,
    "decoder_attention_heads": 16,
    "encoder_ffn_dim": 4096,
    "decoder_ffn_dim": 4096,
    "max_position_embeddings": 1024,
    "activation_function": "relu",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "decoder_layerdrop": 0.0,
    "scale_embedding": True,
    "init_std": 0.02,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "decoder_start_token_id": 2,
    "tie_word_embeddings": True,
}
# bigscience/bloomz-560m's config.json (559M parameters).
BLOOMZ_560M = {
    "vocab_size": 250880,
    "hidden_size": 1024,
    "n_layer": 24,
    "n_head": 16,
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "apply_residual_connection_post_layernorm": False,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 3,
    "tie_word_embeddings": True,
}
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "nllb-600m": ("seq2seq", NLLB_600M),
    "bloomz-560m": ("causal", BLOOMZ_560M),
}
SMALL = {"nllb-600m": {"encoder_layers": 2, "decoder_layers": 2}, "bloomz-560m": {"n_layer": 2}}
# The architectures in miniature (the 8k tokenizer and its language tags, 64 wide): seconds on a CPU, for benchmarks/gpu_check.py --small.
TINY = {
    "nllb-600m": {
        "vocab_size": 8448,
        "d_model": 64,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
    },
    "bloomz-560m": {"vocab_size": 8448, "hidden_size": 64, "n_layer": 1, "n_head": 2},
}
QUANT_OPTIMIZER = {"none": "adamw", "8bit": "paged_adamw_8bit", "4bit": "paged_adamw_8bit"}
DIRECTION = ("eng_Latn", "hin_Deva")
SHIPPED_PROFILE = ROOT / "configs" / "gpu-nllb-600m.yaml"


def shipped_batch_tokens() -> int:
    """The shipped GPU profile's training.batch_tokens."""
    import yaml

    return int(yaml.safe_load(SHIPPED_PROFILE.read_text())["training"]["batch_tokens"])


# ---------------------------------------------------------------- what the profiler says


def device_time_us(events: Any) -> float:
    """Kernel time in a profile's `key_averages()`: device rows only. A kernel's time is also counted on the CPU op
    that launched it (its self_device_time_total), so summing every row counts it twice; torch's own "Self CUDA time
    total" sums the device rows, and so does this."""
    from torch.autograd import DeviceType

    device_types = {DeviceType.CUDA, DeviceType.PrivateUse1, DeviceType.MTIA, DeviceType.XPU}
    return float(
        sum(
            e.self_device_time_total
            for e in events
            if e.device_type in device_types and not getattr(e, "is_user_annotation", False)
        )
    )


def torch_device_total_us(events: Any) -> float | None:
    """torch's own device total, read from the last line of its table (None when the profile has no device time)."""
    import re

    found = re.search(r"Self (?!CPU)\w+ time total: ([\d.]+)(us|ms|s)\b", events.table(row_limit=1))
    if found is None:
        return None
    return float(found.group(1)) * {"us": 1.0, "ms": 1e3, "s": 1e6}[found.group(2)]


# ---------------------------------------------------------------- the child that builds a base


def build_base(shape: str, size: str, flores: str, out: Path) -> int:
    """Save a random model of `shape` in bf16 with a tokenizer whose ids lie inside its vocabulary."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM, M2M100Config, M2M100ForConditionalGeneration

    from bhashaflow.modeling.builtin import read_dev_text, small_recipe, train_tokenizer

    family, fields = SHAPES[shape]
    fields = {**fields, **{"small": SMALL, "tiny": TINY}.get(size, {}).get(shape, {})}
    torch.manual_seed(0)
    if family == "seq2seq":
        model: Any = M2M100ForConditionalGeneration(M2M100Config(**fields))
    else:
        model = BloomForCausalLM(BloomConfig(**fields))
    model.to(torch.bfloat16).save_pretrained(str(out))
    recipe = small_recipe("builtin:tiny-seq2seq" if family == "seq2seq" else "builtin:tiny-causal", vocab_size=8000)
    # Any tokenizer with ids inside the vocabulary does for memory and speed; this one trains in seconds.
    train_tokenizer(read_dev_text(flores, list(DIRECTION)), recipe).save_pretrained(str(out))
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- the child that runs one case


def _batches(lm: Any, flores: str, batch_size: int, batch_tokens: int | None, max_length: int) -> list[dict[str, Any]]:
    import random

    from bhashaflow.data.batching import collate, optimizer_steps
    from bhashaflow.data.flores import read_flores
    from bhashaflow.modeling.encoding import encode_pair

    src, tgt = (read_flores(flores, lang, "dev") for lang in DIRECTION)
    examples = [encode_pair(lm, s, t, *DIRECTION, max_length) for s, t in zip(src, tgt, strict=True)]
    steps = optimizer_steps(
        examples,
        batch_size=batch_size,
        batch_tokens=batch_tokens,
        grad_accum_steps=1,
        rng=random.Random(0),
        family=lm.family,
    )
    pad = int(lm.tokenizer.pad_token_id)
    return [collate(step[0], pad) for step in steps]


def _new_step(lm: Any, config: Any) -> Any:
    """The training step as the library takes it now (its optimizer kept for fit's search)."""
    from bhashaflow.training.loop import train_step
    from bhashaflow.training.lora import prepare_lora_model
    from bhashaflow.training.optim import AdapterOptimizer

    lm.model, _ = prepare_lora_model(lm, config)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    optimizer = AdapterOptimizer(config.training.optimizer, params, config.training.learning_rate, lm.device)

    def step(batch: dict[str, Any]) -> Any:
        return train_step(lm.model, optimizer, [batch], lm.family, lm.device)

    step.optimizer = optimizer  # type: ignore[attr-defined]
    return step


def _old_step(lm: Any, config: Any) -> Any:
    """The training step as it was at f9c9b7d, rebuilt here for comparison (the library no longer has it)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    train_cfg = config.training
    model = lm.model
    kwargs = {"use_reentrant": False}
    if train_cfg.quantization != "none":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train_cfg.gradient_checkpointing, gradient_checkpointing_kwargs=kwargs
        )
    elif train_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    from bhashaflow.modeling.adapters import default_target_modules

    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=default_target_modules(model),
        task_type=TaskType.SEQ_2_SEQ_LM if lm.family == "seq2seq" else TaskType.CAUSAL_LM,
    )
    lm.model = get_peft_model(model, lora)  # peft's default: LoRA weights upcast to fp32
    params = [p for p in lm.model.parameters() if p.requires_grad]
    if train_cfg.optimizer == "adamw":
        optimizer: Any = torch.optim.AdamW(params, lr=train_cfg.learning_rate, weight_decay=0.0)
    else:
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(params, lr=train_cfg.learning_rate, weight_decay=0.0)

    def step(batch: dict[str, Any]) -> Any:
        loss = lm.model(**{k: v.to(lm.device) for k, v in batch.items()}).loss
        if not torch.isfinite(loss):  # the old loop checked every step: a host sync
            raise RuntimeError("non-finite loss")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _busy_share(step: Any, batch: dict[str, Any], cuda: bool, profile_path: Path) -> tuple[float | None, float | None]:
    """Kernel time over wall time of one profiled step, and torch's own device total's share (they must agree);
    writes the profiler's table."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        step(batch)
        _sync(cuda)
        wall = time.perf_counter() - started
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25)
    profile_path.write_text(f"one profiled step, wall {wall * 1000:.1f} ms\n{table}\n")
    if not cuda:
        return None, None
    events = prof.key_averages()
    torch_total = torch_device_total_us(events)
    return device_time_us(events) / 1e6 / wall, None if torch_total is None else torch_total / 1e6 / wall


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    import torch

    from bhashaflow.config import config_from_dict
    from bhashaflow.modeling.loading import load_base

    cuda = torch.cuda.is_available()
    if cuda and case.get("memory_gib"):
        from bhashaflow.modeling.loading import prefer_expandable_segments

        prefer_expandable_segments()  # as training and fit set it, before CUDA's first use
        total = torch.cuda.mem_get_info()[1]
        torch.cuda.set_per_process_memory_fraction(min(1.0, case["memory_gib"] * 2**30 / total))
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    config = config_from_dict(
        {
            "directions": ["-".join(DIRECTION)],
            "base_model": case["base"],
            "training": {
                "batch_size": case["batch_size"],
                "batch_tokens": case["batch_tokens"],
                "max_length": case["max_length"],
                "learning_rate": 2e-4,
                "quantization": case["quantization"],
                "optimizer": QUANT_OPTIMIZER[case["quantization"]],
                "gradient_checkpointing": case["checkpointing"],
                "lora": {"r": 16, "alpha": 32},
            },
        }
    )
    lm = load_base(case["base"], languages=[], quantization=case["quantization"])
    _sync(cuda)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    step = (_old_step if case["path"] == "before" else _new_step)(lm, config)
    batches = _batches(lm, case["flores"], case["batch_size"], case["batch_tokens"], case["max_length"])
    tokens = [
        int(b["attention_mask"].sum()) + (int((b["labels"] != -100).sum()) if lm.family == "seq2seq" else 0)
        for b in batches
    ]
    lm.model.train()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    step(batches[0])
    _sync(cuda)
    first_s = time.perf_counter() - started

    def at(i: int) -> int:  # batches are cycled: a long run needs more than FLORES dev makes at large budgets
        return i % len(batches)

    for i in range(1, 3):  # warm-up: allocator and kernels settle
        step(batches[at(i)])
    _sync(cuda)
    n, started = case["steps"], time.perf_counter()
    losses = [step(batches[at(3 + i)]) for i in range(n)]
    _sync(cuda)
    elapsed = time.perf_counter() - started
    profile_path = Path(case["out"]) / f"profile-{case['name']}.txt"
    busy, torch_busy = _busy_share(step, batches[at(3 + n)], cuda, profile_path)
    result = {
        **{k: case[k] for k in ("name", "shape", "quantization", "checkpointing", "path", "batching")},
        "optimizer": QUANT_OPTIMIZER[case["quantization"]],
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "tokens_per_s": sum(tokens[at(3 + i)] for i in range(n)) / elapsed,
        "step_ms": 1000 * elapsed / n,
        "first_step_s": first_s,
        "gpu_busy": busy,
        "gpu_busy_torch": torch_busy,
        "loss": float(torch.stack(losses).float().mean()),
        "profile": str(profile_path),
        "batches": len(batches),
        "fit_batch_tokens": None,
    }
    if cuda:
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        if case["path"] == "after":
            result["fit_batch_tokens"] = _fit_suggestion(lm, config, step.optimizer, batches)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        result["peak_rss_gib"] = peak
        result["rss_over_loaded_gib"] = peak - rss_loaded
        result["rss_at_start_gib"] = rss_start
    return result


def _fit_suggestion(lm: Any, config: Any, optimizer: Any, batches: list[dict[str, Any]]) -> int:
    """The training.batch_tokens `bhashaflow fit` would suggest for this case (its own search, on this process)."""
    from bhashaflow.training.fit import suggest_batch_tokens

    start = max(1, max(int(b["input_ids"].shape[0]) for b in batches))
    _, batch_tokens, _ = suggest_batch_tokens(lm, lm.model, optimizer, config, start)
    return batch_tokens


# ---------------------------------------------------------------- the parent


def _child(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed:\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


def _row(r: dict[str, Any]) -> str:
    ckpt = "yes" if r["checkpointing"] else "no"
    if "peak_allocated_gib" in r:
        memory = f"{r['peak_allocated_gib']:6.2f} | {r['peak_reserved_gib']:6.2f}"
    else:
        memory = f"{r['peak_rss_gib']:6.2f} | {r['rss_over_loaded_gib']:6.2f}"
    busy = f"{r['gpu_busy']:.0%}" if r["gpu_busy"] is not None else "n/a (cpu)"
    torch_busy = f"{r['gpu_busy_torch']:.0%}" if r.get("gpu_busy_torch") is not None else "n/a (cpu)"
    fit = r.get("fit_batch_tokens")
    fit_text = "n/a (cpu)" if "peak_allocated_gib" not in r else ("-" if fit is None else f"{fit:,}")
    return (
        f"| {r['shape']} | {r['quantization']} | {r['optimizer']} | {ckpt} | {r['path']} | {r['batching']} | "
        f"{memory} | {fit_text} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.0f} | {r['first_step_s']:.1f} | "
        f"{busy} | {torch_busy} | {r['loss']:.3f} |"
    )


HEADER_CUDA = "peak allocated GiB | peak reserved GiB | fit's batch_tokens"
HEADER_CPU = "peak RSS GiB | RSS over loaded base GiB | fit's batch_tokens"


def table_header(cuda: bool) -> str:
    return (
        f"| base | quantization | optimizer | grad ckpt | step | batching | {HEADER_CUDA if cuda else HEADER_CPU} | "
        "tokens/s | step ms | first step s | GPU busy | GPU busy (torch's total) | loss |\n"
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument(
        "--quantizations", nargs="+", default=["none", "8bit", "4bit"], choices=["none", "8bit", "4bit"]
    )
    parser.add_argument(
        "--checkpointing",
        nargs="+",
        default=["yes"],
        choices=["yes", "no"],
        help="gradient checkpointing per case (default yes, as the shipped profiles)",
    )
    parser.add_argument("--before", action="store_true", help="also run the old training step beside each case")
    parser.add_argument("--small", action="store_true", help="2-layer bodies with the real vocabularies (quick on CPU)")
    parser.add_argument("--tiny", action="store_true", help="the architectures in miniature: seconds on a CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 3 on CPU)")
    parser.add_argument(
        "--batchings",
        nargs="+",
        default=["tokens", "pairs"],
        choices=["tokens", "pairs"],
        help="a row per batching: the token budget (--batch-tokens) and fixed pairs (--batch-size)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step of the pairs rows (default 16)")
    parser.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="token budget per step of the tokens rows (default: the shipped profile's, 4096)",
    )
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--memory-gib",
        type=float,
        default=None,
        help="limit the CUDA card to this much memory (a smaller card's limit for fit's search)",
    )
    parser.add_argument("--flores", default=str(ROOT / "data" / "flores200"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "gpu_fit"), help="results.jsonl and profiler tables")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--size", default="full", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_case(json.loads(args.child))))
        return []
    if args.build:
        print(build_base(args.build[0], args.size, args.flores, Path(args.build[1])))
        return []

    import torch

    cuda = torch.cuda.is_available()
    steps = args.steps or (20 if cuda else 3)
    batch_tokens = args.batch_tokens or shipped_batch_tokens()
    batchings = {
        "tokens": (f"{batch_tokens} tokens", args.batch_size, batch_tokens),
        "pairs": (f"{args.batch_size} pairs", args.batch_size, None),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    print(table_header(cuda), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            base = Path(tmp) / shape
            started = time.perf_counter()
            size = "tiny" if args.tiny else "small" if args.small else "full"
            params = int(_child("--build", shape, str(base), "--size", size, "--flores", args.flores))
            print(
                f"<!-- {shape}: random weights, {params / 1e6:.0f}M parameters, built in "
                f"{time.perf_counter() - started:.0f} s -->",
                flush=True,
            )
            for quantization in args.quantizations:
                for ckpt in args.checkpointing:
                    for batching in args.batchings:
                        label, size, budget = batchings[batching]
                        for path in ["before", "after"] if args.before else ["after"]:
                            name = f"{shape}-{quantization}-{'ckpt' if ckpt == 'yes' else 'nockpt'}-{batching}-{path}"
                            case = {
                                "name": name,
                                "shape": shape,
                                "base": str(base),
                                "quantization": quantization,
                                "checkpointing": ckpt == "yes",
                                "path": path,
                                "steps": steps,
                                "batching": label,
                                "batch_size": size,
                                "batch_tokens": budget,
                                "max_length": args.max_length,
                                "flores": args.flores,
                                "out": str(out),
                                "memory_gib": args.memory_gib,
                            }
                            result = json.loads(_child("--child", json.dumps(case)))
                            results.append(result)
                            print(_row(result), flush=True)
                            with (out / "results.jsonl").open("a") as fh:
                                fh.write(json.dumps(result) + "\n")
    _print_ratios(results, cuda)
    return results


def _print_ratios(results: list[dict[str, Any]], cuda: bool) -> None:
    by_case = {(r["shape"], r["quantization"], r["checkpointing"], r["batching"], r["path"]): r for r in results}
    memory = "peak_reserved_gib" if cuda else "peak_rss_gib"
    for (shape, quantization, ckpt, batching, path), after in by_case.items():
        before = by_case.get((shape, quantization, ckpt, batching, "before"))
        if path != "after" or before is None:
            continue
        print(
            f"{shape} {quantization} ckpt={ckpt} {batching}: tokens/s x{after['tokens_per_s'] / before['tokens_per_s']:.2f}, "
            f"{memory} {before[memory]:.2f} -> {after[memory]:.2f} GiB",
            flush=True,
        )
    if cuda:
        for r in results:
            if r["path"] == "after":
                fits = r["peak_allocated_gib"] <= 4.0 and r["peak_reserved_gib"] <= 5.0
                print(
                    f"{r['name']}: 6 GB target (<= 4.0 GiB allocated, <= 5.0 GiB reserved) {'met' if fits else 'NOT met'}; "
                    f"GPU busy {r['gpu_busy']:.0%} (target >= 50%)"
                )


if __name__ == "__main__":
    main()
