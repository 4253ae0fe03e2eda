"""CPO on tiny bases of both families: the chosen-over-rejected margin grows on held-out triplets, the per-token
loss matches autograd's, a killed CPO run resumes bit-identically, and a run without triplets says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import dev_lines, write_shard
from training_helpers import DIRECTION, make_config

from bhashaflow.core.records import PREFERENCE_SCHEMA
from bhashaflow.data.batching import collate
from bhashaflow.data.decontamination import Decontaminator
from bhashaflow.modeling.adapters import load_adapter
from bhashaflow.modeling.loaded import LoadedModel
from bhashaflow.modeling.loading import load_base
from bhashaflow.training import TrainingError
from bhashaflow.training.loop import TrainHooks, train_adapter
from bhashaflow.training.loss import _PerTokenLinearCrossEntropy
from bhashaflow.training.preference import PreferenceExample, _log_probs, load_triplets

# Long enough for every FLORES dev pair: a truncated pair would cut off where chosen and rejected differ.
CPO = {
    "objective": "cpo",
    "cpo": {"beta": 0.1, "sft_share": 0.25},
    "learning_rate": 1e-2,
    "batch_size": 8,
    "max_length": 200,
}


def _off_target(translation: str, source: str) -> str:
    """A worse translation, as weak adapters make them: every third word is left in the source language."""
    words, leaked = translation.split(), source.split()
    return " ".join(leaked[i % len(leaked)] if i % 3 == 2 else w for i, w in enumerate(words))


def write_preferences(path: Path, lo: int, hi: int) -> str:
    src, chosen = dev_lines("eng_Latn", hi)[lo:], dev_lines("hin_Deva", hi)[lo:]
    n = len(src)
    table = pa.table(
        {
            "src": src,
            "tgt": chosen,
            "src_lang": ["eng_Latn"] * n,
            "tgt_lang": ["hin_Deva"] * n,
            "source": ["feedback"] * n,
            "id": [f"feedback:{i}" for i in range(n)],
            "rejected": [_off_target(t, s) for t, s in zip(chosen, src, strict=True)],
            "reward": [-0.5] * n,
            "adapter_version": ["v0001"] * n,
        },
        schema=PREFERENCE_SCHEMA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("preferences")
    pairs = list(zip(dev_lines("eng_Latn", 48), dev_lines("hin_Deva", 48), strict=True))
    return {
        "pairs": write_shard(root / "pairs.parquet", pairs, "eng_Latn", "hin_Deva"),
        "train": write_preferences(root / "train.parquet", 0, 48),
        "heldout": write_preferences(root / "heldout.parquet", 48, 64),
    }


def preference_margins(
    model: Any, lm: LoadedModel, triplets: list[PreferenceExample], batch_size: int = 16
) -> list[float]:
    """log pi(chosen|x) - log pi(rejected|x) of each triplet under `model` (no gradients): what CPO raises."""
    pad_id = int(lm.tokenizer.pad_token_id)
    margins: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(triplets), batch_size):
            chunk = triplets[start : start + batch_size]
            chosen, _ = _log_probs(model, collate([t.chosen for t in chunk], pad_id), lm.family, lm.device)
            rejected, _ = _log_probs(model, collate([t.rejected for t in chunk], pad_id), lm.family, lm.device)
            margins.extend((chosen - rejected).tolist())
    model.train(was_training)
    return margins


def test_per_token_loss_and_its_gradients_match_autograd() -> None:
    torch.manual_seed(0)
    hidden, weight, bias = (
        torch.randn(7, 5, requires_grad=True),
        torch.randn(11, 5, requires_grad=True),
        torch.randn(11, requires_grad=True),
    )
    targets, upstream = torch.randint(0, 11, (7,)), torch.randn(7)
    expected = torch.nn.functional.cross_entropy(hidden @ weight.T + bias, targets, reduction="none")
    got = _PerTokenLinearCrossEntropy.apply(hidden, weight, bias, targets, 3)
    torch.testing.assert_close(got, expected)
    for a, b in zip(
        torch.autograd.grad((got * upstream).sum(), (hidden, weight, bias)),
        torch.autograd.grad((expected * upstream).sum(), (hidden, weight, bias)),
        strict=True,
    ):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_cpo_raises_the_margin_of_chosen_over_rejected_on_held_out_triplets(
    bases: dict[str, Path], data: dict[str, str], tmp_path: Path, family: str
) -> None:
    config = make_config(bases[family], max_steps=30, checkpoint_every=30, **CPO)
    lm = load_base(str(bases[family]), languages=["eng_Latn", "hin_Deva"])
    heldout = load_triplets(lm, [data["heldout"]], ("eng_Latn", "hin_Deva"), Decontaminator([]), 200, None)
    before = preference_margins(lm.model, lm, heldout)
    result = train_adapter(
        config=config,
        direction=DIRECTION,
        shard_paths=[data["pairs"]],
        out_dir=str(tmp_path / "run"),
        preference_paths=[data["train"]],
        hooks=TrainHooks(eval_texts={}),
    )
    assert result.objective == "cpo" and result.steps == 30
    load_adapter(lm, result.adapter_dir, "cpo")
    lm.model.set_adapter("cpo")
    after = preference_margins(lm.model, lm, heldout)
    gained = sum(a - b for a, b in zip(after, before, strict=True)) / len(before)
    assert gained > 1.0, f"mean held-out margin moved by {gained:+.2f} nats"
    assert sum(a > b for a, b in zip(after, before, strict=True)) >= 0.75 * len(before)


def test_a_killed_cpo_run_resumes_to_the_uninterrupted_adapter(
    bases: dict[str, Path], data: dict[str, str], tmp_path: Path
) -> None:
    config = make_config(bases["seq2seq"], max_steps=6, checkpoint_every=3, **CPO)
    args = {
        "config": config,
        "direction": DIRECTION,
        "shard_paths": [data["pairs"]],
        "preference_paths": [data["train"]],
    }
    hooks = TrainHooks(eval_texts={})

    class Killed(Exception):
        pass

    def kill_after(step: int, total: int, loss: float) -> None:
        if step == 4:  # past the checkpoint at step 3: steps 4.. are lost and replayed
            raise Killed

    with pytest.raises(Killed):
        killing = TrainHooks(eval_texts={}, on_progress=kill_after)
        train_adapter(**args, out_dir=str(tmp_path / "killed"), hooks=killing)  # type: ignore[arg-type]
    resumed = train_adapter(**args, out_dir=str(tmp_path / "killed"), hooks=hooks)  # type: ignore[arg-type]
    straight = train_adapter(**args, out_dir=str(tmp_path / "straight"), hooks=hooks)  # type: ignore[arg-type]
    assert resumed.resumed_from == 3
    a = load_file(str(Path(resumed.adapter_dir) / "adapter_model.safetensors"))
    b = load_file(str(Path(straight.adapter_dir) / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "killed" / "train_log.jsonl").read_text() == (
        tmp_path / "straight" / "train_log.jsonl"
    ).read_text()


def test_cpo_without_preference_triplets_names_what_is_missing(
    bases: dict[str, Path], data: dict[str, str], tmp_path: Path
) -> None:
    config = make_config(bases["seq2seq"], max_steps=2, **CPO)
    with pytest.raises(TrainingError, match="no preference triplets for eng_Latn-hin_Deva.*rl_logs"):
        train_adapter(
            config=config,
            direction=DIRECTION,
            shard_paths=[data["pairs"]],
            out_dir=str(tmp_path / "run"),
            preference_paths=[],
            hooks=TrainHooks(eval_texts={}),
        )


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_cpo_scores_sequences_as_the_models_own_logits_do_without_calling_its_output_layer(
    bases: dict[str, Path], data: dict[str, str], family: str
) -> None:
    from bhashaflow.data.batching import Example, collate
    from bhashaflow.training.lora import prepare_lora_model
    from bhashaflow.training.optim import AdapterOptimizer
    from bhashaflow.training.preference import cpo_step, preference_steps

    config = make_config(bases[family], **CPO)
    lm = load_base(str(bases[family]), languages=["eng_Latn", "hin_Deva"])
    triplets = load_triplets(lm, [data["heldout"]], ("eng_Latn", "hin_Deva"), Decontaminator([]), 200, None)[:6]
    pad_id = int(lm.tokenizer.pad_token_id)

    def own_log_probs(examples: list[Example]) -> torch.Tensor:
        batch = collate(examples, pad_id)
        logits, labels = lm.model(**batch).logits.float(), batch["labels"]
        if family == "causal":
            logits, labels = logits[:, :-1], labels[:, 1:]
        picked = torch.log_softmax(logits, -1).gather(2, labels.clamp(min=0)[..., None]).squeeze(2)
        return picked.masked_fill(labels == -100, 0.0).sum(1)

    lm.model.eval()
    with torch.no_grad():
        expected = own_log_probs([t.chosen for t in triplets]) - own_log_probs([t.rejected for t in triplets])
    head = lm.model.get_output_embeddings()
    calls = [0]
    head.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    margins = preference_margins(lm.model, lm, triplets, batch_size=4)
    torch.testing.assert_close(torch.tensor(margins), expected, rtol=1e-4, atol=1e-4)

    lm.model, _ = prepare_lora_model(lm, config)
    optimizer = AdapterOptimizer("adamw", [p for p in lm.model.parameters() if p.requires_grad], 1e-3, "cpu")
    sft = [t.chosen for t in triplets]
    step = next(preference_steps(triplets, sft, batch_size=4, grad_accum_steps=2, cpo=config.training.cpo, seed=0))
    loss, tokens = cpo_step(lm.model, optimizer, step, pad_id, family, "cpu", config.training.cpo)
    assert torch.isfinite(loss) and tokens > 0
    assert calls[0] == 0  # neither the margins nor a CPO step ran the output layer
