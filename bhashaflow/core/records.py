"""The records that flow through ingestion: raw rows from a source, accepted pairs, rejections."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa


class SourceError(RuntimeError):
    """A source that cannot be read (unreachable, missing, refused); the message names the source."""


# A resumable position inside a source, JSON-serialisable; its shape belongs to the connector.
Position = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One line or record taken from a source, parsed or not.

    `position` is where reading resumes to get the record *after* this one, so a consumer that has
    handled this record can checkpoint `position` and later pass it back as `start`.
    """

    position: Position
    ref: str  # human-readable location, e.g. "pairs.jsonl:17" or "point 42"
    row: Mapping[str, Any] | None = None  # the parsed row; None when the line could not be parsed
    error: str | None = None  # why the line could not be parsed
    raw: str | None = None  # the raw line (truncated) when unparsed, for the quarantine
    reason: str = "malformed"  # the rejection reason of an unparsed line (invalid_utf8 or malformed)


class RecordSource(Protocol):
    """The one streaming shape of every source: its rows, resumable from a position reported with each."""

    name: str

    def iter_records(self, start: Position | None = None) -> Iterator[RawRecord]:
        """Yield every row after `start` (from the beginning when None), each with its resume position."""
        ...


@dataclass(frozen=True, slots=True)
class Pair:
    """A validated sentence pair."""

    src: str
    tgt: str
    src_lang: str
    tgt_lang: str
    source: str
    id: str

    @property
    def direction(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"


# A Pair's columns in staged parts and Parquet shards, in this order.
PAIR_SCHEMA = pa.schema(
    [
        ("src", pa.string()),
        ("tgt", pa.string()),
        ("src_lang", pa.string()),
        ("tgt_lang", pa.string()),
        ("source", pa.string()),
        ("id", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A row refused by validation, kept in the quarantine with its reason."""

    source: str
    ref: str
    reason: str  # one of REJECT_REASONS
    detail: str
    row: Mapping[str, Any] | None = field(default=None)
    raw: str | None = None


REJECT_REASONS = (
    "malformed",  # the line or record could not be parsed as a row (bad JSON, not an object, wrong TSV columns)
    "invalid_utf8",  # undecodable bytes in the line, or a lone surrogate (a JSON escape) that UTF-8 cannot hold
    "missing_field",  # a required field is absent or null
    "not_a_string",  # a field is not a string
    "control_character",  # a sentence holds a C0/C1 control (NUL, ESC...) or a bidi override, embedding or isolate
    "empty",  # a sentence is empty after normalisation
    "too_long",  # a sentence is over ingest.max_chars
    "unknown_language",  # a language code is not a FLORES-200 code
    "wrong_script",  # a sentence is not mostly in its language's script
)
