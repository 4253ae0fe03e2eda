"""The pipeline report: the per-direction JSON contract, the markdown table, the terminal table."""

from __future__ import annotations

from typing import Any

from bhashaflow.evaluation.chrf import ChrfScore
from bhashaflow.evaluation.evaluate import DirectionScores
from bhashaflow.pipeline.report import direction_result, format_table, markdown_report, table_rows
from bhashaflow.registry.promotion import PromotionOutcome
from bhashaflow.training.loop import TrainResult

SCORE = ChrfScore(
    chrf=20.0, chrf_pp=18.5, script_valid=1.0, n=200, signature_chrf="nrefs:1", signature_chrf_pp="nrefs:1|case:mixed"
)


def result(**trained: Any) -> dict[str, Any]:
    train = TrainResult(
        adapter_dir="runs/x/adapter",
        steps=500,
        resumed_from=None,
        final_loss=1.0,
        tokens_per_s=1.0,
        files=[],
        decontaminated=2,
        **trained,
    )
    base = ChrfScore(**{**SCORE.to_dict(), "chrf_pp": 4.0})
    scores = DirectionScores("eng_Latn-hin_Deva", base=base, candidate=SCORE)
    promotion = PromotionOutcome("v0001", True, "promoted", "registry/x/v0001")
    return direction_result(train, scores, promotion)


def test_the_result_carries_the_validation_slice_and_the_candidate_step() -> None:
    validated = result(validation_pairs=50, best_step=350, stopped_early=True)
    assert (validated["validation_pairs"], validated["best_step"], validated["stopped_early"]) == (50, 350, True)
    plain = result()
    assert (plain["validation_pairs"], plain["best_step"], plain["stopped_early"]) == (0, None, False)
    assert plain["candidate_chrf_pp"] == 18.5 and plain["steps"] == 500


def test_markdown_and_table_rows_show_the_validation_pairs_and_the_candidate_step() -> None:
    directions = {
        "eng_Latn-hin_Deva": result(validation_pairs=50, best_step=350, stopped_early=True),
        "eng_Latn-tam_Taml": result(),
    }
    text = markdown_report("demo-1", directions, "runs/chrf.png")
    assert "| direction | candidate step | validation pairs | decontaminated | incumbent |" in text
    assert "| eng_Latn-hin_Deva | 350 of 500, stopped early | 50 | 2 | none yet |" in text
    assert "| eng_Latn-tam_Taml | 500 (last) | 0 | 2 | none yet |" in text
    assert "eng_Latn-hin_Deva" in format_table(directions)


def test_the_tables_read_as_words_and_fit_the_ui() -> None:
    """Human headers, chrF++ to one decimal, shares as percents, the incumbent named; few columns per table."""
    directions = {"eng_Latn-hin_Deva": result(), "eng_Latn-tam_Taml": result()}
    directions["eng_Latn-tam_Taml"].update(
        incumbent_chrf_pp=17.25, incumbent_version="v0003", promoted=False, script_valid=0.875
    )
    rows = table_rows(directions)
    assert rows[0] == {
        "direction": "eng_Latn-hin_Deva",
        "base chrF++": "4.0",
        "incumbent chrF++": "none yet",
        "incumbent version": "none yet",
        "candidate chrF++": "18.5",
        "script valid": "100%",
        "promoted": "yes, v0001",
    }
    assert rows[1]["incumbent chrF++"] == "17.2" and rows[1]["incumbent version"] == "v0003"  # 17.25 rounds half-even
    assert (rows[1]["script valid"], rows[1]["promoted"]) == ("88%", "no (v0001 kept as a candidate)")
    text = markdown_report("demo-1", directions, "runs/chrf.png")
    assert "| direction | base chrF++ | incumbent chrF++ | candidate chrF++ | script valid | promoted |" in text
    assert "| eng_Latn-hin_Deva | 4.0 | none yet | 18.5 | 100% | yes, v0001 |" in text
    assert "| eng_Latn-tam_Taml | 4.0 | 17.2 | 18.5 | 88% | no (v0001 kept) |" in text
    tables = [line for line in text.splitlines() if line.startswith("| direction |")]
    assert len(tables) == 2 and all(line.count("|") <= 7 for line in tables)  # direction + at most 5 columns each
    assert "held-out corrections" not in text


def test_the_held_out_corrections_are_a_table_of_their_own() -> None:
    directions = {"eng_Latn-hin_Deva": result()}
    directions["eng_Latn-hin_Deva"].update(
        corrections_sentences=40, base_corrections_chrf_pp=30.04, candidate_corrections_chrf_pp=35.56
    )
    text = markdown_report("loop-1", directions, "runs/chrf.png")
    assert (
        "chrF++ on the held-out corrections:\n\n| direction | sentences | base chrF++ | incumbent chrF++ | "
        "candidate chrF++ |\n|---|---:|---:|---:|---:|\n| eng_Latn-hin_Deva | 40 | 30.0 | none yet | 35.6 |" in text
    )
