"""Finished work is never done twice, on any host: a re-run or a retried flow run reuses what the run URI holds.

Hosts are `dask worker` processes with their own HOME and BHASHAFLOW_CACHE_DIR that share nothing but moto's S3
server (test_multihost.py's cluster); BHASHAFLOW_HOST names each one in the JSON's `produced_by`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import test_multihost
from distributed import Client
from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect_stack import PREFECT, REPO, task_states
from servers import S3Server
from test_multihost import BUCKET, DIRECTION, Hosts, keys, multihost_config, objects

from flows.adapter_pipeline import adapter_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

cluster = test_multihost.cluster  # the two-host cluster fixture, under the name the tests ask for
BOTH = "train=1,evaluate=1"
STEPS = ("train-eng_Latn-hin_Deva", "evaluate-eng_Latn-hin_Deva", "promote-eng_Latn-hin_Deva", "publish_report_task")


def stamps(s3: S3Server, prefix: str = "") -> dict[str, tuple[str, Any]]:
    """Key -> (ETag, LastModified) of every object under `prefix`: what a rewrite of the same bytes changes too."""
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: (o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", [])}


def start(hosts: Hosts, client: Client, name: str, monkeypatch: pytest.MonkeyPatch, preload: Path | None = None) -> Any:
    monkeypatch.setenv("BHASHAFLOW_HOST", name)  # the worker inherits the environment
    if preload is None:
        monkeypatch.delenv("DASK_DISTRIBUTED__WORKER__PRELOAD", raising=False)
    else:
        monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__PRELOAD", json.dumps([str(preload)]))
    return hosts.start(name, BOTH, client)


def logged(flow_run_id: Any) -> str:
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()  # an in-process flow's log lines are sent in batches: all of them first
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


def test_a_finished_run_rerun_on_another_host_trains_evaluates_and_promotes_nothing(
    prefect_api: str,
    tiny_base: str,
    tmp_path: Path,
    s3_server: S3Server,
    cluster: tuple[Client, Hosts],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, hosts = cluster
    s3_server.create_bucket(BUCKET)
    first = start(hosts, client, "host-a", monkeypatch)
    config = multihost_config(
        tmp_path, tiny_base, hosts.scheduler, "rerun", "training.max_steps=4", "training.checkpoint_every=2"
    )
    done = adapter_pipeline(config, return_state=True)
    assert done.is_completed(), done.message
    before = stamps(s3_server)
    first.process.terminate()
    first.process.wait(timeout=30)

    second = start(hosts, client, "host-b", monkeypatch)
    monkeypatch.setenv("BHASHAFLOW_CACHE_DIR", str(tmp_path / "flow-cache-b"))  # the flow's own process, fresh too
    again = adapter_pipeline(config, return_state=True)
    assert again.is_completed(), again.message

    states = task_states(again.state_details.flow_run_id)
    assert {step: states[step] for step in STEPS} == {step: ["Cached"] for step in STEPS}
    after = stamps(s3_server)
    assert {k: v for k, v in after.items() if k in before} == before  # not one object rewritten, registry included
    run = f"rerun/smoke/{config.resolved_run_id()}/"
    new = sorted(after.keys() - before.keys())
    # One object more: this flow run's ingest-corpus subflow result record (the subflow found ingestion finished).
    assert len(new) == 1 and new[0].startswith(f"{run}prefect-results/"), new
    assert not keys(s3_server, f"{run}adapters/{DIRECTION}/checkpoints/")  # pruned once the adapter was published
    was, now = done.result()["directions"][DIRECTION], again.result()["directions"][DIRECTION]
    assert (was["reused"], now["reused"]) == (False, True)
    assert now == {**was, "reused": True}
    assert was["produced_by"]["train"] == was["produced_by"]["evaluate"] == "host-a"
    assert {k.split("/")[0] for k in keys(s3_server, f"rerun-registry/{DIRECTION}/versions/")} == {"v0001"}
    # Host B fetched nothing to train or score: its disk holds no adapter and no checkpoint.
    assert not [p for p in (second.root / "cache").rglob("*") if p.name in ("adapter", "checkpoints", "candidate")]
    assert "training reused, as host-a finished it (step 4" in logged(again.state_details.flow_run_id)


def test_a_retry_after_a_failed_evaluation_reuses_the_training_on_another_host(
    prefect_api: str,
    tiny_base: str,
    tmp_path: Path,
    s3_server: S3Server,
    cluster: tuple[Client, Hosts],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, hosts = cluster
    s3_server.create_bucket(BUCKET)
    first = start(hosts, client, "host-a", monkeypatch)
    config = multihost_config(
        tmp_path, tiny_base, hosts.scheduler, "retry", "training.max_steps=4", "training.checkpoint_every=2"
    )
    # A PROMOTED pointer at a version the registry does not hold: the evaluation fails, after training.
    pointer = f"retry-registry/{DIRECTION}/PROMOTED"
    s3_server.client.put_object(
        Bucket=BUCKET,
        Key=pointer,
        Body=json.dumps(
            {"version": "v0009", "manifest_sha256": "0" * 64, "promoted_at": "2026-01-01T00:00:00Z"}
        ).encode(),
    )
    failed = adapter_pipeline(config, return_state=True)
    assert failed.is_failed() and "v0009" in str(failed.message)
    trained = f"retry/smoke/{config.resolved_run_id()}/adapters/{DIRECTION}/"
    before = stamps(s3_server, trained)
    assert f"{trained}adapter.manifest.json" in before
    first.process.terminate()
    first.process.wait(timeout=30)

    s3_server.client.delete_object(Bucket=BUCKET, Key=pointer)
    second = start(hosts, client, "host-b", monkeypatch)
    flow_run_id = failed.state_details.flow_run_id
    retry = subprocess.run(
        [PREFECT, "flow-run", "retry", str(flow_run_id), "--entrypoint", "flows.adapter_pipeline:adapter_pipeline"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert retry.returncode == 0, retry.stdout[-2000:] + retry.stderr[-4000:]

    states = task_states(flow_run_id)
    assert states["train-eng_Latn-hin_Deva"] == ["Completed", "Cached"]
    assert states["evaluate-eng_Latn-hin_Deva"] == ["Failed", "Completed"]
    assert stamps(s3_server, trained) == before  # no step trained again, nothing republished
    assert not list((second.root / "cache").rglob("checkpoints"))
    assert "training reused, as host-a finished it (step 4" in logged(flow_run_id)


def test_a_trainer_killed_before_publishing_its_adapter_resumes_on_another_host_at_its_last_checkpoint(
    prefect_api: str,
    tiny_base: str,
    tmp_path: Path,
    s3_server: S3Server,
    cluster: tuple[Client, Hosts],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, hosts = cluster
    s3_server.create_bucket(BUCKET)
    first = start(hosts, client, "host-a", monkeypatch, preload=Path(__file__).with_name("_die_before_adapter.py"))
    config = multihost_config(
        tmp_path, tiny_base, hosts.scheduler, "killed-late", "training.max_steps=4", "training.checkpoint_every=2"
    )
    failed = adapter_pipeline(config, return_state=True)
    assert failed.is_failed()
    assert first.process.wait(timeout=30) == 86  # died on the spot, as it was about to publish the adapter
    folder = f"killed-late/smoke/{config.resolved_run_id()}/adapters/{DIRECTION}/"
    left = objects(s3_server, folder)
    assert "checkpoints/step-4.manifest.json" in left and "adapter.manifest.json" not in left
    last_checkpoint = left["checkpoints/step-4/adapter_model.safetensors"]

    start(hosts, client, "host-b", monkeypatch)
    resumed = adapter_pipeline(config, return_state=True)
    assert resumed.is_completed(), resumed.message
    result = resumed.result()["directions"][DIRECTION]
    assert result["steps"] == 4 and result["produced_by"]["train"] == "host-b" and result["reused"] is False
    files = objects(s3_server, folder)
    resolved = json.loads(files["adapter/training_config.json"])
    assert resolved["resumed_from"] == 4  # went on from the bucket's last checkpoint: not one step trained again
    assert files["adapter/adapter_model.safetensors"] == last_checkpoint
    assert files["train_log.jsonl"] == left["train_log.jsonl"]
    assert not [k for k in files if k.startswith("checkpoints/")]  # pruned once the adapter was published
