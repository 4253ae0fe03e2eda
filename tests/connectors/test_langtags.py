"""Language tags as corpora write them, mapped to FLORES-200 codes and back to the suffixes files carry."""

from __future__ import annotations

import pytest

from bhashaflow.core.languages import LANGUAGES
from connectors.langtags import ISO_639_1, file_suffixes, flores_code


@pytest.mark.parametrize(
    ("tag", "code"),
    [
        ("en", "eng_Latn"),
        ("en-US", "eng_Latn"),
        ("EN_gb", "eng_Latn"),
        ("eng", "eng_Latn"),
        ("eng_Latn", "eng_Latn"),
        ("hi", "hin_Deva"),
        ("hi-IN", "hin_Deva"),
        ("HI", "hin_Deva"),
        ("hin", "hin_Deva"),
        ("hin_Deva", "hin_Deva"),
        ("ta-IN", "tam_Taml"),
        ("ne", "npi_Deva"),
        ("nep", "npi_Deva"),
        ("or", "ory_Orya"),
        ("ori", "ory_Orya"),
        ("ks", "kas_Arab"),
        ("ks-Deva", "kas_Deva"),
        ("kas_Deva", "kas_Deva"),
        ("pa-Guru-IN", "pan_Guru"),
        ("zh", "zho_Hans"),
        ("zh-CN", "zho_Hans"),
        ("zh-TW", "zho_Hant"),
        ("zh-Hant", "zho_Hant"),
        ("fa-IR", "pes_Arab"),
        ("iw", "heb_Hebr"),
        ("sat-Olck", "sat_Olck"),
        ("es-419", "spa_Latn"),
        ("en-GB-oxendict", "eng_Latn"),
        ("en-u-ca-buddhist", "eng_Latn"),
        # A direction, or subtags out of BCP 47's order, is no language tag (it once read as its first language).
        ("eng_Latn-hin_Deva", None),
        ("hin_Deva-eng_Latn", None),
        ("hi-IN-IN", None),
        ("en-Latn-Latn", None),
        ("hi-IN-Deva", None),
        ("hi/..", None),
        ("hi-Latn", None),
        ("mni-Mtei", None),
        ("xx", None),
        ("x-klingon", None),
        ("", None),
        (None, None),
        ("-", None),
    ],
)
def test_tags_map_to_flores_codes(tag: str | None, code: str | None) -> None:
    assert flores_code(tag) == code


def test_every_language_is_found_by_its_own_code_and_its_iso_639_1_code() -> None:
    assert all(flores_code(code) == code for code in LANGUAGES)
    assert all(flores_code(iso) == code for code, iso in ISO_639_1.items())
    assert set(ISO_639_1) <= set(LANGUAGES)


def test_file_suffixes_stand_only_for_their_own_language() -> None:
    assert file_suffixes("eng_Latn") == ["eng_Latn", "en", "eng"]
    assert file_suffixes("hin_Deva") == ["hin_Deva", "hi", "hin"]
    assert file_suffixes("kas_Deva") == ["kas_Deva"]  # ks and kas are Kashmiri in Arabic script
    assert file_suffixes("zho_Hant") == ["zho_Hant"]
    assert file_suffixes("awa_Deva") == ["awa_Deva", "awa"]  # no ISO 639-1 code
