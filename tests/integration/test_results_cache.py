"""Task results persist in the run folder: a retried run redoes only what failed, and a later run of an unchanged
config finds the sources it already staged."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect_stack import PREFECT, REPO, smoke_config, task_states
from servers import FaultyHTTPServer

from bhashaflow.evaluation.chrf import ChrfScore
from bhashaflow.evaluation.evaluate import DirectionScores
from bhashaflow.registry.promotion import PromotionOutcome
from bhashaflow.registry.store import Registry
from bhashaflow.training.loop import TrainResult
from flows.adapter_pipeline import adapter_pipeline
from flows.ingest_corpus import ingest_corpus

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def break_promoted_pointer(registry: Path, direction: str) -> Path:
    """A PROMOTED pointer at a version the registry does not hold: evaluating `direction` fails, after training
    (the pipeline's preflight checks only that the registry is writable)."""
    pointer = registry / direction / "PROMOTED"
    pointer.parent.mkdir(parents=True)
    pointer.write_text(
        json.dumps({"version": "v0009", "manifest_sha256": "0" * 64, "promoted_at": "2026-01-01T00:00:00Z"})
    )
    return pointer


def test_retried_run_reuses_ingestion_training_and_finished_directions(prefect_api, tiny_base, tmp_path):
    config = smoke_config(tmp_path, tiny_base, [])
    pointer = break_promoted_pointer(Path(config.registry), "eng_Latn-tam_Taml")

    failed = adapter_pipeline(config, return_state=True)
    assert failed.is_failed()
    assert "v0009" in failed.message
    flow_run_id = failed.state_details.flow_run_id
    run_dir = Path(config.run_uri())
    train_logs = {d: (run_dir / "adapters" / d / "train_log.jsonl").read_text() for d in config.directions}

    # The registry is repaired; the failed run is retried the way a person does it from the CLI.
    pointer.unlink()
    retry = subprocess.run(
        [PREFECT, "flow-run", "retry", str(flow_run_id), "--entrypoint", "flows/adapter_pipeline.py:adapter_pipeline"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert retry.returncode == 0, retry.stdout[-2000:] + retry.stderr[-4000:]

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
    assert (run.state_name, run.run_count) == ("Completed", 2)
    # Ingestion ran once: the retry reused the finished ingest-corpus subflow instead of starting another.
    assert [s.state_name for s in subflows] == ["Completed"]
    assert sorted(task_states(subflows[0].id)) == ["finished_manifest_task", "stage-flores-dev", "write_shards_task"]
    assert task_states(flow_run_id) == {
        "ingest-corpus-0": ["Completed"],
        "train-eng_Latn-hin_Deva": ["Completed", "Cached"],
        "train-eng_Latn-tam_Taml": ["Completed", "Cached"],
        "evaluate-eng_Latn-hin_Deva": ["Completed", "Cached"],
        "promote-eng_Latn-hin_Deva": ["Completed", "Cached"],
        "evaluate-eng_Latn-tam_Taml": ["Failed", "Completed"],
        "promote-eng_Latn-tam_Taml": ["Completed"],
        "publish_report_task": ["Completed"],
    }
    # ...and outside Prefect: no training step was taken again, no version registered twice.
    assert {d: (run_dir / "adapters" / d / "train_log.jsonl").read_text() for d in config.directions} == train_logs
    registry = Registry(config.registry)
    assert {d: [v.version for v in registry.versions(d)] for d in config.directions} == {
        "eng_Latn-hin_Deva": ["v0001"],
        "eng_Latn-tam_Taml": ["v0001"],
    }
    assert sorted(p.name for p in (run_dir / "prefect-results").iterdir())  # results live in the run folder
    # The cached results came back from the run folder as the typed objects the tasks returned.
    cached = cached_results(flow_run_id)
    assert {name: type(value).__name__ for name, value in cached.items()} == {
        "train-eng_Latn-hin_Deva": "TrainResult",
        "train-eng_Latn-tam_Taml": "TrainResult",
        "evaluate-eng_Latn-hin_Deva": "DirectionScores",
        "promote-eng_Latn-hin_Deva": "PromotionOutcome",
    }
    train = cached["train-eng_Latn-hin_Deva"]
    assert isinstance(train, TrainResult) and train.steps == 2 and train.direction == "eng_Latn-hin_Deva"
    assert Path(train.adapter_uri) == run_dir / "adapters" / "eng_Latn-hin_Deva" / "adapter"
    scores = cached["evaluate-eng_Latn-hin_Deva"]
    assert isinstance(scores, DirectionScores) and isinstance(scores.candidate, ChrfScore) and scores.incumbent is None
    outcome = cached["promote-eng_Latn-hin_Deva"]
    assert isinstance(outcome, PromotionOutcome) and outcome.version == "v0001"


def cached_results(flow_run_id):  # noqa: ANN001, ANN201
    """Task run name (less its random suffix) -> the value of its Cached state, read back from result storage."""
    import re

    from prefect.client.schemas.filters import FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {re.sub(r"-[0-9a-f]{3}$", "", run.name): run.state.result() for run in runs if run.state_name == "Cached"}


def test_unchanged_source_is_a_cache_hit_in_a_later_run(
    prefect_api, tiny_base, tmp_path, http_server: FaultyHTTPServer
):
    eng = (REPO / "data/flores200/dev/eng_Latn.dev").read_text(encoding="utf-8").splitlines()[:20]
    hin = (REPO / "data/flores200/dev/hin_Deva.dev").read_text(encoding="utf-8").splitlines()[:20]
    sources = [
        {"name": "flores-dev", "kind": "flores", "uri": str(REPO / "data/flores200"), "split": "dev"},
        {"name": "web", "kind": "http", "uri": http_server.url("pairs.jsonl"), "format": "jsonl"},
    ]
    config = smoke_config(tmp_path, tiny_base, ["directions=[eng_Latn-hin_Deva]", f"sources={json.dumps(sources)}"])

    first = ingest_corpus(config, return_state=True)  # the web source is not published yet: 404
    assert first.is_failed() and "404" in first.message
    (http_server.root / "pairs.jsonl").write_text(
        "".join(
            json.dumps({"src": e, "tgt": h, "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}, ensure_ascii=False) + "\n"
            for e, h in zip(eng, hin, strict=True)
        ),
        encoding="utf-8",
    )
    second = ingest_corpus(config, return_state=True)
    assert second.is_completed()
    states = task_states(second.state_details.flow_run_id)
    assert states["stage-flores-dev"] == ["Cached"]  # read once, in the first run
    assert states["stage-web"] == ["Completed"]
    summary = second.result()
    assert summary["sources"]["flores-dev"]["accepted"] == 997
    assert summary["sources"]["web"]["read"] == 20
    assert summary["pairs"]["eng_Latn-hin_Deva"]["accepted"] == 997  # the web pairs are FLORES dev duplicates


def test_results_persist_next_to_an_s3_run_folder(prefect_api, tiny_base, tmp_path, s3_server):
    s3_server.create_bucket("runs")
    config = smoke_config(tmp_path, tiny_base, ["workdir=s3://runs/bhashaflow", "directions=[eng_Latn-hin_Deva]"])
    prefix = f"bhashaflow/smoke/{config.resolved_run_id()}"

    assert ingest_corpus(config, return_state=True).is_completed()
    listed = s3_server.client.list_objects_v2(Bucket="runs", Prefix=f"{prefix}/prefect-results/")
    assert listed["KeyCount"] >= 2  # the staged source and the shards, at least

    # Without its manifest the ingestion runs again, and the staged source comes back from the bucket's results.
    s3_server.client.delete_object(Bucket="runs", Key=f"{prefix}/manifest.json")
    again = ingest_corpus(config, return_state=True)
    assert again.is_completed()
    assert task_states(again.state_details.flow_run_id)["stage-flores-dev"] == ["Cached"]
