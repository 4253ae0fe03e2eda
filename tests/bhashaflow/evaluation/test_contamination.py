"""Known contamination: a base that saw the evaluation split in training is named, with what it means."""

from __future__ import annotations

from bhashaflow.evaluation.contamination import contamination_for
from bhashaflow.modeling.families import unsupported_reason
from bhashaflow.pipeline.report import markdown_report


def test_bloomz_saw_flores_dev_and_devtest() -> None:
    for base in ("bigscience/bloomz-560m", "bigscience/bloomz-7b1-mt", "/models/bloomz-560m", "bigscience/mt0-xl"):
        for split in ("dev", "devtest"):
            known = contamination_for(base, "FLORES-200", split)
            assert known is not None, (base, split)
            assert f"its {split} scores measure memory" in known.message(base, split)
    assert contamination_for("bigscience/bloomz-560m", "some other set", "devtest") is None


def test_bases_without_a_known_contamination_pass() -> None:
    for base in (
        "facebook/nllb-200-distilled-600M",
        "bigscience/bloom-560m",
        "builtin:tiny-seq2seq",
        "Helsinki-NLP/opus-mt-en-hi",
    ):
        assert contamination_for(base, "FLORES-200", "devtest") is None, base


def test_the_report_leads_with_the_notes() -> None:
    from tests.bhashaflow.pipeline.test_report import result

    row = result()
    text = markdown_report("run-1", {"eng_Latn-hin_Deva": row}, "chrf.png", notes=["base saw devtest"])
    lines = text.splitlines()
    assert lines[2] == "> **Note:** base saw devtest" and lines[0].startswith("# adapter-pipeline run")
    assert "Note" not in markdown_report("run-1", {"eng_Latn-hin_Deva": row}, "chrf.png")


def test_indictrans2_is_known_by_hub_id_or_config() -> None:
    assert unsupported_reason("ai4bharat/indictrans2-indic-en-1B") is not None
    assert unsupported_reason("/models/mine", {"model_type": "IndicTrans"}) is not None
    assert unsupported_reason("/models/mine", {"architectures": ["IndicTransForConditionalGeneration"]}) is not None
    assert unsupported_reason("facebook/nllb-200-distilled-600M", {"model_type": "m2m_100"}) is None
