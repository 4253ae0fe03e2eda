"""The feedback-loop flow on a real Prefect server: served episodes with corrections are exported, read back by
an rl_logs source, trained with CPO, scored on FLORES and on the held-out corrections, and gated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tiny_models import dev_lines

from bhashaflow.config import config_from_dict
from bhashaflow.episodes.store import EpisodeStore, NewEpisode

DIRECTION = "eng_Latn-hin_Deva"
N = 60


def _serve(db: Path) -> None:
    """What the service leaves in its database: 60 episodes, 50 corrected by `web`, 5 by `other`, 5 not rated."""
    en, hi = dev_lines("eng_Latn", N), dev_lines("hin_Deva", N)
    with EpisodeStore(db) as store:
        ids = store.record(
            [
                NewEpisode(
                    direction=DIRECTION,
                    src_lang="eng_Latn",
                    tgt_lang="hin_Deva",
                    adapter_version="v0001",
                    base_model="tiny",
                    input=en[i],
                    output=f"गलत अनुवाद {i}",
                    latency_ms=1.0,
                    script_valid=True,
                    client="web" if i < 50 else "other",
                )
                for i in range(N)
            ]
        )
        for i, episode in enumerate(ids[:55]):
            client = "web" if i < 50 else "other"
            store.attach_feedback(episode, -0.5, hi[i], client=client, requested_by=client)


def _config(root: Path, base: str, run_id: str, training: dict[str, Any], promotion: dict[str, Any]) -> Any:
    flores = str(Path(__file__).resolve().parents[2] / "data" / "flores200")
    return config_from_dict(
        {
            "run_name": "loop",
            "run_id": run_id,
            "workdir": str(root / "runs"),
            "directions": [DIRECTION],
            "sources": [
                {
                    "name": "feedback",
                    "kind": "rl_logs",
                    "uri": str(root / "rl-logs"),
                    "trusted_clients": ["web"],
                    "heldout_share": 0.2,
                }
            ],
            "base_model": base,
            "training": {"objective": "cpo", "batch_size": 4, "checkpoint_every": 2, "max_length": 64, **training},
            "evaluation": {"flores_dir": flores, "max_sentences": 8, "batch_size": 8, "max_new_tokens": 8},
            "promotion": promotion,
            "registry": str(root / "registry"),
            "serving": {"episodes_db": str(root / "episodes.db")},
            "rl_export": {"target": str(root / "rl-logs")},
        }
    )


@pytest.fixture(scope="module")
def loop(prefect_api: str, tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from flows.feedback_loop import feedback_loop

    root = tmp_path_factory.mktemp("loop")
    _serve(root / "episodes.db")
    config = _config(root, tiny_base, "loop-{datetime}", {"max_steps": 4}, {"min_gain": 0.0, "max_regression": 100.0})
    return {"result": feedback_loop(config), "root": root, "base": tiny_base}


def test_the_loop_exports_ingests_the_corrections_and_counts_every_episode(loop: dict[str, Any]) -> None:
    result = loop["result"]
    assert result["export"]["exported"] == N
    fb = result["feedback"]["sources"]["feedback"]
    assert fb["read"] == N and fb["skipped_by_reason"] == {"no_correction": 5, "untrusted_client": 5}
    counts = result["feedback"]["directions"][DIRECTION]
    assert counts["heldout"] > 0 and counts["preferences"] + counts["heldout"] == 50 == fb["accepted"]
    assert counts["pairs"] == counts["preferences"]  # the run's only pairs are the corrections
    assert result["run_id"].startswith("loop-2")  # {datetime} filled from the flow run's start


def test_the_candidate_is_trained_with_cpo_and_scored_on_both_yardsticks(loop: dict[str, Any]) -> None:
    row = loop["result"]["directions"][DIRECTION]
    assert row["objective"] == "cpo" and row["steps"] == 4
    assert row["corrections_sentences"] == loop["result"]["feedback"]["directions"][DIRECTION]["heldout"]
    for who in ("base", "candidate"):
        assert 0 <= row[f"{who}_corrections_chrf_pp"] <= 100
    assert row["incumbent_corrections_chrf_pp"] is None  # nothing promoted before
    assert row["promoted"] and "held-out corrections chrF++" in row["reason"]


def test_a_second_loop_exports_nothing_new_and_judges_against_the_incumbent(loop: dict[str, Any]) -> None:
    from flows.feedback_loop import feedback_loop

    first = loop["result"]["directions"][DIRECTION]
    config = _config(
        loop["root"],
        loop["base"],
        "loop-second",
        {"max_steps": 2, "init_from": "incumbent"},
        {"min_gain": 0.0, "max_regression": 0.0},
    )
    second = feedback_loop(config)
    assert second["export"]["exported"] == 0  # exactly once: the first loop exported them
    row = second["directions"][DIRECTION]
    assert row["incumbent_version"] == first["version"]
    assert row["incumbent_corrections_chrf_pp"] == first["candidate_corrections_chrf_pp"]


def test_every_artifact_of_the_loop_says_what_it_is_and_no_link_is_dead(loop: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="-loop-")))
    keys = {a.key for a in artifacts}
    assert {"feedback-loop-loop-loop", "export-rl-logs-loop-parts", "adapter-pipeline-loop-report"} <= keys
    for artifact in artifacts:
        assert artifact.description and "file://" not in str(artifact.data), artifact.key
    [card] = [a for a in artifacts if a.key == "feedback-loop-loop-loop" and loop["result"]["run_id"] in a.data]
    assert "| direction | training pairs | preference triplets | held out |" in card.data
    assert "chrF++ on the held-out corrections:" in card.data and f"- **{DIRECTION}**: promoted: " in card.data
    [parts] = [a for a in artifacts if a.key == "export-rl-logs-loop-parts"]  # the second loop exported nothing
    assert f"in `{loop['root'] / 'rl-logs'}` on host `" in parts.data
