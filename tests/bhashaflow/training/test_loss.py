"""The chunked loss: the same loss and LoRA gradients as transformers' own, and never a full logits tensor."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from standins import BLOOMZ, M2M100, MARIAN_EN_HI, NLLB
from tiny_models import dev_lines, save_tiny_m2m100
from torch.utils._python_dispatch import TorchDispatchMode

from bhashaflow.config import config_from_dict
from bhashaflow.data.batching import collate
from bhashaflow.modeling.encoding import encode_pair
from bhashaflow.modeling.loaded import LoadedModel
from bhashaflow.modeling.loading import load_base
from bhashaflow.training.loop import train_step
from bhashaflow.training.lora import prepare_lora_model
from bhashaflow.training.loss import (
    CHUNK_ELEMENTS,
    chunk_rows_for,
    linear_cross_entropy,
    scored_token_count,
    scored_tokens,
    translation_loss_sum,
)
from bhashaflow.training.optim import AdapterOptimizer

DIRECTION = "eng_Latn-hin_Deva"
TORCH_HAS_IT = hasattr(torch.nn, "LinearCrossEntropyOptions")
IMPLEMENTATIONS = [
    pytest.param(
        True, id="torch", marks=pytest.mark.skipif(not TORCH_HAS_IT, reason="this torch has no linear_cross_entropy")
    ),
    pytest.param(False, id="fallback"),
]


def lora_model(
    base: Path, dtype: torch.dtype = torch.float32, attention: str | None = None, **training: Any
) -> LoadedModel:
    lm = load_base(str(base), languages=[], dtype=dtype)
    if attention:
        lm.model.set_attn_implementation(attention)
    config = config_from_dict({"directions": [DIRECTION], "base_model": str(base), "training": training})
    lm.model, _ = prepare_lora_model(lm, config)
    return lm


def batch_of(lm: LoadedModel, n: int = 6, max_length: int = 48) -> dict[str, torch.Tensor]:
    pairs = zip(dev_lines("eng_Latn", n), dev_lines("hin_Deva", n), strict=True)
    return collate(
        [encode_pair(lm, s, t, "eng_Latn", "hin_Deva", max_length) for s, t in pairs], lm.tokenizer.pad_token_id
    )


def lora_grads(model: Any) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("use_torch", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_loss_and_lora_gradients_equal_the_plain_transformers_loss(
    tiny_bases: dict[str, Path], family: str, use_torch: bool
) -> None:
    lm = lora_model(tiny_bases[family])
    model = lm.model
    model.eval()  # no dropout: both losses see the same network (gradients flow all the same)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapter an effect on the loss
            torch.nn.init.normal_(param, std=0.05)
    batch = batch_of(lm)

    plain = model(**batch).loss  # transformers' own: full logits, mean over the scored tokens
    plain.backward()
    expected = lora_grads(model)
    ours = translation_loss_sum(model, batch, family, chunk_rows=7, use_torch=use_torch)
    ours = ours / scored_token_count(batch["labels"], family)
    ours.backward()
    got = lora_grads(model)

    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, plain.float(), rtol=1e-5, atol=1e-6)
    assert got.keys() == expected.keys() and len(got) > 0
    for name, want in expected.items():
        scale = float(want.abs().max())  # float noise is relative to the gradient's size
        assert scale > 0, name
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-4 * scale, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("use_torch", IMPLEMENTATIONS)
def test_linear_cross_entropy_equals_cross_entropy_with_bias_and_trained_weight(use_torch: bool) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(37, 8, requires_grad=True)
    weight = (torch.randn(50, 8) * 0.3).requires_grad_(True)
    bias = (torch.randn(50) * 0.1).requires_grad_(True)
    targets = torch.randint(0, 50, (37,))

    expected = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum")
    expected.backward()
    want = [t.grad.clone() for t in (hidden, weight, bias)]  # type: ignore[union-attr]
    for t in (hidden, weight, bias):
        t.grad = None
    got = linear_cross_entropy(hidden, weight, targets, bias=bias, chunk_rows=5, use_torch=use_torch)
    (got * 0.5).backward()  # an upstream gradient other than 1 reaches every input

    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for tensor, grad in zip((hidden, weight, bias), want, strict=True):
        torch.testing.assert_close(tensor.grad, grad * 0.5, rtol=1e-5, atol=1e-6)


def scored_positions(hidden: torch.Tensor, labels: torch.Tensor, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states, targets) of the scored positions only: (n x hidden), (n); see `scored_tokens`."""
    scored = scored_tokens(labels, family).to(hidden.device)
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, scored.index), scored.targets


