"""train_adapter on tiny random M2M100 and BLOOM models: files written, 8-bit, resume after a kill, decontamination."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import dev_lines, devtest_lines, write_shard

from bhashaflow.config import PipelineConfig, config_from_dict
from bhashaflow.data.batching import collate, length_grouped_batches
from bhashaflow.data.decontamination import Decontaminator, decontaminate, normalize_sentence
from bhashaflow.modeling.adapters import load_adapter
from bhashaflow.modeling.encoding import encode_pair
from bhashaflow.modeling.generation import translate
from bhashaflow.modeling.loading import load_base
from bhashaflow.training import TrainingError
from bhashaflow.training.checkpoints import latest_checkpoint, load_optimizer, save_optimizer
from bhashaflow.training.loop import train_adapter

DIRECTION = "eng_Latn-hin_Deva"
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "training_config.json"]  # fmt: skip
CHECKPOINT_FILES = ["adapter_config.json", "adapter_model.safetensors", "optimizer.json", "optimizer.safetensors",
                    "rng.safetensors", "trainer_state.json"]  # fmt: skip
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


@pytest.fixture(scope="module")
def bases(tiny_bases: dict[str, Path]) -> dict[str, Path]:
    return tiny_bases


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> str:
    pairs = list(zip(dev_lines("eng_Latn", 64), dev_lines("hin_Deva", 64), strict=True))
    return write_shard(tmp_path_factory.mktemp("shards") / "eng_Latn-hin_Deva-00000.parquet", pairs, "eng_Latn", "hin_Deva")


def make_config(base: Path, **training: object) -> PipelineConfig:
    settings = {"max_steps": 2, "batch_size": 4, "checkpoint_every": 1, "learning_rate": 1e-3, "max_length": 48, **training}
    return config_from_dict({"directions": [DIRECTION], "base_model": str(base), "training": settings})


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def no_pickles(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.suffix in PICKLE_SUFFIXES]


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_train_writes_exactly_the_adapter_and_checkpoints(bases: dict[str, Path], shard: str, tmp_path: Path, family: str) -> None:
    progress: list[tuple[int, int]] = []
    result = train_adapter(
        config=make_config(bases[family]),
        direction=DIRECTION,
        shard_paths=[shard],
        out_dir=str(tmp_path),
        eval_texts={"src": [], "tgt": []},
        on_progress=lambda step, total, loss: progress.append((step, total)),
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
    expected_targets = {"seq2seq": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
                        "causal": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]}[family]  # fmt: skip
    assert resolved["target_modules"] == expected_targets
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32
    assert adapter_config["modules_to_save"] is None  # a true LoRA: no full copies of base layers
    weights = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert weights and all("lora_" in key for key in weights)
    log_lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log_lines] == [2]


def test_eight_bit_base_trains_with_paged_optimizer_and_checkpointing(bases: dict[str, Path], shard: str, tmp_path: Path) -> None:
    # The real profile's settings (8-bit base, paged 8-bit AdamW, gradient checkpointing) on bitsandbytes' CPU backend.
    config = make_config(bases["causal"], quantization="8bit", optimizer="paged_adamw_8bit", gradient_checkpointing=True)
    lm = load_base(str(bases["causal"]), languages=[], quantization="8bit")
    qkv = lm.model.transformer.h[0].self_attention.query_key_value
    assert type(qkv).__name__ == "Linear8bitLt" and qkv.weight.dtype == torch.int8
    result = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path),
                           eval_texts={}, lm=lm)  # fmt: skip
    assert result.steps == 2 and result.files == ADAPTER_FILES
    assert torch.isfinite(torch.tensor(result.final_loss))
    served = load_base(str(bases["causal"]), languages=[], quantization="8bit")
    load_adapter(served, result.adapter_dir, "eight")
    out = translate(served, ["Hello."], src_lang="eng_Latn", tgt_lang="hin_Deva", adapter="eight", max_new_tokens=4)
    assert len(out) == 1 and isinstance(out[0], str)


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


_KILLED_RUN = """
import json, sys, time
from pathlib import Path
from bhashaflow.config import config_from_dict
from bhashaflow.training.loop import train_adapter
args = json.loads(sys.argv[1])
def on_progress(step, total, loss):
    if step == 3:  # the checkpoint of step 2 is on disk; stall so the parent kills us mid-training
        Path(args["marker"]).write_text("3")
        time.sleep(600)
