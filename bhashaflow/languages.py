"""FLORES-200 language codes, their scripts, and how much of a text is written in a script."""

from __future__ import annotations

import re
from functools import cache

# Unicode blocks of the scripts used by the languages below.
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


def script_of(code: str) -> str:
    """The script part of a FLORES-200 code (`hin_Deva` -> `Deva`)."""
    return code.rsplit("_", 1)[-1]


def is_known(code: str) -> bool:
    return code in LANGUAGES


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


@cache
def _patterns(script: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    block = SCRIPT_RANGES[script]
    # Letters and marks of the script; and letters of any other script (\w minus digits and '_').
    return re.compile(f"[{block}]"), re.compile(f"[^\\W\\d_{block}]")


def script_regexes(code: str) -> tuple[str, str] | None:
    """RE2 patterns (for pyarrow.compute) of `code`'s script characters and of letters of any other script.

    They count what `script_fraction` counts, for whole columns at once; None for an unknown script.
    """
    block = SCRIPT_RANGES.get(script_of(code))
    if block is None:
        return None
    re2_block = re.sub(r"[^\x00-\x7f]", lambda m: f"\\x{{{ord(m.group()):04x}}}", block)
    return f"[{re2_block}]", f"[^\\P{{L}}{re2_block}]"


def script_fraction(text: str, code: str) -> float:
    """Share of the letters of `text` that are in `code`'s script; 1.0 when it has no letters."""
    script = script_of(code)
    if script not in SCRIPT_RANGES:
        return 1.0
    own, foreign = _patterns(script)
    n_own = len(own.findall(text))
    n_foreign = len(foreign.findall(text))
    if n_own + n_foreign == 0:
        return 1.0
    return n_own / (n_own + n_foreign)


def in_script(text: str, code: str, min_fraction: float = 0.5) -> bool:
    """Whether `text` is written mostly in the script of language `code`."""
    return script_fraction(text, code) >= min_fraction
