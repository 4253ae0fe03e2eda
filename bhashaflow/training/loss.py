"""The training loss, computed without ever materialising the logits of a whole batch.

NLLB's and BLOOM's vocabularies hold about 250k tokens: the logits of 16 x 128 positions are 2 GiB in fp32,
and a plain loss keeps two or three tensors of that size. Here, as in torchtune and Liger-Kernel, only the
model's backbone runs, for its last hidden states (the output layer is never called, and nothing stops the
forward part-way), and the output layer's weight and bias go to the loss: the hidden states of the positions
that are scored (non-padding target tokens: for decoder-only bases the answer, never the prompt) are projected
onto the vocabulary a chunk of rows at a time, and the gradient of each chunk is taken on the spot, so at most
one chunk of logits exists at any moment. A single device holds the model (load_base's device_map {"": device}):
calling its backbone skips no hook that moves tensors between devices.

torch >= 2.13 ships this as `torch.nn.functional.linear_cross_entropy` (its chunked path); older torch gets
`chunked_linear_cross_entropy` below, the same algorithm (Liger-Kernel's fused linear cross-entropy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# Rows of logits computed at once: this many elements (128 MiB in fp32), about 130 rows of a 256k vocabulary.
CHUNK_ELEMENTS = 1 << 25
IGNORE_INDEX = -100


class LossError(RuntimeError):
    """The model cannot be trained with the chunked loss; the message says why."""


def chunk_rows_for(vocab_size: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """Rows of hidden states projected at once so that a chunk of logits holds about `chunk_elements`."""
    return max(1, chunk_elements // max(1, vocab_size))


# Encoder-decoder types whose forward multiplies the decoder's output by d_model**-0.5 before the output layer
# (T5's mesh-tensorflow convention) when their embeddings are tied. transformers 5 states it in
# `config.scale_decoder_outputs` where it applies; without that field the tie decides, as in transformers 4
# (whose mT5 still scaled; transformers 5's mT5 no longer does and has no such field).
_SCALED_DECODER_TYPES = frozenset({"t5", "umt5", "longt5", "switch_transformers"})


def transformers_model(model: Any) -> Any:
    """The transformers model itself: `model`, or the one a peft wrapper (LoRA on its layers) holds."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def head_inputs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The hidden states the model feeds its output layer for `batch` (batch x positions x hidden).

    Only the model's backbone runs (its decoder after its encoder for seq2seq: decoder inputs are the labels
    shifted right, as the model's own forward makes them; the base transformer for decoder-only bases, final
    norm included), through the same modules, so LoRA layers, gradient checkpointing and quantised layers act
    as in a full forward; the output layer is never called, and neither logits nor the model's loss exist.
    """
    base = transformers_model(model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if getattr(base.config, "is_encoder_decoder", False):
        encoder, decoder = base.get_encoder(), base.get_decoder()
        if encoder is base or decoder is base:
            raise LossError(f"{type(base).__name__}: no encoder and decoder found to compute the loss from")
        encoded = encoder(**inputs)[0]
        decoder_inputs = _decoder_input_ids(base, batch["labels"])
        states: torch.Tensor = decoder(
            input_ids=decoder_inputs,
            encoder_hidden_states=encoded,
            encoder_attention_mask=batch.get("attention_mask"),
            use_cache=False,
        )[0]
        return states
    body = base.base_model
    if body is base:
        raise LossError(
            f"{type(base).__name__}: no base transformer under {base.base_model_prefix!r} to compute the loss from"
        )
    hidden: torch.Tensor = body(**inputs, use_cache=False)[0]
    return hidden


def _decoder_input_ids(base: Any, labels: torch.Tensor) -> torch.Tensor:
    """The decoder inputs the model's forward makes of `labels`: its own rule (mBART's, T5's) or the usual shift."""
    prepare = getattr(base, "prepare_decoder_input_ids_from_labels", None)
    if callable(prepare):
        made: torch.Tensor = prepare(labels=labels)
        return made
    start, pad = base.config.decoder_start_token_id, base.config.pad_token_id
    if start is None or pad is None:
        raise LossError(f"{type(base).__name__}: its config lacks decoder_start_token_id or pad_token_id")
    shifted = labels.new_full(labels.shape, start)  # M2M100's, Marian's and BART's shift_tokens_right
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill_(shifted == IGNORE_INDEX, pad)


