"""Checkpoints: the optimizer without pickle, leftovers of killed runs, a log line cut short."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from servers import S3Server
from training_helpers import ADAPTER_FILES, DIRECTION, listing, make_config

from bhashaflow.training.checkpoints import latest_checkpoint, load_optimizer, save_optimizer
from bhashaflow.training.loop import train_adapter


def test_optimizer_state_round_trips_without_pickle(tmp_path: Path) -> None:
    import bitsandbytes as bnb

    for make in (lambda p: torch.optim.AdamW(p, lr=0.1), lambda p: bnb.optim.AdamW8bit(p, lr=0.1, min_8bit_size=16)):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(64, 64)), torch.nn.Parameter(torch.randn(8))]
        opt = make(params)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        save_optimizer(opt, tmp_path)
        fresh = make(params)
        load_optimizer(fresh, tmp_path)
        before, after = opt.state_dict(), fresh.state_dict()
        assert before["param_groups"] == after["param_groups"]
        for key, state in before["state"].items():
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, after["state"][key][name]), name
        assert not (tmp_path / "optimizer.safetensors").read_bytes().startswith(b"\x80")  # not a pickle stream


def test_leftovers_of_a_killed_run_are_removed_and_never_resumed_from(bases: dict[str, Path], shard: str, tmp_path: Path) -> None:
    config = make_config(bases["seq2seq"], max_steps=2, checkpoint_every=1)
    train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), eval_texts={})
    checkpoints = tmp_path / "checkpoints"
    # What kills leave: a checkpoint half-written, one half-pruned (its mark still there), adapters half-swapped.
    shutil.copytree(checkpoints / "step-2", checkpoints / ".step-3.partial-4242")
    shutil.copytree(checkpoints / "step-2", checkpoints / "step-9")
    (checkpoints / "step-9" / ".incomplete").touch()
    shutil.copytree(tmp_path / "adapter", tmp_path / ".adapter.partial-4243")
    (tmp_path / ".adapter.partial-4243" / ".incomplete").touch()
    shutil.copytree(tmp_path / "adapter", tmp_path / ".adapter.old-4244")

    assert latest_checkpoint(tmp_path) == checkpoints / "step-2"  # the marked step-9 is not a checkpoint
    again = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), eval_texts={})

    assert again.resumed_from == 2
    assert listing(tmp_path) == ["adapter", "checkpoints", "train_log.jsonl"]
    assert listing(checkpoints) == ["step-1", "step-2"]
    assert listing(tmp_path / "adapter") == ADAPTER_FILES


def test_a_log_line_cut_short_does_not_stop_the_resume(bases: dict[str, Path], shard: str, tmp_path: Path) -> None:
    config = make_config(bases["seq2seq"], max_steps=2, checkpoint_every=1)
    train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), eval_texts={},
                  log_every=1)  # fmt: skip
    log = tmp_path / "train_log.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "lo')  # a crash (full disk, power cut) in the middle of a line

    again = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), eval_texts={})

    assert again.resumed_from == 2
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]


def test_a_session_on_another_machine_resumes_from_the_checkpoint_published_to_s3(
    bases: dict[str, Path], shard: str, tmp_path: Path, s3_server: S3Server
) -> None:
    from bhashaflow.core.folders import fetch_folder, published_names
    from bhashaflow.core.settings import Settings

    s3_server.create_bucket("runs")
    remote = "s3://runs/demo/run-1/adapters/eng_Latn-hin_Deva"
    options = Settings().storage_options_for(remote)
    config = make_config(bases["seq2seq"], max_steps=6, checkpoint_every=2)

    class HostDied(Exception):
        pass

    def die_in_step_5(step: int, total: int, loss: float) -> None:
        if step == 5:  # host A dies after publishing step 4: step 6 and the adapter never reach the bucket
            raise HostDied

    with pytest.raises(HostDied):
        train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path / "host-a"),
                      eval_texts={}, publish_to=remote, storage_options=options, log_every=1,
                      on_progress=die_in_step_5)  # fmt: skip
    assert published_names(f"{remote}/checkpoints", options) == ["step-2", "step-4"]
    assert fetch_folder(f"{remote}/adapter", tmp_path / "none", options) is None

    steps: list[int] = []
    second = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path / "host-b"),
                           eval_texts={}, publish_to=remote, storage_options=options, log_every=1,
                           on_progress=lambda s, t, loss: steps.append(s))  # fmt: skip

    assert second.resumed_from == 4 and steps == [5, 6]
    assert second.adapter_uri == f"{remote}/adapter"
    logged = [json.loads(line)["step"] for line in (tmp_path / "host-b" / "train_log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]  # host A's history up to its checkpoint travelled with it
    # Once the adapter is published its checkpoints are unpublished: a finished direction is its adapter (#24).
    assert published_names(f"{remote}/checkpoints", options) == []
    again = fetch_folder(second.adapter_uri, tmp_path / "fetched-again", options)
    assert again is not None and listing(again) == ADAPTER_FILES
    straight = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path / "host-c"),
                             eval_texts={}, log_every=1)  # fmt: skip
    uninterrupted = (Path(straight.adapter_dir) / "adapter_model.safetensors").read_bytes()
    assert (again / "adapter_model.safetensors").read_bytes() == uninterrupted
