"""Export served episodes, with their feedback, as JSONL or Parquet parts for preference or RL training.

Exactly-once at the sink, even across crashes: a part's id range is recorded in the episodes database
*before* its upload, a re-run redoes a recorded-but-unconfirmed part with the very same range and name
(so it replaces the earlier copy), and the watermark moves only after the upload is verified.
Exports to one target take turns (a lock beside the database), so two never cut the same episodes
into differently named parts. The record schema is documented in docs/rl-logs.md.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any, Protocol, TypedDict

import pyarrow as pa
import pyarrow.parquet as pq

from bhashaflow.config import RLExportConfig
from bhashaflow.core.redact import redact_uri
from bhashaflow.core.settings import Settings
from bhashaflow.episodes.store import Episode, EpisodeStore, ExportMode

log = logging.getLogger(__name__)


class _HoldsEpisodes(Protocol):
    @property
    def episodes_db(self) -> str: ...


class ExportSource(Protocol):
    """What an export reads from a config: a whole pipeline config, or the export-rl-logs flow's own."""

    @property
    def serving(self) -> _HoldsEpisodes: ...

    @property
    def rl_export(self) -> RLExportConfig: ...


class ExportSummary(TypedDict):
    """What an export did (the `export-rl --json` object)."""

    exported: int  # records written
    parts: list[str]  # names of the parts written
    target: str  # where they went, credentials masked


PART_ROWS = 500  # records per part: small enough to re-send cheaply, large enough to keep part counts low

RECORD_SCHEMA = pa.schema(
    [
        ("episode_id", pa.int64()),
        ("time", pa.string()),
        ("direction", pa.string()),
        ("src_lang", pa.string()),
        ("tgt_lang", pa.string()),
        ("adapter_version", pa.string()),
        ("base_model", pa.string()),
        ("prompt", pa.string()),
        ("response", pa.string()),
        ("reward", pa.float64()),
        ("correction", pa.string()),
        ("feedback_time", pa.string()),
        ("feedback_seq", pa.int64()),
        ("latency_ms", pa.float64()),
        ("script_valid", pa.bool_()),
        # Added later, at the end so older readers keep their columns: who asked, who rated.
        ("client", pa.string()),
        ("feedback_client", pa.string()),
    ]
)

CONTENT_TYPES = {"jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}


class PartSink(Protocol):
    """Where parts go (connectors.sinks provides one per kind of target)."""

    target: str

    def write(self, name: str, data: bytes, content_type: str) -> None:
        """Write `data` as part `name`, replacing a part of that name, and verify it arrived whole."""
        ...


def episode_record(ep: Episode) -> dict[str, Any]:
    """One exported record (the schema in docs/rl-logs.md)."""
    return {
        "episode_id": ep.id,
        "time": ep.created_at,
        "direction": ep.direction,
        "src_lang": ep.src_lang,
        "tgt_lang": ep.tgt_lang,
        "adapter_version": ep.adapter_version,
        "base_model": ep.base_model,
        "prompt": ep.input,
        "response": ep.output,
        "reward": ep.reward,
        "correction": ep.correction,
        "feedback_time": ep.feedback_at,
        "feedback_seq": ep.feedback_seq,
        "latency_ms": ep.latency_ms,
        "script_valid": ep.script_valid,
        "client": ep.client,
        "feedback_client": ep.feedback_client,
    }


def encode_part(records: list[dict[str, Any]], fmt: str) -> bytes:
    """Serialise records as JSONL (one JSON object per line, UTF-8) or Parquet (RECORD_SCHEMA)."""
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        # U+2028/2029 are line breaks to many readers (Python's splitlines, JavaScript): keep them escaped.
        return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode("utf-8")
    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(records, schema=RECORD_SCHEMA), buf)
        return buf.getvalue()
    raise ValueError(f"unknown export format {fmt!r}")