train_adapter(config=config_from_dict(args["config"]), direction=args["direction"], shard_paths=args["shards"],
              out_dir=args["out"], eval_texts={}, on_progress=on_progress)
"""


def kill_when_marked(script: str, args: dict[str, object], marker: Path) -> None:
    """Run a training `script` in a subprocess and SIGKILL it as soon as it writes `marker` (then stalls)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(args)], env=env)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, "the training subprocess died before the kill point"
            assert time.monotonic() < deadline, "the training subprocess never reached the kill point"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_rerun_after_kill_resumes_from_checkpoint_and_matches_uninterrupted_run(bases: dict[str, Path], shard: str, tmp_path: Path) -> None:
    config = make_config(bases["seq2seq"], max_steps=5, checkpoint_every=2)
    out, marker = tmp_path / "killed", tmp_path / "marker"
    args = {"config": config.model_dump(mode="json"), "direction": DIRECTION, "shards": [shard], "out": str(out),
            "marker": str(marker)}  # fmt: skip
    kill_when_marked(_KILLED_RUN, args, marker)
    assert latest_checkpoint(out) == out / "checkpoints" / "step-2"
    assert not (out / "adapter").exists()

    steps: list[int] = []
    resumed = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), eval_texts={},
                            on_progress=lambda s, t, loss: steps.append(s))  # fmt: skip
    assert resumed.resumed_from == 2 and resumed.steps == 5
    assert steps == [3, 4, 5]  # went on from the checkpoint instead of starting over
    assert listing(out / "checkpoints") == ["step-4", "step-5"]
    logged = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert logged == [5]

    straight = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path / "straight"),
                             eval_texts={})  # fmt: skip
    a = load_file(str(Path(resumed.adapter_dir) / "adapter_model.safetensors"))
    b = load_file(str(Path(straight.adapter_dir) / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)

    again = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), eval_texts={})
    assert again.resumed_from == 5 and again.steps == 5  # a finished run is not trained again


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


def test_checkpoint_of_another_config_is_refused(bases: dict[str, Path], shard: str, tmp_path: Path) -> None:
    train_adapter(config=make_config(bases["seq2seq"], max_steps=1), direction=DIRECTION, shard_paths=[shard],
                  out_dir=str(tmp_path), eval_texts={})  # fmt: skip
    with pytest.raises(TrainingError, match="different direction, base or training config"):
        train_adapter(config=make_config(bases["seq2seq"], max_steps=1, learning_rate=5e-4), direction=DIRECTION,
                      shard_paths=[shard], out_dir=str(tmp_path), eval_texts={})  # fmt: skip


def test_training_drops_and_counts_pairs_leaking_the_evaluation_set(bases: dict[str, Path], tmp_path: Path) -> None:
    clean = list(zip(dev_lines("eng_Latn", 20), dev_lines("hin_Deva", 20), strict=True))
    eval_src, eval_tgt = devtest_lines("eng_Latn", 30), devtest_lines("hin_Deva", 30)
    leaks = [("  " + eval_src[0].upper() + " ", "anything"), ("anything", eval_tgt[1]), (eval_tgt[2], "reversed")]
    shards = [write_shard(tmp_path / "a.parquet", clean[:10] + leaks[:2], "eng_Latn", "hin_Deva"),
              write_shard(tmp_path / "b.parquet", clean[10:] + leaks[2:], "eng_Latn", "hin_Deva")]  # fmt: skip
    result = train_adapter(config=make_config(bases["seq2seq"], max_steps=10, checkpoint_every=10),
                           direction=DIRECTION, shard_paths=shards, out_dir=str(tmp_path / "run"),
                           eval_texts={"src": eval_src, "tgt": eval_tgt})  # fmt: skip
    assert result.decontaminated == 3
    assert json.loads((tmp_path / "run" / "adapter" / "training_config.json").read_text())["decontaminated"] == 3