def decoder_output_scale(config: Any) -> float | None:
    """The factor a T5-style model applies to the decoder's output before its output layer, or None."""
    scaled = getattr(config, "scale_decoder_outputs", None)
    if scaled is None:
        model_type = getattr(config, "model_type", "")
        old_mt5 = model_type == "mt5" and _transformers_major() < 5
        scaled = (model_type in _SCALED_DECODER_TYPES or old_mt5) and bool(
            getattr(config, "tie_word_embeddings", False)
        )
    return float(config.d_model) ** -0.5 if scaled else None


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def output_projection(model: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output layer's weight (vocabulary x hidden) and bias, including a `final_logits_bias` buffer."""
    base = transformers_model(model)
    for knob in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(base.config, knob, None):
            raise LossError(f"{type(base).__name__} transforms its logits ({knob}); the chunked loss does not")
    head = base.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise LossError(f"{type(base).__name__} has no output layer weight to compute the loss from")
    bias: torch.Tensor | None = getattr(head, "bias", None)
    extra = getattr(base, "final_logits_bias", None)  # Marian, BART and mBART add it after the output layer
    if isinstance(extra, torch.Tensor):
        extra = extra.reshape(-1).to(weight.dtype)
        bias = extra if bias is None else bias + extra
    return weight, bias


@dataclass(frozen=True)
class ScoredTokens:
    """Where a collated batch's scored tokens are, found from its labels while they are still on the host.

    Selecting them on the device with a boolean mask (`hidden[labels != -100]`) makes the host wait for the
    device to count them, once per micro-batch; positions computed on the host travel with the batch instead.
    """

    index: torch.Tensor  # flat positions into the batch x positions hidden states whose outputs are scored
    targets: torch.Tensor  # the token each of them is scored against
    owners: torch.Tensor  # the sequence (row) each belongs to
    counts: torch.Tensor  # scored tokens per sequence

    def to(self, device: str | torch.device) -> ScoredTokens:
        moved = (t.to(device, non_blocking=True) for t in (self.index, self.targets, self.owners, self.counts))
        return ScoredTokens(*moved)


def scored_tokens(labels: torch.Tensor, family: str) -> ScoredTokens:
    """The scored tokens of `labels` (batch x positions, -100 where nothing is scored); call it on the host.

    Seq2seq: decoder position t predicts labels[t]. Causal: position t predicts labels[t + 1], so the last
    position is never scored and neither is any prompt position (its label is -100).
    """
    width = labels.shape[1]
    shifted = labels[:, 1:] if family == "causal" else labels
    keep = shifted != IGNORE_INDEX
    owners, positions = keep.nonzero(as_tuple=True)
    return ScoredTokens(owners * width + positions, shifted[owners, positions], owners, keep.sum(1))


def on_device(batch: dict[str, torch.Tensor], family: str, device: str) -> tuple[dict[str, torch.Tensor], ScoredTokens]:
    """A collated host batch moved to `device`, with its scored tokens located before it leaves the host."""
    scored = scored_tokens(batch["labels"], family)
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}, scored.to(device)


def _select(hidden: torch.Tensor, scored: ScoredTokens) -> torch.Tensor:
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, scored.index)


def scored_token_count(labels: torch.Tensor, family: str) -> int:
    """How many positions of a collated batch the loss scores."""
    if family == "causal":
        labels = labels[:, 1:]
    return int((labels != IGNORE_INDEX).sum())


