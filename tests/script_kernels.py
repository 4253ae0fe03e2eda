"""RE2 patterns of a script's letters: an independent count (pyarrow.compute's kernels) to check
`bhashaflow.core.languages.count_script_letters` and `script_fraction` against."""

from __future__ import annotations

import re

from bhashaflow.core.languages import SCRIPT_RANGES, script_of


def script_regexes(code: str) -> tuple[str, str] | None:
    """RE2 patterns (for pyarrow.compute) of `code`'s script characters and of letters of any other script.

    They count what `script_fraction` counts, for whole columns at once; None for an unknown script.
    """
    block = SCRIPT_RANGES.get(script_of(code))
    if block is None:
        return None
    re2_block = re.sub(r"[^\x00-\x7f]", lambda m: f"\\x{{{ord(m.group()):04x}}}", block)
    return f"[{re2_block}]", f"[^\\P{{L}}{re2_block}]"
