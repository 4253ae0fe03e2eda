"""Language tags as corpora write them, mapped to FLORES-200 codes, and back to the suffixes files carry.

Parallel corpora name languages in several ways: ISO 639-1 (`hi`: OPUS, Samanantar), ISO 639-3 (`hin`),
BCP 47 with a region or script (`hi-IN`, `en_US`, `zh-Hant`: TMX's xml:lang), or the FLORES-200 code
itself (`hin_Deva`: AI4Bharat's BPCC). A script subtag must agree with the FLORES code's script (`hi-Latn`,
romanised Hindi, is not `hin_Deva`); a region only picks traditional Chinese (TW, HK, MO).
"""

from __future__ import annotations

import re
from functools import cache, lru_cache

from bhashaflow.core.languages import ISO_639_1, LANGUAGES, script_of

__all__ = ["ISO_639_1", "file_suffixes", "flores_code"]

# Other codes in use for them: macrolanguages (ori, nep, fas, ara, msa, swa), ISO 639-2/B and retired ones.
_ALIASES: dict[str, str] = {
    "ori": "ory_Orya",
    "nep": "npi_Deva",
    "pus": "pbt_Arab",
    "fas": "pes_Arab",
    "per": "pes_Arab",
    "ara": "arb_Arab",
    "msa": "zsm_Latn",
    "may": "zsm_Latn",
    "swa": "swh_Latn",
    "gre": "ell_Grek",
    "chi": "zho_Hans",
    "ger": "deu_Latn",
    "fre": "fra_Latn",
    "dut": "nld_Latn",
    "tib": "bod_Tibt",
    "iw": "heb_Hebr",
    "in": "ind_Latn",
}
_TRADITIONAL_REGIONS = frozenset({"TW", "HK", "MO"})
_SUBTAGS = re.compile(r"[-_]")


@cache
def _codes_by_language() -> dict[str, list[str]]:
    """Every language subtag (ISO 639-1, 639-3, aliases) -> its FLORES codes, the usual script first."""
    by_prefix: dict[str, list[str]] = {}
    for code in LANGUAGES:
        by_prefix.setdefault(code.split("_", 1)[0], []).append(code)
    usual = {iso: code for code, iso in ISO_639_1.items()} | _ALIASES
    out: dict[str, list[str]] = {}
    for tag, code in [*usual.items(), *((prefix, codes[0]) for prefix, codes in by_prefix.items())]:
        codes = by_prefix[code.split("_", 1)[0]]
        preferred = usual.get(tag) or next((c for c in codes if c in ISO_639_1), codes[0])
        out[tag] = [preferred] + [c for c in codes if c != preferred]
    return out


def _well_formed(subtags: list[str]) -> bool:
    """Whether the subtags after the language read as BCP 47's, in its order: at most one script (`Deva`), at most
    one region (`IN`, `419`), then variants (`valencia`, `1996`); an extension (`u-...`, `x-...`) ends the check.
    `eng_Latn-hin_Deva`, a direction, is not a language tag."""
    stage = 0  # 1: script seen, 2: region seen, 3: variants
    for sub in subtags:
        if len(sub) == 1 and sub.isalnum():
            return True
        if stage < 1 and len(sub) == 4 and sub.isalpha():
            stage = 1
        elif stage < 2 and ((len(sub) == 2 and sub.isalpha()) or (len(sub) == 3 and sub.isdigit())):
            stage = 2
        elif sub.isalnum() and (5 <= len(sub) <= 8 or (len(sub) == 4 and sub[0].isdigit())):
            stage = 3
        else:
            return False
    return True


@lru_cache(maxsize=4096)  # a memory's tuvs repeat a handful of tags
def flores_code(tag: str | None) -> str | None:
    """The FLORES-200 code of a language tag (`hi`, `hi-IN`, `hin`, `hin_Deva`, `zh-TW`), None when unknown.

    Args:
        tag: the tag as written (case does not matter).
    """
    if not tag:
        return None
    tag = tag.strip()
    if tag in LANGUAGES:
        return tag
    parts = [p for p in _SUBTAGS.split(tag) if p]
    if not parts or not _well_formed(parts[1:]):
        return None
    codes = _codes_by_language().get(parts[0].lower())
    if not codes:
        return None
    script = next((p.title() for p in parts[1:] if len(p) == 4 and p.isalpha()), None)
    if script is not None:
        return next((c for c in codes if script_of(c) == script), None)
    if any(p.upper() in _TRADITIONAL_REGIONS for p in parts[1:]) and "zho_Hant" in codes:
        return "zho_Hant"
    return codes[0]


def file_suffixes(code: str) -> list[str]:
    """The language suffixes a file of `code` may carry: the FLORES code, then the ISO 639-1 and 639-3 codes
    that stand for it (`hin_Deva` -> hin_Deva, hi, hin; `kas_Deva` -> kas_Deva only: `ks` is kas_Arab)."""
    tags = [code, ISO_639_1.get(code, ""), code.split("_", 1)[0]]
    return [t for t in dict.fromkeys(tags) if t and flores_code(t) == code]
