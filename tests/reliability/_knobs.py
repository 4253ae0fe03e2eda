"""The reliability suite's randomized counts: defaults in `make test`, larger ones in `make soak`.

`count(name, default, soak)`: BHASHAFLOW_RELIABILITY_<NAME> overrides, else BHASHAFLOW_SOAK=1 picks `soak`.
"""

from __future__ import annotations

import os

SOAK = os.environ.get("BHASHAFLOW_SOAK", "") not in ("", "0", "false", "no")


def count(name: str, default: int, soak: int) -> int:
    """How many randomized runs a scenario makes."""
    override = os.environ.get(f"BHASHAFLOW_RELIABILITY_{name.upper()}")
    if override:
        return int(override)
    return soak if SOAK else default
