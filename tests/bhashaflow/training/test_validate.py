"""Validation during training: the held-out slice never trained on, early stopping, the best step, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import dev_lines
from training_helpers import DIRECTION, kill_when_marked, make_config, validated_config

from bhashaflow.modeling.encoding import encode_pair
from bhashaflow.modeling.loading import load_base
from bhashaflow.training import TrainingError
from bhashaflow.training.checkpoints import latest_checkpoint
from bhashaflow.training.loop import TrainHooks, train_adapter


def test_validation_pairs_never_reach_the_training_steps(
    bases: dict[str, Path], shard: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bhashaflow.data.holdout import select_holdout
    from bhashaflow.training import loop as training

    consumed: list[tuple[int, ...]] = []
    real_step = training.train_step

    def recording_step(model, optimizer, micro_batches, family, device):  # noqa: ANN001, ANN202
        for batch in micro_batches:  # what the loop trained on, row by row, padding stripped
            for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), strict=True):
                consumed.append(tuple(i for i, m in zip(ids, mask, strict=True) if m))
        return real_step(model, optimizer, micro_batches, family, device)

    monkeypatch.setattr(training, "train_step", recording_step)
    config = validated_config(bases["seq2seq"], max_steps=20)
    result = train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), hooks=TrainHooks(eval_texts={})
    )

    pairs = list(zip(dev_lines("eng_Latn", 64), dev_lines("hin_Deva", 64), strict=True))
    held = select_holdout(pairs, config.training.validation)
    lm = load_base(str(bases["seq2seq"]), languages=[])
    held_sources = {tuple(encode_pair(lm, s, t, "eng_Latn", "hin_Deva", 48)[0]) for s, t in held.pairs}
    trained_sources = {
        tuple(encode_pair(lm, s, t, "eng_Latn", "hin_Deva", 48)[0]) for s, t in pairs if (s, t) not in held
    }
    assert result.validation_pairs == 8 and len(held_sources) == 8
    assert len(consumed) == 20 * 4  # 20 steps of 4 pairs
    assert not set(consumed) & held_sources
    assert set(consumed) <= trained_sources and len(set(consumed)) > 40


def test_early_stopping_keeps_the_best_validated_checkpoint_as_the_candidate(
    bases: dict[str, Path], shard: str, tmp_path: Path
) -> None:
    seen: list[tuple[int, dict[str, float]]] = []
    config = validated_config(bases["seq2seq"], max_steps=200, patience=2)
    result = train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path),
        hooks=TrainHooks(eval_texts={}, on_validation=lambda step, v: seen.append((step, v))),
    )

    history = result.validation
    assert result.stopped_early and result.steps < 200
    assert [v["step"] for v in history] == list(range(2, result.steps + 1, 2)) == [s for s, _ in seen]
    scores = [v["val_chrf_pp"] for v in history]
    best = scores.index(max(scores))  # the first of the best
    assert result.best_step == history[best]["step"] and result.best_chrf_pp == scores[best]
    assert len(history) - 1 - best == 2  # stopped after `patience` validations without a better score
    assert all(v["val_loss"] > 0 for v in history)
    best_checkpoint = tmp_path / "checkpoints" / f"step-{result.best_step}"
    assert (best_checkpoint / "trainer_state.json").is_file()  # kept through pruning
    candidate = (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes()
    assert candidate == (best_checkpoint / "adapter_model.safetensors").read_bytes()
    if result.best_step != result.steps:
        last = (tmp_path / "checkpoints" / f"step-{result.steps}" / "adapter_model.safetensors").read_bytes()
        assert candidate != last
    resolved = json.loads((tmp_path / "adapter" / "training_config.json").read_text())
    assert resolved["best_step"] == result.best_step and resolved["validation_pairs"] == 8 and resolved["stopped_early"]
    logged = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if "val_chrf_pp" in e] == [v["step"] for v in history]

    again = train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), hooks=TrainHooks(eval_texts={})
    )
    assert again.steps == result.steps and again.best_step == result.best_step  # a stopped run stays stopped


def test_a_validation_slice_that_leaves_nothing_to_train_on_names_the_direction(
    bases: dict[str, Path], shard: str, tmp_path: Path
) -> None:
    config = make_config(bases["seq2seq"], validation={"share": 1.0, "max_pairs": 1000})
    with pytest.raises(TrainingError, match=r"eng_Latn-hin_Deva: training.validation holds out all 64 pairs"):
        train_adapter(
            config=config,
            direction=DIRECTION,
            shard_paths=[shard],
            out_dir=str(tmp_path),
            hooks=TrainHooks(eval_texts={}),
        )


_KILLED_BETWEEN_VALIDATIONS = """
import json, sys, time
from pathlib import Path
from bhashaflow.config import config_from_dict
from bhashaflow.training.loop import TrainHooks, train_adapter
args = json.loads(sys.argv[1])


