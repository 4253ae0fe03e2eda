"""The training loss, computed without ever materialising the logits of a whole batch.

NLLB's and BLOOM's vocabularies hold about 250k tokens: the logits of 16 x 128 positions are 2 GiB in fp32,
and a plain loss keeps two or three tensors of that size. Here the model runs up to its output layer only;
the hidden states of the positions that are scored (non-padding target tokens: for decoder-only bases the
answer, never the prompt) are projected onto the vocabulary a chunk of rows at a time, and the gradient of
each chunk is taken on the spot, so at most one chunk of logits exists at any moment.

torch >= 2.13 ships this as `torch.nn.functional.linear_cross_entropy` (its chunked path); older torch gets
`chunked_linear_cross_entropy` below, the same algorithm (Liger-Kernel's fused linear cross-entropy).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


class _HeadReached(Exception):  # noqa: N818 - a signal, not an error
    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__("output layer reached")
        self.hidden = hidden


@contextmanager
def _stop_at(head: torch.nn.Module) -> Iterator[None]:
    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        raise _HeadReached(args[0])

    handle = head.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def head_inputs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The hidden states the model feeds its output layer for `batch` (batch x positions x hidden).

    The forward runs as usual (labels shift into decoder inputs inside the model) and stops as the output
    layer is called, so neither the logits nor the model's own loss are computed.
    """
    head = model.get_output_embeddings()
    if head is None:
        raise LossError(f"{type(model).__name__} has no output embeddings to compute the loss from")
    with _stop_at(head):
        try:
            model(**batch, use_cache=False)
        except _HeadReached as reached:
            return reached.hidden
    raise LossError(f"{type(model).__name__}'s forward never called its output layer")


def output_projection(model: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output layer's weight (vocabulary x hidden) and bias, including a `final_logits_bias` buffer."""
    config = getattr(model, "config", None)
    for knob in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, knob, None):
            raise LossError(f"{type(model).__name__} transforms its logits ({knob}); the chunked loss does not")
    head = model.get_output_embeddings()
    weight: torch.Tensor = head.weight
    bias: torch.Tensor | None = getattr(head, "bias", None)
    extra = _find_final_logits_bias(model)
    if extra is not None:
        extra = extra.reshape(-1).to(weight.dtype)
        bias = extra if bias is None else bias + extra
    return weight, bias


def _find_final_logits_bias(model: Any) -> torch.Tensor | None:
    # Marian, BART and mBART add a per-token bias after the output layer; wrappers (peft) hide the attribute.
    for module in model.modules():
        found = getattr(module, "final_logits_bias", None)
        if isinstance(found, torch.Tensor):
            return found
    return None


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


def scored_positions(hidden: torch.Tensor, labels: torch.Tensor, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states, targets) of the scored positions only: (n x hidden), (n); see `scored_tokens`."""
    scored = scored_tokens(labels, family).to(hidden.device)
    return _select(hidden, scored), scored.targets


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
    hidden = head_inputs(model, batch)
    weight, bias = output_projection(model)
    chunk = chunk_rows or chunk_rows_for(weight.shape[0])
    scored = scored.to(hidden.device)
    rows = _select(hidden, scored)
    return linear_cross_entropy(rows, weight, scored.targets, bias=bias, chunk_rows=chunk, use_torch=use_torch)


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
    model: Any, batch: dict[str, torch.Tensor], family: str, *, scored: ScoredTokens | None = None,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per sequence of `batch`: the summed log-probability of its scored tokens (fp32, differentiable) and
    how many tokens were scored, without materialising the batch's logits.

    Preference objectives need one number per sequence: the per-token cross-entropies are computed chunk by
    chunk (their logits recomputed in the backward pass, never stored) and summed per row. `scored` as in
    `translation_loss_sum`.
    """
    scored = scored or scored_tokens(batch["labels"], family)
    hidden = head_inputs(model, batch)
    scored = scored.to(hidden.device)
    weight, bias = output_projection(model)
    chunk = chunk_rows or chunk_rows_for(weight.shape[0])
    rows = _select(hidden, scored)
    per_token: torch.Tensor = _PerTokenLinearCrossEntropy.apply(rows, weight, bias, scored.targets, chunk)
    sums = torch.zeros(hidden.shape[0], dtype=torch.float32, device=per_token.device)
    return sums.index_add(0, scored.owners, -per_token), scored.counts


class _PerTokenLinearCrossEntropy(torch.autograd.Function):
    """CE(hidden[i] @ weight.T + bias, targets[i]) for every row, in fp32, `chunk_rows` rows of logits at a time.

    Unlike the summed loss, the upstream gradient differs per row, so nothing is precomputed: the backward
    recomputes each chunk's softmax (one more output-layer product per chunk) and scales it by its rows' gradients.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
        chunk_rows: int,
    ) -> torch.Tensor:  # fmt: skip
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
