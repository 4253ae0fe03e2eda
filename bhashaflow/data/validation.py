"""Turn a source's raw rows into validated pairs, rejections with a reason, or skips: the row checks.

A row's structure (fields, types, languages, direction) is checked as it is read, by `Validator.check_structure`;
the text checks (`bhashaflow.data.text`) then run on a whole batch's candidates at once, by
`Validator.check_texts`. Both only return verdicts: a batch's rows and verdicts are collected by
`bhashaflow.data.rows.CollectedRows`, and `RowBatch` is the one place that passes the ones to the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from bhashaflow.config import SourceConfig
from bhashaflow.core.languages import LANGUAGES
from bhashaflow.core.records import ACCEPTED_SCHEMA, PREFERENCE_FIELDS, Pair, Position, RawRecord, Rejection
from bhashaflow.data.keys import pair_key, pair_keys
from bhashaflow.data.rows import Candidate, CheckedBatch, CollectedRows, Skip
from bhashaflow.data.text import (
    _CONTROL_RE2,
    TextChecks,
    check_column,
    is_control,
    normalize_text,
    normalize_texts,
)

# Names other modules and tests import from here, from before the text checks and the rows had modules.
_normalize = normalize_texts
_check_column = check_column
__all__ = [
    "_CONTROL_RE2",
    "Candidate",
    "CheckedBatch",
    "CollectedRows",
    "RowBatch",
    "Skip",
    "TextVerdicts",
    "Validator",
    "_check_column",
    "_normalize",
    "field_value",
    "normalize_text",
    "normalize_texts",
    "pair_key",
    "pair_keys",
]


def field_value(row: Any, column: str) -> Any:
    """`row`'s value for a configured column: the key itself, else, for a dotted path (`translation.en`), the
    value nested under it; None when absent."""
    value = row.get(column)
    if value is not None or "." not in column:
        return value
    node = row
    for key in column.split("."):
        if not hasattr(node, "get"):
            return None
        node = node.get(key)
    return node


def _missing(row: Any, column: str, part: str) -> str:
    """Why a column holds nothing, naming the path and, for a nested one, where the path ends."""
    detail = f"field {column!r} ({part}) is missing"
    if "." not in column or column in row:
        return detail
    node, walked = row, list[str]()
    for key in column.split("."):
        if not hasattr(node, "get"):
            return f"{detail}: {'.'.join(walked)!r} is {type(node).__name__}, not an object"
        walked.append(key)
        if node.get(key) is None:
            if key in node:
                return f"{detail}: {'.'.join(walked)!r} is null"
            where = f"under {'.'.join(walked[:-1])!r}" if len(walked) > 1 else "in the row"
            return f"{detail}: no {key!r} {where}"
        node = node.get(key)
    return detail


@dataclass
class TextVerdicts:
    """The text checks' verdicts on a batch's candidates."""

    accepted: pa.Table  # the candidates that passed, normalised, in order
    rejected: list[tuple[int, Rejection]]  # (candidate, why) of the others


@dataclass
class _Candidates:
    """The candidates the text checks look at: `index[i]` is the i-th one's number in the batch."""

    index: list[int]
    texts: dict[str, list[str]]
    langs: dict[str, list[str]]
    arrays: dict[str, pa.Array]  # `texts` as Arrow arrays


