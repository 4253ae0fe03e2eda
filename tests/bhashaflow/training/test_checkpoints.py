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
from bhashaflow.training.loop import TrainHooks, train_adapter


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


def test_leftovers_of_a_killed_run_are_removed_and_never_resumed_from(
    bases: dict[str, Path], shard: str, tmp_path: Path
) -> None:
    config = make_config(bases["seq2seq"], max_steps=2, checkpoint_every=1)
    train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), hooks=TrainHooks(eval_texts={})
    )
    checkpoints = tmp_path / "checkpoints"
    # What kills leave: a checkpoint half-written, one half-pruned (its mark still there), adapters half-swapped.
    shutil.copytree(checkpoints / "step-2", checkpoints / ".step-3.partial-4242")
    shutil.copytree(checkpoints / "step-2", checkpoints / "step-9")
    (checkpoints / "step-9" / ".incomplete").touch()
    shutil.copytree(tmp_path / "adapter", tmp_path / ".adapter.partial-4243")
    (tmp_path / ".adapter.partial-4243" / ".incomplete").touch()
    shutil.copytree(tmp_path / "adapter", tmp_path / ".adapter.old-4244")

    assert latest_checkpoint(tmp_path) == checkpoints / "step-2"  # the marked step-9 is not a checkpoint
    again = train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), hooks=TrainHooks(eval_texts={})
    )

    assert again.resumed_from == 2
    assert listing(tmp_path) == ["adapter", "checkpoints", "train_log.jsonl"]
    assert listing(checkpoints) == ["step-1", "step-2"]
    assert listing(tmp_path / "adapter") == ADAPTER_FILES


def test_a_log_line_cut_short_does_not_stop_the_resume(bases: dict[str, Path], shard: str, tmp_path: Path) -> None:
    config = make_config(bases["seq2seq"], max_steps=2, checkpoint_every=1)
    train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path),
        hooks=TrainHooks(log_every=1, eval_texts={}),
    )
    log = tmp_path / "train_log.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "lo')  # a crash (full disk, power cut) in the middle of a line

    again = train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), hooks=TrainHooks(eval_texts={})
    )

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
        train_adapter(
            config=config,
            direction=DIRECTION,
            shard_paths=[shard],
            out_dir=str(tmp_path / "host-a"),
            publish_to=remote,
            storage_options=options,
            hooks=TrainHooks(on_progress=die_in_step_5, log_every=1, eval_texts={}),
        )
    assert published_names(f"{remote}/checkpoints", options) == ["step-2", "step-4"]
    assert fetch_folder(f"{remote}/adapter", tmp_path / "none", options) is None

    steps: list[int] = []
    second = train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path / "host-b"),
        publish_to=remote,
        storage_options=options,
        hooks=TrainHooks(on_progress=lambda s, t, loss: steps.append(s), log_every=1, eval_texts={}),
    )

    assert second.resumed_from == 4 and steps == [5, 6]
    assert second.adapter_uri == f"{remote}/adapter"
    logged = [json.loads(line)["step"] for line in (tmp_path / "host-b" / "train_log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]  # host A's history up to its checkpoint travelled with it
    # Once the adapter is published its checkpoints are unpublished: a finished direction is its adapter (#24).
    assert published_names(f"{remote}/checkpoints", options) == []
    again = fetch_folder(second.adapter_uri, tmp_path / "fetched-again", options)
    assert again is not None and listing(again) == ADAPTER_FILES
    straight = train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path / "host-c"),
        hooks=TrainHooks(log_every=1, eval_texts={}),
    )
    uninterrupted = (Path(straight.adapter_dir) / "adapter_model.safetensors").read_bytes()
    assert (again / "adapter_model.safetensors").read_bytes() == uninterrupted


def _state_as_runs_wrote_it(**values: object) -> str:
    """trainer_state.json as the trainer wrote it before TrainerState: this dict literal, in this order, indent 1."""
    state = {
        "step": values["step"],
        "tokens": values["tokens"],
        "train_seconds": values["train_seconds"],
        "recent_losses": values["recent_losses"],
        "fingerprint": values["fingerprint"],
        "validation": values["validation"],
        "best_step": values["best_step"],
        "best_chrf_pp": values["best_chrf_pp"],
        "evals_since_best": values["evals_since_best"],
        "stopped_early": values["stopped_early"],
    }
    if "initialized_from" in values:  # added only by a run that started from the incumbent
        state["initialized_from"] = values["initialized_from"]
    return json.dumps(state, indent=1)


