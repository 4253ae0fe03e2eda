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
    reason: str = "malformed"  # the rejection reason of an unparsed line (REJECT_REASONS, FEEDBACK_REJECT_REASONS)
    skip: str | None = None  # set by a connector for a row it counts but does not hand on, and why (SKIP_REASONS)


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
    rejected: str | None = None  # preference sources: the translation tgt was preferred over
    reward: float | None = None  # that translation's reward
    adapter_version: str | None = None  # the adapter version that produced it

    @property
    def direction(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"


# A Pair's columns in Parquet shards, in this order.
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
# What a preference source adds to a pair (tgt is then the preferred, "chosen" translation): the translation it
# was preferred over, that one's reward and the adapter version that produced it. Null for plain pairs.
PREFERENCE_FIELDS = [("rejected", pa.string()), ("reward", pa.float64()), ("adapter_version", pa.string())]
# Validated rows as staging keeps them: a pair and, for preference sources, what it was preferred over.
ACCEPTED_SCHEMA = pa.schema([*PAIR_SCHEMA, *(pa.field(name, kind) for name, kind in PREFERENCE_FIELDS)])
# A preference triplet's columns in the preference shards (prompt = src, chosen = tgt, rejected).
PREFERENCE_SCHEMA = ACCEPTED_SCHEMA


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
# Reasons only an rl_logs source gives (its corrections are checked against the text they translate).
FEEDBACK_REJECT_REASONS = ("length_ratio",)  # a correction far longer or shorter than the text it translates

SKIP_REASONS = (
    "unconfigured_direction",  # a row of a direction the config does not train
    "no_correction",  # an RL log episode without a correction: nothing to learn a translation from
    "correction_equals_output",  # the correction repeats what the adapter said: no new information
    "untrusted_client",  # feedback from a client the rl_logs source does not trust
    "superseded",  # an RL log record of an episode exported again later with newer feedback
)
