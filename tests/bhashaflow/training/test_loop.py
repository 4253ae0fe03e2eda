"""train_adapter on tiny random M2M100 and BLOOM models: files written, every quantization, accumulation, resume after a kill."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import dev_lines, write_shard
from training_helpers import (
    ADAPTER_FILES,
    CHECKPOINT_FILES,
    DIRECTION,
    kill_when_marked,
    listing,
    make_config,
    no_pickles,
    validated_config,
)

from bhashaflow.data.batching import collate
from bhashaflow.modeling.adapters import load_adapter
from bhashaflow.modeling.encoding import encode_pair
from bhashaflow.modeling.generation import translate
from bhashaflow.modeling.loading import load_base
from bhashaflow.training import TrainingError
from bhashaflow.training.checkpoints import latest_checkpoint
from bhashaflow.training.loop import TrainHooks, train_adapter


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_train_writes_exactly_the_adapter_and_checkpoints(
    bases: dict[str, Path], shard: str, tmp_path: Path, family: str
) -> None:
    progress: list[tuple[int, int]] = []
    result = train_adapter(
        config=make_config(bases[family]),
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path),
        hooks=TrainHooks(
            on_progress=lambda step, total, loss: progress.append((step, total)), eval_texts={"src": [], "tgt": []}
        ),
    )
    assert progress == [(1, 2), (2, 2)]
    assert result.steps == 2 and result.resumed_from is None
    assert result.files == ADAPTER_FILES
    assert listing(tmp_path / "adapter") == ADAPTER_FILES
    assert listing(tmp_path / "checkpoints") == ["step-1", "step-2"]
    assert listing(tmp_path / "checkpoints" / "step-2") == CHECKPOINT_FILES
    assert no_pickles(tmp_path) == []
    assert 0 < result.final_loss < 20 and result.tokens_per_s > 0
    resolved = json.loads((tmp_path / "adapter" / "training_config.json").read_text())
    assert resolved["family"] == family and resolved["steps"] == 2 and resolved["direction"] == DIRECTION
    assert resolved["config"]["training"]["max_steps"] == 2
    expected_targets = {
        "seq2seq": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        "causal": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    }[family]
    assert resolved["target_modules"] == expected_targets
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32
    assert adapter_config["modules_to_save"] is None  # a true LoRA: no full copies of base layers
    weights = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert weights and all("lora_" in key for key in weights)
    log_lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log_lines] == [2]


def test_eight_bit_base_trains_with_paged_optimizer_and_checkpointing(
    bases: dict[str, Path], shard: str, tmp_path: Path
) -> None:
    # The real profile's settings (8-bit base, paged 8-bit AdamW, gradient checkpointing) on bitsandbytes' CPU backend.
    config = make_config(
        bases["causal"], quantization="8bit", optimizer="paged_adamw_8bit", gradient_checkpointing=True
    )
    lm = load_base(str(bases["causal"]), languages=[], quantization="8bit")
    qkv = lm.model.transformer.h[0].self_attention.query_key_value
    assert type(qkv).__name__ == "Linear8bitLt" and qkv.weight.dtype == torch.int8
    result = train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path),
        hooks=TrainHooks(eval_texts={}, lm=lm),
    )
    assert result.steps == 2 and result.files == ADAPTER_FILES
    assert torch.isfinite(torch.tensor(result.final_loss))
    served = load_base(str(bases["causal"]), languages=[], quantization="8bit")
    load_adapter(served, result.adapter_dir, "eight")
    out = translate(served, ["Hello."], src_lang="eng_Latn", tgt_lang="hin_Deva", adapter="eight", max_new_tokens=4)
    assert len(out) == 1 and isinstance(out[0], str)


_KILLED_RUN = """
import json, sys, time
from pathlib import Path
from bhashaflow.config import config_from_dict
from bhashaflow.training.loop import TrainHooks, train_adapter
args = json.loads(sys.argv[1])


def on_progress(step, total, loss):
    if step == 3:  # the checkpoint of step 2 is on disk; stall so the parent kills us mid-training
        Path(args["marker"]).write_text("3")
        time.sleep(600)
