"""Loss curves from train logs, their chart, and the report that shows them beside the chrF++ chart."""

from __future__ import annotations

import json

from png_check import assert_png
from test_report import result

from bhashaflow.core.fsio import join, open_fs, write_bytes_atomic
from bhashaflow.pipeline.curves import loss_chart_png, parse_train_log, read_loss_curve
from bhashaflow.pipeline.report import markdown_report, write_report

LOG = "".join(
    json.dumps(entry) + "\n"
    for entry in [
        {"step": 10, "loss": 6.1, "lr": 0.001, "tokens": 900},
        {"step": 20, "loss": 5.2, "lr": 0.002, "tokens": 1800},
        {"step": 20, "val_loss": 5.5, "val_chrf": 10.0, "val_chrf_pp": 9.0, "best_step": 20},
        {"step": 30, "loss": 4.4, "lr": 0.002, "tokens": 2700},
    ]
)


def test_a_train_log_gives_the_loss_and_validation_curves() -> None:
    curve = parse_train_log(LOG + "\n")
    assert (curve.steps, curve.losses) == ([10, 20, 30], [6.1, 5.2, 4.4])
    assert (curve.val_steps, curve.val_losses) == ([20], [5.5])
    assert curve.last == (30, 4.4)
    assert read_loss_curve("memory://curves/none/train_log.jsonl") is None


def test_the_loss_chart_is_a_png() -> None:
    curve = parse_train_log(LOG)
    width, height = assert_png(loss_chart_png({"eng_Latn-hin_Deva": curve, "eng_Latn-tam_Taml": curve}))
    assert (width, height) == (600, 320)


def test_the_report_draws_every_direction_curve_on_any_fsspec_url() -> None:
    run = "memory://reports/run-1"  # an object store's path rules, as s3:// has
    for direction in ("eng_Latn-hin_Deva", "eng_Latn-tam_Taml"):
        write_bytes_atomic(join(run, "adapters", direction, "train_log.jsonl"), LOG.encode())
    directions = {"eng_Latn-hin_Deva": result(), "eng_Latn-tam_Taml": result()}
    files = write_report(run, "run-1", directions)
    assert (files.report_uri, files.chart_uri, files.loss_chart_uri) == (
        f"{run}/report.md", f"{run}/chrf.png", f"{run}/loss.png")
    fs, _ = open_fs(run)
    assert_png(fs.cat_file(f"{run}/loss.png"))
    assert_png(fs.cat_file(f"{run}/chrf.png"))
    text = fs.cat_file(f"{run}/report.md").decode()
    assert f"Chart: `{run}/chrf.png`\nLoss curves: `{run}/loss.png`" in text


def test_a_run_without_train_logs_has_no_loss_chart() -> None:
    files = write_report("memory://reports/run-2", "run-2", {"eng_Latn-hin_Deva": result()})
    assert files.loss_chart_uri is None
    assert "Loss curves" not in markdown_report("run-2", {"eng_Latn-hin_Deva": result()}, "x/chrf.png")

