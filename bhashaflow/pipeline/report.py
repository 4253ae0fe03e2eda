"""The pipeline's report: one row per direction, a markdown summary, a chrF++ bar chart and the loss curves."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from bhashaflow.config import PipelineConfig
from bhashaflow.core.fsio import join, write_bytes_atomic
from bhashaflow.core.settings import Settings
from bhashaflow.evaluation.contamination import contamination_for
from bhashaflow.evaluation.evaluate import DirectionScores
from bhashaflow.modeling.encoding import language_notes
from bhashaflow.modeling.loaded import BUILTIN_PREFIX
from bhashaflow.modeling.loading import load_config_and_tokenizer
from bhashaflow.pipeline.charts import render_png
from bhashaflow.pipeline.curves import LOSS_CHART, loss_chart_png, read_run_curves
from bhashaflow.registry.promotion import PromotionOutcome
from bhashaflow.training.loop import TrainResult

# The chrF++ table (the `-chrf` table artifact): (header, the cell of a result), human words and formatted numbers,
# few enough columns to read without scrolling sideways in the Prefect UI. The rest is in the report's second table.
TABLE_COLUMNS: list[tuple[str, Callable[[Row], str]]] = [
    ("base chrF++", lambda r: _score(r["base_chrf_pp"])),
    ("incumbent chrF++", lambda r: _score(r["incumbent_chrf_pp"], none="none yet")),
    ("incumbent version", lambda r: r.get("incumbent_version") or "none yet"),
    ("candidate chrF++", lambda r: _score(r["candidate_chrf_pp"])),
    ("script valid", lambda r: _share(r["script_valid"])),
    ("promoted", lambda r: f"yes, {r['version']}" if r["promoted"] else f"no ({r['version']} kept as a candidate)"),
]


class ProducedBy(TypedDict):
    """The hosts that trained, evaluated and promoted a direction's adapter (None: not known)."""

    train: str | None
    evaluate: str | None
    promote: str | None


class DirectionResult(TypedDict):
    """One direction of a pipeline run's result: the `--json` contract (chrF and chrF++ rounded to 2 decimals)."""

    base_chrf: float
    base_chrf_pp: float
    incumbent_chrf: float | None
    incumbent_chrf_pp: float | None
    incumbent_version: str | None
    candidate_chrf: float
    candidate_chrf_pp: float
    script_valid: float
    base_script_valid: float
    sentences: int
    signature: str
    decontaminated: int
    steps: int
    validation_pairs: int
    best_step: int | None
    stopped_early: bool
    promoted: bool
    reason: str
    version: str
    adapter_uri: str
    objective: str
    corrections_sentences: int | None
    base_corrections_chrf_pp: float | None
    incumbent_corrections_chrf_pp: float | None
    candidate_corrections_chrf_pp: float | None
    reused: bool
    produced_by: ProducedBy


# A direction's row as the tables read it: a DirectionResult, or one with more columns (the feedback loop's).
Row = Mapping[str, Any]
Rows = Mapping[str, Row]


def direction_result(
    trained: TrainResult, scores: DirectionScores, promotion: PromotionOutcome, reused: bool = False
) -> DirectionResult:
    """The public per-direction result of a pipeline run (the `--json` contract).

    `reused`: some step of it was handed on from an earlier (or the retried) flow run instead of done again.
    """
    base, candidate, incumbent = scores.base, scores.candidate, scores.incumbent
    corrections = {
        "base": scores.base_corrections,
        "incumbent": scores.incumbent_corrections,
        "candidate": scores.candidate_corrections,
    }

    def corrections_chrf_pp(who: str) -> float | None:
        score = corrections[who]
        return round(score.chrf_pp, 2) if score else None

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
        "objective": trained.objective,
        # The held-out corrections yardstick (None when the run has no rl_logs source).
        "corrections_sentences": scores.candidate_corrections.n if scores.candidate_corrections else None,
        "base_corrections_chrf_pp": corrections_chrf_pp("base"),
        "incumbent_corrections_chrf_pp": corrections_chrf_pp("incumbent"),
        "candidate_corrections_chrf_pp": corrections_chrf_pp("candidate"),
        "reused": reused,
        # The host that trained, evaluated and promoted it: the same in a re-run that reused them (None: not known).
        "produced_by": {
            "train": trained.host or None,
            "evaluate": scores.host or None,
            "promote": promotion.host or None,
        },
    }


# The held-out corrections yardstick (runs with an rl_logs source): in the tables only when a direction has it.
CORRECTIONS_COLUMNS = ("base_corrections_chrf_pp", "incumbent_corrections_chrf_pp", "candidate_corrections_chrf_pp")


def _has_corrections(directions: Rows) -> bool:
    return any(r.get("candidate_corrections_chrf_pp") is not None for r in directions.values())


