"""Building the hub stand-ins (tests/standins.py) cold, and placing them in a Hugging Face cache once built.

    python benchmarks/standins_build.py            # into a fresh temporary BHASHAFLOW_CACHE_DIR

The report gives each stand-in's cold build time and size, the total against the goal (under 120 s on 2 cores),
and the time `ensure_hf_cache` takes once everything is built, against its goal (under 1 s).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

COLD_GOAL_S = 120.0
CACHED_GOAL_S = 1.0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BHASHAFLOW_CACHE_DIR"] = str(Path(tmp) / "cache")
        import standins

        hub_cache = Path(tmp) / "hub"
        total = 0.0
        for hub_id in standins.HUB_IDS:
            start = time.perf_counter()
            built = standins.built_standin(hub_id)
            took = time.perf_counter() - start
            total += took
            size = sum(p.stat().st_size for p in built.iterdir()) / 2**20
            print(f"  {hub_id:45s} cold build {took:6.1f} s  {size:6.1f} MiB")
        start = time.perf_counter()
        standins.ensure_hf_cache(hub_cache)
        first_place = time.perf_counter() - start
        start = time.perf_counter()
        standins.ensure_hf_cache(hub_cache)
        cached = time.perf_counter() - start
    n = len(standins.HUB_IDS)
    print(f"cold build, all {n}: {total:.1f} s (goal < {COLD_GOAL_S:.0f} s: ratio {total / COLD_GOAL_S:.2f})")
    print(f"first placement in an empty hub cache: {first_place:.3f} s")
    ratio = cached / CACHED_GOAL_S
    print(f"ensure_hf_cache once placed: {cached:.4f} s (goal < {CACHED_GOAL_S:.0f} s: ratio {ratio:.4f})")


if __name__ == "__main__":
    main()
