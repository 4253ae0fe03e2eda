"""Text normalisation, the one normaliser of the project, and the vectorised checks of a text column.

Normalisation removes the zero-width space U+200B and U+FEFF (a BOM inside text), then applies NFC, turns
other whitespace into spaces, collapses runs of spaces and trims; ZWJ/ZWNJ (U+200D/U+200C) stay, since they
choose conjunct forms in Indic scripts. Ingestion normalises every text it keeps with it, and decontamination
matches evaluation sentences against training text with it, so both see the same sentence the same way.

A column is checked in one numpy pass over its code points (control characters, length, letters in the
language's script, and which rows normalisation would change at all); the normalisation kernels then run
only on the rows that need them, so validation keeps up with streaming sources.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bhashaflow.core.languages import BMP_SIZE, count_script_letters

# Whitespace other than the plain space (RE2's \s is ASCII-only), and C0/C1 controls other than tab,
# newline and return: NUL bytes and friends mean a broken export, not text. Bidi overrides, embeddings and
# isolates count as controls too: they make text display in another order than it is stored (Trojan Source),
# and a translation pair never needs them (the LRM/RLM/ALM marks stay).
_OTHER_SPACE_RE2 = r"[\t\n\r\x0b\x0c\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
_CONTROL_RE2 = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{202a}-\x{202e}\x{2066}-\x{2069}]"
# Invisible characters removed outright: they carry no meaning in these scripts and would make copies of a
# sentence look different to de-duplication and decontamination.
_ZERO_WIDTH = ("\u200b", "\ufeff")


def _on_subset(texts: pa.Array, mask: np.ndarray, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
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


def normalize_texts(texts: pa.Array) -> pa.Array:
    """Zero-width spaces removed, NFC, other whitespace to spaces, runs of spaces collapsed, ends trimmed.

    Kernels run only where needed.
    """
    non_ascii = ~pc.string_is_ascii(texts).to_numpy(zero_copy_only=False)
    texts = _on_subset(texts, non_ascii, _nfc_without_zero_width)
    messy = pc.match_substring_regex(texts, f"{_OTHER_SPACE_RE2}|  ").to_numpy(zero_copy_only=False)
    return pc.utf8_trim_whitespace(_on_subset(texts, messy, _fix_spaces))


def normalize_text(text: str) -> str:
    """`normalize_texts` of one text: NFC without zero-width spaces, whitespace collapsed, the ends stripped."""
    if _already_normal(text):  # most text (all of a shard's) is: the kernels cost ~50x a look at the text
        return text
    out: str = normalize_texts(pa.array([text], pa.string()))[0].as_py()
    return out


# Per-character flags of the BMP table below.
_CONTROL = 1  # rejected: C0/C1 control other than tab, newline, return; bidi overrides and isolates
_SPACE = 2  # whitespace other than the plain space: normalisation rewrites it
_REMOVED = 4  # a zero-width space that normalisation removes
_TRIM = 8  # trimmed at either end of a text
_NFC_DOUBT = 16  # NFC changes the character alone, or `unicodedata` does not know it (see `_char_flags`)
_REWRITTEN = _SPACE | _REMOVED  # anywhere in a text: normalisation changes it


@cache
def _char_flags() -> np.ndarray:
    """Per BMP code point its flags, from the very kernels `normalize_texts` and the control check run.

    For one text, NFC is judged by `unicodedata.is_normalized`; a character its tables do not know (unassigned
    in Python's Unicode version, older than the kernels' on Python 3.11) is in doubt, so that a text holding one
    is normalised by the kernels: they may compose it where `is_normalized` sees nothing to do.
    """
    chars = pa.array(["" if 0xD800 <= cp <= 0xDFFF else chr(cp) for cp in range(BMP_SIZE)], pa.string())
    flags = np.zeros(BMP_SIZE, np.uint8)

    def mark(mask: pa.Array, flag: int) -> None:
        flags[np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)] |= flag

    mark(pc.match_substring_regex(chars, _CONTROL_RE2), _CONTROL)
    mark(pc.match_substring_regex(chars, _OTHER_SPACE_RE2), _SPACE)
    flags[[ord(ch) for ch in _ZERO_WIDTH]] |= _REMOVED
    lengths = pc.utf8_length(chars)
    mark(pc.and_(pc.greater(lengths, 0), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(chars)), 0)), _TRIM)
    mark(pc.not_equal(pc.utf8_normalize(chars, form="NFC"), chars), _NFC_DOUBT)
    unknown = [cp for cp in range(BMP_SIZE) if unicodedata.category(chr(cp)) in ("Cn", "Cs")]
    flags[unknown] |= _NFC_DOUBT
    return flags


@cache
def _char_sets() -> tuple[frozenset[str], frozenset[str]]:
    """`_char_flags` as sets of characters, for one text: those that may change a text, those trimmed."""
    flags = _char_flags()
    changes = frozenset(map(chr, np.flatnonzero(flags & (_REWRITTEN | _NFC_DOUBT)).tolist()))
    trimmed = frozenset(map(chr, np.flatnonzero(flags & _TRIM).tolist()))
    return changes, trimmed


def _already_normal(text: str) -> bool:
    """Would `normalize_texts` leave `text` as it is? The test `rows_needing_normalisation` makes on a column."""
    if not text:
        return True
    changes, trimmed = _char_sets()
    if "  " in text or text[0] in trimmed or text[-1] in trimmed or not changes.isdisjoint(text):
        return False
    # Above the BMP `unicodedata` may lag the kernels (see `_char_flags`): such a text is normalised.
    return text.isascii() or (max(text) < "\U00010000" and unicodedata.is_normalized("NFC", text))


def is_control(ch: str) -> bool:
    """Is `ch` a character the control check rejects?"""
    o = ord(ch)
    return o < BMP_SIZE and bool(_char_flags()[o] & _CONTROL)


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


def rows_needing_normalisation(cps: np.ndarray, starts: np.ndarray, raw: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `raw` (whose code points are `cps`, row i at `starts[i]:starts[i + 1]`): does it hold a
    control character; would `normalize_texts` change it (the column form of `_already_normal`).

    A row is left alone when it has no other whitespace, no zero-width space, no double space, nothing
    trimmable at its ends, and the NFC kernel leaves it as it is.
    """
    flags_table = _char_flags()
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
    flags = np.take(flags_table, cps, mode="clip")  # above the BMP clips to U+FFFF: no control, no space
    hits = np.flatnonzero(flags & (_CONTROL | _REWRITTEN))
    if hits.size:
        f = flags[hits]
        rows = np.searchsorted(starts, hits, side="right") - 1
        control[rows[(f & _CONTROL) != 0]] = True
        changes[rows[(f & _REWRITTEN) != 0]] = True
    nonempty = np.flatnonzero(starts[1:] > starts[:-1])
    ends = flags[starts[nonempty]] | flags[starts[nonempty + 1] - 1]
    changes[nonempty[(ends & _TRIM) != 0]] = True
    if cps.max() >= 0x80:
        # The other rows are in NFC when the kernel that normalises leaves them so: exact whatever Unicode
        # version each library has, and 3x quicker than unicodedata.is_normalized on Tamil or Malayalam,
        # where nearly every row holds a vowel sign its quick check answers "maybe" for.
        rest = np.flatnonzero(~changes & ~_ascii_rows(cps, starts))
        if rest.size:
            texts = raw.take(pa.array(rest))
            changed = pc.not_equal(pc.utf8_normalize(texts, form="NFC"), texts)
            changes[rest[np.asarray(changed.to_numpy(zero_copy_only=False), dtype=bool)]] = True
    return control, changes


