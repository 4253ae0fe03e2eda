"""The GPU check: one call on a GPU machine, under 8 minutes, one table of what the CUDA paths do there.

    python benchmarks/gpu_check.py            # on the GPU machine (NLLB-600M and BLOOMZ-560M shapes, random weights)
    python benchmarks/gpu_check.py --small    # the same checks in miniature on the CPU (make test runs it)

Checks, each a row (or a few):
- gpu_fit (benchmarks/gpu_fit.py) for both shapes, quantization none and 8bit, at the shipped profile's token
  budget, the card limited to --memory-gib (6: the card the profiles are for): peak allocated and reserved memory,
  first and steady step, tokens/s, kernel time over wall time from the profiler's device rows (torch's own device
  total beside it), and the training.batch_tokens `bhashaflow fit` would suggest on such a card;
- init from the incumbent in bf16 (the feedback loop's training.init_from): a run with a vanishing learning rate
  must end on the promoted adapter's weights;
- out of memory: a translation batch over an injected allocation cap is halved and gives the same translations;
  on CUDA also a real out-of-memory (a training step far past the card's limit) is caught and the next step runs;
- evaluation: evaluate_chrf on FLORES dev sentences (beam 4), sentences/s and peak memory;
- serving: benchmarks/serve_load.py (the torch engine one at a time and batched, and ctranslate2 on CUDA).

Columns that only CUDA can fill read "n/a (cpu)" on the CPU. Nothing here asserts a speed: the table is read.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
sys.path[:0] = [str(ROOT), str(BENCHMARKS)]

import gpu_fit  # noqa: E402

NA = "n/a (cpu)"
DIRECTION = "eng_Latn-hin_Deva"


@dataclass
class Row:
    """One line of the table."""

    check: str
    device: str
    peak_allocated: str = NA
    peak_reserved: str = NA
    first_step_s: str = "-"
    steady_ms: str = "-"
    tokens_per_s: str = "-"
    device_over_wall: str = "-"
    wall_s: str = "-"  # the whole check's seconds, for the checks that are not a training step
    result: str = ""

    def line(self) -> str:
        cells = [
            self.check,
            self.device,
            self.peak_allocated,
            self.peak_reserved,
            self.first_step_s,
            self.steady_ms,
            self.tokens_per_s,
            self.device_over_wall,
            self.wall_s,
            self.result,
        ]
        return "| " + " | ".join(cells) + " |"


HEADER = (
    "| check | device | peak allocated GiB | peak reserved GiB | first step s | steady step ms | tokens/s "
    "| device time / wall | wall s | result |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
)


def _gib(value: float) -> str:
    return f"{value:.2f}"


class Memory:
    """Peak CUDA memory of a check (reset at its start), or n/a on the CPU."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def fill(self, row: Row) -> Row:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            row.peak_allocated = _gib(torch.cuda.max_memory_allocated() / 2**30)
            row.peak_reserved = _gib(torch.cuda.max_memory_reserved() / 2**30)
        return row


def _device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- the checks


