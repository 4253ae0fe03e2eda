"""A run that spans machines: Dask workers that share no disk, the run folder and the registry on (moto's) S3.

Each worker is its own `dask worker` process with its own working directory, HOME and BHASHAFLOW_CACHE_DIR,
as a separate host would be; the only thing they share is the bucket. Worker resources force a direction's
fine-tune onto one worker and its evaluation onto another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from distributed import Client, LocalCluster, get_task_stream
from prefect_stack import PREFECT, REPO, smoke_config
from safetensors.torch import load as load_bytes
from servers import S3Server

from flows.adapter_pipeline import adapter_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = "runs"
DIRECTION = "eng_Latn-hin_Deva"
FLORES = REPO / "data" / "flores200"


@dataclass
class Host:
    """A `dask worker` process standing in for a machine of its own."""

    name: str
    process: subprocess.Popen[bytes]
    root: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


class Hosts:
    def __init__(self, scheduler: str, root: Path) -> None:
        self.scheduler, self.root, self.started = scheduler, root, []

    def start(self, name: str, resources: str, client: Client) -> Host:
        root = self.root / name
        for sub in ("home", "cache", "work"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "HOME": str(root / "home"),
            "BHASHAFLOW_CACHE_DIR": str(root / "cache"),
            "PYTHONPATH": str(REPO),
            "OMP_WAIT_POLICY": "PASSIVE",
        }
        before = set(client.scheduler_info()["workers"])
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dask"),
                "worker",
                self.scheduler,
                "--nthreads",
                "1",
                "--no-nanny",
                "--name",
                name,
                "--resources",
                resources,
                "--local-directory",
                str(root / "work"),
            ],
            cwd=root / "work",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(root / "worker.log").open("wb"),
        )
        host = Host(name, process, root)
        self.started.append(host)
        deadline = time.monotonic() + 120
        while set(client.scheduler_info()["workers"]) == before:
            assert process.poll() is None, (root / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker never joined the scheduler"
            time.sleep(0.2)
        return host

    def stop(self) -> None:
        for host in self.started:
            if host.process.poll() is None:
                host.process.terminate()
                try:
                    host.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    host.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Client, Hosts]]:
    import dask

    # A killed worker's task fails at once (no silent rescheduling): a retried flow run resumes it.
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(n_workers=0, processes=True, dashboard_address=None) as local,
        Client(local) as client,
    ):
        hosts = Hosts(local.scheduler_address, tmp_path / "hosts")
        try:
            yield client, hosts
        finally:
            hosts.stop()


def multihost_config(tmp: Path, tiny_base: str, scheduler: str, run: str, *extra: str):  # noqa: ANN201
    return smoke_config(
        tmp,
        tiny_base,
        [
            f"workdir=s3://{BUCKET}/{run}",
            f"registry=s3://{BUCKET}/{run}-registry",
            f"directions=[{DIRECTION}]",
            f"sources.flores-dev.uri={FLORES}",
            f"evaluation.flores_dir={FLORES}",  # inputs, like the base: read-only
            "task_runner.kind=dask",
            f"task_runner.address={scheduler}",
            "task_runner.train_resources={train: 1}",
            "task_runner.evaluate_resources={evaluate: 1}",
            "promotion.min_gain=0.0",
            *extra,
        ],
    )


def keys(s3: S3Server, prefix: str) -> list[str]:
    return [
        o["Key"][len(prefix) :] for o in s3.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    ]


def objects(s3: S3Server, prefix: str) -> dict[str, bytes]:
    listed = s3.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: s3.client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def test_training_and_evaluation_on_different_hosts_hand_over_through_the_bucket(
    prefect_api: str, tiny_base: str, tmp_path: Path, s3_server: S3Server, cluster: tuple[Client, Hosts]
) -> None:
    client, hosts = cluster
    s3_server.create_bucket(BUCKET)
    trainer = hosts.start("trainer", "train=1", client)
    evaluator = hosts.start("evaluator", "evaluate=1", client)
    config = multihost_config(
        tmp_path, tiny_base, hosts.scheduler, "split", "training.max_steps=6", "training.checkpoint_every=3"
    )

    with get_task_stream(client) as stream:
        state = adapter_pipeline(config, return_state=True)
    assert state.is_completed(), f"{state.message}: {state.result(raise_on_failure=False)!r}"
    workers = {w["name"]: addr for addr, w in client.scheduler_info()["workers"].items()}
    ran_on = {t["key"].split("-")[0]: t["worker"] for t in stream.data}
    assert ran_on["train_adapter_task"] == workers["trainer"]
    assert ran_on["evaluate_direction_task"] == workers["evaluator"]

    result = state.result()["directions"][DIRECTION]
    assert result["version"] == "v0001"  # registered (and promoted when it beats the random base)
    run = f"split/smoke/{config.resolved_run_id()}/adapters/{DIRECTION}/"
    trained = objects(s3_server, f"{run}adapter/")
    registered = objects(s3_server, f"split-registry/{DIRECTION}/versions/v0001/")
    assert {k: v for k, v in registered.items() if k != "manifest.json"} == trained  # byte for byte
    assert "adapter_model.safetensors" in trained
    # Published as it trained (test_rerun_reuse.py resumes from them), unpublished once the adapter was published.
    assert not keys(s3_server, f"{run}checkpoints/")
    assert json.loads(objects(s3_server, run)["train_log.jsonl"].splitlines()[-1])["step"] == 6
    # Neither host kept anything the other needed: the trainer's disk holds no evaluation, the evaluator's no checkpoint.
    assert not list((trainer.root / "cache").rglob("eval")) and not list(
        (evaluator.root / "cache").rglob("checkpoints")
    )


def test_a_killed_trainer_is_resumed_on_another_host_from_the_bucket(
    prefect_api: str, tiny_base: str, tmp_path: Path, s3_server: S3Server, cluster: tuple[Client, Hosts]
) -> None:
    client, hosts = cluster
    s3_server.create_bucket(BUCKET)
    first = hosts.start("trainer-1", "train=1", client)
    hosts.start("evaluator", "evaluate=1", client)
    config = multihost_config(
        tmp_path, tiny_base, hosts.scheduler, "killed", "training.max_steps=200", "training.checkpoint_every=10"
    )
    prefix = f"killed/smoke/{config.resolved_run_id()}/adapters/{DIRECTION}/"
    killed_at: list[list[str]] = []

    def kill_after_a_published_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            published = [k for k in keys(s3_server, f"{prefix}checkpoints/") if k.endswith(".manifest.json")]
            if published:
                first.kill()
                killed_at.append(published)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_after_a_published_checkpoint)
    watcher.start()
    failed = adapter_pipeline(config, return_state=True)
    watcher.join()
    assert killed_at, "no checkpoint was published before the deadline"
    assert failed.is_failed()
    assert "adapter/training_config.json" not in keys(s3_server, prefix)

    hosts.start("trainer-2", "train=1", client)  # a fresh machine: nothing of the first on its disk
    retry = subprocess.run(
        [
            PREFECT,
            "flow-run",
            "retry",
            str(failed.state_details.flow_run_id),
            "--entrypoint",
            "flows.adapter_pipeline:adapter_pipeline",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert retry.returncode == 0, retry.stdout[-2000:] + retry.stderr[-4000:]

    files = objects(s3_server, prefix)
    resolved = json.loads(files["adapter/training_config.json"])
    assert resolved["steps"] == 200 and resolved["resumed_from"] >= 10  # went on from the bucket, not from step 0
    straight = train_uninterrupted(config, tmp_path)
    got = load_bytes(files["adapter/adapter_model.safetensors"])
    assert got.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(got[key], straight[key], rtol=1e-5, atol=1e-6)


def train_uninterrupted(config, tmp_path: Path) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """The same direction trained in one go, in this process, from the shards the pipeline ingested."""
    from safetensors.torch import load_file

    from bhashaflow.core.settings import Settings
    from bhashaflow.data.ingest import load_manifest, shard_uris
    from bhashaflow.training.loop import train_adapter

    options = Settings().storage_options_for(config.run_uri())
    manifest = load_manifest(config.run_uri(), options)
    assert manifest is not None
    result = train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=shard_uris(manifest, config.run_uri(), DIRECTION),
        out_dir=str(tmp_path / "uninterrupted"),
        storage_options=options,
    )
    return load_file(str(Path(result.adapter_dir) / "adapter_model.safetensors"))
