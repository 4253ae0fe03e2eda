"""script_fraction and count_script_letters: one definition of "letters in a script", for a text or a column."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from script_kernels import script_regexes

from bhashaflow.core.languages import count_script_letters, in_script, parse_direction, script_fraction

SAMPLE = [
    ("Hello world", "eng_Latn"),
    ("Ça coûte très cher", "fra_Latn"),
    ("नमस्ते दुनिया", "hin_Deva"),
    ("ज़रूर फ़िल्म क़लम", "hin_Deva"),  # consonant + nukta
    ("\u095b\u0930\u0942\u0930", "hin_Deva"),  # precomposed za, which NFC decomposes
    ("வணக்கம் உலகம்", "tam_Taml"),
    ("سلام دنیا", "urd_Arab"),
    ("Hello नमस्ते world", "hin_Deva"),  # mixed scripts
    ("12345 67", "hin_Deva"),  # digits only: no letters at all
    ("क्\u200dष \u200c", "hin_Deva"),  # zero width joiner and non-joiner
    ("😀 नमस्ते 𝐀𝐁", "hin_Deva"),  # an emoji (no letter) and astral letters (foreign)
    ("x² Ⅻ ½", "eng_Latn"),  # superscripts, Roman numerals and fractions are numbers, not letters
    ("।॥ ०१२", "hin_Deva"),  # danda and Devanagari digits lie in the block: own
    ("", "eng_Latn"),
    ("日本語のテキスト", "jpn_Jpan"),
    ("中文 text", "zho_Hans"),
    ("한국어 텍스트", "kor_Hang"),
    ("Привет, мир", "rus_Cyrl"),
]


def kernel_counts(text: str, code: str) -> tuple[int, int]:
    """(own, foreign) as the RE2 kernels count them: deleting runs of each class and measuring what went."""
    own, foreign = script_regexes(code)  # type: ignore[misc]
    column = pa.array([text], pa.string())
    length = pc.utf8_length(column)[0].as_py()
    return tuple(  # type: ignore[return-value]
        length - pc.utf8_length(pc.replace_substring_regex(column, f"{pattern}+", ""))[0].as_py()
        for pattern in (own, foreign)
    )


@pytest.mark.parametrize(("text", "code"), SAMPLE)
def test_script_fraction_counts_what_the_kernels_count(text: str, code: str) -> None:
    own, foreign = kernel_counts(text, code)
    expected = own / (own + foreign) if own + foreign else 1.0
    assert script_fraction(text, code) == expected


def test_script_fraction_values() -> None:
    assert script_fraction("😀 नमस्ते 𝐀𝐁", "hin_Deva") == 0.75  # 6 Devanagari code points, 2 bold Latin letters
    assert script_fraction("x² Ⅻ ½", "eng_Latn") == 1.0
    assert script_fraction("12345 67", "hin_Deva") == 1.0
    assert script_fraction("Hello नमस्ते", "hin_Deva") == pytest.approx(6 / 11)
    assert in_script("नमस्ते दुनिया", "hin_Deva") and not in_script("namaste duniya", "hin_Deva")


@pytest.mark.parametrize("dtype", [np.intp, np.uint32])
def test_column_counts_agree_with_each_text(dtype: type) -> None:
    texts, codes = [t for t, _ in SAMPLE], [c for _, c in SAMPLE]
    code_points = np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32).astype(dtype)
    starts = np.concatenate([[0], np.cumsum([len(t) for t in texts])])
    own, foreign = count_script_letters(code_points, starts, codes)
    assert list(zip(own.tolist(), foreign.tolist(), strict=True)) == [kernel_counts(t, c) for t, c in SAMPLE]


def test_column_counts_of_one_language_and_of_narrow_code_points() -> None:
    texts = ["नमस्ते", "", "hello", "नमस्ते world"]
    code_points = np.frombuffer("".join(texts).encode("utf-16-le"), np.uint16)
    starts = np.array([0, 6, 6, 11, 23])
    own, foreign = count_script_letters(code_points, starts, ["hin_Deva"] * 4)
    assert own.tolist() == [6, 0, 0, 6] and foreign.tolist() == [0, 0, 5, 5]


def test_parse_direction_refuses_unknown_and_same_codes() -> None:
    assert parse_direction("eng_Latn-hin_Deva") == ("eng_Latn", "hin_Deva")
    with pytest.raises(ValueError, match="unknown FLORES-200 language code 'xx_Yyyy'"):
        parse_direction("eng_Latn-xx_Yyyy")
    with pytest.raises(ValueError, match="same language"):
        parse_direction("hin_Deva-hin_Deva")