def decode_part(data: bytes, fmt: str) -> list[dict[str, Any]]:
    """The records of a part (JSONL or Parquet), every RECORD_SCHEMA field present: fields a part written by
    an older version lacks (`client`, `feedback_client`) are None, which reads as "not attributed"."""
    if fmt == "jsonl":
        rows = [json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip()]
    elif fmt == "parquet":
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return [{name: row.get(name) for name in RECORD_SCHEMA.names} for row in rows]


def part_name(mode: ExportMode, first_key: int, last_key: int, fmt: str) -> str:
    """`episodes-<first id>-<last id>.<fmt>`, or `feedback-<first seq>-<last seq>.<fmt>` for rated-only exports."""
    prefix = "episodes" if mode == "all" else "feedback"
    return f"{prefix}-{first_key:012d}-{last_key:012d}.{fmt}"


def _key(ep: Episode, mode: ExportMode) -> int:
    key = ep.id if mode == "all" else ep.feedback_seq
    assert key is not None  # mode 'feedback' only selects episodes that have a feedback_seq
    return key


def export_rl_logs(
    config: ExportSource,
    settings: Settings,
    *,
    sink: PartSink,
    part_rows: int = PART_ROWS,
) -> ExportSummary:
    """Export the episodes not yet exported to `rl_export.target`, one verified part at a time.

    With `rl_export.only_with_feedback`, episodes are exported once they have feedback, ordered by
    when the feedback arrived; an episode whose feedback is replaced after its export is exported
    again with the newer feedback (keep the record with the highest `feedback_seq`). Episodes served
    (or rated) while it runs are left to the next run. One export per target runs at a time: a second
    waits for the first, up to a minute, then raises `ExportBusy`.

    Args:
        config: `serving.episodes_db` and `rl_export`: a pipeline config or the flow's RLExportFlowConfig.
        settings: credentials for the target.
        sink: where parts go (`connectors.sinks.open_sink(rl_export.target, settings)`, with retries).
        part_rows: most records per part.

    Returns:
        {"exported": records written, "parts": part names written, "target": the target}.
    """
    if part_rows <= 0:
        raise ValueError("part_rows must be positive")
    target = config.rl_export.target
    fmt = config.rl_export.format
    if target.lower().startswith(("http://", "https://")) and fmt != "jsonl":
        raise ValueError(f"rl_export.format {fmt!r}: an http(s) target receives NDJSON; set rl_export.format=jsonl")
    mode: ExportMode = "feedback" if config.rl_export.only_with_feedback else "all"
    exported = 0
    parts: list[str] = []
    with EpisodeStore(config.serving.episodes_db) as store, store.export_lock(target, mode):
        # Episodes (or feedback) that arrive during this run go into the next one: a run's work is bounded.
        until = store.last_key(mode)
        while True:
            part = store.pending_export_part(target, mode)
            part_fmt: str = fmt
            if part is not None:
                # A part whose upload was never confirmed: redo exactly its range, under its name, in the
                # format that name says (rl_export.format may have changed since).
                log.info("resuming unconfirmed part %s", part.name)
                episodes = store.episodes_between(mode, part.first_key, part.last_key)
                part_fmt = part.name.rsplit(".", 1)[-1]
            else:
                episodes = store.episodes_after(mode, store.export_watermark(target, mode), part_rows, until)
                if not episodes:
                    break
                first, last = _key(episodes[0], mode), _key(episodes[-1], mode)
                part = store.begin_export_part(target, mode, first, last, part_name(mode, first, last, fmt))
            data = encode_part([episode_record(ep) for ep in episodes], part_fmt)
            sink.write(part.name, data, CONTENT_TYPES[part_fmt])
            store.finish_export_part(part)
            exported += len(episodes)
            parts.append(part.name)
            log.info("exported %d episodes as %s to %s", len(episodes), part.name, redact_uri(target))
    return {"exported": exported, "parts": parts, "target": redact_uri(target)}  # printed and put in artifacts
