"""FLORES-200 language codes, their scripts, and how much of a text is written in a script.

"Letters in a script" are counted the same way everywhere: a character is *own* when it lies in one of the
script's blocks (`SCRIPT_RANGES`, marks and signs included) and *foreign* when it is a letter (Unicode
category L, as RE2 defines it) outside them. `script_fraction` counts one text; `count_script_letters`
counts whole columns of code points at once for validation, with the same tables.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cache

import numpy as np

# Unicode blocks of the scripts used by the languages below (all in the BMP, which the column counts rely on).
SCRIPT_RANGES: dict[str, str] = {
    "Latn": "A-Za-z\u00c0-\u024f\u1e00-\u1eff",
    "Deva": "\u0900-\u097f\ua8e0-\ua8ff",
    "Beng": "\u0980-\u09ff",
    "Guru": "\u0a00-\u0a7f",
    "Gujr": "\u0a80-\u0aff",
    "Orya": "\u0b00-\u0b7f",
    "Taml": "\u0b80-\u0bff",
    "Telu": "\u0c00-\u0c7f",
    "Knda": "\u0c80-\u0cff",
    "Mlym": "\u0d00-\u0d7f",
    "Sinh": "\u0d80-\u0dff",
    "Olck": "\u1c50-\u1c7f",
    "Mtei": "\uabc0-\uabff",
    "Tibt": "\u0f00-\u0fff",
    "Arab": "\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff",
    "Cyrl": "\u0400-\u04ff",
    "Grek": "\u0370-\u03ff",
    "Hebr": "\u0590-\u05ff",
    "Thai": "\u0e00-\u0e7f",
    "Hans": "\u3400-\u4dbf\u4e00-\u9fff",
    "Hant": "\u3400-\u4dbf\u4e00-\u9fff",
    "Jpan": "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff",
    "Hang": "\uac00-\ud7af\u1100-\u11ff",
}

# FLORES-200 codes accepted in data and configs: the Indic languages in FLORES-200, and the
# widely used languages a parallel corpus often carries beside them.
LANGUAGES: dict[str, str] = {
    "eng_Latn": "English",
    "asm_Beng": "Assamese",
    "awa_Deva": "Awadhi",
    "ben_Beng": "Bengali",
    "bho_Deva": "Bhojpuri",
    "guj_Gujr": "Gujarati",
    "hin_Deva": "Hindi",
    "hne_Deva": "Chhattisgarhi",
    "kan_Knda": "Kannada",
    "kas_Arab": "Kashmiri (Arabic)",
    "kas_Deva": "Kashmiri (Devanagari)",
    "mag_Deva": "Magahi",
    "mai_Deva": "Maithili",
    "mal_Mlym": "Malayalam",
    "mar_Deva": "Marathi",
    "mni_Beng": "Meitei (Bengali)",
    "npi_Deva": "Nepali",
    "ory_Orya": "Odia",
    "pan_Guru": "Eastern Panjabi",
    "san_Deva": "Sanskrit",
    "sat_Olck": "Santali",
    "sin_Sinh": "Sinhala",
    "snd_Arab": "Sindhi",
    "tam_Taml": "Tamil",
    "tel_Telu": "Telugu",
    "urd_Arab": "Urdu",
    "bod_Tibt": "Standard Tibetan",
    "pbt_Arab": "Southern Pashto",
    "pes_Arab": "Western Persian",
    "arb_Arab": "Modern Standard Arabic",
    "fra_Latn": "French",
    "deu_Latn": "German",
    "spa_Latn": "Spanish",
    "por_Latn": "Portuguese",
    "ita_Latn": "Italian",
    "nld_Latn": "Dutch",
    "ind_Latn": "Indonesian",
    "zsm_Latn": "Malay",
    "vie_Latn": "Vietnamese",
    "tur_Latn": "Turkish",
    "swh_Latn": "Swahili",
    "rus_Cyrl": "Russian",
    "ukr_Cyrl": "Ukrainian",
    "ell_Grek": "Greek",
    "heb_Hebr": "Hebrew",
    "tha_Thai": "Thai",
    "zho_Hans": "Chinese (Simplified)",
    "zho_Hant": "Chinese (Traditional)",
    "jpn_Jpan": "Japanese",
    "kor_Hang": "Korean",
}


# ISO 639-1 codes of the FLORES-200 languages that have one.
ISO_639_1: dict[str, str] = {
    "eng_Latn": "en",
    "asm_Beng": "as",
    "ben_Beng": "bn",
    "guj_Gujr": "gu",
    "hin_Deva": "hi",
    "kan_Knda": "kn",
    "kas_Arab": "ks",
    "mal_Mlym": "ml",
    "mar_Deva": "mr",
    "npi_Deva": "ne",
    "ory_Orya": "or",
    "pan_Guru": "pa",
    "san_Deva": "sa",
    "sin_Sinh": "si",
    "snd_Arab": "sd",
    "tam_Taml": "ta",
    "tel_Telu": "te",
    "urd_Arab": "ur",
    "bod_Tibt": "bo",
    "pbt_Arab": "ps",
    "pes_Arab": "fa",
    "arb_Arab": "ar",
    "fra_Latn": "fr",
    "deu_Latn": "de",
    "spa_Latn": "es",
    "por_Latn": "pt",
    "ita_Latn": "it",
    "nld_Latn": "nl",
    "ind_Latn": "id",
    "zsm_Latn": "ms",
    "vie_Latn": "vi",
    "tur_Latn": "tr",
    "swh_Latn": "sw",
    "rus_Cyrl": "ru",
    "ukr_Cyrl": "uk",
    "ell_Grek": "el",
    "heb_Hebr": "he",
    "tha_Thai": "th",
    "zho_Hans": "zh",
    "jpn_Jpan": "ja",
    "kor_Hang": "ko",
}


def script_of(code: str) -> str:
    """The script part of a FLORES-200 code (`hin_Deva` -> `Deva`)."""
    return code.rsplit("_", 1)[-1]


def parse_direction(direction: str) -> tuple[str, str]:
    """Split `eng_Latn-hin_Deva` into its two codes, refusing unknown ones."""
    parts = direction.split("-")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"direction {direction!r} is not of the form src_Script-tgt_Script")
    for code in parts:
        if code not in LANGUAGES:
            raise ValueError(f"direction {direction!r}: unknown FLORES-200 language code {code!r}")
    if parts[0] == parts[1]:
        raise ValueError(f"direction {direction!r}: source and target are the same language")
    return parts[0], parts[1]


BMP_SIZE = 0x10000
_FOREIGN = np.int64(1 << 32)  # own and foreign counts share one int64: own in the low half, foreign in the high


def _block_ranges(block: str) -> list[tuple[int, int]]:
    r"""The code point ranges of a `SCRIPT_RANGES` character class body ("A-Za-z\u00c0-\u024f")."""
    ranges, i = [], 0
    while i < len(block):
        if i + 2 < len(block) and block[i + 1] == "-":
            ranges.append((ord(block[i]), ord(block[i + 2])))
            i += 3
        else:
            ranges.append((ord(block[i]), ord(block[i])))
            i += 1
    return ranges


@cache
def _own_table(script: str) -> np.ndarray:
    """Per BMP code point, whether it lies in one of `script`'s blocks."""
    own = np.zeros(BMP_SIZE, dtype=bool)
    for lo, hi in _block_ranges(SCRIPT_RANGES[script]):
        if hi >= BMP_SIZE:
            raise ValueError(f"script {script}: blocks above U+FFFF need count_script_letters to look them up")
        own[lo : hi + 1] = True
    return own