def table_rows(directions: Rows) -> list[dict[str, str]]:
    """The chrF++ table artifact's rows: human headers, chrF++ to one decimal, shares as percents, every cell text."""
    return [{"direction": d, **{h: cell(r) for h, cell in TABLE_COLUMNS}} for d, r in directions.items()]


def _score(value: float | None, none: str = "-") -> str:
    """A chrF++ score as the tables show it: one decimal."""
    return none if value is None else f"{value:.1f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


# The terminal table's columns after the direction: (header, width, the cell of a result). One line per column.
TERMINAL_COLUMNS: list[tuple[str, int, Callable[[Row], str]]] = [
    ("base", 7, lambda r: f"{r['base_chrf_pp']:.2f}"),
    ("incumb.", 7, lambda r: _points(r["incumbent_chrf_pp"])),
    ("cand.", 7, lambda r: f"{r['candidate_chrf_pp']:.2f}"),
    ("script", 7, lambda r: f"{r['script_valid']:.0%}"),
    ("decont.", 7, lambda r: str(r["decontaminated"])),
]


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(directions: Rows) -> str:
    """A fixed-width text table for the terminal."""
    head = f"{'direction':<20} " + " ".join(f"{h:>{w}}" for h, w, _ in TERMINAL_COLUMNS) + "  promoted"
    lines = [head, "chrF++ on FLORES-200 " + "-" * (len(head) - 21)]
    for d, r in directions.items():
        promoted = f"yes ({r['version']})" if r["promoted"] else f"no ({r['version']} kept as a candidate)"
        cells = " ".join(f"{cell(r):>{w}}" for _, w, cell in TERMINAL_COLUMNS)
        lines.append(f"{d:<20} {cells}  {promoted}")
    if _has_corrections(directions):
        lines.append("chrF++ on held-out corrections " + "-" * (len(head) - 31))
        for d, r in directions.items():
            scores = [_points(r.get(k)) for k in CORRECTIONS_COLUMNS]
            lines.append(
                f"{d:<20} " + " ".join(f"{v:>7}" for v in scores) + f"  {r.get('corrections_sentences')} sentences"
            )
    return "\n".join(lines)


def chart_png(directions: Rows) -> bytes:
    """A grouped bar chart of chrF++ per direction for base, incumbent and candidate."""
    names = list(directions)
    series = [("base", "base_chrf_pp"), ("incumbent", "incumbent_chrf_pp"), ("candidate", "candidate_chrf_pp")]
    width = 0.27

    def draw(ax: Any) -> None:
        for i, (label, key) in enumerate(series):
            values = [directions[d][key] or 0.0 for d in names]
            ax.bar([x + (i - 1) * width for x in range(len(names))], values, width, label=label)
        ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
        ax.set_ylabel("chrF++")
        ax.set_title("chrF++ on FLORES-200")
        ax.legend(fontsize=8)

    return render_png(max(4.0, 1.6 * len(names) + 2), 3.2, draw)


def _candidate_step(result: Row) -> str:
    """`best step (of steps)` with validation, else the last step; `stopped early` when patience ran out."""
    best, steps = result.get("best_step"), result.get("steps")
    if best is None:
        return f"{steps} (last)"
    return f"{best} of {steps}" + (", stopped early" if result.get("stopped_early") else "")


# The report's tables after the direction column: (header, alignment row cell, the cell of a result). Each fits the
# Prefect UI's artifact pane (about 1,000 px in a 1,600 px window); what does not fit goes to the next table.
Columns = list[tuple[str, str, Callable[[Row], str]]]
MARKDOWN_COLUMNS: Columns = [
    ("base chrF++", "---:", lambda r: _score(r["base_chrf_pp"])),
    ("incumbent chrF++", "---:", lambda r: _score(r["incumbent_chrf_pp"], none="none yet")),
    ("candidate chrF++", "---:", lambda r: _score(r["candidate_chrf_pp"])),
    ("script valid", "---:", lambda r: _share(r["script_valid"])),
    ("promoted", "---", lambda r: f"yes, {r['version']}" if r["promoted"] else f"no ({r['version']} kept)"),
]
# The training details, in a second table below the first.
MARKDOWN_TRAINING_COLUMNS: Columns = [
    ("candidate step", "---:", _candidate_step),
    ("validation pairs", "---:", lambda r: str(r.get("validation_pairs", 0))),
    ("decontaminated", "---:", lambda r: str(r["decontaminated"])),
    ("incumbent", "---", lambda r: r.get("incumbent_version") or "none yet"),
]
# The held-out corrections yardstick, a third table when the run has it.
MARKDOWN_CORRECTIONS_COLUMNS: Columns = [
    ("sentences", "---:", lambda r: str(r.get("corrections_sentences"))),
    ("base chrF++", "---:", lambda r: _score(r.get("base_corrections_chrf_pp"))),
    ("incumbent chrF++", "---:", lambda r: _score(r.get("incumbent_corrections_chrf_pp"), none="none yet")),
    ("candidate chrF++", "---:", lambda r: _score(r.get("candidate_corrections_chrf_pp"))),
]


