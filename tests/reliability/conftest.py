"""The reliability and security suite: shared knobs and the scenario log behind docs/RELIABILITY.md.

Randomized counts are configurable (`from _knobs import count` in a test module):
- `make test` runs each scenario at its default count (the issue's minimums);
- `BHASHAFLOW_SOAK=1` (what `make soak` sets) runs the larger soak counts;
- `BHASHAFLOW_RELIABILITY_<NAME>=<n>` overrides one scenario's count, e.g. BHASHAFLOW_RELIABILITY_HTTP_RUNS=5.
`BHASHAFLOW_RELIABILITY_SEED` fixes the random seed (printed in every failure message, so a failure replays).

Every scenario calls `record(...)` with how many times it was tried and what was lost. With
BHASHAFLOW_RELIABILITY_LOG=<file> set, those lines are appended to that JSONL file; `python -m
tests.reliability.report <file>` (or `make soak`) turns them into the table of docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _knobs import SOAK

TESTS = Path(__file__).resolve().parents[1]
# tests/serving's helpers (a tiny base, adapters in a registry) serve the serving scenarios here too, and the
# training tests' helpers (the files an adapter and a checkpoint hold) the training ones.
for helpers in (TESTS / "serving", TESTS / "bhashaflow" / "training"):
    if str(helpers) not in sys.path:
        sys.path.append(str(helpers))


def base_seed() -> int:
    fixed = os.environ.get("BHASHAFLOW_RELIABILITY_SEED")
    return int(fixed) if fixed else random.SystemRandom().randrange(1 << 31)


_SEED = base_seed()
_RECORDS: list[dict[str, Any]] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


def pytest_report_header(config: pytest.Config) -> str:
    return f"reliability: seed {_SEED} ({'soak' if SOAK else 'default'} counts; BHASHAFLOW_RELIABILITY_SEED replays)"


@pytest.fixture
def seed() -> int:
    """The suite's random seed: use random.Random(seed + i) per run and name the seed in failure messages."""
    return _SEED


Record = Callable[..., None]


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[Record]:
    """record(scenario, area=, tried=, lost=, **figures): one row of the RELIABILITY.md table.

    `lost` is what the scenario lost (rows, episodes, requests, adapters...), which must be 0; extra
    figures (failed_clean=, p99_ms=, peak_rss_mb=...) go into the row's notes.
    """
    started = time.perf_counter()

    def _record(scenario: str, *, area: str, tried: int, lost: int, **figures: Any) -> None:
        row = {
            "scenario": scenario,
            "area": area,
            "tried": tried,
            "lost": lost,
            "figures": figures,
            "seconds": round(time.perf_counter() - started, 2),
            "seed": _SEED,
            "soak": SOAK,
            "test": request.node.nodeid,
        }
        _RECORDS.append(row)
        log = os.environ.get("BHASHAFLOW_RELIABILITY_LOG")
        if log:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    yield _record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RECORDS:
        return
    terminalreporter.section("reliability scenarios")
    for row in _RECORDS:
        extra = ", ".join(f"{k}={v}" for k, v in row["figures"].items())
        terminalreporter.write_line(
            f"{row['area']:>9} | {row['scenario']}: tried {row['tried']}, lost {row['lost']}"
            f" ({row['seconds']} s{', ' + extra if extra else ''})"
        )