def fit_rows(bases: dict[str, Path], args: argparse.Namespace, out: Path) -> list[Row]:
    """gpu_fit's case for each shape and quantization at the shipped token budget."""
    rows = []
    for shape, base in bases.items():
        for quantization in args.quantizations:
            case = {
                "name": f"check-{shape}-{quantization}",
                "shape": shape,
                "base": str(base),
                "quantization": quantization,
                "checkpointing": True,
                "path": "after",
                "steps": args.steps,
                "batching": f"{args.batch_tokens} tokens",
                "batch_size": 16,
                "batch_tokens": args.batch_tokens,
                "max_length": args.max_length,
                "flores": args.flores,
                "out": str(out),
                "memory_gib": args.memory_gib,
            }
            check = f"gpu_fit {shape} {quantization}, {args.batch_tokens} tokens"
            try:  # a fresh process per case on CUDA: its peak is that case's alone
                r = _fit_child(case) if not args.small else gpu_fit.run_case(case)
            except Exception as exc:  # noqa: BLE001 - a failed case is a row of the table, not the end of the check
                rows.append(Row(check, _device(), result=f"FAILED: {str(exc).strip().splitlines()[-1][:200]}"))
                continue
            row = Row(
                check,
                r["device"],
                first_step_s=f"{r['first_step_s']:.2f}",
                steady_ms=f"{r['step_ms']:.0f}",
                tokens_per_s=f"{r['tokens_per_s']:,.0f}",
            )
            if "peak_allocated_gib" in r:
                row.peak_allocated, row.peak_reserved = _gib(r["peak_allocated_gib"]), _gib(r["peak_reserved_gib"])
                torch_total = "-" if r["gpu_busy_torch"] is None else f"{r['gpu_busy_torch']:.0%}"
                row.device_over_wall = f"{r['gpu_busy']:.0%} (torch's total {torch_total})"
                target = r["peak_allocated_gib"] <= 4.0 and r["peak_reserved_gib"] <= 5.0
                row.result = (
                    f"fit's batch_tokens {r['fit_batch_tokens']:,} on {args.memory_gib:g} GiB; 6 GB target "
                    f"{'met' if target else 'NOT met'}; loss {r['loss']:.3f}"
                )
            else:
                row.device_over_wall = NA
                row.result = f"fit's batch_tokens {NA}; loss {r['loss']:.3f}; {r['batches']} batches, cycled as needed"
            rows.append(row)
    return rows