def test_no_pairs_for_the_direction_is_an_error(bases: dict[str, Path], tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "x.parquet", [("a", "b")], "eng_Latn", "tam_Taml")
    with pytest.raises(TrainingError, match="no training pairs for eng_Latn-hin_Deva"):
        train_adapter(config=make_config(bases["seq2seq"]), direction=DIRECTION, shard_paths=[shard],
                      out_dir=str(tmp_path / "run"), eval_texts={})  # fmt: skip


def test_length_grouping_pads_less_than_arrival_order() -> None:
    import random

    rng = random.Random(0)
    examples = [([1] * n, [2] * n) for n in (rng.randint(3, 60) for _ in range(400))]
    grouped = list(length_grouped_batches(examples, 8, random.Random(0)))
    arrival = random.Random(0).sample(examples, len(examples))  # the same examples, batched as they come
    plain = [arrival[i : i + 8] for i in range(0, len(arrival), 8)]
    assert sorted(map(len, examples)) == sorted(len(ex) for b in grouped for ex in b)  # nothing lost or repeated
    cells = lambda batches: sum(collate(b, 0)["input_ids"].numel() for b in batches)  # noqa: E731
    assert cells(grouped) < 0.7 * cells(plain)


def test_collate_pads_inputs_and_masks_labels() -> None:
    batch = collate([([5, 6, 7], [8, 9]), ([5], [8, 9, 10])], pad_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[8, 9, -100], [8, 9, 10]]
    assert collate([([5], [8])], pad_id=1, pad_to=4)["input_ids"].tolist() == [[5, 1, 1, 1]]


def test_decontaminate_normalises_and_counts() -> None:
    composed, decomposed = "caf\u00e9 au lait", "Cafe\u0301  au\tlait "
    pairs = [(decomposed, "x"), ("keep me", "fine"), ("y", "THE  END."), ("also kept", "ok")]
    kept, removed = decontaminate(pairs, eval_src=[composed], eval_tgt=["the end."])
    assert kept == [("keep me", "fine"), ("also kept", "ok")] and removed == 2
    assert normalize_sentence(decomposed) == composed
    decon = Decontaminator([""])
    assert list(decon.filter([("", "")])) == [("", "")] and decon.removed == 0  # empty lines leak nothing


def test_default_decontamination_uses_the_configured_evaluation_split(bases: dict[str, Path], tmp_path: Path) -> None:
    from tiny_models import FLORES

    leak = (devtest_lines("eng_Latn")[700], "x")  # past any max_sentences cut: the whole split is excluded
    shard = write_shard(tmp_path / "s.parquet", [("Hello.", "नमस्ते।"), leak], "eng_Latn", "hin_Deva")
    config = make_config(bases["seq2seq"], max_steps=1)
    config = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"flores_dir": str(FLORES),
                                                                                          "max_sentences": 10})})  # fmt: skip
    result = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path / "run"))
    assert result.decontaminated == 1


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("quantization", ["none", "8bit", "4bit"])
@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_every_quantization_trains_with_and_without_gradient_checkpointing(
    bases: dict[str, Path], shard: str, tmp_path: Path, family: str, quantization: str, checkpointing: bool
) -> None:
    # bf16 as on a GPU (bitsandbytes' CPU backend runs int8 and NF4 too): nothing of the base may be upcast.
    lm = load_base(str(bases[family]), languages=[], quantization=quantization, dtype=torch.bfloat16)
    optimizer = "adamw" if quantization == "none" else "paged_adamw_8bit"
    config = make_config(bases[family], quantization=quantization, gradient_checkpointing=checkpointing, optimizer=optimizer)
    result = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path),
                           eval_texts={}, lm=lm)  # fmt: skip

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
        losses.append(float(train_step(lm.model, AdapterOptimizer("adamw", params, 1e-2, "cpu"), micro, "seq2seq", "cpu")))
        after.append({n: p.detach().clone() for n, p in lm.model.named_parameters() if p.requires_grad})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == pytest.approx(losses[0], rel=1e-5)
    for other in after[1:]:
        for name, value in after[0].items():
            torch.testing.assert_close(other[name], value, rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(v, torch.zeros_like(v)) for n, v in after[0].items() if "lora_B" in n)  # it did learn


