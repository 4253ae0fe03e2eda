"""Evaluation generation: batched, length-sorted `translate` against one sentence at a time.

    python benchmarks/eval_batching.py                        # builtin:tiny-seq2seq (built and cached on first use)
    python benchmarks/eval_batching.py --base DIR --n 200

Both runs translate the same FLORES-200 devtest sentences greedily in this process; the report gives
sentences/s of each, the ratio (goal >= 5x) and how many outputs are identical (padding must not change them).
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads slow a tiny model
# by 10x or more. Set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time
from pathlib import Path

from bhashaflow.core.languages import parse_direction
from bhashaflow.modeling.generation import translate
from bhashaflow.modeling.loading import load_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="builtin:tiny-seq2seq")
    parser.add_argument("--languages", default="eng_Latn,hin_Deva,tam_Taml", help="languages of a built-in base")
    parser.add_argument("--direction", default="eng_Latn-hin_Deva")
    parser.add_argument("--flores", default="data/flores200")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    src, tgt = parse_direction(args.direction)
    texts = (Path(args.flores) / "devtest" / f"{src}.devtest").read_text(encoding="utf-8").splitlines()[: args.n]
    lm = load_base(args.base, languages=args.languages.split(","), flores_dir=args.flores)
    kwargs = {"src_lang": src, "tgt_lang": tgt, "max_new_tokens": args.max_new_tokens}
    translate(lm, texts[:4], batch_size=4, **kwargs)  # warm-up

    started = time.perf_counter()
    batched = translate(lm, texts, batch_size=args.batch_size, **kwargs)
    t_batched = time.perf_counter() - started
    started = time.perf_counter()
    single = [translate(lm, [text], batch_size=1, **kwargs)[0] for text in texts]
    t_single = time.perf_counter() - started

    same = sum(a == b for a, b in zip(batched, single, strict=True))
    print(f"base {args.base} on {lm.device}, {len(texts)} devtest sentences {args.direction}, greedy")
    print(
        f"  batched (batch {args.batch_size}, length-sorted): {t_batched:7.1f} s  {len(texts) / t_batched:7.2f} sentences/s"
    )
    print(f"  one at a time:                       {t_single:7.1f} s  {len(texts) / t_single:7.2f} sentences/s")
    print(f"  speed-up {t_single / t_batched:.1f}x (goal >= 5x); identical outputs {same}/{len(texts)}")


if __name__ == "__main__":
    main()
