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


def _normalize(texts: pa.Array) -> pa.Array:
    # Two cheap passes (rare matches) instead of one `\s+` pass that matches at every word.
    spaced = pc.replace_substring_regex(pc.utf8_normalize(texts, form="NFC"), _OTHER_SPACE_RE2, " ")
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(spaced, "  +", " "))


def normalize_text(text: str) -> str:
    """Unicode NFC with runs of whitespace collapsed to one space and the ends stripped."""
    out: str = _normalize(pa.array([text], pa.string()))[0].as_py()
    return out


def pair_key(src: str, tgt: str, src_lang: str, tgt_lang: str) -> int:
    """A 64-bit fingerprint of a normalised pair, for exact de-duplication."""
    h = blake2b(digest_size=8)
    h.update(f"{src_lang}\x1f{tgt_lang}\x1f{src}\x1f{tgt}".encode())
    return int.from_bytes(h.digest(), "little")


class Skip:
    """A row for a direction that is not configured: counted, neither kept nor rejected."""

    __slots__ = ("direction",)

    def __init__(self, direction: str) -> None:
        self.direction = direction


@dataclass
class CheckedBatch:
    """The outcome of validating a batch of rows, in row order within each list."""

    pairs: list[Pair] = field(default_factory=list)
    rejections: list[tuple[RawRecord, Rejection]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # the direction of each skipped row


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
        if out.pairs:
            return out.pairs[0]
        if out.rejections:
            return out.rejections[0][1]
        return Skip(out.skipped[0])

    def check_batch(self, records: Sequence[RawRecord]) -> CheckedBatch:
        """Validate rows; every row ends in exactly one of pairs, rejections or skipped."""
        out = CheckedBatch()
        verdicts: list[Pair | Rejection | Skip | None] = [None] * len(records)
        cand: list[int] = []
        texts: dict[str, list[str]] = {"src": [], "tgt": []}
        langs: dict[str, list[str]] = {"src_lang": [], "tgt_lang": []}
        for i, record in enumerate(records):
            structural = self._check_structure(record, texts, langs)
            if structural is None:
                cand.append(i)
            else:
                verdicts[i] = structural
        if cand:
            self._check_texts(records, cand, texts, langs, verdicts)
        for record, verdict in zip(records, verdicts, strict=True):
            if isinstance(verdict, Pair):
                out.pairs.append(verdict)
            elif isinstance(verdict, Skip):
                out.skipped.append(verdict.direction)
            elif isinstance(verdict, Rejection):
                out.rejections.append((record, verdict))
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
        verdicts: list[Pair | Rejection | Skip | None],
    ) -> None:
        cols: dict[str, dict[str, Any]] = {}
        for part, lang_part in (("src", "src_lang"), ("tgt", "tgt_lang")):
            raw = pa.array(texts[part], pa.string())
            norm = _normalize(raw)
            cols[part] = {
                "control": pc.match_substring_regex(raw, _CONTROL_RE2).to_numpy(zero_copy_only=False),
                "text": norm.to_pylist(),
                "length": pc.utf8_length(norm).to_numpy(zero_copy_only=False),
                "share": _script_share(norm, np.array(langs[lang_part], dtype=object)),
            }
        column_of = dict(self._text_fields)
        for j, i in enumerate(cand):
            record = records[i]
            verdict: Pair | Rejection | None = None
            for part in ("src", "tgt"):
                c, name = cols[part], column_of[part]
                if c["control"][j]:
                    bad = next(ch for ch in texts[part][j] if _is_control(ch))
                    verdict = self._reject(
                        record, "malformed", f"field {name!r} ({part}) holds control character U+{ord(bad):04X}"
                    )
                elif c["length"][j] == 0:
                    verdict = self._reject(record, "empty", f"field {name!r} ({part}) is empty")
                elif c["length"][j] > self.max_chars:
                    verdict = self._reject(
                        record, "too_long", f"field {name!r} ({part}) has {c['length'][j]} characters > {self.max_chars}"
                    )
                if verdict is not None:
                    break
            if verdict is None:
                for part, lang_part in (("src", "src_lang"), ("tgt", "tgt_lang")):
                    share = cols[part]["share"][j]
                    if share < self.min_script_fraction:
                        lang = langs[lang_part][j]
                        verdict = self._reject(
                            record,
                            "wrong_script",
                            f"{part} is {share:.0%} in the script of {lang} (< {self.min_script_fraction:.0%})",
                        )
                        break
            if verdict is None:
                verdict = Pair(
                    src=cols["src"]["text"][j],
                    tgt=cols["tgt"]["text"][j],
                    src_lang=langs["src_lang"][j],
                    tgt_lang=langs["tgt_lang"][j],
                    source=self.source.name,
                    id=f"{self.source.name}:{record.ref}",
                )
            verdicts[i] = verdict

    def _reject(self, record: RawRecord, reason: str, detail: str) -> Rejection:
        return Rejection(
            source=self.source.name, ref=record.ref, reason=reason, detail=detail, row=record.row, raw=record.raw
        )


def _is_control(ch: str) -> bool:
    o = ord(ch)
    return o <= 0x08 or o in (0x0B, 0x0C) or 0x0E <= o <= 0x1F or 0x7F <= o <= 0x9F
