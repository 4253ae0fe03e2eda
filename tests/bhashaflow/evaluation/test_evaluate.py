"""evaluate_chrf: a long evaluation goes on past a batch that runs out of memory, with the same score."""

from __future__ import annotations

from pathlib import Path

from tiny_models import dev_lines

from bhashaflow.config import EvaluationConfig
from bhashaflow.core.memory import AllocationCap
from bhashaflow.evaluation.evaluate import EvalSet, evaluate_chrf
from bhashaflow.modeling.loading import load_base


def test_an_evaluation_batch_that_runs_out_of_memory_is_halved_with_the_same_score(
    tiny_bases: dict[str, Path], tmp_path: Path
) -> None:
    lm = load_base(str(tiny_bases["seq2seq"]), languages=[])
    eval_set = EvalSet("eng_Latn-hin_Deva", dev_lines("eng_Latn", 12), dev_lines("hin_Deva", 12))
    evaluation = EvaluationConfig(batch_size=12, max_new_tokens=8)  # type: ignore[call-arg]
    with AllocationCap(None) as free:
        expected = evaluate_chrf(lm, eval_set, evaluation)
    with AllocationCap(free.largest // 5) as cap:  # 12 do not fit, nor 6
        got = evaluate_chrf(lm, eval_set, evaluation, out_dir=str(tmp_path / "scores"))
    assert cap.raised >= 2
    assert got == expected
    assert len((tmp_path / "scores" / "hypotheses.txt").read_text().splitlines()) == 12
