"""The one normaliser and the column checks: which rows it would change, found without running it on them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import FLORES

from bhashaflow.data.flores import read_flores
from bhashaflow.data.text import (
    _already_normal,
    _code_points,
    check_column,
    normalize_text,
    normalize_texts,
    rows_needing_normalisation,
)

# Characters where a shortcut could go wrong: other whitespace, zero-width spaces and joiners, marks that NFC
# reorders or composes (Indic vowel signs and nuktas among them), precomposed letters NFC takes apart or leaves
# (U+0958 is excluded from composition), singletons, conjoining Hangul, characters above the BMP, and pieces
# that only a newer Unicode than Python 3.11's composes (U+11382 U+113C9 -> U+11383, U+105D2 U+0307 -> U+105C9).
ALPHABET = [
    "a", "Z", " ", "  ", "\t", "\n", "\xa0", "\u2000", "\u3000", "\x85", "\x00", "\u202e", "क", "न", "\u093c",
    "\u094d", "\u0929", "\u0958", "é", "e", "\u0301", "\u0323", "\u0316", "\u212b", "\u2126", "\u09c7", "\u09be",
    "\u09d7", "\u0bc6", "\u0bbe", "\u0bd7", "\u0cc6", "\u0cc2", "\u0cd5", "\u0d46", "\u0d3e", "\u0c46", "\u0c56",
    "가", "\u1100", "\u1161", "\u11a8", "😀", "\U0001d15e", "\u0378", "\ue000", "\u200b", "\ufeff", "\u200c",
    "\u200d", "\U00011382", "\U000113c9", "\U000105d2", "\u0307",
]
texts = st.lists(st.sampled_from(ALPHABET), max_size=12).map("".join)


def flores_sample() -> list[str]:
    langs = ("eng_Latn", "hin_Deva", "tam_Taml", "tel_Telu", "mal_Mlym", "ben_Beng", "kan_Knda", "urd_Arab")
    return [line for lang in langs for line in read_flores(FLORES, lang, "devtest")[:200]]


def changed_by_the_kernels(column: list[str]) -> list[bool]:
    return [a != b for a, b in zip(normalize_texts(pa.array(column, pa.string())).to_pylist(), column, strict=True)]


def rows_flagged(column: list[str]) -> list[bool]:
    raw = pa.array(column, pa.string())
    cps, starts = _code_points(raw)
    return rows_needing_normalisation(cps, starts, raw)[1].tolist()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, min_size=1, max_size=40))
def test_rows_flagged_are_exactly_those_the_normaliser_changes(column: list[str]) -> None:
    changed = changed_by_the_kernels(column)
    assert rows_flagged(column) == changed
    # One text at a time: a text called normal is one the kernels leave as it is.
    for text, was_changed in zip(column, changed, strict=True):
        assert normalize_text(text) == normalize_texts(pa.array([text], pa.string()))[0].as_py()
        if _already_normal(text):
            assert not was_changed, ascii(text)


def test_on_real_sentences_the_shortcuts_agree_with_the_normaliser() -> None:
    column = flores_sample()
    column += [s.replace(" ", "\u200b ", 1) for s in column[::7]] + [" " + s for s in column[::11]]
    changed = changed_by_the_kernels(column)
    assert 0 < sum(changed) < len(column)
    assert rows_flagged(column) == changed
    assert [not _already_normal(s) for s in column] == changed  # these hold no character Python's tables lack


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\U00011382\U000113c9", "\U00011383"),  # composed by the kernels' newer Unicode: `is_normalized` says NFC
        ("\U000105d2\u0307", "\U000105c9"),
        ("a\u0301\u0323", "\u1ea1\u0301"),
        ("\u0bc6\u0bbe", "\u0bca"),  # Tamil o from its two parts
        ("ఇన్నింగ్స్\u200bలో", "ఇన్నింగ్స్లో"),
        ("\ufeff a \u3000 b\t", "a b"),
    ],
)
def test_normalize_text(text: str, expected: str) -> None:
    assert normalize_text(text) == expected
    checked = check_column(pa.array([text], pa.string()), [text], ["eng_Latn"])
    assert checked.norm.to_pylist() == [expected] and np.array_equal(checked.length, [len(expected)])