@pytest.mark.parametrize("training", [{"batch_tokens": 400, "grad_accum_steps": 2}, {"batch_size": 2, "grad_accum_steps": 3}],
                         ids=["batch_tokens", "batch_size"])  # fmt: skip
def test_token_budget_and_accumulation_resume_exactly(bases: dict[str, Path], shard: str, tmp_path: Path,
                                                       training: dict[str, int]) -> None:  # fmt: skip
    config = make_config(bases["seq2seq"], max_steps=4, checkpoint_every=2, **training)
    out = tmp_path / "run"
    straight = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), eval_texts={})
    expected = load_file(str(Path(straight.adapter_dir) / "adapter_model.safetensors"))
    # As if killed after the checkpoint of step 2: the later checkpoint and the adapter never made it.
    shutil.rmtree(out / "checkpoints" / "step-4")
    shutil.rmtree(out / "adapter")

    steps: list[int] = []
    resumed = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), eval_texts={},
                            on_progress=lambda s, t, loss: steps.append(s))  # fmt: skip

    assert resumed.resumed_from == 2 and steps == [3, 4]
    got = load_file(str(Path(resumed.adapter_dir) / "adapter_model.safetensors"))
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_progress_every_spaces_the_reports_and_the_host_syncs(bases: dict[str, Path], shard: str, tmp_path: Path) -> None:
    reported: list[tuple[int, float]] = []
    config = make_config(bases["seq2seq"], max_steps=7, checkpoint_every=7)
    train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), eval_texts={},
                  on_progress=lambda s, t, loss: reported.append((s, loss)), progress_every=3, log_every=100)  # fmt: skip
    assert [s for s, _ in reported] == [3, 6, 7]
    assert all(0 < loss < 20 for _, loss in reported)


def test_a_non_finite_loss_stops_training_before_any_checkpoint_holds_it(bases: dict[str, Path], shard: str,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    config = make_config(bases["seq2seq"], max_steps=4, checkpoint_every=4, learning_rate=1e30)
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at step \d; lower training.learning_rate"):
        train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), eval_texts={},
                      log_every=100)  # fmt: skip
    assert latest_checkpoint(tmp_path) is None


# ---------------------------------------------------------------- validation during training

VALIDATED = {"validation": {"pairs": 8}, "eval_every": 2, "checkpoint_every": 4, "learning_rate": 1e-2}


def validated_config(base: Path, **training: object) -> PipelineConfig:
    """make_config with validation, and short greedy translations (a random tiny model never says </s>)."""
    config = make_config(base, **{**VALIDATED, **training})
    return config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"max_new_tokens": 12})})


def test_validation_pairs_never_reach_the_training_steps(bases: dict[str, Path], shard: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
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
    result = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), eval_texts={})

    pairs = list(zip(dev_lines("eng_Latn", 64), dev_lines("hin_Deva", 64), strict=True))
    held = select_holdout(pairs, config.training.validation)
    lm = load_base(str(bases["seq2seq"]), languages=[])
    held_sources = {tuple(encode_pair(lm, s, t, "eng_Latn", "hin_Deva", 48)[0]) for s, t in held.pairs}
    trained_sources = {tuple(encode_pair(lm, s, t, "eng_Latn", "hin_Deva", 48)[0]) for s, t in pairs if (s, t) not in held}
    assert result.validation_pairs == 8 and len(held_sources) == 8
    assert len(consumed) == 20 * 4  # 20 steps of 4 pairs
    assert not set(consumed) & held_sources
    assert set(consumed) <= trained_sources and len(set(consumed)) > 40


def test_early_stopping_keeps_the_best_validated_checkpoint_as_the_candidate(bases: dict[str, Path], shard: str,
                                                                              tmp_path: Path) -> None:  # fmt: skip
    seen: list[tuple[int, dict[str, float]]] = []
    config = validated_config(bases["seq2seq"], max_steps=200, patience=2)
    result = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path),
                           eval_texts={}, on_validation=lambda step, v: seen.append((step, v)))  # fmt: skip

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

    again = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), eval_texts={})
    assert again.steps == result.steps and again.best_step == result.best_step  # a stopped run stays stopped