FINGERPRINT = {"direction": DIRECTION, "base_model": "base", "base_revision": None, "training": {"max_steps": 4}}
# A trainer's state before its first step.
FRESH = {
    "step": 0,
    "tokens": 0,
    "train_seconds": 0.0,
    "recent_losses": [],
    "fingerprint": FINGERPRINT,
    "validation": [],
    "best_step": None,
    "best_chrf_pp": None,
    "evals_since_best": 0,
    "stopped_early": False,
}


@pytest.mark.parametrize("incumbent", [{}, {"initialized_from": "v0003"}], ids=["scratch", "incumbent"])
def test_trainer_state_reads_and_writes_the_file_runs_have_always_written(incumbent: dict[str, str]) -> None:
    from bhashaflow.training.state import TrainerState

    fresh = TrainerState(FINGERPRINT)  # type: ignore[arg-type]
    assert fresh.to_json() == _state_as_runs_wrote_it(**FRESH)
    text = _state_as_runs_wrote_it(
        step=4,
        tokens=1234,
        train_seconds=5.25,
        recent_losses=[3.5, 3.25],
        fingerprint=FINGERPRINT,
        validation=[
            {"step": 2, "val_loss": 4.0, "val_chrf": 10.5, "val_chrf_pp": 9.75},
            {"step": 4, "val_loss": 3.5, "val_chrf": 10.0, "val_chrf_pp": 9.5},
        ],
        best_step=2,
        best_chrf_pp=9.75,
        evals_since_best=1,
        stopped_early=False,
        **incumbent,
    )
    state = TrainerState.from_json(text, "trainer_state.json")
    assert (state.step, state.best_step, state.initialized_from) == (4, 2, incumbent.get("initialized_from"))
    assert state.to_json() == text


def test_a_trainer_state_missing_a_key_names_the_file_and_the_key() -> None:
    from bhashaflow.training import TrainingError
    from bhashaflow.training.state import TrainerState

    saved = json.loads(_state_as_runs_wrote_it(**{**FRESH, "step": 1, "tokens": 1, "train_seconds": 1.0}))
    del saved["evals_since_best"]
    with pytest.raises(TrainingError, match=r"run/checkpoints/step-1/trainer_state.json lacks evals_since_best"):
        TrainerState.from_json(json.dumps(saved), "run/checkpoints/step-1/trainer_state.json")


def test_a_run_folder_of_the_earlier_trainer_resumes_to_the_uninterrupted_run(
    bases: dict[str, Path], shard: str, tmp_path: Path
) -> None:
    from training_helpers import validated_config

    config = validated_config(bases["seq2seq"], max_steps=4)  # validations at 2 and 4, checkpoints at 2 and 4
    out = tmp_path / "run"
    straight = train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), hooks=TrainHooks(eval_texts={})
    )
    expected = (Path(straight.adapter_dir) / "adapter_model.safetensors").read_bytes()
    straight_state = json.loads((out / "checkpoints" / "step-4" / "trainer_state.json").read_text())
    shutil.rmtree(out / "checkpoints" / "step-4")  # as if stopped after the checkpoint of step 2
    shutil.rmtree(out / "adapter")
    # Step 2's trainer state rewritten as the earlier trainer's dict wrote it, with that run's values.
    step2 = out / "checkpoints" / "step-2" / "trainer_state.json"
    step2.write_text(_state_as_runs_wrote_it(**json.loads(step2.read_text())))

    resumed = train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), hooks=TrainHooks(eval_texts={})
    )

    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert [v["step"] for v in resumed.validation] == [2, 4] and resumed.best_step == straight.best_step
    assert (Path(resumed.adapter_dir) / "adapter_model.safetensors").read_bytes() == expected
    resumed_state = json.loads((out / "checkpoints" / "step-4" / "trainer_state.json").read_text())
    assert list(resumed_state) == list(straight_state)
    assert {**resumed_state, "train_seconds": 0} == {**straight_state, "train_seconds": 0}  # all but the wall time
