import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from script_kernels import script_regexes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bhashaflow.config import SourceConfig
from bhashaflow.core.languages import script_fraction
from bhashaflow.core.records import PAIR_SCHEMA, Pair, RawRecord, Rejection
from bhashaflow.data.validation import (
    _CONTROL_RE2,
    Skip,
    Validator,
    _check_column,
    _normalize,
    normalize_text,
    pair_key,
    pair_keys,
)

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
        (row(src="Hello\x00world"), "control_character", "U+0000"),
        (row(tgt="नमस्ते\u202eदुनिया"), "control_character", "U+202E"),  # a bidi override
        (row(tgt="नमस्ते\ud800"), "invalid_utf8", "lone surrogate"),
        (row(tgt="\u200b\ufeff "), "empty", "'tgt'"),  # zero-width spaces are removed
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
    assert normalize_text("क्\u200cष") == "क्\u200cष"


def test_zero_width_spaces_go_before_nfc_and_space_collapsing():
    assert normalize_text("\ufeffनम\u200bस्ते \u200b दुनिया\u200b") == "नमस्ते दुनिया"
    assert normalize_text("e\u200b\u0301") == "\u00e9"  # the removal lets the mark compose


def test_rtl_marks_are_text_but_bidi_overrides_are_controls():
    assert isinstance(check(row(tgt="नमस्ते \u200fदुनिया\u200e")), Pair)
    for ch in ("\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"):
        out = check(row(src=f"Hello {ch}world"))
        assert isinstance(out, Rejection) and out.reason == "control_character", ch


# --- the vectorised text checks against the Arrow kernels they stand in for --------------------------------------

# Characters where the shortcuts could go wrong: other whitespace, controls, marks that NFC reorders or composes,
# precomposed letters NFC takes apart, conjoining Hangul, characters above the BMP, joiners, digits.
TRICKY = [
    "a", "Z", "7", " ", "  ", "\t", "\n", "\r", "\x00", "\x1c", "\x7f", "\x85", "\xa0", "\u2000", "\u2001", "\u3000",
    "\u2028", "\u202f", "\x0b", "क", "न", "र", "ळ", "ज", "\u093c", "\u094d", "\u093e", "\u0929", "\u0958", "\u0964",
    "é", "e\u0301", "\u0301", "\u0323", "\u0316", "x\u0301\u0316", "é\u0323", "\u0344", "a\u0301\u0323", "\u212b", "\u2126", "\u09c7", "\u09be",
    "\u09d7", "\u0bc6", "\u0bbe", "\u0bd7", "ا", "\u0653", "\u064b\u0651", "가", "\u1100", "\u1161", "\u11a8", "😀",
    "\U0001d400", "\U0001d15e", "中", "カ", "\u3099", "\u200d", "\u200c", "\ufeff", "²", "Ⅻ", "ά", "\u0390",
    "\u0f73", "\u0378", "\ue000", "n\u0303", "\u1e9b\u0323", "\u0cc6\u0cc2\u0cd5", "\u200b", "\u202e", "\u2066",
    "\u200f",
]
DIRS = ["eng_Latn-hin_Deva", "hin_Deva-eng_Latn", "kor_Hang-jpn_Jpan"]
LANGUAGE_SAMPLE = [
    ("Hello world", "eng_Latn"), ("ज़रूर फ़िल्म क़लम", "hin_Deva"), ("\u095b\u0930\u0942\u0930", "hin_Deva"),
    ("வணக்கம் உலகம்", "tam_Taml"), ("سلام دنیا", "urd_Arab"), ("Hello नमस्ते world", "hin_Deva"),
    ("12345 67", "hin_Deva"), ("क्\u200dष \u200c", "hin_Deva"), ("😀 नमस्ते 𝐀𝐁", "hin_Deva"), ("x² Ⅻ ½", "eng_Latn"),
    ("  ", "eng_Latn"), ("한국어 \u1112\u1161\u11ab", "kor_Hang"), ("e\u0301te\u0301", "fra_Latn"),
]
texts = st.lists(st.sampled_from(TRICKY), max_size=14).map("".join)


def kernel_counts(text: str, code: str) -> tuple[int, int]:
    """(own, foreign) letters as the RE2 kernels count them: delete runs of each class, measure what went."""
    own, foreign = script_regexes(code)  # type: ignore[misc]
    column = pa.array([text], pa.string())
    length = pc.utf8_length(column)[0].as_py()
    o, f = (length - pc.utf8_length(pc.replace_substring_regex(column, f"{p}+", ""))[0].as_py() for p in (own, foreign))
    return o, f