def _re2_letters(code_points: Sequence[int]) -> np.ndarray:
    r"""Whether each code point is a letter by RE2's `\p{L}`: the class the validation kernels always used."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # Surrogates cannot be encoded; they are never letters.
    chars = pa.array(["" if 0xD800 <= cp <= 0xDFFF else chr(cp) for cp in code_points], pa.string())
    return np.asarray(pc.match_substring_regex(chars, r"\p{L}").to_numpy(zero_copy_only=False), dtype=bool)


@cache
def _letter_table() -> np.ndarray:
    """Per BMP code point, whether it is a letter (Unicode category L)."""
    return _re2_letters(range(BMP_SIZE))


_astral_letters: dict[int, bool] = {}
_astral_lock = threading.Lock()


def _astral_letters_of(code_points: np.ndarray) -> np.ndarray:
    """Whether each code point above the BMP is a letter; looked up once per distinct code point."""
    unique = np.unique(code_points)
    with _astral_lock:
        missing = [int(cp) for cp in unique if int(cp) not in _astral_letters]
        if missing:
            _astral_letters.update(zip(missing, _re2_letters(missing).tolist(), strict=True))
        flags = np.array([_astral_letters[int(cp)] for cp in unique], dtype=bool)
    return flags[np.searchsorted(unique, code_points)]


@cache
def _weights(script: str) -> np.ndarray:
    """Per BMP code point, what it adds to a text's packed (own, foreign) letter counts for `script`."""
    own = _own_table(script)
    return own.astype(np.int64) + (_letter_table() & ~own).astype(np.int64) * _FOREIGN


