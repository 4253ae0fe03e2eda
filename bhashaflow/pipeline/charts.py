"""PNG charts of a run, drawn with matplotlib's object API: no pyplot state, so tasks draw from any thread."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any


def render_png(width: float, height: float, draw: Callable[[Any], None]) -> bytes:
    """A PNG of one axes of `width` x `height` inches at 100 dpi, drawn by `draw(axes)`."""
    return render_panels_png(width, height, [draw], columns=1)


def render_panels_png(
    panel_width: float,
    panel_height: float,
    draws: Sequence[Callable[[Any], None]],
    columns: int = 2,
    legend: bool = False,
) -> bytes:
    """A PNG of one panel per `draws` item, `columns` to a row, each `panel_width` x `panel_height` inches (100 dpi).

    `legend`: one legend for the figure, below the panels, of every label drawn (once each), instead of one per panel.
    """
    from matplotlib.figure import Figure

    columns = max(1, min(columns, len(draws)))
    rows = max(1, math.ceil(len(draws) / columns))
    fig = Figure(figsize=(panel_width * columns, panel_height * rows), dpi=100)
    for i, draw in enumerate(draws):
        draw(fig.add_subplot(rows, columns, i + 1))
    labelled: dict[str, Any] = {}
    for ax in fig.axes if legend else []:  # twin axes too
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
    if labelled:  # the figure grows by the legend's lines, two entries a line per column of panels
        ncol = 2 * columns
        legend_height = 0.22 * math.ceil(len(labelled) / ncol) + 0.1
        fig.set_figheight(fig.get_figheight() + legend_height)
        fig.legend(list(labelled.values()), list(labelled), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0.0, legend_height / fig.get_figheight(), 1.0, 1.0))
    else:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