def _fit_child(case: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, gpu_fit.__file__, "--child", json.dumps(case)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or f"exit {done.returncode}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _write_shard(path: Path, flores: str, pairs: int) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bhashaflow.data.flores import read_flores

    src, tgt = (read_flores(flores, lang, "dev")[:pairs] for lang in DIRECTION.split("-"))
    table = pa.table(
        {
            "src": src,
            "tgt": tgt,
            "src_lang": ["eng_Latn"] * len(src),
            "tgt_lang": ["hin_Deva"] * len(src),
            "source": ["check"] * len(src),
            "id": [f"check:{i}" for i in range(len(src))],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


def incumbent_row(base: Path, args: argparse.Namespace, work: Path) -> Row:
    """training.init_from incumbent in bf16: with a vanishing learning rate the run ends on the incumbent's weights."""
    from safetensors.torch import load_file

    from bhashaflow.config import config_from_dict
    from bhashaflow.registry.store import Registry
    from bhashaflow.training.loop import TrainHooks, train_adapter

    shard = _write_shard(work / "shards" / "pairs.parquet", args.flores, 64)
    registry = str(work / "registry")

    def config(**training: Any) -> Any:
        settings = {
            "max_steps": 2,
            "batch_size": 8,
            "checkpoint_every": 2,
            "max_length": args.max_length,
            "precision": "bf16",
            "learning_rate": 1e-2,
            **training,
        }
        return config_from_dict(
            {"directions": [DIRECTION], "base_model": str(base), "registry": registry, "training": settings}
        )

    first = train_adapter(
        config=config(),
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(work / "first"),
        hooks=TrainHooks(eval_texts={}),
    )
    reg = Registry(registry)
    info = reg.register(
        DIRECTION,
        first.adapter_dir,
        base_model=str(base),
        base_revision=None,
        data_manifest_sha256="0" * 64,
        config={},
        metrics={},
    )
    reg.promote(DIRECTION, info.version)
    memory = Memory()
    started = time.perf_counter()
    second = train_adapter(
        config=config(init_from="incumbent", learning_rate=1e-30, max_steps=1),
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(work / "second"),
        hooks=TrainHooks(eval_texts={}),
    )
    wall = time.perf_counter() - started
    want = load_file(str(Path(first.adapter_dir) / "adapter_model.safetensors"))
    got = load_file(str(Path(second.adapter_dir) / "adapter_model.safetensors"))
    # The step moves each weight by about the rate: a weight the incumbent left at 0 becomes +-1e-30, no more.
    same = want.keys() == got.keys() and all(
        bool(((got[k].float() - want[k].float()).abs() <= 1e-25).all()) for k in want
    )
    dtypes = sorted({str(w.dtype).removeprefix("torch.") for w in got.values()})
    return memory.fill(
        Row(
            "init from the incumbent, bf16",
            _device(),
            wall_s=f"{wall:.2f}",
            tokens_per_s=f"{second.tokens_per_s:,.0f}",
            result=f"starts from {second.initialized_from}'s weights: {'yes' if same else 'NO'} ({'/'.join(dtypes)})",
        )
    )


def out_of_memory_rows(base: Path, args: argparse.Namespace) -> list[Row]:
    """A translation batch past an injected cap is halved with the same output; on CUDA a real out-of-memory too."""
    from bhashaflow.core.memory import AllocationCap
    from bhashaflow.data.flores import read_flores
    from bhashaflow.modeling.generation import translate
    from bhashaflow.modeling.loading import load_base

    lm = load_base(str(base), languages=[])
    texts = read_flores(args.flores, "eng_Latn", "dev")[:16]
    kwargs: dict[str, Any] = {"src_lang": "eng_Latn", "tgt_lang": "hin_Deva", "batch_size": 16, "max_new_tokens": 8}
    with AllocationCap(None) as free:
        expected = translate(lm, texts, **kwargs)
    memory = Memory()
    started = time.perf_counter()
    with AllocationCap(free.largest // 3) as cap:
        got = translate(lm, texts, **kwargs)
    wall = time.perf_counter() - started
    rows = [
        memory.fill(
            Row(
                "out of memory: translation batch halved",
                lm.device,
                wall_s=f"{wall:.2f}",
                result=f"{cap.raised} halvings, same translations: {'yes' if got == expected else 'NO'}",
            )
        )
    ]
    cuda = lm.device.startswith("cuda")
    del lm  # the real out-of-memory check loads its own copy under the card's limit
    if cuda:
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
        rows.append(_real_cuda_oom_row(base, args))
    return rows


def _real_cuda_oom_row(base: Path, args: argparse.Namespace) -> Row:
    """A training step far past the card's limit raises CUDA's own out-of-memory; fit's probe catches it, frees
    what it left, and a small step runs after it."""
    import torch

    from bhashaflow.config import config_from_dict
    from bhashaflow.modeling.loading import load_configured_base
    from bhashaflow.training.fit import step_probe
    from bhashaflow.training.lora import prepare_lora_model
    from bhashaflow.training.optim import AdapterOptimizer

    config = config_from_dict(
        {
            "directions": [DIRECTION],
            "base_model": str(base),
            "training": {"max_length": args.max_length, "gradient_checkpointing": True},
        }
    )
    lm = load_configured_base(config, None)
    lm.model, _ = prepare_lora_model(lm, config)
    optimizer = AdapterOptimizer("adamw", [p for p in lm.model.parameters() if p.requires_grad], 1e-4, lm.device)
    lm.model.train()
    probe = step_probe(lm, lm.model, optimizer, args.max_length)
    total = torch.cuda.mem_get_info()[1]
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_gib * 2**30 / total))
    memory = Memory()
    try:
        huge_fits = probe(4096)  # 1M tokens in one micro-batch: far past 6 GiB
        small_fits = probe(1)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    ok = not huge_fits and small_fits
    return memory.fill(
        Row(
            "out of memory: real CUDA OOM in a training step",
            _device(),
            result=f"4096 pairs ran out of memory on {args.memory_gib:g} GiB, 1 pair ran after it: {'yes' if ok else 'NO'}",
        )
    )


def evaluation_row(base: Path, args: argparse.Namespace) -> Row:
    """evaluate_chrf on FLORES dev sentences with beam search."""
    from bhashaflow.config import EvaluationConfig
    from bhashaflow.data.flores import read_flores
    from bhashaflow.evaluation.evaluate import EvalSet, evaluate_chrf
    from bhashaflow.modeling.loading import load_base

    lm = load_base(str(base), languages=[])
    n = args.eval_sentences
    eval_set = EvalSet(
        DIRECTION, read_flores(args.flores, "eng_Latn", "dev")[:n], read_flores(args.flores, "hin_Deva", "dev")[:n]
    )
    evaluation = EvaluationConfig(batch_size=32, num_beams=4, max_new_tokens=args.eval_new_tokens)  # type: ignore[call-arg]
    memory = Memory()
    started = time.perf_counter()
    score = evaluate_chrf(lm, eval_set, evaluation)
    wall = time.perf_counter() - started
    return memory.fill(
        Row(
            f"evaluation, {n} sentences, beam 4",
            lm.device,
            wall_s=f"{wall:.2f}",
            result=f"{n / wall:.1f} sentences/s; chrF++ {score.chrf_pp:.2f} (random weights)",
        )
    )


def serving_rows(args: argparse.Namespace, work: Path) -> list[Row]:
    """benchmarks/serve_load.py as it runs alone, its rows folded into this table."""
    figures = work / "serve_load.json"
    if args.small:
        extra = [
            "--shape",
            "demo",
            "--engines",
            "torch",
            "--clients",
            "4",
            "--requests",
            "2",
            "--single-requests",
            "2",
            "--max-new-tokens",
            "8",
            "--threads",
            "1",
        ]
    else:
        extra = ["--shape", "nllb-600m", "--engines", "torch,ctranslate2", "--clients", "32"]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "serve_load.py"), *extra, "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=args.serve_timeout_s,
    )
    if done.returncode != 0 or not figures.is_file():
        last = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[-1]
        return [Row("serving (serve_load.py)", _device(), result=f"FAILED: {last[:200]}")]
    rows = []
    for r in json.loads(figures.read_text())["rows"]:
        rows.append(
            Row(
                f"serving {r['engine']} max_batch_size {r['max_batch_size']}, {r['clients']} client(s)",
                _device(),
                tokens_per_s=f"{r['tokens_per_s']:,.0f}",
                result=f"{r['requests_per_s']:.1f} requests/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
                f"{sum(r['failures'].values())} failed",
            )
        )
    return rows