def _row_sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sum of `values[starts[i]:starts[i + 1]]` for every row i."""
    sums = np.zeros(len(starts) - 1, values.dtype)
    # Only non-empty rows: reduceat gives an empty row the value at its start, and needs starts in range.
    nonempty = np.flatnonzero(starts[1:] > starts[:-1])
    if nonempty.size:
        sums[nonempty] = np.add.reduceat(values, starts[nonempty])
    return sums


def count_script_letters(
    code_points: np.ndarray, starts: np.ndarray, codes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per text, its letters in its language's script and its letters of other scripts, as `script_fraction` counts.

    Texts of a language whose script has no known blocks count (0, 0).

    Args:
        code_points: the code points of all texts, one after another (np.intp indexes without a conversion).
        starts: where each text starts in `code_points`, plus the end (length: texts + 1).
        codes: each text's FLORES-200 language code.
    """
    scripts = [script_of(code) for code in dict.fromkeys(codes)]
    known = [s for s in dict.fromkeys(scripts) if s in SCRIPT_RANGES]
    n = len(starts) - 1
    if not known or not len(code_points):
        return np.zeros(n, np.int64), np.zeros(n, np.int64)
    # np.intp code points index the tables without a conversion; above the BMP clips to U+FFFF (no letter).
    if len(known) == 1 and len(scripts) == 1:
        packed = np.take(_weights(known[0]), code_points, mode="clip")
    else:
        # Rows of several scripts: pick each character's table by its row's script (unknown scripts: zeros).
        index = {s: i for i, s in enumerate(known)}
        tables = np.stack([_weights(s) for s in known] + [np.zeros(BMP_SIZE, np.int64)])
        row_table = np.array([index.get(script_of(code), len(known)) for code in codes], dtype=np.intp)
        bmp = np.minimum(code_points, BMP_SIZE - 1) if code_points.dtype.itemsize > 2 else code_points
        packed = tables[np.repeat(row_table, np.diff(starts)), bmp]
    if code_points.dtype.itemsize > 2 and code_points.max() >= BMP_SIZE:
        astral = np.flatnonzero(code_points >= BMP_SIZE)
        if astral.size:
            # No script block lies above the BMP: a letter there is always foreign.
            packed[astral] = np.where(_astral_letters_of(code_points[astral]), _FOREIGN, 0)
            if len(scripts) > 1:
                rows = np.searchsorted(starts, astral, side="right") - 1
                unknown = np.array([script_of(codes[r]) not in SCRIPT_RANGES for r in rows], dtype=bool)
                packed[astral[unknown]] = 0
    sums = _row_sums(packed, starts)
    return sums & (_FOREIGN - 1), sums >> 32


def script_fraction(text: str, code: str) -> float:
    """Share of the letters of `text` that are in `code`'s script; 1.0 when it has no letters."""
    script = script_of(code)
    if script not in SCRIPT_RANGES:
        return 1.0
    own_table, letters = _own_table(script), _letter_table()
    n_own = n_foreign = 0
    for ch in text:
        cp = ord(ch)
        if cp < BMP_SIZE:
            if own_table[cp]:
                n_own += 1
            elif letters[cp]:
                n_foreign += 1
        elif _astral_letters_of(np.array([cp]))[0]:
            n_foreign += 1
    if n_own + n_foreign == 0:
        return 1.0
    return n_own / (n_own + n_foreign)


def in_script(text: str, code: str, min_fraction: float = 0.5) -> bool:
    """Whether `text` is written mostly in the script of language `code`."""
    return script_fraction(text, code) >= min_fraction