def kernel_verdicts(rows: list[dict], max_chars: int) -> list[tuple[str, str] | tuple[str, str, str]]:
    """Per row, ("ok", src, tgt) or (reason, part), computed with the Arrow kernels on every row."""
    columns = {}
    for part in ("src", "tgt"):
        raw = pa.array([r[part] for r in rows], pa.string())
        norm = _normalize(raw)
        own = []
        foreign = []
        for r, text in zip(rows, norm.to_pylist(), strict=True):
            o, f = kernel_counts(text, r[f"{part}_lang"])
            own.append(o)
            foreign.append(f)
        total = np.array(own) + np.array(foreign)
        columns[part] = {
            "norm": norm.to_pylist(),
            "control": pc.match_substring_regex(raw, _CONTROL_RE2).to_pylist(),
            "length": pc.utf8_length(norm).to_pylist(),
            "share": np.where(total > 0, np.array(own) / np.maximum(total, 1), 1.0),
        }
    out: list[tuple[str, str] | tuple[str, str, str]] = []
    for i in range(len(rows)):
        verdict: tuple[str, str] | tuple[str, str, str] | None = None
        for part in ("src", "tgt"):
            c = columns[part]
            for failed, reason in ((c["control"][i], "control_character"), (c["length"][i] == 0, "empty"),
                                   (c["length"][i] > max_chars, "too_long")):
                if verdict is None and failed:
                    verdict = (reason, part)
        for part in ("src", "tgt"):
            if verdict is None and columns[part]["share"][i] < 0.5:
                verdict = ("wrong_script", part)
        out.append(verdict or ("ok", columns["src"]["norm"][i], columns["tgt"]["norm"][i]))
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(texts, texts, st.sampled_from(DIRS)), min_size=1, max_size=30))
def test_vectorised_checks_match_the_kernels(cases):
    rows = [{"src": s, "tgt": t, "src_lang": d.split("-")[0], "tgt_lang": d.split("-")[1]} for s, t, d in cases]
    validator = Validator(SourceConfig(name="s", kind="http", uri="http://x"), DIRS, 12, 0.5)
    out = validator.check_batch([RawRecord({"i": i}, f"f:{i}", row=r) for i, r in enumerate(rows)])
    got: dict[str, tuple] = {p.id: ("ok", p.src, p.tgt) for p in out.pairs}
    for record, rejection in out.rejections:
        part = "src" if "(src)" in rejection.detail or rejection.detail.startswith("src ") else "tgt"
        got["s:" + record.ref] = (rejection.reason, part)
    assert [got[f"s:f:{i}"] for i in range(len(rows))] == kernel_verdicts(rows, 12)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\u0301\u0323", "\u1ea1\u0301"),  # reordered below-dot first, then composed with the a
        ("x\u0301\u0316", "x\u0316\u0301"),  # marks put in canonical order, nothing to compose
        ("é\u0323", "\u1eb9\u0301"),  # a precomposed letter taken apart to let a later mark compose first
        ("\u0915\u093c", "\u0915\u093c"),  # qa stays decomposed: its precomposed form is excluded from NFC
        ("\u0928\u093c", "\u0929"),  # na + nukta composes
        ("\u095b", "\u091c\u093c"),  # precomposed za comes apart
        ("e\u0301", "é"),
        ("\u1112\u1161\u11ab", "한"),  # conjoining jamo compose algorithmically
        ("\u2000x\u3000 y\t", "x y"),
        ("क्\u200dष", "क्\u200dष"),
    ],
)
def test_rows_needing_normalisation_are_found(text, expected):
    out = check(row(src="Hello " + text + " x", tgt="नमस्ते दुनिया"), max_chars=2000)
    assert isinstance(out, Pair)
    assert out.src == normalize_text("Hello " + text + " x") == f"Hello {expected} x".replace("  ", " ")


def test_lone_surrogate_is_rejected_in_row_order():
    source = SourceConfig(name="s", kind="http", uri="http://x")
    validator = Validator(source, DIRECTIONS, max_chars=50, min_script_fraction=0.5)
    rows = [row(), row(tgt="नमस्ते\ud800"), None, row(src="x\x00"), row()]
    out = validator.check_batch([RawRecord({"i": i}, f"f:{i}", row=r) for i, r in enumerate(rows)])
    assert [(rec.ref, rej.reason, rej.detail) for rec, rej in out.rejections] == [
        ("f:1", "invalid_utf8", "field 'tgt' (tgt) holds a lone surrogate"),
        ("f:2", "malformed", "could not be parsed"),
        ("f:3", "control_character", "field 'src' (src) holds control character U+0000"),
    ]
    assert [p.id for p in out.pairs] == ["s:f:0", "s:f:4"]


def test_pair_keys_are_pair_key_of_each_row():
    pairs = [Pair("Hello", "नमस्ते", "eng_Latn", "hin_Deva", "s", "1"), Pair("", "", "eng_Latn", "hin_Deva", "s", "2"),
             Pair("😀 x", "y\x1fz", "eng_Latn", "hin_Deva", "s", "3")]
    table = pa.Table.from_pylist([vars_of(p) for p in pairs], schema=PAIR_SCHEMA)
    assert pair_keys(table).to_pylist() == [pair_key(p.src, p.tgt, p.src_lang, p.tgt_lang) for p in pairs]
    assert pair_keys(table.slice(1)).to_pylist() == [pair_key(p.src, p.tgt, p.src_lang, p.tgt_lang) for p in pairs[1:]]


