"""The `feedback-loop` flow: served feedback becomes the next adapter.

export (the service's new episodes and feedback, as RL log parts) -> ingest (an `rl_logs` source reads the parts
back: each trusted correction a pair and a preference triplet, a share held out as the second yardstick) ->
train (`training.objective: cpo` from the incumbent, typically) -> evaluate (FLORES-200 devtest and the held-out
corrections) -> promote (the FLORES gate, and no loss beyond `promotion.max_regression` on the corrections).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from bhashaflow.config import PipelineConfig, RLExportFlowConfig
from bhashaflow.core.settings import get_settings
from bhashaflow.data.manifest import DataManifest, read_data_manifest
from bhashaflow.episodes.export import ExportSummary
from bhashaflow.pipeline.report import (
    MARKDOWN_COLUMNS,
    MARKDOWN_CORRECTIONS_COLUMNS,
    Columns,
    DirectionResult,
    Row,
    Rows,
    format_table,
    markdown_table,
)
from flows.adapter_pipeline import adapter_pipeline
from flows.export_rl_logs import export_rl_logs_flow
from flows.runners import at_scheduled_start
from tasks.rundirs import artifact_key


class SourceFeedback(TypedDict):
    """What an rl_logs source gave: episodes read, corrections kept, and the rest by reason."""

    read: int
    accepted: int
    duplicates: int
    rejected: int
    skipped: int
    rejected_by_reason: dict[str, int]
    skipped_by_reason: dict[str, int]


class DirectionFeedback(TypedDict):
    """What the feedback became in one direction: training pairs, preference triplets, held-out corrections."""

    pairs: int
    preferences: int
    heldout: int


class FeedbackCounts(TypedDict):
    sources: dict[str, SourceFeedback]
    directions: dict[str, DirectionFeedback]


class FeedbackLoopResult(TypedDict):
    """What the feedback-loop flow returns: the `bhashaflow feedback-loop --json` object (the export, what the
    feedback became, then the pipeline's result)."""

    export: ExportSummary
    feedback: FeedbackCounts
    run_id: str
    report: str
    directions: dict[str, DirectionResult]


@flow(name="feedback-loop")
def feedback_loop(config: PipelineConfig) -> FeedbackLoopResult:
    """Export the served feedback, then train, evaluate and gate the next adapters on it.

    Args:
        config: a pipeline config with at least one `rl_logs` source reading `rl_export.target`
            (configs/feedback-loop.yaml); its `serving.episodes_db` is the service's database.
    """
    feedback_sources = [s.name for s in config.sources if s.kind == "rl_logs"]
    if not feedback_sources:
        raise ValueError("the feedback loop needs an rl_logs source (one reading rl_export.target)")
    config = at_scheduled_start(config, FlowRunContext.get())
    exported = export_rl_logs_flow(RLExportFlowConfig.of(config))
    result = adapter_pipeline(config)
    run_uri = _run_uri(config, result["run_id"])
    manifest = read_data_manifest(run_uri, get_settings().storage_options_for(run_uri))
    counts = feedback_counts(manifest, feedback_sources)
    create_markdown_artifact(
        loop_markdown(result["run_id"], exported, counts, result["directions"]),
        key=artifact_key("feedback-loop", config.run_name, "loop"),
        description=f"Feedback loop, run {result['run_id']}, every direction: episodes exported, "
        "what they became, chrF++ on FLORES-200 and on the held-out corrections, the gate's word",
    )
    return {
        "export": exported,
        "feedback": counts,
        "run_id": result["run_id"],
        "report": result["report"],
        "directions": result["directions"],
    }


def _run_uri(config: PipelineConfig, run_id: str) -> str:
    """The run folder of the pipeline's run (its run id resolved, `{datetime}` filled in)."""
    return config.model_copy(update={"run_id": run_id}).run_uri()


def feedback_counts(manifest: DataManifest | None, sources: list[str]) -> FeedbackCounts:
    """What the rl_logs sources gave: episodes read, pairs made, skipped and rejected by reason, per direction
    (nothing when the run left no data manifest)."""
    if manifest is None:
        return {"sources": {}, "directions": {}}
    per_source: dict[str, SourceFeedback] = {
        name: {
            "read": s.read,
            "accepted": s.accepted,
            "duplicates": s.duplicates,
            "rejected": s.rejected,
            "skipped": s.skipped,
            "rejected_by_reason": s.rejected_by_reason,
            "skipped_by_reason": s.skipped_by_reason,
        }
        for name, s in manifest.sources.items()
        if name in sources
    }
    directions: dict[str, DirectionFeedback] = {
        d: {
            "pairs": e.accepted,
            "preferences": e.preferences.rows if e.preferences else 0,
            "heldout": e.heldout.rows if e.heldout else 0,
        }
        for d, e in manifest.directions.items()
    }
    return {"sources": per_source, "directions": directions}


def loop_markdown(run_id: str, exported: ExportSummary, counts: FeedbackCounts, directions: Rows) -> str:
    """The loop's artifact: what was exported, what became data, both yardsticks and the gate's word (a table each,
    narrow enough for the Prefect UI)."""
    lines = [
        f"# Feedback loop, run {run_id}",
        "",
        f"Exported {exported['exported']} episodes in {len(exported['parts'])} parts to `{exported['target']}`.",
        "",
    ]
    for name, s in counts["sources"].items():
        skipped = ", ".join(f"{k} {v}" for k, v in s["skipped_by_reason"].items()) or "none"
        rejected = ", ".join(f"{k} {v}" for k, v in s["rejected_by_reason"].items()) or "none"
        lines.append(
            f"- `{name}`: {s['read']} episodes read, {s['accepted']} corrections kept "
            f"({s['duplicates']} duplicates), skipped: {skipped}; rejected: {rejected}"
        )
    became: Columns = [
        (header, "---:", _became_cell(counts, key))
        for header, key in (
            ("training pairs", "pairs"),
            ("preference triplets", "preferences"),
            ("held out", "heldout"),
        )
    ]
    rows = {d: {**r, "direction": d} for d, r in directions.items()}
    lines += [
        "",
        "What the feedback became:",
        "",
        *markdown_table(rows, became),
        "",
        "chrF++ on FLORES-200:",
        "",
        *markdown_table(rows, MARKDOWN_COLUMNS),
        "",
        "chrF++ on the held-out corrections:",
        "",
        *markdown_table(rows, MARKDOWN_CORRECTIONS_COLUMNS),
        "",
        *[
            f"- **{d}**: {'promoted' if r['promoted'] else 'not promoted'}: {r['reason']}"
            for d, r in directions.items()
        ],
    ]
    return "\n".join(lines) + "\n"


def _became_cell(counts: FeedbackCounts, key: str) -> Callable[[Row], str]:
    """A cell of the "what the feedback became" table: a direction's count of `key` (0 when it has none)."""

    def cell(row: Row) -> str:
        found = counts["directions"].get(row["direction"])
        return str(found.get(key, 0) if found is not None else 0)

    return cell


def loop_table(result: FeedbackLoopResult) -> str:
    """What the CLI and the demo print: the export, what the feedback became, the two-yardstick table."""
    export = result["export"]
    lines = [f"exported {export['exported']} episodes in {len(export['parts'])} parts to {export['target']}"]
    for name, s in result["feedback"]["sources"].items():
        skipped = ", ".join(f"{k} {v}" for k, v in s["skipped_by_reason"].items()) or "none"
        rejected = ", ".join(f"{k} {v}" for k, v in s["rejected_by_reason"].items()) or "none"
        lines.append(
            f"{name}: {s['read']} episodes read, {s['accepted']} corrections kept; skipped: {skipped}; "
            f"rejected: {rejected}"
        )
    for d, c in result["feedback"]["directions"].items():
        lines.append(
            f"{d}: {c['pairs']} training pairs, {c['preferences']} preference triplets, {c['heldout']} held out"
        )
    lines.append(f"run {result['run_id']}: report {result['report']}")
    return "\n".join([*lines, format_table(result["directions"])])


def post_corrections(base_url: str, direction: str, flores_dir: str, count: int, batch: int = 32) -> dict[str, int]:
    """The demo's stand-in for users: translate `count` FLORES-200 *dev* sentences (never devtest) over HTTP and
    send each reference back as the correction, with a reward of -0.5 (the served output needed fixing)."""
    import httpx

    from bhashaflow.data.flores import read_flores

    src_lang, tgt_lang = direction.split("-")
    sources = read_flores(flores_dir, src_lang, "dev")[:count]
    references = read_flores(flores_dir, tgt_lang, "dev")[:count]
    posted = unchanged = 0
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for start in range(0, len(sources), batch):
            texts = sources[start : start + batch]
            r = client.post("/v1/translate", json={"texts": texts, "src_lang": src_lang, "tgt_lang": tgt_lang})
            r.raise_for_status()
            body = r.json()
            for episode, output, reference in zip(
                body["episode_ids"], body["translations"], references[start : start + batch], strict=True
            ):
                fb = client.post("/v1/feedback", json={"episode_id": episode, "reward": -0.5, "correction": reference})
                fb.raise_for_status()
                posted += 1
                unchanged += output.strip() == reference.strip()
    return {"episodes": len(sources), "corrections": posted, "equal_to_output": unchanged}
