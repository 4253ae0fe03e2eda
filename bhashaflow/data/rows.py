"""The rows of one batch and their verdicts, collected as they are read; what validation hands on.

`CollectedRows` only collects: whoever checks a row passes its verdict to `add`, and the text checks'
rejections to `finish`. It calls no checks itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from bhashaflow.core.records import ACCEPTED_SCHEMA, Pair, Position, RawRecord, Rejection


class Skip:
    """A row counted but neither kept nor rejected: of a direction not configured, or skipped by its connector."""

    __slots__ = ("direction", "reason")

    def __init__(self, direction: str, reason: str = "unconfigured_direction") -> None:
        self.direction = direction
        self.reason = reason


# A row that passed the structure checks, as the text checks take it: (src, tgt, src_lang, tgt_lang).
Candidate = tuple[str, str, str, str]


@dataclass
class CheckedBatch:
    """The outcome of validating a batch of rows, in row order within each part."""

    accepted: pa.Table = field(default_factory=ACCEPTED_SCHEMA.empty_table)
    rejections: list[tuple[RawRecord, Rejection]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # the direction of each row of an unconfigured direction
    skip_reasons: list[str] = field(default_factory=list)  # why each skipped row was skipped (SKIP_REASONS)

    @property
    def pairs(self) -> list[Pair]:
        return [Pair(**row) for row in self.accepted.to_pylist()]


class CollectedRows:
    """Rows of one batch with the verdicts of their structure checks, added one at a time.

    Only what the text checks need is kept of a candidate (a row that passed): its texts, languages, ref,
    row and position, not the record. Records then die young, so a batch of tens of thousands of rows
    neither holds their memory nor keeps the garbage collector busy. Candidate `j` is the j-th one added.
    """

    def __init__(self) -> None:
        self.size = 0  # rows added
        self.last_position: Position | None = None
        self.cand: list[int] = []  # index of each candidate row, in order
        self.texts: dict[str, list[str]] = {"src": [], "tgt": []}
        self.langs: dict[str, list[str]] = {"src_lang": [], "tgt_lang": []}
        self.refs: list[str] = []
        self._rows: list[Any] = []
        self._positions: list[Position] = []
        self._extras: dict[int, tuple[str | None, str | None]] = {}  # a candidate's error and raw, when set
        self._rejections: list[tuple[int, RawRecord, Rejection]] = []  # (row index, record, why)
        self._skipped: list[str] = []
        self._skip_reasons: list[str] = []

    def add(self, record: RawRecord, verdict: Candidate | Rejection | Skip) -> None:
        """Keep one row with its structure verdict: a candidate for the text checks, a rejection or a skip."""
        index = self.size
        self.size += 1
        self.last_position = record.position
        if isinstance(verdict, tuple):
            src, tgt, src_lang, tgt_lang = verdict
            self.texts["src"].append(src)
            self.texts["tgt"].append(tgt)
            self.langs["src_lang"].append(src_lang)
            self.langs["tgt_lang"].append(tgt_lang)
            self.cand.append(index)
            self.refs.append(record.ref)
            self._rows.append(record.row)
            self._positions.append(record.position)
            if record.error is not None or record.raw is not None:
                self._extras[len(self.cand) - 1] = (record.error, record.raw)
        elif isinstance(verdict, Skip):
            if verdict.reason == "unconfigured_direction":
                self._skipped.append(verdict.direction)
            self._skip_reasons.append(verdict.reason)
        else:
            self._rejections.append((index, record, verdict))

    def row(self, j: int) -> Any:
        """Candidate `j`'s row as the source gave it."""
        return self._rows[j]

    def record(self, j: int) -> RawRecord:
        """Candidate `j` as the record it came in."""
        error, raw = self._extras.get(j, (None, None))
        return RawRecord(self._positions[j], self.refs[j], self._rows[j], error, raw)

    def finish(self, accepted: pa.Table, rejected: list[tuple[int, Rejection]]) -> CheckedBatch:
        """The batch's outcome, given the text checks' verdicts on the candidates: the pairs they accepted,
        and (candidate, why) for each they rejected. Every row added ends in exactly one part."""
        rejections = [*self._rejections, *((self.cand[j], self.record(j), why) for j, why in rejected)]
        rejections.sort(key=lambda item: item[0])
        return CheckedBatch(
            accepted=accepted,
            rejections=[(record, rejection) for _, record, rejection in rejections],
            skipped=self._skipped,
            skip_reasons=self._skip_reasons,
        )