def _ascii_rows(cps: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per row: are all its code points ASCII (an empty row is)?"""
    wide = np.zeros(len(cps) + 1, np.int64)
    np.cumsum(cps >= 0x80, out=wide[1:])
    return wide[starts[1:]] == wide[starts[:-1]]


@dataclass
class TextChecks:
    """One text column after normalisation, with what the rules look at."""

    norm: pa.Array
    control: np.ndarray  # in the raw text
    length: np.ndarray  # characters after normalisation
    share: np.ndarray  # letters in the language's script, after normalisation (1.0 without letters)


_CHUNK_ROWS = 4096  # rows checked at a time: their code point arrays stay in the CPU cache


def check_column(raw: pa.Array, texts: list[str], codes: list[str]) -> TextChecks:
    """Check one text column: `raw` is `texts` as an Arrow array, `codes` each row's language."""
    if len(raw) <= _CHUNK_ROWS:
        return _check_chunk(raw, texts, codes)
    parts = [
        _check_chunk(raw.slice(i, _CHUNK_ROWS), texts[i : i + _CHUNK_ROWS], codes[i : i + _CHUNK_ROWS])
        for i in range(0, len(raw), _CHUNK_ROWS)
    ]
    return TextChecks(
        pa.concat_arrays([p.norm for p in parts]),
        *(np.concatenate([getattr(p, name) for p in parts]) for name in ("control", "length", "share")),
    )


def _check_chunk(raw: pa.Array, texts: list[str], codes: list[str]) -> TextChecks:
    cps, starts = _code_points_of(texts, raw)
    control, changes = rows_needing_normalisation(cps, starts, raw)
    length = np.diff(starts)
    own, foreign = count_script_letters(cps, starts, codes)
    norm = raw
    if changes.any():
        idx = np.flatnonzero(changes)
        fixed = normalize_texts(raw.take(pa.array(idx)))
        norm = pc.replace_with_mask(raw, pa.array(changes), fixed)
        fixed_cps, fixed_starts = _code_points(fixed)
        length[idx] = np.diff(fixed_starts)
        own[idx], foreign[idx] = count_script_letters(fixed_cps, fixed_starts, [codes[i] for i in idx])
    total = own + foreign
    share = np.where(total > 0, own / np.maximum(total, 1), 1.0)
    return TextChecks(norm, control, length, share)
