"""Turn a source's raw rows into validated pairs, rejections with a reason, or skips."""

from __future__ import annotations

import re
import unicodedata
from hashlib import blake2b

from bhashaflow.config import SourceConfig
from bhashaflow.languages import LANGUAGES, script_fraction
from bhashaflow.records import Pair, RawRecord, Rejection

_SPACE = re.compile(r"\s+")
# C0/C1 control characters other than whitespace: NUL bytes and friends mean a broken export, not text.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def normalize_text(text: str) -> str:
    """Unicode NFC with runs of whitespace collapsed to one space and the ends stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


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


class Validator:
    """Checks the rows of one source against the ingest rules.

    Args:
        source: the source's config (column names and fixed languages).
        directions: the configured directions; rows for others are skipped.
        max_chars: longest accepted sentence.
        min_script_fraction: least share of letters in the language's script.
    """

    def __init__(
        self, source: SourceConfig, directions: list[str], max_chars: int, min_script_fraction: float
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
        if row is None:
            return None
        src_lang, tgt_lang = row.get(self.source.fields.src_lang), row.get(self.source.fields.tgt_lang)
        if isinstance(src_lang, str) and isinstance(tgt_lang, str):
            return f"{src_lang}-{tgt_lang}"
        return None

    def check(self, record: RawRecord) -> Pair | Rejection | Skip:
        row = record.row
        if row is None:
            return self._reject(record, "malformed", record.error or "could not be parsed")
        if not hasattr(row, "get"):
            return self._reject(record, "malformed", "record is not an object")

        langs: dict[str, str] = {}
        if self.source.langs is not None:
            langs = {"src_lang": self.source.langs.src, "tgt_lang": self.source.langs.tgt}
        else:
            for part, column in self._lang_fields:
                value = row.get(column)
                if value is None:
                    return self._reject(record, "missing_field", f"field {column!r} ({part}) is missing")
                if not isinstance(value, str):
                    return self._reject(record, "not_a_string", f"field {column!r} ({part}) is {type(value).__name__}")
                langs[part] = value.strip()
        for part in ("src_lang", "tgt_lang"):
            if langs[part] not in LANGUAGES:
                return self._reject(record, "unknown_language", f"{part} {langs[part]!r} is not a FLORES-200 code")
        direction = f"{langs['src_lang']}-{langs['tgt_lang']}"
        if direction not in self.directions:
            return Skip(direction)

        texts: dict[str, str] = {}
        for part, column in self._text_fields:
            value = row.get(column)
            if value is None:
                return self._reject(record, "missing_field", f"field {column!r} ({part}) is missing")
            if not isinstance(value, str):
                return self._reject(record, "not_a_string", f"field {column!r} ({part}) is {type(value).__name__}")
            bad = _CONTROL.search(value)
            if bad:
                code = f"U+{ord(bad.group()):04X}"
                return self._reject(record, "malformed", f"field {column!r} ({part}) holds control character {code}")
            text = normalize_text(value)
            if not text:
                return self._reject(record, "empty", f"field {column!r} ({part}) is empty")
            if len(text) > self.max_chars:
                return self._reject(
                    record, "too_long", f"field {column!r} ({part}) has {len(text)} characters > {self.max_chars}"
                )
            texts[part] = text
        for part, lang_part in (("src", "src_lang"), ("tgt", "tgt_lang")):
            share = script_fraction(texts[part], langs[lang_part])
            if share < self.min_script_fraction:
                return self._reject(
                    record,
                    "wrong_script",
                    f"{part} is {share:.0%} in the script of {langs[lang_part]} (< {self.min_script_fraction:.0%})",
                )
        return Pair(
            src=texts["src"],
            tgt=texts["tgt"],
            src_lang=langs["src_lang"],
            tgt_lang=langs["tgt_lang"],
            source=self.source.name,
            id=f"{self.source.name}:{record.ref}",
        )

    def _reject(self, record: RawRecord, reason: str, detail: str) -> Rejection:
        return Rejection(
            source=self.source.name, ref=record.ref, reason=reason, detail=detail, row=record.row, raw=record.raw
        )