def test_decoder_only_bases_project_only_the_answer(tiny_bases: dict[str, Path]) -> None:
    lm = lora_model(tiny_bases["causal"])
    batch = batch_of(lm, n=3)
    hidden = torch.zeros(*batch["input_ids"].shape, 4)
    rows, targets = scored_positions(hidden, batch["labels"], "causal")
    answers = [[t for t in row if t != -100] for row in batch["labels"].tolist()]
    assert rows.shape == (sum(map(len, answers)), 4)
    assert targets.tolist() == [t for answer in answers for t in answer]
    prompt = int((batch["labels"][0] == -100).sum()) - int((batch["input_ids"][0] == lm.tokenizer.pad_token_id).sum())
    assert prompt > 10  # the prompt template alone is longer than that, and none of it is projected


def largest_allocation(fn: Any) -> int:
    """Bytes of the largest allocation any single op makes while `fn` runs (the profiler sees inside every op)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(event.self_cpu_memory_usage for event in prof.events())


@pytest.mark.slow
def test_a_training_step_of_an_nllb_shaped_head_never_holds_full_logits(tmp_path: Path) -> None:
    vocab = 256_206  # facebook/nllb-200-distilled-600M's vocabulary
    base = save_tiny_m2m100(tmp_path / "nllb-head", d_model=16, vocab_size=vocab)
    lm = lora_model(base)
    config_lr = 1e-3
    optimizer = AdapterOptimizer("adamw", [p for p in lm.model.parameters() if p.requires_grad], config_lr, "cpu")
    batch = batch_of(lm, n=16, max_length=96)
    positions = scored_token_count(batch["labels"], "seq2seq")
    full_logits = positions * vocab * 4  # one fp32 positions x vocabulary tensor
    lm.model.train()

    ours = largest_allocation(lambda: train_step(lm.model, optimizer, [batch], "seq2seq", "cpu"))
    plain = largest_allocation(lambda: lm.model(**batch).loss.backward())

    assert positions > 1000
    assert plain >= full_logits  # the measure does see a full logits tensor where there is one
    assert ours <= chunk_rows_for(vocab) * vocab * 4 + 2**20  # one chunk of fp32 logits, about CHUNK_ELEMENTS
    assert ours * 8 < full_logits, (ours, full_logits)
    assert CHUNK_ELEMENTS * 4 * 8 < full_logits


_MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "addmv", "mv", "dot"}
_CASTS = {"_to_copy", "copy_", "to"}


class _OpDtypes(TorchDispatchMode):
    """Every aten op of a step: fp32 matrix products, and casts inside LoRA layers."""

    def __init__(self) -> None:
        super().__init__()
        self.in_lora = 0
        self.fp32_matmuls: Counter[str] = Counter()
        self.lora_casts: Counter[str] = Counter()
        self.matmuls = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if name in _MATMULS:
            self.matmuls += 1
            if any(t.dtype == torch.float32 for t in tensors):
                self.fp32_matmuls[name] += 1
        if name in _CASTS and self.in_lora:
            target = (kwargs or {}).get("dtype") or (args[1].dtype if name == "copy_" else None)
            if target is not None and target != tensors[0].dtype:
                self.lora_casts[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_a_bf16_step_runs_no_fp32_matmul_and_no_cast_inside_lora_layers(
    tiny_bases: dict[str, Path], family: str, checkpointing: bool
) -> None:
    from peft.tuners.lora import LoraLayer

    # Eager attention: torch's CPU SDPA kernel runs bf16 attention in fp32 inside (CUDA's fused kernels do
    # not), which would hide the model's own ops from the count.
    lm = lora_model(tiny_bases[family], dtype=torch.bfloat16, attention="eager", gradient_checkpointing=checkpointing)
    model = lm.model
    lora_params = [p for p in model.parameters() if p.requires_grad]
    assert lora_params and {p.dtype for p in lora_params} == {torch.bfloat16}
    assert lm.compute_dtype == torch.bfloat16
    optimizer = AdapterOptimizer("adamw", lora_params, 1e-3, "cpu")
    batch = batch_of(lm)
    model.train()
    train_step(model, optimizer, [batch], family, "cpu")  # warm-up: lazy initialisation happens outside the count

    mode = _OpDtypes()
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.register_forward_pre_hook(lambda *_: setattr(mode, "in_lora", mode.in_lora + 1))
            module.register_forward_hook(lambda *_: setattr(mode, "in_lora", mode.in_lora - 1))
    # Recomputation in the backward stops early by default, skipping the hooks that close a LoRA layer.
    with torch.utils.checkpoint.set_checkpoint_early_stop(False), mode:
        loss = train_step(model, optimizer, [batch], family, "cpu")

    assert torch.isfinite(loss)
    assert mode.matmuls > 10
    assert dict(mode.fp32_matmuls) == {}
    assert dict(mode.lora_casts) == {}
    assert mode.in_lora == 0
    assert {p.dtype for p in lora_params} == {torch.bfloat16}  # the fp32 masters were copied back, not swapped in


# Ops that make the host wait for the device: a boolean mask's count (nonzero, masked_select, index with a mask),
# reading a value (item), or a size that depends on values (bincount, unique).
_SYNCS = {"nonzero", "masked_select", "_local_scalar_dense", "bincount", "unique", "_unique2", "repeat_interleave"}


class _HostSyncs(TorchDispatchMode):
    """The ops of the loss (the model's own forward, transformers' code, left out) that would sync a GPU's host."""

    def __init__(self) -> None:
        super().__init__()
        self.found: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        import traceback

        name = func.overloadpacket.__name__
        masks = name in {"index", "index_put", "index_put_"} and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []) or []
        )
        if (name in _SYNCS or masks) and not any("/transformers/" in f.filename for f in traceback.extract_stack()):
            self.found[f"{name}{' (bool mask)' if masks else ''}"] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("use_torch", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_the_losses_never_wait_for_the_device(tiny_bases: dict[str, Path], family: str, use_torch: bool) -> None:
    from bhashaflow.training.loss import on_device, sequence_log_probs

    lm = lora_model(tiny_bases[family])
    moved, scored = on_device(batch_of(lm), family, "cpu")  # on the host, before the batch would reach a GPU

    syncs = _HostSyncs()
    with syncs:
        translation_loss_sum(lm.model, moved, family, scored=scored, use_torch=use_torch).backward()
        sums, counts = sequence_log_probs(lm.model, moved, family, scored=scored)
        sums.sum().backward()
    assert dict(syncs.found) == {}
    labels = moved["labels"][:, 1:] if family == "causal" else moved["labels"]
    assert counts.tolist() == (labels != -100).sum(1).tolist()

    unlocated = _HostSyncs()  # the check sees a sync where there is one: the labels' mask taken on the "device"
    with unlocated:
        translation_loss_sum(lm.model, moved, family, use_torch=use_torch)
    assert unlocated.found["nonzero"] >= 1


# ------------------------------------------------------------------------ the loss from the backbone's hidden states


class _Calls:
    """Counts the calls of a module: its forward pre-hooks and forward hooks both fire on every call."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.pre = self.post = 0
        self.handles = [
            module.register_forward_pre_hook(lambda *_: setattr(self, "pre", self.pre + 1)),
            module.register_forward_hook(lambda *_: setattr(self, "post", self.post + 1)),
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _Raised:
    """Exceptions that pass through a module's forward (or its call) while the tracer is set, by type name."""

    def __init__(self) -> None:
        self.found: Counter[str] = Counter()

    def __call__(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "exception" and frame.f_code.co_name in {"forward", "_call_impl", "_wrapped_call_impl"}:
            self.found[arg[0].__name__] += 1
        return self


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_the_loss_never_calls_the_output_layer_and_raises_nothing_through_forward(
    tiny_bases: dict[str, Path], family: str, checkpointing: bool
) -> None:
    import sys

    from bhashaflow.training.loss import sequence_log_probs

    lm = lora_model(tiny_bases[family], gradient_checkpointing=checkpointing)
    model = lm.model
    model.train()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()) is checkpointing
    batch = batch_of(lm, n=3)
    head = _Calls(model.get_base_model().get_output_embeddings())
    raised = _Raised()
    sys.settrace(raised)  # the forward passes only: checkpointing's recomputation stops itself by raising, in torch
    try:
        loss = translation_loss_sum(model, batch, family, chunk_rows=7)
        sums, _ = sequence_log_probs(model, batch, family, chunk_rows=7)
    finally:
        sys.settrace(None)
    (loss + sums.sum()).backward()
    assert (head.pre, head.post) == (0, 0)
    assert dict(raised.found) == {}
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)

    model(**batch)  # the counts do see the output layer where it is called
    assert (head.pre, head.post) == (1, 1)
    head.remove()


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_the_hidden_states_are_the_output_layers_input_and_compile_as_one_graph(
    tiny_bases: dict[str, Path], family: str
) -> None:
    from bhashaflow.training.loss import head_inputs

    lm = lora_model(tiny_bases[family])
    model = lm.model
    model.eval()
    batch = batch_of(lm, n=3)
    seen: list[torch.Tensor] = []
    handle = (
        model.get_base_model().get_output_embeddings().register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    )
    with torch.no_grad():
        model(**batch)
        handle.remove()
        eager = head_inputs(model, batch)
        torch._dynamo.reset()
        # fullgraph: any graph break (an exception raised to stop the forward was one) fails the compilation
        compiled = torch.compile(head_inputs, backend="eager", fullgraph=True)(model, batch)

    assert len(seen) == 1
    torch.testing.assert_close(eager, seen[0], rtol=0, atol=0)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)


