"""The pipeline's report: one row per direction, a markdown summary and a chrF++ bar chart."""

from __future__ import annotations

import io
from typing import Any

from bhashaflow.core.fsio import join, write_bytes_atomic
from bhashaflow.evaluation.evaluate import DirectionScores
from bhashaflow.registry.promotion import PromotionOutcome
from bhashaflow.training.loop import TrainResult

COLUMNS = (
    "direction",
    "base_chrf",
    "base_chrf_pp",
    "incumbent_chrf_pp",
    "candidate_chrf",
    "candidate_chrf_pp",
    "script_valid",
    "decontaminated",
    "validation_pairs",
    "best_step",
    "promoted",
    "version",
)


def direction_result(trained: TrainResult, scores: DirectionScores, promotion: PromotionOutcome) -> dict[str, Any]:
    """The public per-direction result of a pipeline run (the `--json` contract)."""
    base, candidate, incumbent = scores.base, scores.candidate, scores.incumbent
    return {
        "base_chrf": round(base.chrf, 2),
        "base_chrf_pp": round(base.chrf_pp, 2),
        "incumbent_chrf": round(incumbent.chrf, 2) if incumbent else None,
        "incumbent_chrf_pp": round(incumbent.chrf_pp, 2) if incumbent else None,
        "incumbent_version": scores.incumbent_version,
        "candidate_chrf": round(candidate.chrf, 2),
        "candidate_chrf_pp": round(candidate.chrf_pp, 2),
        "script_valid": round(candidate.script_valid, 4),
        "base_script_valid": round(base.script_valid, 4),
        "sentences": candidate.n,
        "signature": candidate.signature_chrf_pp,
        "decontaminated": trained.decontaminated,
        "steps": trained.steps,
        "validation_pairs": trained.validation_pairs,
        "best_step": trained.best_step,
        "stopped_early": trained.stopped_early,
        "promoted": promotion.promoted,
        "reason": promotion.reason,
        "version": promotion.version,
        "adapter_uri": promotion.adapter_uri,
    }


def table_rows(directions: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"direction": d, **{k: r[k] for k in COLUMNS if k != "direction"}} for d, r in directions.items()]


def format_table(directions: dict[str, dict[str, Any]]) -> str:
    """A fixed-width text table for the terminal."""
    head = f"{'direction':<20} {'base':>7} {'incumb.':>7} {'cand.':>7} {'script':>7} {'decont.':>7}  promoted"
    lines = [head, "chrF++ on FLORES-200 " + "-" * (len(head) - 21)]
    for d, r in directions.items():
        inc = "-" if r["incumbent_chrf_pp"] is None else f"{r['incumbent_chrf_pp']:.2f}"
        promoted = f"yes ({r['version']})" if r["promoted"] else f"no ({r['version']} kept as a candidate)"
        lines.append(
            f"{d:<20} {r['base_chrf_pp']:>7.2f} {inc:>7} {r['candidate_chrf_pp']:>7.2f} "
            f"{r['script_valid']:>7.0%} {r['decontaminated']:>7}  {promoted}"
        )
    return "\n".join(lines)


def chart_png(directions: dict[str, dict[str, Any]]) -> bytes:
    """A grouped bar chart of chrF++ per direction for base, incumbent and candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(directions)
    series = [("base", "base_chrf_pp"), ("incumbent", "incumbent_chrf_pp"), ("candidate", "candidate_chrf_pp")]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(names) + 2), 3.2), dpi=100)
    width = 0.27
    for i, (label, key) in enumerate(series):
        values = [directions[d][key] or 0.0 for d in names]
        ax.bar([x + (i - 1) * width for x in range(len(names))], values, width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax.set_ylabel("chrF++")
    ax.set_title("chrF++ on FLORES-200")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _candidate_step(result: dict[str, Any]) -> str:
    """`best step (of steps)` with validation, else the last step; `stopped early` when patience ran out."""
    best, steps = result.get("best_step"), result.get("steps")
    if best is None:
        return f"{steps} (last)"
    return f"{best} of {steps}" + (", stopped early" if result.get("stopped_early") else "")


def markdown_report(run_id: str, directions: dict[str, dict[str, Any]], chart_uri: str) -> str:
    rows = [
        "| direction | base chrF++ | incumbent chrF++ | candidate chrF++ | script valid | decontaminated "
        "| validation pairs | candidate step | promoted |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for d, r in directions.items():
        inc = "-" if r["incumbent_chrf_pp"] is None else f"{r['incumbent_chrf_pp']:.2f}"
        rows.append(
            f"| {d} | {r['base_chrf_pp']:.2f} | {inc} | {r['candidate_chrf_pp']:.2f} | {r['script_valid']:.0%} "
            f"| {r['decontaminated']} | {r.get('validation_pairs', 0)} | {_candidate_step(r)} "
            f"| {'yes' if r['promoted'] else 'no'} ({r['version']}) |"
        )
    reasons = [f"- **{d}**: {r['reason']}" for d, r in directions.items()]
    signature = next(iter(directions.values()))["signature"] if directions else ""
    return "\n".join(
        [f"# adapter-pipeline run `{run_id}`", "", *rows, "", *reasons, "", f"chrF++ signature: `{signature}`", "",
         f"Chart: `{chart_uri}`", ""]
    )


def write_report(
    run_uri: str, run_id: str, directions: dict[str, dict[str, Any]], storage_options: dict[str, Any] | None = None
) -> tuple[str, str]:
    """Write `report.md` and `chrf.png` into the run folder; returns their URIs."""
    chart_uri = join(run_uri, "chrf.png")
    write_bytes_atomic(chart_uri, chart_png(directions), storage_options)
    report_uri = join(run_uri, "report.md")
    write_bytes_atomic(report_uri, markdown_report(run_id, directions, chart_uri).encode(), storage_options)
    return report_uri, chart_uri
