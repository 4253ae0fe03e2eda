"""Turn a source's raw rows into validated pairs, rejections with a reason, or skips.

Rows are checked a batch at a time: structure in Python, text in one numpy pass over the code points of a
whole column (control characters, length, letters in the language's script, and which rows normalisation
would change at all). Normalisation kernels then run only on the rows that need them, so validation keeps
up with streaming sources.

Normalisation removes the zero-width space U+200B and U+FEFF (a BOM inside text), then applies NFC, turns
other whitespace into spaces, collapses runs of spaces and trims; ZWJ/ZWNJ (U+200D/U+200C) stay, since they
choose conjunct forms in Indic scripts. Lengths, scripts and the de-duplication key all see normalised text.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from hashlib import blake2b
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bhashaflow.config import SourceConfig
from bhashaflow.core.languages import BMP_SIZE, LANGUAGES, count_script_letters
from bhashaflow.core.records import ACCEPTED_SCHEMA, PREFERENCE_FIELDS, Pair, Position, RawRecord, Rejection

# Whitespace other than the plain space (RE2's \s is ASCII-only), and C0/C1 controls other than tab,
# newline and return: NUL bytes and friends mean a broken export, not text. Bidi overrides, embeddings and
# isolates count as controls too: they make text display in another order than it is stored (Trojan Source),
# and a translation pair never needs them (the LRM/RLM/ALM marks stay).
_OTHER_SPACE_RE2 = r"[\t\n\r\x0b\x0c\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
_CONTROL_RE2 = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]"
# Invisible characters removed outright: they carry no meaning in these scripts and would make copies of a
# sentence look different to de-duplication.
_ZERO_WIDTH = ("\u200b", "\ufeff")


def _on_subset(texts: pa.Array, mask: np.ndarray, fn: Any) -> pa.Array:
    """Apply a kernel only to the rows in `mask` (most rows need no fixing) and put the results back."""
    if not mask.any():
        return texts
    fixed = fn(texts.take(pa.array(np.flatnonzero(mask))))
    return pc.replace_with_mask(texts, pa.array(mask), fixed)


def _fix_spaces(texts: pa.Array) -> pa.Array:
    return pc.replace_substring_regex(pc.replace_substring_regex(texts, _OTHER_SPACE_RE2, " "), "  +", " ")


def _nfc_without_zero_width(texts: pa.Array) -> pa.Array:
    # Removed before NFC: a mark the removal brings next to its base must compose with it. Literal
    # replacements cost half of one regex pass.
    for zero_width in _ZERO_WIDTH:
        texts = pc.replace_substring(texts, zero_width, "")
    return pc.utf8_normalize(texts, form="NFC")


def _normalize(texts: pa.Array) -> pa.Array:
    """Zero-width spaces removed, NFC, other whitespace to spaces, runs of spaces collapsed, ends trimmed.

    Kernels run only where needed.
    """
    non_ascii = ~pc.string_is_ascii(texts).to_numpy(zero_copy_only=False)
    texts = _on_subset(texts, non_ascii, _nfc_without_zero_width)
    messy = pc.match_substring_regex(texts, f"{_OTHER_SPACE_RE2}|  ").to_numpy(zero_copy_only=False)
    return pc.utf8_trim_whitespace(_on_subset(texts, messy, _fix_spaces))


def normalize_text(text: str) -> str:
    """Unicode NFC without zero-width spaces, runs of whitespace collapsed to one space, the ends stripped."""
    out: str = _normalize(pa.array([text], pa.string()))[0].as_py()
    return out


def pair_key(src: str, tgt: str, src_lang: str, tgt_lang: str) -> int:
    """A 64-bit fingerprint of a normalised pair, for exact de-duplication."""
    return _fingerprint(f"{src_lang}\x1f{tgt_lang}\x1f{src}\x1f{tgt}")


def pair_keys(pairs: pa.Table) -> pa.Array:
    """`pair_key` of every row of a table with the pair columns."""
    joined = pc.binary_join_element_wise(pairs["src_lang"], pairs["tgt_lang"], pairs["src"], pairs["tgt"], "\x1f")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    if not len(joined):
        return pa.array([], pa.uint64())
    # Hash the UTF-8 bytes in place rather than building a str per row and encoding it again.
    _, offsets_buf, data_buf = joined.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32, len(joined) + 1, joined.offset * 4).tolist()
    data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    digests = b"".join(
        [blake2b(data[a:b], digest_size=8).digest() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    )
    return pa.array(np.frombuffer(digests, dtype="<u8"), pa.uint64())


def _fingerprint(text: str) -> int:
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "little")


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


# Per-character flags of the BMP table below.
_CONTROL = 1  # rejected: C0/C1 control other than tab, newline, return
_SPACE = 2  # whitespace other than the plain space: normalisation rewrites it
_UNSTABLE = 4  # NFC changes the character itself, or it is unknown to our Unicode tables
_COMPOSES = 8  # may combine with the character before it under NFC (NFC_Quick_Check "maybe")
_MARK = 16  # canonical combining class above 0: NFC may reorder it
_TRIM = 32  # trimmed at either end of a text
_DECOMPOSES = 64  # has a canonical decomposition
_REMOVED = 128  # a zero-width space that normalisation removes
_ATTENTION = _CONTROL | _SPACE | _UNSTABLE | _COMPOSES | _MARK | _REMOVED
_PAIR_SHIFT = 21  # pairs of code points packed as first << 21 | second


@cache
def _char_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per BMP code point its flags and canonical combining class; and the sorted canonical pairs.

    Control, whitespace, trimming and NFC stability come from the very kernels `_normalize` and the control
    check run, so "this row needs no normalisation" is exact; the rest from `unicodedata`, where any doubt
    (an unassigned character, a conjoining Hangul vowel or trailing consonant) marks a character unstable.
    """
    chars = pa.array(["" if 0xD800 <= cp <= 0xDFFF else chr(cp) for cp in range(BMP_SIZE)], pa.string())
    flags = np.zeros(BMP_SIZE, np.uint8)

    def mark(mask: Any, flag: int) -> None:
        flags[np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)] |= flag

    mark(pc.match_substring_regex(chars, _CONTROL_RE2), _CONTROL)
    mark(pc.match_substring_regex(chars, _OTHER_SPACE_RE2), _SPACE)
    flags[[ord(ch) for ch in _ZERO_WIDTH]] |= _REMOVED
    lengths = pc.utf8_length(chars)
    mark(pc.and_(pc.greater(lengths, 0), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(chars)), 0)), _TRIM)
    mark(pc.not_equal(pc.utf8_normalize(chars, form="NFC"), chars), _UNSTABLE)
    nfc_stable = (flags & _UNSTABLE) == 0
    ccc = np.zeros(BMP_SIZE, np.uint8)
    pairs = []
    for cp in range(BMP_SIZE):
        ch = chr(cp)
        if unicodedata.category(ch) in ("Cn", "Cs"):
            flags[cp] |= _UNSTABLE
        ccc[cp] = unicodedata.combining(ch)
        decomposition = unicodedata.decomposition(ch)
        if decomposition and not decomposition.startswith("<"):  # canonical, not compatibility
            flags[cp] |= _DECOMPOSES
            parts = [int(x, 16) for x in decomposition.split()]
            # Only pairs that NFC puts back together (primary composites; not U+095B = U+091C U+093C).
            if len(parts) == 2 and nfc_stable[cp]:
                if parts[1] < BMP_SIZE:
                    flags[parts[1]] |= _COMPOSES
                pairs.append(parts[0] << _PAIR_SHIFT | parts[1])
    flags[0x1161:0x1176] |= _UNSTABLE  # Hangul jamo compose algorithmically, not by decomposition data
    flags[0x11A8:0x11C3] |= _UNSTABLE
    flags[ccc > 0] |= _MARK
    return flags, ccc, np.unique(np.array(pairs, dtype=np.uint64))