def vars_of(pair: Pair) -> dict:
    return {name: getattr(pair, name) for name in PAIR_SCHEMA.names}


def test_column_shares_are_script_fraction_of_the_normalised_texts():
    texts = [t for t, _ in LANGUAGE_SAMPLE]
    codes = [c for _, c in LANGUAGE_SAMPLE]
    # Over a chunk's worth of rows too, so the column is checked in several pieces.
    many = (texts * (5000 // len(texts) + 1))[:5000]
    many_codes = (codes * (5000 // len(codes) + 1))[:5000]
    for column, langs in ((texts, codes), (many, many_codes)):
        checked = _check_column(pa.array(column, pa.string()), column, langs)
        assert checked.share.tolist() == [script_fraction(normalize_text(t), c) for t, c in zip(column, langs, strict=True)]
        assert checked.norm.to_pylist() == [normalize_text(t) for t in column]


# --- nested columns: dotted paths in `fields` ----------------------------------------------------------------------

NESTED = SourceConfig(
    name="hub", kind="hf", uri="x/y", fields={"src": "translation.en", "tgt": "translation.hi"},
    langs={"src": "eng_Latn", "tgt": "hin_Deva"},
)


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        ({"translation": {"en": "Hi"}}, "missing_field", "field 'translation.hi' (tgt) is missing: no 'hi' under 'translation'"),
        ({"translation": {"en": "Hi", "hi": None}}, "missing_field", "field 'translation.hi' (tgt) is missing: 'translation.hi' is null"),
        ({"en": "Hi", "hi": "नमस्ते"}, "missing_field", "field 'translation.en' (src) is missing: no 'translation' in the row"),
        ({"translation": ["Hi", "नमस्ते"]}, "missing_field", "field 'translation.en' (src) is missing: 'translation' is list, not an object"),
        ({"translation": {"en": "Hi", "hi": 7}}, "not_a_string", "field 'translation.hi' (tgt) is int"),
        ({"translation": {"en": "Hi", "hi": "namaste"}}, "wrong_script", "tgt is 0% in the script of hin_Deva (< 50%)"),
    ],
)
def test_a_dotted_field_names_its_path_when_a_row_lacks_it(data, reason, detail):
    out = check(data, source=NESTED)
    assert isinstance(out, Rejection)
    assert (out.reason, out.detail) == (reason, detail)


def test_dotted_fields_reach_into_nested_columns_and_a_dotted_column_name_wins():
    assert check({"translation": {"en": "Hi", "hi": "नमस्ते"}}, source=NESTED) == Pair(
        "Hi", "नमस्ते", "eng_Latn", "hin_Deva", "hub", "hub:f:1"
    )
    flat_with_dots = {"translation.en": "Flat", "translation.hi": "सपाट", "translation": {"en": "Deep", "hi": "गहरा"}}
    out = check(flat_with_dots, source=NESTED)
    assert isinstance(out, Pair) and (out.src, out.tgt) == ("Flat", "सपाट")
    langs_inside = SourceConfig(name="s", kind="http", uri="http://x", fields={
        "src": "pair.src.text", "tgt": "pair.tgt.text", "src_lang": "pair.src.lang", "tgt_lang": "pair.tgt.lang"})
    nested = {"pair": {"src": {"text": "Hello", "lang": "eng_Latn"}, "tgt": {"text": "வணக்கம்", "lang": "tam_Taml"}}}
    out = check(nested, source=langs_inside)
    assert isinstance(out, Skip) and out.direction == "eng_Latn-tam_Taml"
    nested["pair"]["tgt"] = {"text": "नमस्ते", "lang": "hin_Deva"}
    out = check(nested, source=langs_inside)
    assert isinstance(out, Pair) and out.tgt == "नमस्ते"


def test_nested_rows_are_checked_in_batches_in_row_order():
    validator = Validator(NESTED, DIRECTIONS, max_chars=50, min_script_fraction=0.5)
    rows = [{"translation": {"en": f"Sentence {i}", "hi": f"वाक्य {i}"}} for i in range(5)]
    rows[2] = {"translation": {"en": "No target"}}
    out = validator.check_batch([RawRecord({"i": i}, f"f:{i}", row=r) for i, r in enumerate(rows)])
    assert [p.id for p in out.pairs] == ["hub:f:0", "hub:f:1", "hub:f:3", "hub:f:4"]
    assert [(rec.ref, rej.reason) for rec, rej in out.rejections] == [("f:2", "missing_field")]
