"""Batched translation with a base model or one of its adapters.

Inputs are sorted by token length so each batch pads little, then the outputs are put back in input order.
Not thread-safe: selecting an adapter changes the shared model, so callers serialise calls on one model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from bhashaflow.core.memory import in_halving_batches
from bhashaflow.modeling.encoding import encode_source, forced_bos_id
from bhashaflow.modeling.loaded import LoadedModel


@contextmanager
def adapter_selected(lm: LoadedModel, adapter: str | None) -> Iterator[None]:
    """Run with adapter `adapter` active, or with every adapter disabled when it is None."""
    model = lm.model
    if adapter is None:
        if lm.adapters:
            with model.disable_adapter():
                yield
        else:
            yield
        return
    if adapter not in lm.adapters:
        raise KeyError(f"no adapter named {adapter!r} is loaded (loaded: {lm.adapters})")
    model.set_adapter(adapter)
    yield


def pad_batch(rows: list[list[int]], pad_id: int, *, left: bool, device: str) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask padded to the longest row (on the left for decoder-only generation)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


class GeneratedTokensPenalty:
    """The repetition penalty (CTRL's: a previous token's score divided by `penalty` when positive, multiplied when
    negative) over the tokens generated so far, the forced target tag included.

    transformers' own `repetition_penalty` also penalizes everything before them: the decoder start token, which for
    NLLB, M2M100 and the built-in bases is `</s>` (so every step penalizes ending the translation and outputs run
    long), and a decoder-only base's whole prompt (the source sentence: names and numbers to copy). CTranslate2
    penalizes the generated tokens only; both engines apply this one, so they give the same translations.

    Args:
        penalty: the base's `repetition_penalty` (above 1 discourages repeats).
        start: the first generated position in the `input_ids` generate passes (1 after the decoder start token,
            the padded prompt's width for a decoder-only base).
    """

    def __init__(self, penalty: float, start: int) -> None:
        self.penalty = penalty
        self.start = start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        history = input_ids[:, self.start :]
        if history.shape[1] == 0:
            return scores
        previous = torch.gather(scores, 1, history)
        penalized = torch.where(previous < 0, previous * self.penalty, previous / self.penalty)
        return scores.scatter(1, history, penalized)


class GeneratedTokensNoRepeat:
    """No n-gram of `size` tokens twice among the tokens generated so far (the forced target tag included): after
    the last `size - 1` tokens, every token that followed them before is banned.

    transformers' `no_repeat_ngram_size` also counts what precedes them (a decoder-only base's prompt, so no phrase of
    the source could be copied) and walks every row in Python at every step; this is CTranslate2's rule, in tensor
    operations.

    Args:
        size: the base's `no_repeat_ngram_size`.
        start: as `GeneratedTokensPenalty`'s.
    """

    def __init__(self, size: int, start: int) -> None:
        self.size = size
        self.start = start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        history = input_ids[:, self.start :]
        length = history.shape[1]
        if length < self.size:
            return scores
        ngrams = history.unfold(1, self.size, 1)  # (rows, length - size + 1, size): every complete n-gram
        last = history[:, length - self.size + 1 :]  # the n-1 tokens a new token would complete an n-gram with
        repeats = (ngrams[:, :, :-1] == last[:, None, :]).all(-1)
        banned = torch.zeros(scores.shape, dtype=torch.int32, device=scores.device)
        banned.scatter_add_(1, ngrams[:, :, -1], repeats.to(torch.int32))
        return scores.masked_fill(banned > 0, float("-inf"))


def repetition_guards(lm: LoadedModel, start: int) -> dict[str, Any]:
    """`generate` keyword arguments that apply the base's repetition penalty and no-repeat n-grams to the generated
    tokens only (`GeneratedTokensPenalty`, `GeneratedTokensNoRepeat`), as CTranslate2 applies them.

    Args:
        lm: the loaded base (its generation config says which guards it sets).
        start: the first generated position in the `input_ids` generate passes.
    """
    from transformers import LogitsProcessorList

    generation = getattr(lm.model, "generation_config", None)
    penalty = float(getattr(generation, "repetition_penalty", None) or 1.0)
    size = int(getattr(generation, "no_repeat_ngram_size", None) or 0)
    processors: list[Any] = []
    if penalty != 1.0:
        processors.append(GeneratedTokensPenalty(penalty, start))
    if size > 0:
        processors.append(GeneratedTokensNoRepeat(size, start))
    if not processors:
        return {}
    return {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "logits_processor": LogitsProcessorList(processors)}


def _clean_causal(text: str) -> str:
    # The translation ends at the first line break: what follows is the model continuing the template.
    return text.split("\n", 1)[0].strip()


def _generate(lm: LoadedModel, rows: list[list[int]], tgt_lang: str, num_beams: int, max_new_tokens: int) -> list[str]:
    tok = lm.tokenizer
    causal = lm.family == "causal"
    batch = pad_batch(rows, int(tok.pad_token_id), left=causal, device=lm.device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "num_beams": num_beams,
        "do_sample": False,
        "pad_token_id": int(tok.pad_token_id),
    }
    if causal:
        kwargs.update(eos_token_id=int(tok.eos_token_id), stop_strings=["\n"], tokenizer=tok)
    else:
        bos = forced_bos_id(lm, tgt_lang)
        if bos is not None:
            kwargs["forced_bos_token_id"] = bos
    kwargs.update(repetition_guards(lm, batch["input_ids"].shape[1] if causal else 1))
    out = lm.model.generate(**batch, **kwargs)
    if causal:
        out = out[:, batch["input_ids"].shape[1] :]  # only the continuation, never the echoed prompt
    texts = tok.batch_decode(out, skip_special_tokens=True)
    return [_clean_causal(t) if causal else t.strip() for t in texts]


def translate(
    lm: LoadedModel,
    texts: list[str],
    *,
    src_lang: str,
    tgt_lang: str,
    adapter: str | None = None,
    batch_size: int = 32,
    num_beams: int = 1,
    max_new_tokens: int = 128,
    max_source_tokens: int = 256,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Translate `texts`, returning translations in the same order.

    Args:
        lm: the loaded base, with or without adapters.
        texts: sentences in `src_lang`.
        src_lang: FLORES-200 code of the texts.
        tgt_lang: FLORES-200 code to translate into.
        adapter: name of a loaded adapter; None runs the base with every adapter disabled.
        batch_size: sentences per generate call (halved for the rest of the call if a batch runs out of memory).
        num_beams: beam width (1 is greedy).
        max_new_tokens: longest translation in tokens.
        max_source_tokens: sources are cut to this many tokens.
        on_batch: called with (sentences done, total) after each batch.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    outputs = [""] * len(texts)
    encoded = {i: encode_source(lm, t, src_lang, tgt_lang, max_source_tokens) for i, t in enumerate(texts) if t.strip()}
    # Longest first: the largest batch runs first, so running out of memory shows at once.
    order = sorted(encoded, key=lambda i: -len(encoded[i]))
    done = len(texts) - len(order)

    def run(start: int, stop: int) -> None:
        nonlocal done
        idx = order[start:stop]
        for i, text in zip(
            idx, _generate(lm, [encoded[i] for i in idx], tgt_lang, num_beams, max_new_tokens), strict=True
        ):
            outputs[i] = text
        done += len(idx)
        if on_batch is not None:
            on_batch(done, len(texts))

    with adapter_selected(lm, adapter), torch.inference_mode():
        # A batch that runs out of memory is retried at half the size; only a single text that does not fit raises.
        in_halving_batches(len(order), batch_size, run, what=f"translating {src_lang}->{tgt_lang}")
    return outputs
