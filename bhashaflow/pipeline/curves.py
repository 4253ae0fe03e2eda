"""Loss curves of training, read from each direction's `train_log.jsonl`, and their chart."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bhashaflow.core.fsio import join, open_fs
from bhashaflow.core.names import ADAPTERS_DIR, TRAIN_LOG
from bhashaflow.pipeline.charts import render_panels_png

LOSS_CHART = "loss.png"  # the run's loss curves beside chrf.png; one per direction folder while it trains
SMOOTHING_POINTS = 10  # the moving average spans about a tenth of the logged points (at most this many)


@dataclass
class LossCurve:
    """The training loss of one direction by step; where it was validated, the validation loss and chrF++ (which
    picks the candidate) and the best step so far."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    val_chrf_pp: list[float] = field(default_factory=list)
    best_step: int | None = None  # the validated step whose adapter is the candidate (None: not validated)

    @property
    def last(self) -> tuple[int, float] | None:
        return (self.steps[-1], self.losses[-1]) if self.steps else None

    @property
    def chosen_step(self) -> int | None:
        """The step whose adapter is the candidate: the best validated one, else the last."""
        return self.best_step if self.best_step is not None else (self.steps[-1] if self.steps else None)


def parse_train_log(text: str) -> LossCurve:
    """The curve of a train log: `{step, loss, ...}` lines and `{step, val_loss, val_chrf_pp, best_step, ...}`
    validation lines."""
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
            curve.val_chrf_pp.append(float(entry.get("val_chrf_pp", "nan")))  # aligned with val_steps
            if entry.get("best_step") is not None:
                curve.best_step = int(entry["best_step"])
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


def moving_average(values: list[float], window: int) -> list[float]:
    """The trailing mean of the last `window` values at each point (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def loss_chart_png(curves: dict[str, LossCurve]) -> bytes:
    """One panel per direction: the training loss smoothed (a moving average) over the raw loss as a faint line,
    and on its own right-hand axis the validation chrF++ that picks the candidate, the chosen step marked."""
    return render_panels_png(
        5.0, 3.2, [_panel(direction, curve) for direction, curve in curves.items()], columns=2, legend=True
    )


def _panel(direction: str, curve: LossCurve) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        from matplotlib.ticker import MaxNLocator

        window = max(1, min(SMOOTHING_POINTS, len(curve.losses) // 10))
        if window > 1:
            ax.plot(curve.steps, curve.losses, color="C0", alpha=0.25, linewidth=0.8, label="training loss (raw)")
        ax.plot(
            curve.steps,
            moving_average(curve.losses, window),
            color="C0",
            linewidth=1.8,
            label="training loss, moving average" if window > 1 else "training loss",
        )
        ax.set_xlabel("step")
        ax.set_ylabel("training loss", color="C0")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(direction, fontsize=10)
        ax.grid(alpha=0.3)
        chosen = curve.chosen_step
        validated = chosen is not None and chosen == curve.best_step and chosen in curve.val_steps
        if chosen is not None:
            ax.axvline(
                chosen,
                color="C3",
                linestyle="--",
                linewidth=1.0,
                label="chosen step (best validation chrF++)" if validated else "chosen step (the last: no validation)",
            )
            ax.annotate(
                f"step {chosen}",
                (chosen, 0.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, 4),
                textcoords="offset points",
                color="C3",
                fontsize=8,
            )
        if curve.val_steps:
            right = ax.twinx()
            right.plot(
                curve.val_steps,
                curve.val_chrf_pp,
                "o-",
                color="C1",
                markersize=4,
                linewidth=1.0,
                label="validation chrF++ (picks the candidate)",
            )
            if validated and chosen is not None:
                right.plot([chosen], [curve.val_chrf_pp[curve.val_steps.index(chosen)]], "*", color="C3", markersize=13)
            right.set_ylabel("validation chrF++", color="C1")

    return draw