def _code_points(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """All code points of a string array, one text after another, and where each text starts (plus the end).

    Code points come as np.intp, so the table lookups that follow need no index conversion of their own. ASCII
    columns are their own bytes; others decode once, through 16 bits per character when all are in the BMP.
    """
    n = len(texts)
    _, offsets_buf, data_buf = texts.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32, n + 1, texts.offset * 4).astype(np.int64)
    lo, hi = int(offsets[0]), int(offsets[-1])
    if hi == lo:
        return np.zeros(0, np.intp), offsets - lo
    data = np.frombuffer(data_buf, np.uint8, hi - lo, lo)
    if data.max() < 0x80:
        return data.astype(np.intp), offsets - lo
    text = data.tobytes().decode("utf-8")
    starts = np.zeros(n + 1, np.int64)
    np.cumsum(pc.utf8_length(texts).to_numpy(zero_copy_only=False), out=starts[1:])
    wide = text.encode("utf-16-le")
    if len(wide) == 2 * len(text):
        return np.frombuffer(wide, np.uint16).astype(np.intp), starts
    return np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.intp), starts


def _code_points_of(texts: list[str], arrow: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """`_code_points` of `arrow` read from the same texts as Python strings, which already hold code points:
    joining and widening them is cheaper than decoding the UTF-8 again."""
    starts = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(pc.utf8_length(arrow).to_numpy(zero_copy_only=False), out=starts[1:])
    joined = "".join(texts)
    if joined.isascii():
        return np.frombuffer(joined.encode("ascii"), np.uint8).astype(np.intp), starts
    wide = joined.encode("utf-16-le")
    if len(wide) == 2 * len(joined):  # no surrogate pairs: every character is in the BMP
        return np.frombuffer(wide, np.uint16).astype(np.intp), starts
    return np.frombuffer(joined.encode("utf-32-le"), np.uint32).astype(np.intp), starts


def _rows_needing_normalisation(cps: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: does it hold a control character; would `_normalize` change it.

    A row is left alone when it has no other whitespace, no zero-width space, no double space, nothing
    trimmable at its ends, and passes the NFC quick check, sharpened for "maybe" characters: one that follows
    a plain starter it cannot compose with stays as it is.
    """
    flags_table, ccc, pairs = _char_tables()
    n = len(starts) - 1
    control = np.zeros(n, dtype=bool)
    changes = np.zeros(n, dtype=bool)
    if not len(cps):
        return control, changes
    spaces = cps == 32
    double = spaces[1:] & spaces[:-1]
    if double.any():
        at = np.flatnonzero(double)
        rows = np.searchsorted(starts, at, side="right") - 1
        changes[rows[at + 1 < starts[rows + 1]]] = True  # both spaces in the same row
    flags = np.take(flags_table, cps, mode="clip")  # above the BMP clips to U+FFFF, a noncharacter: unstable
    hits = np.flatnonzero(flags & _ATTENTION)
    if hits.size:
        f = flags[hits]
        rows = np.searchsorted(starts, hits, side="right") - 1
        control[rows[(f & _CONTROL) != 0]] = True
        first = hits == starts[rows]
        cur = np.minimum(cps[hits], BMP_SIZE - 1)
        prev = np.minimum(cps[np.maximum(hits - 1, 0)], BMP_SIZE - 1)
        bad = (f & (_SPACE | _UNSTABLE | _REMOVED)) != 0
        bad |= ((f & _MARK) != 0) & ~first & (ccc[prev] > ccc[cur])  # out of canonical order
        composes = (f & _COMPOSES) != 0
        if composes.any():
            packed = (prev.astype(np.uint64) << np.uint64(_PAIR_SHIFT)) | cur.astype(np.uint64)
            at = np.minimum(np.searchsorted(pairs, packed), len(pairs) - 1)
            bad |= composes & (
                first
                | ((flags_table[prev] & (_COMPOSES | _MARK | _UNSTABLE | _DECOMPOSES)) != 0)
                | ((f & _DECOMPOSES) != 0)
                | (pairs[at] == packed)
            )
        changes[rows[bad]] = True
    nonempty = np.flatnonzero(starts[1:] > starts[:-1])
    ends = flags[starts[nonempty]] | flags[starts[nonempty + 1] - 1]
    changes[nonempty[(ends & _TRIM) != 0]] = True
    return control, changes


@dataclass
class _TextChecks:
    """One text column after normalisation, with what the rules look at."""

    norm: pa.Array
    control: np.ndarray  # in the raw text
    length: np.ndarray  # characters after normalisation
    share: np.ndarray  # letters in the language's script, after normalisation (1.0 without letters)


_CHUNK_ROWS = 4096  # rows checked at a time: their code point arrays stay in the CPU cache


def _check_column(raw: pa.Array, texts: list[str], codes: list[str]) -> _TextChecks:
    """Check one text column: `raw` is `texts` as an Arrow array, `codes` each row's language."""
    if len(raw) <= _CHUNK_ROWS:
        return _check_chunk(raw, texts, codes)
    parts = [
        _check_chunk(raw.slice(i, _CHUNK_ROWS), texts[i : i + _CHUNK_ROWS], codes[i : i + _CHUNK_ROWS])
        for i in range(0, len(raw), _CHUNK_ROWS)
    ]
    return _TextChecks(
        pa.concat_arrays([p.norm for p in parts]),
        *(np.concatenate([getattr(p, name) for p in parts]) for name in ("control", "length", "share")),
    )


def _check_chunk(raw: pa.Array, texts: list[str], codes: list[str]) -> _TextChecks:
    cps, starts = _code_points_of(texts, raw)
    control, changes = _rows_needing_normalisation(cps, starts)
    length = np.diff(starts)
    own, foreign = count_script_letters(cps, starts, codes)
    norm = raw
    if changes.any():
        idx = np.flatnonzero(changes)
        fixed = _normalize(raw.take(pa.array(idx)))
        norm = pc.replace_with_mask(raw, pa.array(changes), fixed)
        fixed_cps, fixed_starts = _code_points(fixed)
        length[idx] = np.diff(fixed_starts)
        own[idx], foreign[idx] = count_script_letters(fixed_cps, fixed_starts, [codes[i] for i in idx])
    total = own + foreign
    share = np.where(total > 0, own / np.maximum(total, 1), 1.0)
    return _TextChecks(norm, control, length, share)


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
                return self._reject(record, "length_ratio", f"correction of {len(verdict[1])} characters for a text "
                                    f"of {len(verdict[0])} (limit x{self._length_ratio:g})")  # fmt: skip
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

    def check_texts(self, rows: RowBatch) -> pa.Table:
        """The text checks of a batch's candidates: the accepted pairs; failures go to `rows.reject`."""
        arrays = self._text_arrays(rows)
        if not rows.cand:
            return ACCEPTED_SCHEMA.empty_table()
        return self._check_texts(rows, arrays)

    def _text_arrays(self, rows: RowBatch) -> dict[str, pa.Array]:
        """The candidates' texts as Arrow arrays; rows with a lone surrogate (which UTF-8 cannot hold) are
        rejected and dropped from the candidates first."""
        try:
            return {part: pa.array(rows.texts[part], pa.string()) for part in ("src", "tgt")}
        except UnicodeEncodeError:
            pass
        keep = []
        for j in range(len(rows.cand)):
            problem = None
            for part, column in self._text_fields:
                problem = self._surrogate(part, column, rows.texts[part][j])
                if problem:
                    rows.reject(j, self._reject(rows.record(j), "invalid_utf8", problem))
                    break
            if problem is None:
                keep.append(j)
        rows.keep_only(keep)
        return {part: pa.array(rows.texts[part], pa.string()) for part in ("src", "tgt")}

    def _check_texts(self, rows: RowBatch, arrays: dict[str, pa.Array]) -> pa.Table:
        """Vectorised text checks of the structurally sound rows; returns the accepted pairs."""
        n = len(rows.cand)
        langs = rows.langs
        columns = {
            part: _check_column(arrays[part], rows.texts[part], langs[f"{part}_lang"]) for part in ("src", "tgt")
        }
        checks: list[tuple[np.ndarray, str, str]] = []  # (failing rows, part, reason), in rule order
        for part, c in columns.items():
            checks.append((c.control, part, "control_character"))
            checks.append((c.length == 0, part, "empty"))
            checks.append((c.length > self.max_chars, part, "too_long"))
        for part, c in columns.items():
            checks.append((c.share < self.min_script_fraction, part, "wrong_script"))
        failed = np.full(n, -1)
        for k, (mask, _, _) in enumerate(checks):
            failed[(failed == -1) & mask] = k
        column_of = dict(self._text_fields)
        for j in np.flatnonzero(failed >= 0).tolist():
            _, part, reason = checks[failed[j]]
            record, name = rows.record(j), column_of[part]
            if reason == "control_character":
                bad = next(ch for ch in rows.texts[part][j] if _is_control(ch))
                detail = f"field {name!r} ({part}) holds control character U+{ord(bad):04X}"
            elif reason == "empty":
                detail = f"field {name!r} ({part}) is empty"
            elif reason == "too_long":
                detail = f"field {name!r} ({part}) has {columns[part].length[j]} characters > {self.max_chars}"
            else:
                lang = langs[f"{part}_lang"][j]
                share = columns[part].share[j]
                detail = f"{part} is {share:.0%} in the script of {lang} (< {self.min_script_fraction:.0%})"
            rows.reject(j, self._reject(record, reason, detail))
        ok = np.flatnonzero(failed == -1)
        take = pa.array(ok)
        prefix = f"{self.source.name}:"
        return pa.table(
            {
                "src": columns["src"].norm.take(take),
                "tgt": columns["tgt"].norm.take(take),
                "src_lang": pa.array(langs["src_lang"], pa.string()).take(take),
                "tgt_lang": pa.array(langs["tgt_lang"], pa.string()).take(take),
                "source": pa.array([self.source.name] * len(ok), pa.string()),
                "id": pa.array([prefix + rows.refs[j] for j in ok.tolist()], pa.string()),
                **self._preference_columns(rows, ok.tolist()),
            },
            schema=ACCEPTED_SCHEMA,
        )

    def _preference_columns(self, rows: RowBatch, kept: list[int]) -> dict[str, pa.Array]:
        """rejected, reward, adapter_version of the kept rows: from a preference source's rows, else nulls."""
        if self.source.kind != "rl_logs":
            return {name: pa.nulls(len(kept), kind) for name, kind in PREFERENCE_FIELDS}
        return {
            name: pa.array([rows.row(j).get(name) for j in kept], kind) for name, kind in PREFERENCE_FIELDS
        }

    def _reject(self, record: RawRecord, reason: str, detail: str) -> Rejection:
        return Rejection(
            source=self.source.name, ref=record.ref, reason=reason, detail=detail, row=record.row, raw=record.raw
        )


class RowBatch:
    """Rows of one batch, added one at a time, then checked together by `check`.

    Each row's structure is checked as it is added, and only what the text checks need is kept: the texts,
    languages, ref, row and position of a candidate, not the record. Records then die young, so a batch of
    tens of thousands of rows neither holds their memory nor keeps the garbage collector busy.
    """

    def __init__(self, validator: Validator) -> None:
        self.validator = validator
        self._check_row = validator.check_structure  # bound once: `add` runs for every row
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

    def add(self, record: RawRecord) -> None:
        """Take one row: a rejection or skip now, or a candidate for the text checks."""
        index = self.size
        self.size += 1
        self.last_position = record.position
        verdict = self._check_row(record)
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

    def reject(self, j: int, rejection: Rejection) -> None:
        """Candidate `j` failed a text check: it ends in the rejections, in the order its row was added."""
        self._rejections.append((self.cand[j], self.record(j), rejection))

    def row(self, j: int) -> Any:
        """Candidate `j`'s row as the source gave it."""
        return self._rows[j]

    def record(self, j: int) -> RawRecord:
        """Candidate `j` as the record it came in."""
        error, raw = self._extras.get(j, (None, None))
        return RawRecord(self._positions[j], self.refs[j], self._rows[j], error, raw)

    def keep_only(self, keep: list[int]) -> None:
        """Drop every candidate not in `keep` (indices into the candidates, ascending)."""
        extras = {new: self._extras[old] for new, old in enumerate(keep) if old in self._extras}
        columns: list[list[Any]] = [self.cand, self.refs, self._rows, self._positions]
        for values in [*columns, *self.texts.values(), *self.langs.values()]:
            values[:] = [values[j] for j in keep]
        self._extras = extras

    def check(self) -> CheckedBatch:
        """Run the text checks; every row added ends in exactly one of pairs, rejections or skipped."""
        out = CheckedBatch(skipped=self._skipped, skip_reasons=self._skip_reasons)
        if self.cand:
            out.accepted = self.validator.check_texts(self)
        self._rejections.sort(key=lambda item: item[0])
        out.rejections = [(record, rejection) for _, record, rejection in self._rejections]
        return out


def _is_control(ch: str) -> bool:
    o = ord(ch)
    return o < BMP_SIZE and bool(_char_tables()[0][o] & _CONTROL)