_VOCAB = 97
_SEQ2SEQ = {
    "d_model": 16,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "decoder_ffn_dim": 32,
    "max_position_embeddings": 64,
}
_T5 = {"d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_heads": 2, "decoder_start_token_id": 1}
_IDS = {"vocab_size": _VOCAB, "pad_token_id": 1, "eos_token_id": 2}
_ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    # name: (config class, model class, config fields); the LM head's input and what follows it differ:
    "m2m100": ("M2M100Config", "M2M100ForConditionalGeneration", {**_SEQ2SEQ, "decoder_start_token_id": 2}),
    "marian": ("MarianConfig", "MarianMTModel", {**_SEQ2SEQ, "decoder_start_token_id": 1}),  # final_logits_bias
    "mbart": ("MBartConfig", "MBartForConditionalGeneration", _SEQ2SEQ),  # its own shift; final_logits_bias
    "t5-tied": ("T5Config", "T5ForConditionalGeneration", _T5),  # decoder output scaled by d_model**-0.5
    "t5-untied": ("T5Config", "T5ForConditionalGeneration", {**_T5, "tie_word_embeddings": False}),
    "mt5": ("MT5Config", "MT5ForConditionalGeneration", _T5),
    "umt5": ("UMT5Config", "UMT5ForConditionalGeneration", _T5),
    "bloom": ("BloomConfig", "BloomForCausalLM", {"hidden_size": 16, "n_layer": 1, "n_head": 2}),  # ln_f in the body
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "tie_word_embeddings": True,
        },
    ),
    "opt": (
        "OPTConfig",
        "OPTForCausalLM",
        {"hidden_size": 16, "ffn_dim": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "word_embed_proj_dim": 8},
    ),
}