class Validator:
    """Checks the rows of one source against the ingest rules.

    Args:
        source: the source's config (column names and fixed languages).
        directions: the configured directions; rows for others are skipped.
        max_chars: longest accepted sentence.
        min_script_fraction: least share of letters in the language's script.
    """

    def __init__(
        self, source: SourceConfig, directions: Sequence[str], max_chars: int, min_script_fraction: float
    ) -> None:
        self.source = source
        self.directions = frozenset(directions)
        self.max_chars = max_chars
        self.min_script_fraction = min_script_fraction
        f = source.fields
        self._text_fields = (("src", f.src), ("tgt", f.tgt))
        self._lang_fields = (("src_lang", f.src_lang), ("tgt_lang", f.tgt_lang))
        self._columns = (f.src, f.tgt, f.src_lang, f.tgt_lang)
        self._nested = any("." in column for column in self._columns)  # dotted paths: no dict.get fast path
        self._length_ratio = source.length_ratio_limit if source.kind == "rl_logs" else None
        # Language values already seen to name a configured direction, so most rows skip the full check.
        self._known_langs: dict[tuple[str, str], tuple[str, str]] = {}
        self._fixed_langs: tuple[str, str] | None = None
        if source.langs is not None and f"{source.langs.src}-{source.langs.tgt}" in self.directions:
            if source.langs.src in LANGUAGES and source.langs.tgt in LANGUAGES:
                self._fixed_langs = (source.langs.src, source.langs.tgt)

    def direction_hint(self, record: RawRecord) -> str | None:
        """The direction a row claims, when it can be told, for per-direction reject counts."""
        if self.source.langs is not None:
            return f"{self.source.langs.src}-{self.source.langs.tgt}"
        row = record.row
        if row is None or not hasattr(row, "get"):
            return None
        src_lang = field_value(row, self.source.fields.src_lang)
        tgt_lang = field_value(row, self.source.fields.tgt_lang)
        if isinstance(src_lang, str) and isinstance(tgt_lang, str):
            return f"{src_lang.strip()}-{tgt_lang.strip()}"
        return None

    def check(self, record: RawRecord) -> Pair | Rejection | Skip:
        """Validate one row (the batch path with a batch of one)."""
        out = self.check_batch([record])
        if out.accepted.num_rows:
            return out.pairs[0]
        if out.rejections:
            return out.rejections[0][1]
        return Skip(out.skipped[0])

    def check_batch(self, records: Iterable[RawRecord]) -> CheckedBatch:
        """Validate rows; every row ends in exactly one of pairs, rejections or skipped."""
        rows = self.new_batch()
        for record in records:
            rows.add(record)
        return rows.check()

    def new_batch(self) -> RowBatch:
        """An empty batch to `add` rows to one at a time, then `check`; what `check_batch` does in steps."""
        return RowBatch(self)

    def check_structure(self, record: RawRecord) -> Candidate | Rejection | Skip:
        """Check a row's structure as it is read: its texts and languages for the text checks, or why not."""
        if record.skip is not None:
            return Skip(self.direction_hint(record) or "", record.skip)
        verdict = self._check_structure(record)
        if self._length_ratio is not None and isinstance(verdict, tuple):
            short, long = sorted((len(verdict[0]), len(verdict[1])))
            # Smoothed by 5 characters: "Hi." -> "नमस्ते।" is no absurd ratio.
            if (long + 5) / (short + 5) > self._length_ratio:
                detail = (
                    f"correction of {len(verdict[1])} characters for a text of {len(verdict[0])} "
                    f"(limit x{self._length_ratio:g})"
                )
                return self._reject(record, "length_ratio", detail)
        return verdict

    def _check_structure(self, record: RawRecord) -> Candidate | Rejection | Skip:
        row = record.row
        # Fast path: a dict with string fields for a direction seen before; anything else gets the full check.
        # Lone surrogates are looked for once per batch, in `check_texts`.
        if type(row) is dict and not self._nested:
            src_column, tgt_column, src_lang_column, tgt_lang_column = self._columns
            codes = self._fixed_langs
            if codes is None:
                src_lang, tgt_lang = row.get(src_lang_column), row.get(tgt_lang_column)
                if type(src_lang) is str and type(tgt_lang) is str:
                    codes = self._known_langs.get((src_lang, tgt_lang))
            if codes is not None:
                src, tgt = row.get(src_column), row.get(tgt_column)
                if type(src) is str and type(tgt) is str:
                    return (src, tgt, codes[0], codes[1])
        if row is None:
            return self._reject(record, record.reason, record.error or "could not be parsed")
        if not hasattr(row, "get"):
            return self._reject(record, "malformed", "record is not an object")
        langs = self._direction_of(record, row)
        if not isinstance(langs, tuple):
            return langs
        texts = self._texts_of(record, row)
        if not isinstance(texts, tuple):
            return texts
        return (texts[0], texts[1], langs[0], langs[1])

    def _direction_of(self, record: RawRecord, row: Any) -> tuple[str, str] | Rejection | Skip:
        """A row's language codes when they name a configured direction."""
        raw_langs: tuple[Any, Any] | None = None
        if self.source.langs is not None:
            src_lang, tgt_lang = self.source.langs.src, self.source.langs.tgt
        else:
            found = []
            for part, column in self._lang_fields:
                value = self._string_field(record, row, part, column)
                if isinstance(value, Rejection):
                    return value
                found.append(value.strip())
            src_lang, tgt_lang = found
            raw_langs = (field_value(row, self._lang_fields[0][1]), field_value(row, self._lang_fields[1][1]))
        for part, code in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
            if code not in LANGUAGES:
                return self._reject(record, "unknown_language", f"{part} {code[:40]!r} is not a FLORES-200 code")
        direction = f"{src_lang}-{tgt_lang}"
        if direction not in self.directions:
            return Skip(direction)
        if raw_langs is not None and type(raw_langs[0]) is str and type(raw_langs[1]) is str:
            if len(self._known_langs) < 4096:  # bounded: only odd spellings (stray spaces) add entries
                self._known_langs[raw_langs] = (src_lang, tgt_lang)
        return src_lang, tgt_lang

    def _texts_of(self, record: RawRecord, row: Any) -> tuple[str, str] | Rejection:
        """A row's source and target text, when both are strings UTF-8 can hold."""
        values = []
        for part, column in self._text_fields:
            value = self._string_field(record, row, part, column)
            if isinstance(value, Rejection):
                return value
            problem = self._surrogate(part, column, value)
            if problem:
                return self._reject(record, "invalid_utf8", problem)
            values.append(value)
        return values[0], values[1]

    def _string_field(self, record: RawRecord, row: Any, part: str, column: str) -> str | Rejection:
        value = field_value(row, column)
        if value is None:
            return self._reject(record, "missing_field", _missing(row, column, part))
        if not isinstance(value, str):
            return self._reject(record, "not_a_string", f"field {column!r} ({part}) is {type(value).__name__}")
        return value

    @staticmethod
    def _surrogate(part: str, column: str, value: str) -> str | None:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"field {column!r} ({part}) holds a lone surrogate"
        return None

    def check_texts(self, rows: CollectedRows) -> TextVerdicts:
        """The text checks of a batch's candidates (`rows` is only read)."""
        candidates, rejected = self._candidate_texts(rows)
        if not candidates.index:
            return TextVerdicts(ACCEPTED_SCHEMA.empty_table(), rejected)
        columns = {
            part: check_column(candidates.arrays[part], candidates.texts[part], candidates.langs[f"{part}_lang"])
            for part in ("src", "tgt")
        }
        failed, checks = self._first_failures(columns)
        for i in np.flatnonzero(failed >= 0).tolist():
            _, part, reason = checks[failed[i]]
            j = candidates.index[i]
            detail = self._detail(reason, part, candidates, columns[part], i)
            rejected.append((j, self._reject(rows.record(j), reason, detail)))
        passed = np.flatnonzero(failed == -1)
        norm = {part: columns[part].norm.take(pa.array(passed)) for part in columns}
        return TextVerdicts(self._accepted(rows, [candidates.index[i] for i in passed.tolist()], norm), rejected)

    def _candidate_texts(self, rows: CollectedRows) -> tuple[_Candidates, list[tuple[int, Rejection]]]:
        """The candidates' texts, also as Arrow arrays; those with a lone surrogate (which UTF-8 cannot hold)
        are rejected instead."""
        try:
            arrays = {part: pa.array(rows.texts[part], pa.string()) for part in ("src", "tgt")}
            return _Candidates(list(range(len(rows.cand))), rows.texts, rows.langs, arrays), []
        except UnicodeEncodeError:
            pass
        keep, rejected = [], []
        for j in range(len(rows.cand)):
            problem = None
            for part, column in self._text_fields:
                problem = self._surrogate(part, column, rows.texts[part][j])
                if problem:
                    rejected.append((j, self._reject(rows.record(j), "invalid_utf8", problem)))
                    break
            if problem is None:
                keep.append(j)
        texts = {part: [rows.texts[part][j] for j in keep] for part in ("src", "tgt")}
        langs = {part: [rows.langs[part][j] for j in keep] for part in ("src_lang", "tgt_lang")}
        arrays = {part: pa.array(texts[part], pa.string()) for part in ("src", "tgt")}
        return _Candidates(keep, texts, langs, arrays), rejected

    def _first_failures(self, columns: dict[str, TextChecks]) -> tuple[np.ndarray, list[tuple[np.ndarray, str, str]]]:
        """Per candidate, the first rule it fails (an index into the rules returned with it), or -1."""
        checks: list[tuple[np.ndarray, str, str]] = []  # (failing rows, part, reason), in rule order
        for part, c in columns.items():
            checks.append((c.control, part, "control_character"))
            checks.append((c.length == 0, part, "empty"))
            checks.append((c.length > self.max_chars, part, "too_long"))
        for part, c in columns.items():
            checks.append((c.share < self.min_script_fraction, part, "wrong_script"))
        failed = np.full(len(columns["src"].length), -1)
        for k, (mask, _, _) in enumerate(checks):
            failed[(failed == -1) & mask] = k
        return failed, checks

    def _detail(self, reason: str, part: str, candidates: _Candidates, column: TextChecks, i: int) -> str:
        """What is wrong with candidate `i`'s text `part`, naming the field (or, for its script, the language)."""
        name = dict(self._text_fields)[part]
        if reason == "control_character":
            bad = next(ch for ch in candidates.texts[part][i] if is_control(ch))
            return f"field {name!r} ({part}) holds control character U+{ord(bad):04X}"
        if reason == "empty":
            return f"field {name!r} ({part}) is empty"
        if reason == "too_long":
            return f"field {name!r} ({part}) has {column.length[i]} characters > {self.max_chars}"
        lang = candidates.langs[f"{part}_lang"][i]
        return f"{part} is {column.share[i]:.0%} in the script of {lang} (< {self.min_script_fraction:.0%})"

    def _accepted(self, rows: CollectedRows, kept: list[int], norm: dict[str, pa.Array]) -> pa.Table:
        """The table of the candidates `kept`, whose normalised texts are `norm`."""
        prefix = f"{self.source.name}:"
        return pa.table(
            {
                "src": norm["src"],
                "tgt": norm["tgt"],
                "src_lang": pa.array([rows.langs["src_lang"][j] for j in kept], pa.string()),
                "tgt_lang": pa.array([rows.langs["tgt_lang"][j] for j in kept], pa.string()),
                "source": pa.array([self.source.name] * len(kept), pa.string()),
                "id": pa.array([prefix + rows.refs[j] for j in kept], pa.string()),
                **self._preference_columns(rows, kept),
            },
            schema=ACCEPTED_SCHEMA,
        )

    def _preference_columns(self, rows: CollectedRows, kept: list[int]) -> dict[str, pa.Array]:
        """rejected, reward, adapter_version of the kept rows: from a preference source's rows, else nulls."""
        if self.source.kind != "rl_logs":
            return {name: pa.nulls(len(kept), kind) for name, kind in PREFERENCE_FIELDS}
        return {name: pa.array([rows.row(j).get(name) for j in kept], kind) for name, kind in PREFERENCE_FIELDS}

    def _reject(self, record: RawRecord, reason: str, detail: str) -> Rejection:
        return Rejection(
            source=self.source.name, ref=record.ref, reason=reason, detail=detail, row=record.row, raw=record.raw
        )


class RowBatch:
    """Rows of one batch, checked as they are added, then together by `check`: the validator's verdicts go
    into a passive `CollectedRows` here, and nowhere else."""

    def __init__(self, validator: Validator) -> None:
        self.validator = validator
        self.rows = CollectedRows()
        self._check_row = validator.check_structure  # bound once: `add` runs for every row

    @property
    def size(self) -> int:
        """Rows added."""
        return self.rows.size

    @property
    def last_position(self) -> Position | None:
        """The position of the last row added."""
        return self.rows.last_position

    def add(self, record: RawRecord) -> None:
        """Take one row: a rejection or skip now, or a candidate for the text checks."""
        self.rows.add(record, self._check_row(record))

    def check(self) -> CheckedBatch:
        """Run the text checks; every row added ends in exactly one of pairs, rejections or skipped."""
        verdicts = self.validator.check_texts(self.rows)
        return self.rows.finish(verdicts.accepted, verdicts.rejected)
