"""Turn a source's raw rows into validated pairs, rejections with a reason, or skips.

Rows are checked a batch at a time: structure in Python, text (normalisation, length, script) in
vectorised pyarrow compute kernels, so validation keeps up with streaming sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bhashaflow.config import SourceConfig
from bhashaflow.languages import LANGUAGES, script_regexes
from bhashaflow.records import Pair, RawRecord, Rejection

# Whitespace other than the plain space (RE2's \s is ASCII-only), and C0/C1 controls other than tab,
# newline and return: NUL bytes and friends mean a broken export, not text.
_OTHER_SPACE_RE2 = r"[\t\n\r\x0b\x0c\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
_CONTROL_RE2 = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"


def _on_subset(texts: pa.Array, mask: np.ndarray, fn: Any) -> pa.Array:
    """Apply a kernel only to the rows in `mask` (most rows need no fixing) and put the results back."""
    if not mask.any():
        return texts
    fixed = fn(texts.take(pa.array(np.flatnonzero(mask))))
    return pc.replace_with_mask(texts, pa.array(mask), fixed)


def _fix_spaces(texts: pa.Array) -> pa.Array:
    return pc.replace_substring_regex(pc.replace_substring_regex(texts, _OTHER_SPACE_RE2, " "), "  +", " ")


def _normalize(texts: pa.Array) -> pa.Array:
    """NFC, other whitespace to spaces, runs of spaces collapsed, ends trimmed; kernels only where needed."""
    non_ascii = ~pc.string_is_ascii(texts).to_numpy(zero_copy_only=False)
    texts = _on_subset(texts, non_ascii, lambda t: pc.utf8_normalize(t, form="NFC"))
    messy = pc.match_substring_regex(texts, f"{_OTHER_SPACE_RE2}|  ").to_numpy(zero_copy_only=False)
    return pc.utf8_trim_whitespace(_on_subset(texts, messy, _fix_spaces))


def normalize_text(text: str) -> str:
    """Unicode NFC with runs of whitespace collapsed to one space and the ends stripped."""
    out: str = _normalize(pa.array([text], pa.string()))[0].as_py()
    return out


def pair_key(src: str, tgt: str, src_lang: str, tgt_lang: str) -> int:
    """A 64-bit fingerprint of a normalised pair, for exact de-duplication."""
    return _fingerprint(f"{src_lang}\x1f{tgt_lang}\x1f{src}\x1f{tgt}")


def pair_keys(pairs: pa.Table) -> pa.Array:
    """`pair_key` of every row of a table with the pair columns."""
    joined = pc.binary_join_element_wise(pairs["src_lang"], pairs["tgt_lang"], pairs["src"], pairs["tgt"], "\x1f")
    return pa.array([_fingerprint(text) for text in joined.to_pylist()], pa.uint64())


def _fingerprint(text: str) -> int:
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "little")


class Skip:
    """A row for a direction that is not configured: counted, neither kept nor rejected."""

    __slots__ = ("direction",)

    def __init__(self, direction: str) -> None:
        self.direction = direction


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


@dataclass
class CheckedBatch:
    """The outcome of validating a batch of rows, in row order within each part."""

    accepted: pa.Table = field(default_factory=PAIR_SCHEMA.empty_table)
    rejections: list[tuple[RawRecord, Rejection]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # the direction of each skipped row

    @property
    def pairs(self) -> list[Pair]:
        return [Pair(**row) for row in self.accepted.to_pylist()]


def _script_share(texts: pa.Array, langs: np.ndarray) -> np.ndarray:
    """Per row, the share of letters in the script of that row's language (1.0 without letters)."""
    share = np.ones(len(texts))
    for lang in np.unique(langs):
        patterns = script_regexes(str(lang))
        if patterns is None:
            continue
        idx = np.flatnonzero(langs == lang)
        subset = texts.take(pa.array(idx))
        length = pc.utf8_length(subset)
        # Counting by deleting runs is several times faster in RE2 than counting single matches.
        own, foreign = (
            pc.subtract(length, pc.utf8_length(pc.replace_substring_regex(subset, f"{p}+", ""))).to_numpy(
                zero_copy_only=False
            )
            for p in patterns
        )
        total = own + foreign
        share[idx] = np.where(total > 0, own / np.maximum(total, 1), 1.0)
    return share


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

    def direction_hint(self, record: RawRecord) -> str | None:
        """The direction a row claims, when it can be told, for per-direction reject counts."""
        if self.source.langs is not None:
            return f"{self.source.langs.src}-{self.source.langs.tgt}"
        row = record.row
        if row is None or not hasattr(row, "get"):
            return None
        src_lang, tgt_lang = row.get(self.source.fields.src_lang), row.get(self.source.fields.tgt_lang)
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

    def check_batch(self, records: Sequence[RawRecord]) -> CheckedBatch:
        """Validate rows; every row ends in exactly one of pairs, rejections or skipped."""
        out = CheckedBatch()
        cand: list[int] = []
        texts: dict[str, list[str]] = {"src": [], "tgt": []}
        langs: dict[str, list[str]] = {"src_lang": [], "tgt_lang": []}
        for i, record in enumerate(records):
            verdict = self._check_structure(record, texts, langs)
            if verdict is None:
                cand.append(i)
            elif isinstance(verdict, Skip):
                out.skipped.append(verdict.direction)
            else:
                out.rejections.append((record, verdict))
        if cand:
            out.accepted = self._check_texts(records, cand, texts, langs, out.rejections)
        if out.rejections and cand:
            position = {id(r): i for i, r in enumerate(records)}
            out.rejections.sort(key=lambda item: position[id(item[0])])
        return out

    def _check_structure(
        self, record: RawRecord, texts: dict[str, list[str]], langs: dict[str, list[str]]
    ) -> Rejection | Skip | None:
        row = record.row
        if row is None:
            return self._reject(record, "malformed", record.error or "could not be parsed")
        if not hasattr(row, "get"):
            return self._reject(record, "malformed", "record is not an object")
        if self.source.langs is not None:
            src_lang, tgt_lang = self.source.langs.src, self.source.langs.tgt
        else:
            found = []
            for part, column in self._lang_fields:
                value = row.get(column)
                if value is None:
                    return self._reject(record, "missing_field", f"field {column!r} ({part}) is missing")
                if not isinstance(value, str):
                    return self._reject(record, "not_a_string", f"field {column!r} ({part}) is {type(value).__name__}")
                found.append(value.strip())
            src_lang, tgt_lang = found
        for part, code in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
            if code not in LANGUAGES:
                return self._reject(record, "unknown_language", f"{part} {code[:40]!r} is not a FLORES-200 code")
        direction = f"{src_lang}-{tgt_lang}"
        if direction not in self.directions:
            return Skip(direction)
        values = []
        for part, column in self._text_fields:
            value = row.get(column)
            if value is None:
                return self._reject(record, "missing_field", f"field {column!r} ({part}) is missing")
            if not isinstance(value, str):
                return self._reject(record, "not_a_string", f"field {column!r} ({part}) is {type(value).__name__}")
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return self._reject(record, "malformed", f"field {column!r} ({part}) holds a lone surrogate")
            values.append(value)
        texts["src"].append(values[0])
        texts["tgt"].append(values[1])
        langs["src_lang"].append(src_lang)
        langs["tgt_lang"].append(tgt_lang)
        return None

    def _check_texts(
        self,
        records: Sequence[RawRecord],
        cand: list[int],
        texts: dict[str, list[str]],
        langs: dict[str, list[str]],
        rejections: list[tuple[RawRecord, Rejection]],
    ) -> pa.Table:
        """Vectorised text checks of the structurally sound rows; returns the accepted pairs."""
        n = len(cand)
        lang_arrays = {k: np.array(v, dtype=object) for k, v in langs.items()}
        norm: dict[str, pa.Array] = {}
        checks: list[tuple[np.ndarray, str, str]] = []  # (failing rows, part, reason), in rule order
        shares: dict[str, np.ndarray] = {}
        for part, lang_part in (("src", "src_lang"), ("tgt", "tgt_lang")):
            raw = pa.array(texts[part], pa.string())
            norm[part] = _normalize(raw)
            length = pc.utf8_length(norm[part]).to_numpy(zero_copy_only=False)
            checks.append((pc.match_substring_regex(raw, _CONTROL_RE2).to_numpy(zero_copy_only=False), part, "malformed"))
            checks.append((length == 0, part, "empty"))
            checks.append((length > self.max_chars, part, "too_long"))
            shares[part] = _script_share(norm[part], lang_arrays[lang_part])
        for part in ("src", "tgt"):
            checks.append((shares[part] < self.min_script_fraction, part, "wrong_script"))
        failed = np.full(n, -1)
        for k, (mask, _, _) in enumerate(checks):
            failed[(failed == -1) & mask] = k
        column_of = dict(self._text_fields)
        for j in np.flatnonzero(failed >= 0):
            _, part, reason = checks[failed[j]]
            record, name = records[cand[j]], column_of[part]
            if reason == "malformed":
                bad = next(ch for ch in texts[part][j] if _is_control(ch))
                detail = f"field {name!r} ({part}) holds control character U+{ord(bad):04X}"
            elif reason == "empty":
                detail = f"field {name!r} ({part}) is empty"
            elif reason == "too_long":
                length = len(norm[part][int(j)].as_py())
                detail = f"field {name!r} ({part}) has {length} characters > {self.max_chars}"
            else:
                lang = langs[f"{part}_lang"][j]
                detail = f"{part} is {shares[part][j]:.0%} in the script of {lang} (< {self.min_script_fraction:.0%})"
            rejections.append((record, self._reject(record, reason, detail)))
        ok = np.flatnonzero(failed == -1)
        take = pa.array(ok)
        prefix = f"{self.source.name}:"
        return pa.table(
            {
                "src": norm["src"].take(take),
                "tgt": norm["tgt"].take(take),
                "src_lang": pa.array(lang_arrays["src_lang"][ok], pa.string()),
                "tgt_lang": pa.array(lang_arrays["tgt_lang"][ok], pa.string()),
                "source": pa.array([self.source.name] * len(ok), pa.string()),
                "id": pa.array([prefix + records[cand[j]].ref for j in ok], pa.string()),
            },
            schema=PAIR_SCHEMA,
        )

    def _reject(self, record: RawRecord, reason: str, detail: str) -> Rejection:
        return Rejection(
            source=self.source.name, ref=record.ref, reason=reason, detail=detail, row=record.row, raw=record.raw
        )


def _is_control(ch: str) -> bool:
    o = ord(ch)
    return o <= 0x08 or o in (0x0B, 0x0C) or 0x0E <= o <= 0x1F or 0x7F <= o <= 0x9F