def markdown_table(directions: Rows, columns: Columns) -> list[str]:
    """A markdown table of one row per direction: the direction, then `columns`."""
    rows = [
        "| direction | " + " | ".join(h for h, _, _ in columns) + " |",
        "|---|" + "|".join(a for _, a, _ in columns) + "|",
    ]
    return rows + [f"| {d} | " + " | ".join(cell(r) for _, _, cell in columns) + " |" for d, r in directions.items()]


def _code(uri: str) -> str:
    return f"`{uri}`"


def base_notes(config: PipelineConfig, settings: Settings | None = None) -> list[str]:
    """What the report must say about the base: a known contamination of the evaluation split, and each language
    the base names by an alias (NLLB's sat_Beng for FLORES-200's sat_Olck)."""
    notes = []
    known = contamination_for(config.base_model, "FLORES-200", config.evaluation.split)
    if known is not None:
        notes.append(known.message(config.base_model, config.evaluation.split))
    if not config.base_model.startswith(BUILTIN_PREFIX):
        base_config, tokenizer = load_config_and_tokenizer(
            config.base_model,
            revision=config.base_revision,
            trust_remote_code=config.trust_remote_code,
            settings=settings,
        )
        family = "seq2seq" if getattr(base_config, "is_encoder_decoder", False) else "causal"
        aliases = language_notes(
            tokenizer,
            family=family,
            model_type=str(getattr(base_config, "model_type", "")),
            base=config.base_model,
            directions=config.directions,
        )
        notes += [f"language tag: {note}" for note in aliases]
    return notes


def markdown_report(
    run_id: str,
    directions: Rows,
    chart_uri: str,
    loss_chart_uri: str | None = None,
    notes: list[str] | None = None,
    locate: Callable[[str], str] = _code,
) -> str:
    """The report as markdown: the base's notes (contamination, tag aliases), the chrF++ table, each direction's
    promotion reason, the training details, the held-out corrections (if any), the signature, the charts' files.

    Args:
        locate: how a file's location is written (its URI as code by default; the Prefect artifact passes
            `bhashaflow.pipeline.links.Locator.file`, which writes links a browser can follow).
    """
    corrections = (
        ["", "chrF++ on the held-out corrections:", "", *markdown_table(directions, MARKDOWN_CORRECTIONS_COLUMNS)]
        if _has_corrections(directions)
        else []
    )
    reasons = [f"- **{d}**: {r['reason']}" for d, r in directions.items()]
    signature = next(iter(directions.values()))["signature"] if directions else ""
    # A paragraph each: Prefect's newer UI joins lines that a single newline separates.
    charts = [f"Chart: {locate(chart_uri)}"] + (
        ["", f"Loss curves: {locate(loss_chart_uri)}"] if loss_chart_uri else []
    )
    return "\n".join(
        [
            f"# adapter-pipeline run `{run_id}`",
            "",
            *[f"> **Note:** {n}" for n in notes or []],
            *([""] if notes else []),
            "chrF++ on FLORES-200:",
            "",
            *markdown_table(directions, MARKDOWN_COLUMNS),
            "",
            *reasons,
            "",
            "Training:",
            "",
            *markdown_table(directions, MARKDOWN_TRAINING_COLUMNS),
            *corrections,
            "",
            f"chrF++ signature: `{signature}`",
            "",
            *charts,
            "",
        ]
    )


@dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote into the run folder."""

    report_uri: str  # report.md
    chart_uri: str  # chrf.png
    loss_chart_uri: str | None  # loss.png: every direction's loss curve (None: no train log to draw)


def write_report(
    run_uri: str,
    run_id: str,
    directions: Rows,
    storage_options: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> ReportFiles:
    """Write `chrf.png`, `loss.png` (from the directions' train logs) and `report.md` into the run folder."""
    chart_uri = join(run_uri, "chrf.png")
    write_bytes_atomic(chart_uri, chart_png(directions), storage_options)
    curves = read_run_curves(run_uri, list(directions), storage_options)
    loss_chart_uri = join(run_uri, LOSS_CHART) if curves else None
    if loss_chart_uri is not None:
        write_bytes_atomic(loss_chart_uri, loss_chart_png(curves), storage_options)
    report_uri = join(run_uri, "report.md")
    text = markdown_report(run_id, directions, chart_uri, loss_chart_uri, notes)
    write_bytes_atomic(report_uri, text.encode(), storage_options)
    return ReportFiles(report_uri, chart_uri, loss_chart_uri)
