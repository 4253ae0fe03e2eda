"""Training throughput: dynamic padding + length-grouped batches against padding every batch to max_length.

    python benchmarks/train_throughput.py                 # a random base of the built-in's shape
    python benchmarks/train_throughput.py --base DIR      # any local base or hub id

Both modes train the same LoRA on the same FLORES-200 dev pairs with the library's own training step
(`train_step`), one after the other in this process; they differ only in how batches are cut: the library's
length-grouped batches with dynamic padding, or batches in arrival order padded to max_length (this script's
own, the way trainers without length grouping do it). tokens/s counts real (non-padding) tokens, so the
ratio is the speed-up of useful work. Goal: >= 1.5x.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads slow a tiny model
# by 10x or more. Set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bhashaflow.config import PipelineConfig, config_from_dict
from bhashaflow.core.languages import parse_direction
from bhashaflow.data.batching import Example, collate, count_tokens, length_grouped_batches
from bhashaflow.data.flores import read_flores
from bhashaflow.modeling.builtin import build_builtin, small_recipe
from bhashaflow.modeling.encoding import encode_pair
from bhashaflow.modeling.loading import load_configured_base
from bhashaflow.training.loop import train_step
from bhashaflow.training.lora import prepare_lora_model
from bhashaflow.training.optim import AdapterOptimizer


def _arrival_order(examples: list[Example], batch_size: int, seed: int) -> Iterator[list[Example]]:
    rng = random.Random(seed)
    while True:
        order = rng.sample(examples, len(examples))
        yield from (order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size))


def _forever(examples: list[Example]) -> Iterator[Example]:
    while True:
        yield from examples


def tokens_per_s(config: PipelineConfig, direction: str, flores: Path, mode: str, steps: int) -> float:
    """Real tokens/s of `steps` LoRA training steps, batches cut the `mode` way."""
    train_cfg = config.training
    src, tgt = parse_direction(direction)
    lm = load_configured_base(config)
    lm.model, _ = prepare_lora_model(lm, config)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    optimizer = AdapterOptimizer(train_cfg.optimizer, params, train_cfg.learning_rate, lm.device)
    pairs = zip(read_flores(flores, src, "dev"), read_flores(flores, tgt, "dev"), strict=True)
    examples = [encode_pair(lm, s, t, src, tgt, train_cfg.max_length) for s, t in pairs]
    pad_id = int(lm.tokenizer.pad_token_id)
    width = 2 * train_cfg.max_length if lm.family == "causal" else train_cfg.max_length
    batches: Iterator[list[Example]]
    if mode == "dynamic+grouped":
        batches = length_grouped_batches(_forever(examples), train_cfg.batch_size, random.Random(train_cfg.seed))
    else:
        batches = _arrival_order(examples, train_cfg.batch_size, train_cfg.seed)
    lm.model.train()
    tokens, started = 0, time.perf_counter()
    for _ in range(steps):
        batch: dict[str, Any] = collate(next(batches), pad_id, pad_to=None if mode == "dynamic+grouped" else width)
        tokens += count_tokens(batch, lm.family)
        float(train_step(lm.model, optimizer, [batch], lm.family, lm.device))
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="base model (default: a random model shaped like builtin:tiny-seq2seq)")
    parser.add_argument("--direction", default="eng_Latn-hin_Deva")
    parser.add_argument("--flores", default="data/flores200")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = args.base
        if base is None:
            languages = list(parse_direction(args.direction))
            recipe = small_recipe("builtin:tiny-seq2seq", steps=0)  # the built-in's shape, untrained: speed only
            base = str(
                build_builtin(
                    "builtin:tiny-seq2seq",
                    languages=languages,
                    flores_dir=args.flores,
                    out_dir=root / "base",
                    recipe=recipe,
                )
            )
        config = config_from_dict(
            {
                "directions": [args.direction],
                "base_model": base,
                "training": {"batch_size": args.batch_size, "max_length": args.max_length, "learning_rate": 1e-3},
            }
        )
        # Rounds alternate the order (A B, B A, ...) so drifting load on a shared machine hits both modes alike.
        modes = ["dynamic+grouped", "pad-to-max"]
        results: dict[str, list[float]] = {mode: [] for mode in modes}
        for round_no in range(args.rounds):
            for mode in modes if round_no % 2 == 0 else list(reversed(modes)):
                results[mode].append(tokens_per_s(config, args.direction, Path(args.flores), mode, args.steps))
                print(
                    f"round {round_no + 1} {mode:>16}: {results[mode][-1]:9.0f} real tokens/s over {args.steps} steps"
                )
        medians = {mode: statistics.median(values) for mode, values in results.items()}
        for mode, value in medians.items():
            print(
                f"median {mode:>16}: {value:9.0f} real tokens/s (batch {args.batch_size}, max_length {args.max_length})"
            )
        ratio = medians["dynamic+grouped"] / medians["pad-to-max"]
        print(f"speed-up of dynamic padding + length grouping: {ratio:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
