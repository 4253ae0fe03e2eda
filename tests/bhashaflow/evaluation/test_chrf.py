"""chrF scoring against sacrebleu on real FLORES-200 devtest sentences, and the target-script share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
from sacrebleu.metrics import CHRF

from bhashaflow.evaluation.chrf import ChrfScore, score_chrf, script_valid_share, write_scores

DEVTEST = Path(__file__).resolve().parents[3] / "data" / "flores200" / "devtest"


def _flores(code: str, n: int = 20) -> list[str]:
    return (DEVTEST / f"{code}.devtest").read_text(encoding="utf-8").splitlines()[:n]


def _perturb(refs: list[str]) -> list[str]:
    """Hypotheses of varied quality: exact, words dropped, words reordered, truncated, empty."""
    out = []
    for i, ref in enumerate(refs):
        words = ref.split()
        match i % 5:
            case 0:
                out.append(ref)
            case 1:
                out.append(" ".join(words[::2]))
            case 2:
                out.append(" ".join(reversed(words)))
            case 3:
                out.append(ref[: len(ref) // 3])
            case _:
                out.append("")
    return out


def test_chrf_equals_sacrebleu_corpus_score_on_flores_hindi() -> None:
    refs = _flores("hin_Deva")
    hyps = _perturb(refs)

    score = score_chrf(hyps, refs, "hin_Deva")

    assert score.n == 20
    assert score.chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    assert score.chrf_pp == pytest.approx(CHRF(word_order=2).corpus_score(hyps, [refs]).score, abs=1e-9)
    # chrF++ adds word unigrams and bigrams, so it is a different number on the same outputs.
    assert abs(score.chrf_pp - score.chrf) > 0.1
    assert 20 < score.chrf < 90
    assert score.signature_chrf == f"nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:{sacrebleu.__version__}"
    assert score.signature_chrf_pp == f"nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|version:{sacrebleu.__version__}"
    # Four of the five perturbations keep Devanagari; the empty ones (every fifth) do not count.
    assert score.script_valid == pytest.approx(16 / 20)


def test_chrf_is_corpus_level_not_mean_of_sentences() -> None:
    refs = _flores("hin_Deva")
    hyps = _perturb(refs)
    sentence_mean = sum(sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(hyps, refs, strict=True)) / len(refs)

    assert abs(score_chrf(hyps, refs, "hin_Deva").chrf - sentence_mean) > 1.0


def test_perfect_and_empty_translations_score_100_and_0() -> None:
    refs = _flores("tam_Taml", 5)

    perfect = score_chrf(refs, refs, "tam_Taml")
    empty = score_chrf([""] * 5, refs, "tam_Taml")

    assert (perfect.chrf, perfect.chrf_pp, perfect.script_valid) == (100.0, 100.0, 1.0)
    assert (empty.chrf, empty.chrf_pp, empty.script_valid) == (0.0, 0.0, 0.0)


def test_script_share_counts_latin_chinese_and_empty_outputs_as_invalid_for_gujarati() -> None:
    refs = _flores("guj_Gujr")
    english = _flores("eng_Latn")
    hyps = list(refs)
    hyps[1] = english[1]  # Latin
    hyps[4] = english[4]
    hyps[7] = english[7]
    hyps[10] = "这是一个测试句子，模型输出了中文。"  # Chinese
    hyps[13] = "我们在古吉拉特语测试中得到了中文"
    hyps[16] = "   "  # blank
    hyps[18] = refs[18] + " (COVID-19 vaccine)"  # mostly Gujarati with a few Latin words: still valid

    score = score_chrf(hyps, refs, "guj_Gujr")

    assert score.script_valid == pytest.approx(14 / 20, abs=1e-12)
    assert script_valid_share(hyps, "guj_Gujr") == 14 / 20
    # chrF alone barely moves: the script share is what exposes the wrong-script outputs.
    assert score.chrf > 60


def test_score_chrf_refuses_mismatched_empty_and_unknown_inputs() -> None:
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        score_chrf(["a", "b"], ["a"], "eng_Latn")
    with pytest.raises(ValueError, match="no hypotheses"):
        score_chrf([], [], "eng_Latn")
    with pytest.raises(ValueError, match="unknown FLORES-200 language code 'xx_Latn'"):
        score_chrf(["a"], ["a"], "xx_Latn")


def test_write_scores_writes_scores_json_and_line_aligned_hypotheses(tmp_path: Path) -> None:
    sources = _flores("eng_Latn", 12)
    refs = _flores("ben_Beng", 12)
    hyps = list(refs)
    hyps[2] = "first line\nsecond line"  # a generated newline must not shift later lines
    score = score_chrf(hyps, refs, "ben_Beng")

    uri = write_scores(str(tmp_path / "eval" / "eng_Latn-ben_Beng"), score, hyps, refs, sources)

    out = tmp_path / "eval" / "eng_Latn-ben_Beng"
    assert uri == str(out / "scores.json")
    saved = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert ChrfScore(**{k: v for k, v in saved.items() if k != "samples"}) == score
    assert len(saved["samples"]) == 10
    assert saved["samples"][0] == {"source": sources[0], "reference": refs[0], "hypothesis": hyps[0]}
    lines = (out / "hypotheses.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # trailing newline
    assert lines[:-1] == hyps[:2] + ["first line second line"] + hyps[3:]
    assert sorted(p.name for p in out.iterdir()) == ["hypotheses.txt", "scores.json"]
