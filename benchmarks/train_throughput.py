"""Training throughput: dynamic padding + length-grouped batches against padding every batch to max_length.

    python benchmarks/train_throughput.py                 # a random base of the built-in's shape
    python benchmarks/train_throughput.py --base DIR      # any local base or hub id

Both modes train the same LoRA on the same FLORES-200 dev pairs through `train_adapter`, one after the other
in this process; tokens/s counts real (non-padding) tokens, so the ratio is the speed-up of useful work.
Goal: >= 1.5x.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads slow a tiny model
# by 10x or more. Set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bhashaflow.config import config_from_dict
from bhashaflow.core.languages import parse_direction
from bhashaflow.modeling.builtin import build_builtin, small_recipe
from bhashaflow.training.loop import train_adapter


def write_dev_shard(flores: Path, direction: str, out: Path) -> str:
    src, tgt = parse_direction(direction)
    s = (flores / "dev" / f"{src}.dev").read_text(encoding="utf-8").splitlines()
    t = (flores / "dev" / f"{tgt}.dev").read_text(encoding="utf-8").splitlines()
    table = pa.table({"src": s, "tgt": t, "src_lang": [src] * len(s), "tgt_lang": [tgt] * len(s),
                      "source": ["flores-dev"] * len(s), "id": [str(i) for i in range(len(s))]})  # fmt: skip
    pq.write_table(table, str(out))
    return str(out)


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
            base = str(build_builtin("builtin:tiny-seq2seq", languages=languages, flores_dir=args.flores,
                                     out_dir=root / "base", recipe=recipe))  # fmt: skip
        shard = write_dev_shard(Path(args.flores), args.direction, root / "pairs.parquet")
        config = config_from_dict({
            "directions": [args.direction], "base_model": base,
            "training": {"max_steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
                         "checkpoint_every": args.steps, "learning_rate": 1e-3},
        })  # fmt: skip
        # Rounds alternate the order (A B, B A, ...) so drifting load on a shared machine hits both modes alike.
        modes = {"dynamic+grouped": (True, False), "pad-to-max": (False, True)}
        results: dict[str, list[float]] = {mode: [] for mode in modes}
        for round_no in range(args.rounds):
            order = list(modes) if round_no % 2 == 0 else list(reversed(modes))
            for mode in order:
                grouped, padded = modes[mode]
                result = train_adapter(config=config, direction=args.direction, shard_paths=[shard],
                                       out_dir=str(root / f"{mode}-{round_no}"), eval_texts={}, group_by_length=grouped,
                                       pad_to_max_length=padded)  # fmt: skip
                results[mode].append(result.tokens_per_s)
                print(f"round {round_no + 1} {mode:>16}: {result.tokens_per_s:9.0f} real tokens/s over {result.steps} steps")
        medians = {mode: statistics.median(values) for mode, values in results.items()}
        for mode, value in medians.items():
            print(f"median {mode:>16}: {value:9.0f} real tokens/s (batch {args.batch_size}, max_length {args.max_length})")
        ratio = medians["dynamic+grouped"] / medians["pad-to-max"]
        print(f"speed-up of dynamic padding + length grouping: {ratio:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
