"""Loss curves from train logs, their chart, and the report that shows them beside the chrF++ chart."""

from __future__ import annotations

import json

from png_check import assert_png
from test_report import result

from bhashaflow.core.fsio import join, open_fs, write_bytes_atomic
from bhashaflow.pipeline.curves import loss_chart_png, moving_average, parse_train_log, read_loss_curve
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
    assert (curve.val_steps, curve.val_losses, curve.val_chrf_pp) == ([20], [5.5], [9.0])
    assert curve.last == (30, 4.4)
    assert (curve.best_step, curve.chosen_step) == (20, 20)  # the candidate is the best validated step
    unvalidated = parse_train_log(LOG.splitlines()[0] + "\n" + LOG.splitlines()[1])
    assert (unvalidated.best_step, unvalidated.chosen_step) == (None, 20)  # else the last
    assert read_loss_curve("memory://curves/none/train_log.jsonl") is None


def test_the_loss_chart_is_a_png_with_one_panel_per_direction() -> None:
    curve = parse_train_log(LOG)
    # Two panels side by side (500 px each) over a legend line: it fits the Prefect UI's ~1,000 px artifact pane.
    assert assert_png(loss_chart_png({"eng_Latn-hin_Deva": curve, "eng_Latn-tam_Taml": curve})) == (1000, 352)
    assert assert_png(loss_chart_png({"eng_Latn-hin_Deva": curve})) == (500, 374)  # its legend on two lines
    three = {d: curve for d in ("eng_Latn-hin_Deva", "eng_Latn-tam_Taml", "eng_Latn-ben_Beng")}
    assert assert_png(loss_chart_png(three)) == (1000, 672)  # two to a row


def test_the_moving_average_trails_over_the_window() -> None:
    assert moving_average([4.0, 2.0, 6.0, 0.0], 2) == [4.0, 3.0, 4.0, 3.0]
    assert moving_average([4.0, 2.0], 1) == [4.0, 2.0]


def test_the_report_draws_every_direction_curve_on_any_fsspec_url() -> None:
    run = "memory://reports/run-1"  # an object store's path rules, as s3:// has
    for direction in ("eng_Latn-hin_Deva", "eng_Latn-tam_Taml"):
        write_bytes_atomic(join(run, "adapters", direction, "train_log.jsonl"), LOG.encode())
    directions = {"eng_Latn-hin_Deva": result(), "eng_Latn-tam_Taml": result()}
    files = write_report(run, "run-1", directions)
    assert (files.report_uri, files.chart_uri, files.loss_chart_uri) == (
        f"{run}/report.md",
        f"{run}/chrf.png",
        f"{run}/loss.png",
    )
    fs, _ = open_fs(run)
    assert_png(fs.cat_file(f"{run}/loss.png"))
    assert_png(fs.cat_file(f"{run}/chrf.png"))
    text = fs.cat_file(f"{run}/report.md").decode()
    assert f"Chart: `{run}/chrf.png`\n\nLoss curves: `{run}/loss.png`" in text


def test_a_run_without_train_logs_has_no_loss_chart() -> None:
    files = write_report("memory://reports/run-2", "run-2", {"eng_Latn-hin_Deva": result()})
    assert files.loss_chart_uri is None
    assert "Loss curves" not in markdown_report("run-2", {"eng_Latn-hin_Deva": result()}, "x/chrf.png")