def on_progress(step, total, loss):
    if step == args["kill_at"]:  # after a checkpoint, before the next validation: the parent kills us here
        Path(args["marker"]).write_text(str(step))
        time.sleep(600)
train_adapter(config=config_from_dict(args["config"]), direction=args["direction"], shard_paths=args["shards"],
              out_dir=args["out"], hooks=TrainHooks(eval_texts={}, on_progress=on_progress))
"""


@pytest.mark.slow
def test_a_kill_between_validations_resumes_with_the_same_best_step_and_adapter(
    bases: dict[str, Path], shard: str, tmp_path: Path
) -> None:
    config = validated_config(bases["seq2seq"], max_steps=24, patience=3, checkpoint_every=2, eval_every=4)
    straight = train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path / "straight"),
        hooks=TrainHooks(eval_texts={}),
    )
    out, marker = tmp_path / "killed", tmp_path / "marker"
    kill_at = 7  # checkpoints at 2, 4 (validated), 6; the next validation would come at step 8
    args = {
        "config": config.model_dump(mode="json"),
        "direction": DIRECTION,
        "shards": [shard],
        "out": str(out),
        "marker": str(marker),
        "kill_at": kill_at,
    }
    kill_when_marked(_KILLED_BETWEEN_VALIDATIONS, args, marker)
    assert latest_checkpoint(out) == out / "checkpoints" / "step-6"
    killed_state = json.loads((out / "checkpoints" / "step-6" / "trainer_state.json").read_text())
    assert [v["step"] for v in killed_state["validation"]] == [4]

    resumed = train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), hooks=TrainHooks(eval_texts={})
    )

    assert resumed.resumed_from == 6
    assert (resumed.steps, resumed.best_step, resumed.stopped_early) == (
        straight.steps,
        straight.best_step,
        straight.stopped_early,
    )
    assert resumed.validation == straight.validation  # every score, bit for bit
    a = (Path(resumed.adapter_dir) / "adapter_model.safetensors").read_bytes()
    b = (Path(straight.adapter_dir) / "adapter_model.safetensors").read_bytes()
    assert a == b


def test_a_validation_batch_that_runs_out_of_memory_is_halved_with_the_same_scores(
    bases: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from bhashaflow.core.memory import AllocationCap
    from bhashaflow.training.lora import prepare_lora_model
    from bhashaflow.training.validate import make_scorer

    config = validated_config(bases["seq2seq"])
    config = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"batch_size": 8})})
    pairs = list(zip(dev_lines("eng_Latn", 64), dev_lines("hin_Deva", 64), strict=True))
    validator = make_scorer(config, ("eng_Latn", "hin_Deva"), pairs, DIRECTION)
    assert validator is not None and len(validator.holdout.pairs) == 8
    lm = load_base(str(bases["seq2seq"]), languages=[])
    lm.model, _ = prepare_lora_model(lm, config)
    with AllocationCap(None) as free:
        expected = validator.run(lm)
    with AllocationCap(free.largest // 3) as cap:  # the loss's and the translations' batches of 8 do not fit
        got = validator.run(lm)
    assert cap.raised >= 2
    halved = [r.getMessage() for r in caplog.records if "out of memory at 8 per batch" in r.getMessage()]
    assert any(m.startswith("validation loss") for m in halved) and any(m.startswith("translating") for m in halved)
    assert got["val_chrf_pp"] == expected["val_chrf_pp"] and got["val_chrf"] == expected["val_chrf"]
    assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)
