"""Loss curves of training, read from each direction's `train_log.jsonl`, and their chart."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bhashaflow.core.fsio import join, open_fs
from bhashaflow.core.names import ADAPTERS_DIR, TRAIN_LOG
from bhashaflow.pipeline.charts import render_png

LOSS_CHART = "loss.png"  # the run's loss curves beside chrf.png; one per direction folder while it trains


@dataclass
class LossCurve:
    """The training loss of one direction by step, and its validation loss where it was validated."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)

    @property
    def last(self) -> tuple[int, float] | None:
        return (self.steps[-1], self.losses[-1]) if self.steps else None


def parse_train_log(text: str) -> LossCurve:
    """The curve of a train log: `{step, loss, ...}` lines and `{step, val_loss, ...}` validation lines."""
    curve = LossCurve()
    for line in text.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if "loss" in entry:
            curve.steps.append(int(entry["step"]))
            curve.losses.append(float(entry["loss"]))
        if "val_loss" in entry:
            curve.val_steps.append(int(entry["step"]))
            curve.val_losses.append(float(entry["val_loss"]))
    return curve


def read_loss_curve(log_uri: str, storage_options: dict[str, Any] | None = None) -> LossCurve | None:
    """The curve of the train log at `log_uri` (any fsspec URL); None when there is none yet."""
    fs, path = open_fs(log_uri, storage_options)
    try:
        text = fs.cat_file(path).decode("utf-8")
    except FileNotFoundError:
        return None
    return parse_train_log(text)


def read_run_curves(
    run_uri: str, directions: list[str], storage_options: dict[str, Any] | None = None
) -> dict[str, LossCurve]:
    """Every direction's curve from its train log at the run URI (`adapters/<direction>/train_log.jsonl`)."""
    curves = {d: read_loss_curve(join(run_uri, ADAPTERS_DIR, d, TRAIN_LOG), storage_options) for d in directions}
    return {d: c for d, c in curves.items() if c is not None and c.steps}


def loss_chart_png(curves: dict[str, LossCurve]) -> bytes:
    """Training loss by step, a line per direction, with its validation losses as points of the same colour."""

    def draw(ax: Any) -> None:
        for i, (direction, curve) in enumerate(curves.items()):
            colour = f"C{i % 10}"
            ax.plot(curve.steps, curve.losses, color=colour, linewidth=1.2, label=direction)
            if curve.val_steps:
                ax.plot(curve.val_steps, curve.val_losses, "o", color=colour, markersize=4,
                        label=f"{direction} validation")  # fmt: skip
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("training loss")
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=7)

    return render_png(6.0, 3.2, draw)