def translation_loss_sum(
    model: Any,
    batch: dict[str, torch.Tensor],
    family: str,
    *,
    scored: ScoredTokens | None = None,
    chunk_rows: int | None = None,
    use_torch: bool | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of the scored target tokens of `batch` (fp32 scalar), never the full logits.

    Args:
        model: a transformers model (or a peft model around one) of `family`.
        batch: input_ids, attention_mask and labels (-100 where nothing is scored), on the model's device.
        family: seq2seq or causal.
        scored: the batch's scored tokens, located on the host (`on_device`); default: found from the labels
            where they are (on a GPU that is a host sync).
        chunk_rows: rows of logits at once (default: about CHUNK_ELEMENTS logits).
        use_torch: see `linear_cross_entropy`.
    """
    scored = scored or scored_tokens(batch["labels"], family)
    rows, weight, bias, scored = _projected_rows(model, batch, scored)
    chunk = chunk_rows or chunk_rows_for(weight.shape[0])
    return linear_cross_entropy(rows, weight, scored.targets, bias=bias, chunk_rows=chunk, use_torch=use_torch)


def _projected_rows(
    model: Any, batch: dict[str, torch.Tensor], scored: ScoredTokens
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, ScoredTokens]:
    """The scored rows of the hidden states as the output layer takes them, its weight and bias, and `scored`
    on their device."""
    weight, bias = output_projection(model)  # first: a base the loss cannot take is refused before any work
    hidden = head_inputs(model, batch)
    scored = scored.to(hidden.device)
    rows = _select(hidden, scored)
    scale = decoder_output_scale(transformers_model(model).config)
    return (rows if scale is None else rows * scale), weight, bias, scored


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_rows: int,
    use_torch: bool | None = None,
) -> torch.Tensor:
    """sum_i CE(hidden[i] @ weight.T + bias, targets[i]) in fp32, `chunk_rows` rows of logits at a time.

    Args:
        hidden: n x hidden, in the model's compute dtype.
        weight: vocabulary x hidden.
        targets: n class indices (no ignored ones: select the scored rows first).
        bias: vocabulary, or None.
        chunk_rows: rows of logits computed at once.
        use_torch: torch's own chunked op (default: when this torch has it) or the fallback here.
    """
    if use_torch is None:
        use_torch = hasattr(torch.nn, "LinearCrossEntropyOptions")
    if hidden.shape[0] == 0:
        return (hidden.sum() * 0.0).float()  # no scored token: a zero that still reaches the graph
    if use_torch:
        options = torch.nn.LinearCrossEntropyOptions(  # type: ignore[attr-defined]
            batch_chunk_size=chunk_rows,
            chunking_method=None,
        )
        loss = F.linear_cross_entropy(  # type: ignore[attr-defined]
            hidden, weight, targets, linear_bias=bias, reduction="sum", options=options
        )
        return loss.float()
    out: torch.Tensor = _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_rows)
    return out


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed linear cross-entropy whose gradients are computed chunk by chunk during the forward pass.

    Each chunk's logits are computed in the input dtype, turned into fp32 log-probabilities in place,
    used for the loss and, when gradients are wanted, for d(loss)/d(hidden) (and d/d(weight), d/d(bias)
    if those train); then they are dropped. The backward only scales the stored gradients.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_rows: int,
    ) -> torch.Tensor:
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias and bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = hidden[start : start + chunk_rows]
            target = targets[start : start + chunk_rows]
            logits = F.linear(rows, weight, bias).float()  # one chunk, upcast for a stable log-sum-exp
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, target[:, None]).squeeze(1)).sum()
            if grad_hidden is None and grad_weight is None and grad_bias is None:
                continue
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            grad[torch.arange(grad.shape[0], device=grad.device), target] -= 1.0
            grad_low = grad.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_rows] = grad_low @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad.t(), rows.float())
            if grad_bias is not None:
                grad_bias += grad.sum(0)
            del logits, grad, grad_low
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in (grad_hidden, grad_weight, grad_bias)))
        ctx.present = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        saved = ctx.saved_tensors
        grads: list[torch.Tensor | None] = []
        for tensor, present, dtype in zip(saved, ctx.present, ctx.dtypes, strict=True):
            grads.append((tensor * grad_output).to(dtype) if present else None)
        return grads[0], grads[1], grads[2], None, None


def sequence_log_probs(
    model: Any,
    batch: dict[str, torch.Tensor],
    family: str,
    *,
    scored: ScoredTokens | None = None,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence of `batch`: the summed log-probability of its scored tokens (fp32, differentiable) and
    how many tokens were scored, without materialising the batch's logits.

    Preference objectives need one number per sequence: the per-token cross-entropies are computed chunk by
    chunk (their logits recomputed in the backward pass, never stored) and summed per row. `scored` as in
    `translation_loss_sum`.
    """
    scored = scored or scored_tokens(batch["labels"], family)
    rows, weight, bias, scored = _projected_rows(model, batch, scored)
    chunk = chunk_rows or chunk_rows_for(weight.shape[0])
    per_token: torch.Tensor = _PerTokenLinearCrossEntropy.apply(rows, weight, bias, scored.targets, chunk)
    sums = torch.zeros(batch["labels"].shape[0], dtype=torch.float32, device=per_token.device)
    return sums.index_add(0, scored.owners, -per_token), scored.counts


class _PerTokenLinearCrossEntropy(torch.autograd.Function):
    """CE(hidden[i] @ weight.T + bias, targets[i]) for every row, in fp32, `chunk_rows` rows of logits at a time.

    Unlike the summed loss, the upstream gradient differs per row, so nothing is precomputed: the backward
    recomputes each chunk's softmax (one more output-layer product per chunk) and scales it by its rows' gradients.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_rows: int,
    ) -> torch.Tensor:
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            logits = F.linear(hidden[start : start + chunk_rows], weight, bias).float()
            target = targets[start : start + chunk_rows]
            out[start : start + chunk_rows] = torch.logsumexp(logits, -1) - logits.gather(1, target[:, None]).squeeze(1)
            del logits
        ctx.save_for_backward(hidden, weight, bias if bias is not None else torch.empty(0), targets)
        ctx.has_bias, ctx.chunk_rows = bias is not None, chunk_rows
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, bias, targets = ctx.saved_tensors
        bias_or_none = bias if ctx.has_bias else None
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias and ctx.has_bias else None
        chunk = ctx.chunk_rows
        for start in range(0, hidden.shape[0], chunk):
            rows = hidden[start : start + chunk]
            logits = F.linear(rows, weight, bias_or_none).float()
            grad = torch.softmax(logits, -1)
            grad[torch.arange(grad.shape[0], device=grad.device), targets[start : start + chunk]] -= 1.0
            grad.mul_(grad_out[start : start + chunk, None].float())
            if grad_hidden is not None:
                grad_hidden[start : start + chunk] = grad.to(hidden.dtype) @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad.t(), rows.float())
            if grad_bias is not None:
                grad_bias += grad.sum(0)
            del logits, grad
        return (
            grad_hidden,
            grad_weight.to(weight.dtype) if grad_weight is not None else None,
            grad_bias.to(bias.dtype) if grad_bias is not None else None,
            None,
            None,
        )