# ---------------------------------------------------------------- the table


def _build_bases(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    bases = {}
    for shape in gpu_fit.SHAPES:
        out = work / "bases" / shape
        if args.small:
            gpu_fit.build_base(shape, "tiny", args.flores, out)
        else:  # a child process: the 600M-parameter build's memory goes with it
            subprocess.run(
                [
                    sys.executable,
                    gpu_fit.__file__,
                    "--build",
                    shape,
                    str(out),
                    "--size",
                    "full",
                    "--flores",
                    args.flores,
                ],
                check=True,
                capture_output=True,
            )
        bases[shape] = out
    return bases


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny shapes: the whole check in miniature on a CPU")
    parser.add_argument("--memory-gib", type=float, default=6.0, help="the card gpu_fit and the OOM check limit to")
    parser.add_argument("--flores", default=str(ROOT / "data" / "flores200"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "gpu_check"), help="profiler tables and table.md")
    args = parser.parse_args(argv)
    args.quantizations = ["none", "8bit"]
    args.batch_tokens = gpu_fit.shipped_batch_tokens()
    args.max_length = 32 if args.small else 128
    args.steps = 2 if args.small else 10
    args.eval_sentences = 8 if args.small else 128
    args.eval_new_tokens = 8 if args.small else 64
    args.serve_timeout_s = 300
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bhashaflow-gpu-check-") as tmp:
        work = Path(tmp)
        bases = _build_bases(args, work)
        steps: list[tuple[str, Callable[[], list[Row]]]] = [
            ("gpu_fit", lambda: fit_rows(bases, args, out)),
            ("incumbent", lambda: [incumbent_row(bases["nllb-600m"], args, work / "incumbent")]),
            ("out of memory", lambda: out_of_memory_rows(bases["nllb-600m"], args)),
            ("evaluation", lambda: [evaluation_row(bases["nllb-600m"], args)]),
            ("serving", lambda: serving_rows(args, work)),
        ]
        for name, run in steps:
            began = time.perf_counter()
            try:
                got = run()
            except Exception as exc:  # noqa: BLE001 - one broken check is a row; the others still run
                got = [Row(name, _device(), result=f"FAILED: {type(exc).__name__}: {str(exc).strip()[:200]}")]
            rows.extend(got)
            print(f"<!-- {name}: {time.perf_counter() - began:.0f} s -->", flush=True)
    table = "\n".join([HEADER, *(row.line() for row in rows)])
    print(table)
    print(
        f"\n{len(rows)} rows in {time.perf_counter() - started:.0f} s on {_device()}"
        f"{' (--small: tiny shapes)' if args.small else ''}"
    )
    (out / "table.md").write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
