"""The `rl_logs` source: the parts `export-rl-logs` wrote, read back as training pairs and preference triplets.

Every record is one served episode (the schema in docs/rl-logs.md). An episode with a correction the source
trusts becomes a row `{src: prompt, tgt: correction, src_lang, tgt_lang, rejected: response, reward,
adapter_version}`: a pair (source text -> correction) and a preference triplet (the correction preferred over
what the adapter served). Every other episode is counted as skipped with its reason, never dropped silently:

- `untrusted_client`: its feedback came from a client not in `trusted_clients` (`anonymous` and unattributed
  feedback included, unless listed; `*` trusts every attributed client),
- `no_correction`: no correction (a reward alone teaches no translation),
- `correction_equals_output`: the correction repeats the served output,
- `superseded`: a later record of the same episode (feedback replaced, exported again) takes its place.

Rewards without corrections can still make a preference: per direction and prompt, the highest-rewarded output is
preferred over the lowest when their rewards differ by at least `reward_margin`; the lower episode's record carries
that pair (src -> the better output, rejected = its own output), the others stay `no_correction` skips.

A line that is not JSON, or a record without a prompt, is rejected by name (`part:line`) into the quarantine.
Parts are read in name order (their names sort in export order) from a folder, an S3 prefix or any fsspec URL,
jsonl or parquet, plain or gzip; the position `{part, line}` (or `{part, row}`) resumes inside a part, and its
`until` (the last part when reading began) keeps a resumed read to the parts the first one saw.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bhashaflow.config import RlLogsSource, SourceRetryConfig
from bhashaflow.core.records import Position, RawRecord
from bhashaflow.core.redact import redact_uri
from bhashaflow.core.settings import Settings
from connectors.base import SourceError
from connectors.files import FileSource, FileStore
from connectors.formats import FormatError, iter_parquet_records, iter_text_records, mark_last, sniff_gzip

_PART_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
# Fields a record must carry to be used; a missing one is a rejection naming the part and line.
_REQUIRED = ("prompt", "src_lang", "tgt_lang")


def part_names(store: FileStore, folder: str, source_name: str) -> list[str]:
    """The export parts in `folder`, sorted (the export's order): jsonl, jsonl.gz and parquet files."""
    if folder.lower().startswith(("http://", "https://")):
        raise SourceError(
            f"source {source_name!r}: {redact_uri(folder)} cannot be listed; read the parts from the folder or the "
            "s3:// prefix the export wrote (an http(s) export target is another service's store)"
        )
    listed = store.list_files(folder, recursive=False)
    return sorted(name for name in listed if name.lower().endswith(_PART_SUFFIXES))


class RlLogsConnector(FileSource):
    """Rows of trusted, corrected episodes from exported RL log parts; other episodes are counted skips."""

    def __init__(self, source: RlLogsSource, settings: Settings, retry: SourceRetryConfig | None = None) -> None:
        """Check the config; nothing is contacted until `iter_records`."""
        if not source.trusted_clients:
            raise SourceError(f"source {source.name!r}: kind rl_logs needs 'trusted_clients'")
        super().__init__(source, settings, retry)
        self.folder = self.uri.rstrip("/")
        self.trusted = frozenset(source.trusted_clients)
        self.reward_margin = source.reward_pair_margin

    def iter_records(self, start: Position | None = None) -> Iterator[RawRecord]:
        """Yield every record after `start` (from the first part when None), each with its resume position."""
        if start is not None and not isinstance(start.get("part"), str):
            raise SourceError(f"source {self.name!r}: {start!r} is not a position of an rl_logs source")
        with self.stores() as stores:
            store = stores.for_uri(self.folder)
            surveyed: list[tuple[list[str], _Survey]] = []
            current = [redact_uri(self.folder)]

            def read_from(position: Position | None) -> Iterator[RawRecord]:
                if not surveyed:
                    parts = part_names(store, self.folder, self.name)
                    until = (start or {}).get("until")
                    if until is not None:  # the parts there were when this source's staging began
                        parts = [name for name in parts if name <= until]
                    try:
                        surveyed.append((parts, self._survey(store, parts, current)))
                    except FormatError as exc:
                        raise SourceError(f"source {self.name!r}: {current[0]}: {exc}") from None
                yield from mark_last(self._read(store, *surveyed[0], position, current))

            yield from self.retried(read_from, start, what=lambda: f"source {self.name!r}: reading {current[0]}")

    def _read(
        self, store: FileStore, parts: list[str], survey: _Survey, position: Position | None, current: list[str]
    ) -> Iterator[RawRecord]:
        position = position or {}
        if position.get("done"):
            return
        after = position.get("part")
        for name in parts:
            if after is not None and name < after:
                continue
            resume = position if name == after else {}
            current[0] = redact_uri(f"{self.folder}/{name}")
            try:
                for record in self._part_records(store, name, resume, parts[-1]):
                    yield self._classify(record, survey)
            except FormatError as exc:
                raise SourceError(f"source {self.name!r}: {current[0]}: {exc}") from None

    def _part_records(self, store: FileStore, name: str, resume: Position, until: str) -> Iterator[RawRecord]:
        uri = f"{self.folder}/{name}"
        base = {"part": name, "until": until}
        if name.lower().endswith(".parquet"):
            data = b"".join(store.chunks(uri, 0))  # a part is at most a few hundred records
            yield from iter_parquet_records(io.BytesIO(data), name, base=base, start_row=resume.get("row", 0))
            return
        line, offset = resume.get("line", 0), resume.get("offset")
        if offset:
            yield from iter_text_records(store.chunks(uri, offset), "jsonl", name, base=base, line=line, offset=offset)
            return
        gzipped, chunks = sniff_gzip(store.chunks(uri, 0), named_gz=name.lower().endswith(".gz"))
        yield from iter_text_records(chunks, "jsonl", name, base=base, offset=None if gzipped else 0, skip_to_line=line)

    def _survey(self, store: FileStore, parts: list[str], current: list[str]) -> _Survey:
        """One pass over the parts before reading them: superseded records and reward pairs (see _Survey)."""
        seen: dict[int, int] = {}
        repeated: set[int] = set()
        rated: dict[
            int, tuple[int, tuple[str, str], float, str]
        ] = {}  # episode -> (seq, (direction, prompt), reward, response)
        for name in parts:
            current[0] = redact_uri(f"{self.folder}/{name}")
            for record in self._part_records(store, name, {}, parts[-1]):
                row = record.row
                if not isinstance(row, dict) or not isinstance(row.get("episode_id"), int):
                    continue
                episode, seq = row["episode_id"], row.get("feedback_seq") or 0
                if episode in seen:
                    repeated.add(episode)
                seen[episode] = max(seq, seen.get(episode, seq))
                if self._rated_only(row) and seq >= rated.get(episode, (-1,))[0]:
                    rated[episode] = (seq, (row["direction"], row["prompt"]), float(row["reward"]), row["response"])
        return _Survey({e: seen[e] for e in repeated}, self._reward_pairs(rated))

    def _rated_only(self, row: dict[str, Any]) -> bool:
        """A trusted reward without a correction, on a served output: material for a reward pair."""
        reward, correction = row.get("reward"), row.get("correction")
        return (
            isinstance(reward, int | float)
            and not isinstance(reward, bool)
            and not (isinstance(correction, str) and correction.strip())
            and isinstance(row.get("response"), str)
            and bool(row["response"].strip())
            and isinstance(row.get("prompt"), str)
            and isinstance(row.get("direction"), str)
            and self._trusts(row.get("feedback_client"))
        )

    def _reward_pairs(self, rated: dict[int, tuple[int, tuple[str, str], float, str]]) -> dict[int, str]:
        """Per prompt, the highest-rewarded output preferred over the lowest when their rewards differ by at least
        `reward_margin`: the lower episode's id -> the preferred output."""
        groups: dict[tuple[str, str], list[tuple[float, int, str]]] = {}
        for episode, (_, key, reward, response) in rated.items():
            groups.setdefault(key, []).append((reward, episode, response))
        pairs: dict[int, str] = {}
        for entries in groups.values():
            best = max(entries, key=lambda e: (e[0], -e[1]))
            worst = min(entries, key=lambda e: (e[0], e[1]))
            if best[0] - worst[0] >= self.reward_margin and best[2].strip() != worst[2].strip():
                pairs[worst[1]] = best[2]
        return pairs

    def _classify(self, record: RawRecord, survey: _Survey) -> RawRecord:
        """The record as validation takes it: a training row, a counted skip, or a rejection naming the field."""
        row = record.row
        if row is None:
            return record  # an unparsed line: rejected with the parser's reason
        if not isinstance(row, dict):
            return _rejected(record, "malformed", f"{record.ref}: a record must be a JSON object")
        for name in _REQUIRED:
            if not isinstance(row.get(name), str):
                missing = "missing" if row.get(name) is None else f"not a string ({type(row[name]).__name__})"
                return _rejected(record, "missing_field", f"{record.ref}: field {name!r} is {missing}")
        skip = self._skip_reason(row, survey.latest)
        chosen = row.get("correction")
        if skip == "no_correction" and row.get("episode_id") in survey.reward_pairs:
            skip, chosen = None, survey.reward_pairs[row["episode_id"]]  # a better-rated output of the same prompt
        out = {
            "src": row["prompt"],
            "tgt": chosen,
            "src_lang": row["src_lang"],
            "tgt_lang": row["tgt_lang"],
            "rejected": row.get("response"),
            "reward": row.get("reward"),
            "adapter_version": row.get("adapter_version"),
            "episode_id": row.get("episode_id"),
        }
        return RawRecord(record.position, record.ref, row=out, skip=skip)

    def _skip_reason(self, row: dict[str, Any], latest: dict[int, int]) -> str | None:
        episode = row.get("episode_id")
        if isinstance(episode, int) and episode in latest and (row.get("feedback_seq") or 0) < latest[episode]:
            return "superseded"
        correction = row.get("correction")
        if not isinstance(correction, str) or not correction.strip():
            return "no_correction"
        if not self._trusts(row.get("feedback_client")):
            return "untrusted_client"
        if correction.strip() == (row.get("response") or "").strip():
            return "correction_equals_output"
        return None

    def _trusts(self, client: Any) -> bool:
        if not isinstance(client, str):
            return False  # unattributed feedback (from before clients were recorded)
        if client in self.trusted:
            return True
        return "*" in self.trusted and client != "anonymous"


@dataclass(frozen=True)
class _Survey:
    """What reading every part first tells: for episodes exported more than once, the highest feedback_seq
    (older records are `superseded`); and reward pairs: among trusted rewards without a correction, per
    direction and prompt, the lowest-rewarded episode -> the highest-rewarded output, preferred over it."""

    latest: dict[int, int]
    reward_pairs: dict[int, str]


def _rejected(record: RawRecord, reason: str, error: str) -> RawRecord:
    raw = json.dumps(record.row, ensure_ascii=False, default=str)[:2000]
    return RawRecord(record.position, record.ref, row=None, error=error, raw=raw, reason=reason)
