import pytest

from bhashaflow.config import SourceConfig
from bhashaflow.records import Pair, RawRecord, Rejection
from bhashaflow.validation import Skip, Validator, normalize_text

DIRECTIONS = ["eng_Latn-hin_Deva"]


def check(row, source=None, max_chars=50):
    source = source or SourceConfig(name="s", kind="http", uri="http://x")
    validator = Validator(source, DIRECTIONS, max_chars=max_chars, min_script_fraction=0.5)
    return validator.check(RawRecord(position={}, ref="f:1", row=row))


def row(**kw):
    base = {"src": "Hello world", "tgt": "नमस्ते दुनिया", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


def test_valid_row_is_normalised():
    out = check(row(src="  Hello \t\n world ", tgt="नमस्ते   दुनिया"))
    assert out == Pair("Hello world", "नमस्ते दुनिया", "eng_Latn", "hin_Deva", "s", "s:f:1")


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        (None, "malformed", "could not be parsed"),
        (row(src=...), "missing_field", "'src'"),
        (row(tgt=None), "missing_field", "'tgt'"),
        (row(src=5), "not_a_string", "int"),
        (row(src="   "), "empty", "'src'"),
        (row(tgt="न" * 51), "too_long", "51 characters > 50"),
        (row(tgt_lang="xyz_Abcd"), "unknown_language", "'xyz_Abcd'"),
        (row(tgt="namaste duniya"), "wrong_script", "hin_Deva"),
        (row(src="Hello\x00world"), "malformed", "U+0000"),
    ],
)
def test_each_rejection_reason(data, reason, detail):
    out = check(data)
    assert isinstance(out, Rejection)
    assert out.reason == reason
    assert detail in out.detail
    assert out.ref == "f:1"


def test_other_direction_is_skipped_not_rejected():
    out = check(row(tgt_lang="tam_Taml", tgt="வணக்கம்"))
    assert isinstance(out, Skip)
    assert out.direction == "eng_Latn-tam_Taml"


def test_field_map_and_fixed_languages():
    source = SourceConfig(
        name="hub", kind="hf", uri="x/y", fields={"src": "en", "tgt": "hi"}, langs={"src": "eng_Latn", "tgt": "hin_Deva"}
    )
    out = check({"en": "Hi", "hi": "नमस्ते"}, source=source)
    assert isinstance(out, Pair) and out.tgt == "नमस्ते"


def test_zero_width_joiners_survive_and_nfc_applies():
    text = "क्\u200dष"
    assert normalize_text(text) == text
    assert normalize_text("e\u0301") == "\u00e9"
