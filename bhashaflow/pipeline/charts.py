"""PNG charts of a run, drawn with matplotlib's object API: no pyplot state, so tasks draw from any thread."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any


def render_png(width: float, height: float, draw: Callable[[Any], None]) -> bytes:
    """A PNG of one axes of `width` x `height` inches at 100 dpi, drawn by `draw(axes)`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    draw(fig.add_subplot())
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