train_adapter(config=config_from_dict(args["config"]), direction=args["direction"], shard_paths=args["shards"],
              out_dir=args["out"], hooks=TrainHooks(eval_texts={}, on_progress=on_progress))
"""


@pytest.mark.slow
def test_rerun_after_kill_resumes_from_checkpoint_and_matches_uninterrupted_run(
    bases: dict[str, Path], shard: str, tmp_path: Path
) -> None:
    config = make_config(bases["seq2seq"], max_steps=5, checkpoint_every=2)
    out, marker = tmp_path / "killed", tmp_path / "marker"
    args = {
        "config": config.model_dump(mode="json"),
        "direction": DIRECTION,
        "shards": [shard],
        "out": str(out),
        "marker": str(marker),
    }
    kill_when_marked(_KILLED_RUN, args, marker)
    assert latest_checkpoint(out) == out / "checkpoints" / "step-2"
    assert not (out / "adapter").exists()

    steps: list[int] = []
    resumed = train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(out),
        hooks=TrainHooks(eval_texts={}, on_progress=lambda s, t, loss: steps.append(s)),
    )
    assert resumed.resumed_from == 2 and resumed.steps == 5
    assert steps == [3, 4, 5]  # went on from the checkpoint instead of starting over
    assert listing(out / "checkpoints") == ["step-4", "step-5"]
    logged = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert logged == [5]

    straight = train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path / "straight"),
        hooks=TrainHooks(eval_texts={}),
    )
    a = load_file(str(Path(resumed.adapter_dir) / "adapter_model.safetensors"))
    b = load_file(str(Path(straight.adapter_dir) / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)

    again = train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), hooks=TrainHooks(eval_texts={})
    )
    assert again.resumed_from == 5 and again.steps == 5  # a finished run is not trained again


def test_checkpoint_of_another_config_is_refused(bases: dict[str, Path], shard: str, tmp_path: Path) -> None:
    train_adapter(
        config=make_config(bases["seq2seq"], max_steps=1),
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path),
        hooks=TrainHooks(eval_texts={}),
    )
    with pytest.raises(TrainingError, match="different direction, base or training config"):
        train_adapter(
            config=make_config(bases["seq2seq"], max_steps=1, learning_rate=5e-4),
            direction=DIRECTION,
            shard_paths=[shard],
            out_dir=str(tmp_path),
            hooks=TrainHooks(eval_texts={}),
        )


def test_no_pairs_for_the_direction_is_an_error(bases: dict[str, Path], tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "x.parquet", [("a", "b")], "eng_Latn", "tam_Taml")
    with pytest.raises(TrainingError, match="no training pairs for eng_Latn-hin_Deva"):
        train_adapter(
            config=make_config(bases["seq2seq"]),
            direction=DIRECTION,
            shard_paths=[shard],
            out_dir=str(tmp_path / "run"),
            hooks=TrainHooks(eval_texts={}),
        )


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("quantization", ["none", "8bit", "4bit"])
@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_every_quantization_trains_with_and_without_gradient_checkpointing(
    bases: dict[str, Path], shard: str, tmp_path: Path, family: str, quantization: str, checkpointing: bool
) -> None:
    # bf16 as on a GPU (bitsandbytes' CPU backend runs int8 and NF4 too): nothing of the base may be upcast.
    lm = load_base(str(bases[family]), languages=[], quantization=quantization, dtype=torch.bfloat16)
    optimizer = "adamw" if quantization == "none" else "paged_adamw_8bit"
    config = make_config(
        bases[family], quantization=quantization, gradient_checkpointing=checkpointing, optimizer=optimizer
    )
    result = train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path),
        hooks=TrainHooks(eval_texts={}, lm=lm),
    )

    assert result.steps == 2 and result.files == ADAPTER_FILES
    assert torch.isfinite(torch.tensor(result.final_loss))
    floats = {p.dtype for p in lm.model.parameters() if p.is_floating_point()}
    assert floats == {torch.bfloat16}  # embeddings, LM head, norms and LoRA alike
    trainable = [n for n, p in lm.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(getattr(m, "gradient_checkpointing", False) for m in lm.model.modules()) is checkpointing
    if quantization != "none":
        kinds = {type(m).__name__ for m in lm.model.modules()}
        assert {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}[quantization] in kinds


def test_gradient_accumulation_takes_the_step_one_big_batch_takes(bases: dict[str, Path]) -> None:
    from bhashaflow.training.loop import train_step
    from bhashaflow.training.lora import prepare_lora_model
    from bhashaflow.training.optim import AdapterOptimizer

    config = make_config(bases["seq2seq"])
    pairs = list(zip(dev_lines("eng_Latn", 6), dev_lines("hin_Deva", 6), strict=True))
    after: list[dict[str, torch.Tensor]] = []
    losses = []
    for split in ([6], [2, 4], [1, 2, 3]):
        lm = load_base(str(bases["seq2seq"]), languages=[])
        lm.model, _ = prepare_lora_model(lm, config)
        lm.model.eval()  # no dropout: the same network for every split
        examples = [encode_pair(lm, s, t, "eng_Latn", "hin_Deva", 48) for s, t in pairs]
        cuts = [sum(split[:i]) for i in range(len(split) + 1)]
        micro = [collate(examples[a:b], lm.tokenizer.pad_token_id) for a, b in zip(cuts, cuts[1:], strict=False)]
        params = [p for p in lm.model.parameters() if p.requires_grad]
        losses.append(
            float(train_step(lm.model, AdapterOptimizer("adamw", params, 1e-2, "cpu"), micro, "seq2seq", "cpu"))
        )
        after.append({n: p.detach().clone() for n, p in lm.model.named_parameters() if p.requires_grad})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == pytest.approx(losses[0], rel=1e-5)
    for other in after[1:]:
        for name, value in after[0].items():
            torch.testing.assert_close(other[name], value, rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(v, torch.zeros_like(v)) for n, v in after[0].items() if "lora_B" in n)  # it did learn


@pytest.mark.parametrize(
    "training",
    [{"batch_tokens": 400, "grad_accum_steps": 2}, {"batch_size": 2, "grad_accum_steps": 3}],
    ids=["batch_tokens", "batch_size"],
)
def test_token_budget_and_accumulation_resume_exactly(
    bases: dict[str, Path], shard: str, tmp_path: Path, training: dict[str, int]
) -> None:
    config = make_config(bases["seq2seq"], max_steps=4, checkpoint_every=2, **training)
    out = tmp_path / "run"
    straight = train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), hooks=TrainHooks(eval_texts={})
    )
    expected = load_file(str(Path(straight.adapter_dir) / "adapter_model.safetensors"))
    # As if killed after the checkpoint of step 2: the later checkpoint and the adapter never made it.
    shutil.rmtree(out / "checkpoints" / "step-4")
    shutil.rmtree(out / "adapter")

    steps: list[int] = []
    resumed = train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(out),
        hooks=TrainHooks(eval_texts={}, on_progress=lambda s, t, loss: steps.append(s)),
    )

    assert resumed.resumed_from == 2 and steps == [3, 4]
    got = load_file(str(Path(resumed.adapter_dir) / "adapter_model.safetensors"))
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_progress_every_spaces_the_reports_and_the_host_syncs(
    bases: dict[str, Path], shard: str, tmp_path: Path
) -> None:
    reported: list[tuple[int, float]] = []
    config = make_config(bases["seq2seq"], max_steps=7, checkpoint_every=7)
    train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path),
        hooks=TrainHooks(
            on_progress=lambda s, t, loss: reported.append((s, loss)), progress_every=3, log_every=100, eval_texts={}
        ),
    )
    assert [s for s, _ in reported] == [3, 6, 7]
    assert all(0 < loss < 20 for _, loss in reported)


def test_a_non_finite_loss_stops_training_before_any_checkpoint_holds_it(
    bases: dict[str, Path], shard: str, tmp_path: Path
) -> None:
    config = make_config(bases["seq2seq"], max_steps=4, checkpoint_every=4, learning_rate=1e30)
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at step \d; lower training.learning_rate"):
        train_adapter(
            config=config,
            direction=DIRECTION,
            shard_paths=[shard],
            out_dir=str(tmp_path),
            hooks=TrainHooks(log_every=100, eval_texts={}),
        )
    assert latest_checkpoint(tmp_path) is None


# Mixed precision on the CPU (torch runs bf16 there too): the weights, their fp32 masters and the checkpoints.


def adapter_weights(result_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(result_dir) / "adapter_model.safetensors"))


@pytest.mark.parametrize("rate", [1e-30, 1e-3], ids=["vanishing-rate", "normal-rate"])
def test_a_bf16_run_from_the_incumbent_starts_from_its_weights(
    bases: dict[str, Path], shard: str, tmp_path: Path, rate: float
) -> None:
    from bhashaflow.registry.store import Registry

    first = train_adapter(
        config=make_config(bases["seq2seq"], precision="bf16", learning_rate=1e-2),
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path / "first"),
        hooks=TrainHooks(eval_texts={}),
    )
    incumbent = adapter_weights(first.adapter_dir)
    registry = Registry(str(tmp_path / "registry"))
    info = registry.register(
        DIRECTION,
        first.adapter_dir,
        base_model=str(bases["seq2seq"]),
        base_revision=None,
        data_manifest_sha256="0" * 64,
        config={},
        metrics={"candidate": {"chrf_pp": 1.0}},
    )
    registry.promote(DIRECTION, info.version)

    config = make_config(bases["seq2seq"], precision="bf16", init_from="incumbent", learning_rate=rate, max_steps=1)
    config = config.model_copy(update={"registry": str(tmp_path / "registry")})
    result = train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path / "second"),
        hooks=TrainHooks(eval_texts={}),
    )

    assert result.initialized_from == info.version
    after = adapter_weights(result.adapter_dir)
    assert after.keys() == incumbent.keys()
    assert {w.dtype for w in after.values()} == {torch.bfloat16}
    assert max(float(w.abs().max()) for k, w in incumbent.items() if "lora_B" in k) > 5e-3  # far from a fresh B (0)
    for key, want in incumbent.items():
        if rate < 1e-20:
            assert torch.equal(after[key], want), key  # a step that changes nothing ends where it started
        else:  # one AdamW step moves each weight by about the rate (plus bf16's rounding), from the incumbent's
            drift = (after[key].float() - want.float()).abs()
            assert bool((drift <= 1.5 * rate + want.float().abs() / 128).all()), (key, float(drift.max()))
    if rate > 1e-20:
        assert any(not torch.equal(after[k], incumbent[k]) for k in incumbent)  # and it did learn


@pytest.mark.parametrize(("first", "then"), [("bf16", "fp32"), ("fp32", "bf16")])
def test_a_checkpoint_resumes_in_another_precision_with_its_validation_history(
    bases: dict[str, Path], shard: str, tmp_path: Path, first: str, then: str
) -> None:
    # The run URI exists so that a trainer rescheduled on another kind of machine goes on where the first stopped.
    config = validated_config(bases["seq2seq"], max_steps=4, precision=first)
    out = tmp_path / "run"
    straight = train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), hooks=TrainHooks(eval_texts={})
    )
    assert [v["step"] for v in straight.validation] == [2, 4]
    shutil.rmtree(out / "checkpoints" / "step-4")  # as if stopped after the checkpoint of step 2
    shutil.rmtree(out / "adapter")

    elsewhere = config.model_copy(update={"training": config.training.model_copy(update={"precision": then})})
    resumed = train_adapter(
        config=elsewhere, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), hooks=TrainHooks(eval_texts={})
    )

    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert [v["step"] for v in resumed.validation] == [2, 4]
    assert resumed.validation[0] == straight.validation[0]  # the history before the checkpoint, intact
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged if "val_chrf_pp" in entry] == [2, 4]
    got, want = adapter_weights(resumed.adapter_dir), adapter_weights(straight.adapter_dir)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[then]
    assert got.keys() == want.keys() and {w.dtype for w in got.values()} == {dtype}
    for key in want:  # the same two steps from the same fp32 numbers, in another precision
        torch.testing.assert_close(got[key].float(), want[key].float(), rtol=0.05, atol=2e-3)


class _Captured:
    """What load_optimizer hands an optimizer: the saved state, as it is on disk."""

    state: dict[str, object]

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.state = state


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_checkpoint_in_either_older_state_form_still_resumes_exactly(
    bases: dict[str, Path], shard: str, tmp_path: Path, precision: str
) -> None:
    from types import SimpleNamespace

    from bhashaflow.training.checkpoints import load_optimizer, save_optimizer

    config = make_config(bases["seq2seq"], max_steps=4, checkpoint_every=2, precision=precision)
    out = tmp_path / "run"
    straight = train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), hooks=TrainHooks(eval_texts={})
    )
    expected = adapter_weights(straight.adapter_dir)
    shutil.rmtree(out / "checkpoints" / "step-4")
    shutil.rmtree(out / "adapter")
    # Step 2's optimizer state rewritten as runs before the one form wrote it: torch's own state in fp32, the inner
    # state and the masters (no loss scale) in mixed precision.
    step2 = out / "checkpoints" / "step-2"
    captured = _Captured()
    load_optimizer(captured, step2)  # type: ignore[arg-type]
    state = captured.state
    mixed = {"optimizer": state["optimizer"], "master_params": state["master_params"]}
    legacy = state["optimizer"] if precision == "fp32" else mixed
    save_optimizer(SimpleNamespace(state_dict=lambda: legacy), step2)
    fingerprint = json.loads((step2 / "trainer_state.json").read_text())["fingerprint"]
    assert "precision" not in fingerprint["training"]  # as older runs wrote it

    resumed = train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), hooks=TrainHooks(eval_texts={})
    )

    assert resumed.resumed_from == 2 and resumed.steps == 4
    got = adapter_weights(resumed.adapter_dir)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_a_step_that_runs_out_of_memory_stops_at_the_last_checkpoint_with_what_to_lower(
    bases: dict[str, Path], shard: str, tmp_path: Path
) -> None:
    from bhashaflow.core.memory import AllocationCap
    from bhashaflow.training import TrainingOutOfMemory

    config = make_config(bases["seq2seq"], max_steps=4, checkpoint_every=2, batch_tokens=192, grad_accum_steps=2)
    cap = AllocationCap(None)

    def shrink_the_device(step: int, max_steps: int, loss: float) -> None:
        if step == 2:  # step 2's checkpoint is still written; step 3 does not fit
            cap.max_bytes = 16 * 1024

    with cap, pytest.raises(TrainingOutOfMemory) as raised:
        train_adapter(
            config=config,
            direction=DIRECTION,
            shard_paths=[shard],
            out_dir=str(tmp_path),
            hooks=TrainHooks(on_progress=shrink_the_device, eval_texts={}),
        )
    message = str(raised.value)
    assert "\n" not in message and cap.raised == 1
    assert message.startswith(f"{DIRECTION}: out of memory at step 3 on cpu (a micro-batch of ")
    assert "step-2 is kept and a rerun resumes from it" in message
    assert "training.batch_tokens (now 192) or max_length (now 48), or raise grad_accum_steps (now 2)" in message
    assert "`bhashaflow fit CONFIG` finds the largest training.batch_tokens that fits this device" in message
    assert listing(tmp_path / "checkpoints") == ["step-2"] and not (tmp_path / "adapter").exists()
    assert listing(tmp_path / "checkpoints" / "step-2") == CHECKPOINT_FILES

    result = train_adapter(
        config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), hooks=TrainHooks(eval_texts={})
    )
    assert result.resumed_from == 2 and result.steps == 4  # the rerun on a device it fits goes on from there
