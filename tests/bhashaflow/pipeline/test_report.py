"""The pipeline report: the per-direction JSON contract, the markdown table, the terminal table."""

from __future__ import annotations

from typing import Any

from bhashaflow.evaluation.chrf import ChrfScore
from bhashaflow.evaluation.evaluate import DirectionScores
from bhashaflow.pipeline.report import direction_result, format_table, markdown_report, table_rows
from bhashaflow.registry.promotion import PromotionOutcome
from bhashaflow.training.loop import TrainResult

SCORE = ChrfScore(chrf=20.0, chrf_pp=18.5, script_valid=1.0, n=200, signature_chrf="nrefs:1", signature_chrf_pp="nrefs:1|case:mixed")


def result(**trained: Any) -> dict[str, Any]:
    train = TrainResult(adapter_dir="runs/x/adapter", steps=500, resumed_from=None, final_loss=1.0, tokens_per_s=1.0,
                        files=[], decontaminated=2, **trained)  # fmt: skip
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
    directions = {"eng_Latn-hin_Deva": result(validation_pairs=50, best_step=350, stopped_early=True),
                  "eng_Latn-tam_Taml": result()}  # fmt: skip
    text = markdown_report("demo-1", directions, "runs/chrf.png")
    assert "| validation pairs | candidate step |" in text
    assert "| 50 | 350 of 500, stopped early |" in text
    assert "| 0 | 500 (last) |" in text
    rows = table_rows(directions)
    assert [(r["validation_pairs"], r["best_step"]) for r in rows] == [(50, 350), (0, None)]
    assert "eng_Latn-hin_Deva" in format_table(directions)