def _architecture(name: str) -> tuple[Any, str]:
    """A tiny random model of `name` with LoRA on every linear layer (B non-zero) and a random final_logits_bias."""
    import transformers
    from peft import LoraConfig, get_peft_model

    config_class, model_class, fields = _ARCHITECTURES[name]
    torch.manual_seed(0)
    base = getattr(transformers, model_class)(getattr(transformers, config_class)(**_IDS, **fields))
    if isinstance(getattr(base, "final_logits_bias", None), torch.Tensor):
        torch.nn.init.normal_(base.final_logits_bias)
    model = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear"))
    for param_name, param in model.named_parameters():
        if "lora_B" in param_name:
            torch.nn.init.normal_(param, std=0.1)
    model.eval()
    return model, "seq2seq" if base.config.is_encoder_decoder else "causal"


def _random_batch(family: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, _VOCAB, (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    ids[0, 6:], mask[0, 6:] = 1, 0
    if family == "seq2seq":
        labels = torch.randint(3, _VOCAB, (3, 7), generator=generator)
        labels[1, 5:] = -100
    else:
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :3] = -100  # a prompt
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("name", list(_ARCHITECTURES))
def test_every_architectures_loss_and_sequence_log_probs_equal_its_own_logits(name: str) -> None:
    from bhashaflow.training.loss import sequence_log_probs

    model, family = _architecture(name)
    batch = _random_batch(family)
    out = model(**batch)
    out.loss.backward()
    expected = lora_grads(model)
    labels = batch["labels"][:, 1:] if family == "causal" else batch["labels"]
    logits = out.logits[:, :-1] if family == "causal" else out.logits
    picked = torch.log_softmax(logits.float(), -1).gather(2, labels.clamp(min=0)[..., None]).squeeze(2)
    per_sequence = picked.masked_fill(labels == -100, 0.0).sum(1)

    ours = translation_loss_sum(model, batch, family, chunk_rows=5, use_torch=False) / scored_token_count(
        batch["labels"], family
    )
    ours.backward()
    got = lora_grads(model)
    sums, counts = sequence_log_probs(model, batch, family, chunk_rows=5)

    torch.testing.assert_close(ours, out.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sums, per_sequence.detach(), rtol=1e-5, atol=1e-5)
    assert counts.tolist() == (labels != -100).sum(1).tolist()
    assert got.keys() == expected.keys() and len(got) > 0
    for param_name, want in expected.items():
        scale = float(want.abs().max())
        torch.testing.assert_close(got[param_name], want, rtol=1e-4, atol=1e-4 * scale + 1e-9)


def test_the_scaled_decoder_output_and_the_final_logits_bias_count() -> None:
    """The architectures test can fail: without T5's scale or Marian's bias the loss differs."""
    from bhashaflow.training.loss import decoder_output_scale, output_projection

    t5, _ = _architecture("t5-tied")
    assert decoder_output_scale(t5.get_base_model().config) == 16**-0.5
    assert decoder_output_scale(_architecture("mt5")[0].get_base_model().config) is None
    marian, _ = _architecture("marian")
    weight, bias = output_projection(marian)
    assert bias is not None and torch.equal(bias, marian.get_base_model().final_logits_bias.reshape(-1))
    assert weight is marian.get_base_model().get_output_embeddings().weight


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
@pytest.mark.parametrize("family", ["seq2seq", "causal"])
def test_a_quantised_bases_loss_equals_its_own(tiny_bases: dict[str, Path], family: str, quantization: str) -> None:
    # bf16 as on a GPU; in training mode, as training runs it (bitsandbytes' CPU backend repacks NF4 weights for
    # inference, which layers this narrow do not survive), with no dropout so both losses see the same network.
    lm = load_base(str(tiny_bases[family]), languages=[], quantization=quantization, dtype=torch.bfloat16)
    training = {"quantization": quantization, "lora": {"dropout": 0.0}}
    lm.model, _ = prepare_lora_model(
        lm, config_from_dict({"directions": [DIRECTION], "base_model": str(tiny_bases[family]), "training": training})
    )
    model = lm.model
    assert {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}[quantization] in {type(m).__name__ for m in model.modules()}
    model.train()
    batch = batch_of(lm, n=3)
    logits, labels = model(**batch).logits.float(), batch["labels"]  # the model's own bf16 logits, CE in fp32
    if family == "causal":
        logits, labels = logits[:, :-1], labels[:, 1:]
    plain = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    # The fallback (bf16 products of other shapes than the full head's round a little differently): torch's own op
    # returns a bf16 input's summed loss in bf16, rounded to 3 significant digits.
    ours = translation_loss_sum(model, batch, family, chunk_rows=7, use_torch=False)
    torch.testing.assert_close(ours / scored_token_count(batch["labels"], family), plain, rtol=1e-4, atol=1e-4)


def test_a_base_the_loss_cannot_take_is_refused_naming_its_class() -> None:
    import transformers

    from bhashaflow.training.loss import LossError

    bloom = transformers.BloomConfig(vocab_size=_VOCAB, hidden_size=16, n_layer=1, n_head=2, pad_token_id=1)
    batch = _random_batch("causal")
    with pytest.raises(LossError, match="BloomModel"):  # a body without an output layer
        translation_loss_sum(transformers.BloomModel(bloom), batch, "causal")
    capped = transformers.Gemma2Config(
        vocab_size=_VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        pad_token_id=1,
    )
    with pytest.raises(LossError, match="Gemma2ForCausalLM transforms its logits .final_logit_softcapping."):
        translation_loss_sum(transformers.Gemma2ForCausalLM(capped), batch, "causal")
    m2m = transformers.M2M100Config(**_IDS, **_SEQ2SEQ, decoder_start_token_id=None)
    with pytest.raises(LossError, match="M2M100ForConditionalGeneration: its config lacks decoder_start_token_id"):
        translation_loss_sum(transformers.M2M100ForConditionalGeneration(m2m), _random_batch("seq2seq"), "seq2seq")


@pytest.mark.parametrize("hub_id", [NLLB, M2M100, MARIAN_EN_HI, BLOOMZ])
def test_the_stand_ins_of_the_hub_bases_lose_what_their_own_forward_loses(hf_standins: Path, hub_id: str) -> None:
    from bhashaflow.core.settings import Settings

    lm = load_base(hub_id, languages=[], settings=Settings(hf_hub_offline=True), device="cpu")
    training = {"lora": {"dropout": 0.0}}
    lm.model, _ = prepare_lora_model(
        lm, config_from_dict({"directions": [DIRECTION], "base_model": hub_id, "training": training})
    )
    for name, param in lm.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    lm.model.eval()
    batch = batch_of(lm, n=3)
    plain = lm.model(**batch).loss
    ours = translation_loss_sum(lm.model, batch, lm.family) / scored_token_count(batch["labels"], lm.family)
    torch.testing.assert_close(ours, plain.float(), rtol=1e-5, atol=1e-5)
