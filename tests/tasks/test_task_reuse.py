"""The cache keys of the per-direction tasks: the run's and the direction's, never the flow run's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bhashaflow.config import PipelineConfig, load_config
from bhashaflow.evaluation.chrf import ChrfScore
from bhashaflow.evaluation.evaluate import DirectionScores
from tasks.reuse import EVALUATE_CACHE, PROMOTE_CACHE, TRAIN_CACHE, RunScoped

REPO = Path(__file__).resolve().parents[2]
DIRECTION = "eng_Latn-hin_Deva"


def config(*overrides: str) -> PipelineConfig:
    return load_config(REPO / "configs" / "smoke.yaml", ["base_model=tiny", "workdir=/runs", *overrides])


def key(policy: RunScoped, **inputs: Any) -> str | None:
    return policy.compute_key(None, inputs, {})  # type: ignore[arg-type]  # the task context is not read


def test_the_training_key_names_the_step_and_direction_and_follows_the_run_and_what_it_reads() -> None:
    first = key(TRAIN_CACHE, config=config(), direction=DIRECTION)
    assert first is not None and first.startswith(f"train-{DIRECTION}-")
    assert key(TRAIN_CACHE, config=config(), direction=DIRECTION) == first  # any flow run, any host
    assert key(TRAIN_CACHE, config=config("evaluation.max_sentences=4"), direction=DIRECTION) == first
    assert key(TRAIN_CACHE, config=config("run_id=other"), direction=DIRECTION) != first
    assert key(TRAIN_CACHE, config=config("run_id=x", "training.max_steps=3"), direction=DIRECTION) != key(
        TRAIN_CACHE, config=config("run_id=x"), direction=DIRECTION
    )  # a fixed run id, trained otherwise
    assert key(TRAIN_CACHE, config=config(), direction="eng_Latn-tam_Taml") != first


def test_an_evaluation_is_keyed_by_the_adapters_bytes_and_its_settings(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "training_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"1")
    first = key(EVALUATE_CACHE, config=config(), direction=DIRECTION, candidate_uri=str(adapter))
    assert key(EVALUATE_CACHE, config=config(), direction=DIRECTION, candidate_uri=str(adapter)) == first
    assert (
        key(
            EVALUATE_CACHE, config=config("evaluation.max_sentences=4"), direction=DIRECTION, candidate_uri=str(adapter)
        )
        != first
    )
    (adapter / "adapter_model.safetensors").write_bytes(b"2")  # trained again under the same URI
    assert key(EVALUATE_CACHE, config=config(), direction=DIRECTION, candidate_uri=str(adapter)) != first


def test_who_produced_a_result_is_not_part_of_the_promotions_key() -> None:
    score = ChrfScore(chrf=40.0, chrf_pp=38.0, n=8, script_valid=1.0, signature_chrf="s", signature_chrf_pp="s")
    scores = DirectionScores(DIRECTION, base=score, candidate=score, host="host-a")
    inputs = {"config": config(), "direction": DIRECTION, "trained": None, "data_manifest_sha256": "0" * 64}
    first = key(PROMOTE_CACHE, scores=scores, **inputs)
    assert (
        key(PROMOTE_CACHE, scores=DirectionScores(DIRECTION, base=score, candidate=score, host="host-b"), **inputs)
        == first
    )
    other = ChrfScore(chrf=41.0, chrf_pp=39.0, n=8, script_valid=1.0, signature_chrf="s", signature_chrf_pp="s")
    assert key(PROMOTE_CACHE, scores=DirectionScores(DIRECTION, base=score, candidate=other), **inputs) != first