def test_a_validation_slice_that_leaves_nothing_to_train_on_names_the_direction(bases: dict[str, Path], shard: str,
                                                                                tmp_path: Path) -> None:  # fmt: skip
    config = make_config(bases["seq2seq"], validation={"share": 1.0, "max_pairs": 1000})
    with pytest.raises(TrainingError, match=r"eng_Latn-hin_Deva: training.validation holds out all 64 pairs"):
        train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path), eval_texts={})


_KILLED_BETWEEN_VALIDATIONS = """
import json, sys, time
from pathlib import Path
from bhashaflow.config import config_from_dict
from bhashaflow.training.loop import train_adapter
args = json.loads(sys.argv[1])
def on_progress(step, total, loss):
    if step == args["kill_at"]:  # after a checkpoint, before the next validation: the parent kills us here
        Path(args["marker"]).write_text(str(step))
        time.sleep(600)
train_adapter(config=config_from_dict(args["config"]), direction=args["direction"], shard_paths=args["shards"],
              out_dir=args["out"], eval_texts={}, on_progress=on_progress)
"""


@pytest.mark.slow
def test_a_kill_between_validations_resumes_with_the_same_best_step_and_adapter(bases: dict[str, Path], shard: str,
                                                                                 tmp_path: Path) -> None:  # fmt: skip
    config = validated_config(bases["seq2seq"], max_steps=24, patience=3, checkpoint_every=2, eval_every=4)
    straight = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path / "straight"),
                             eval_texts={})  # fmt: skip
    out, marker = tmp_path / "killed", tmp_path / "marker"
    kill_at = 7  # checkpoints at 2, 4 (validated), 6; the next validation would come at step 8
    args = {"config": config.model_dump(mode="json"), "direction": DIRECTION, "shards": [shard], "out": str(out),
            "marker": str(marker), "kill_at": kill_at}  # fmt: skip
    kill_when_marked(_KILLED_BETWEEN_VALIDATIONS, args, marker)
    assert latest_checkpoint(out) == out / "checkpoints" / "step-6"
    killed_state = json.loads((out / "checkpoints" / "step-6" / "trainer_state.json").read_text())
    assert [v["step"] for v in killed_state["validation"]] == [4]

    resumed = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(out), eval_texts={})

    assert resumed.resumed_from == 6
    assert (resumed.steps, resumed.best_step, resumed.stopped_early) == (straight.steps, straight.best_step,
                                                                         straight.stopped_early)  # fmt: skip
    assert resumed.validation == straight.validation  # every score, bit for bit
    a = (Path(resumed.adapter_dir) / "adapter_model.safetensors").read_bytes()
    b = (Path(straight.adapter_dir) / "adapter_model.safetensors").read_bytes()
    assert a == b


def test_a_line_separator_inside_an_evaluation_sentence_shifts_nothing(tmp_path: Path) -> None:
    from bhashaflow.training.stream import eval_sentences

    flores = tmp_path / "flores200"
    (flores / "devtest").mkdir(parents=True)
    # U+2028 and U+0085 are line breaks to str.splitlines, but not in FLORES files (one sentence per "\n").
    eng = ["First sentence.", "Second\u2028 half of it.", "Third\x85 one.", "Fourth."]
    hin = ["पहला।", "दूसरा\u2028 आधा।", "तीसरा।", "चौथा।"]
    (flores / "devtest" / "eng_Latn.devtest").write_text("\n".join(eng) + "\n", encoding="utf-8")
    (flores / "devtest" / "hin_Deva.devtest").write_text("\n".join(hin) + "\n", encoding="utf-8")
    config = config_from_dict({"directions": [DIRECTION], "evaluation": {"flores_dir": str(flores)}})

    sentences = eval_sentences(config, ("eng_Latn", "hin_Deva"), None)

    assert sentences == eng + hin  # eight whole sentences, not eleven fragments
    decon = Decontaminator(sentences)
    kept = list(decon.filter([(eng[1], "x"), ("Second", "x"), ("y", hin[3]), ("clean", "pair")]))
    assert kept == [("Second", "x"), ("clean", "pair")] and decon.removed == 2
