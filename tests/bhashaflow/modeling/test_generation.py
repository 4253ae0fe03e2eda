"""translate(): order kept under length sorting, adapters selected or disabled, decoder-only output cut clean."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import dev_lines, save_tiny_bloom, save_tiny_m2m100, write_shard

from bhashaflow.config import config_from_dict
from bhashaflow.modeling.adapters import load_adapter
from bhashaflow.modeling.generation import _clean_causal, translate
from bhashaflow.modeling.loaded import LoadedModel
from bhashaflow.modeling.loading import load_base
from bhashaflow.training.loop import TrainHooks, train_adapter

TEXTS = dev_lines("eng_Latn", 9)[:8] + ["Short.", ""]


@pytest.fixture(scope="module")
def m2m(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    # Large initial weights make a random model's output depend on its input.
    path = save_tiny_m2m100(tmp_path_factory.mktemp("m2m") / "base", init_std=0.5)
    return load_base(str(path), languages=[])


def test_batched_length_sorted_output_matches_one_at_a_time_in_input_order(m2m: LoadedModel) -> None:
    batched = translate(m2m, TEXTS, src_lang="eng_Latn", tgt_lang="hin_Deva", batch_size=3, max_new_tokens=10)
    single = [
        translate(m2m, [t], src_lang="eng_Latn", tgt_lang="hin_Deva", batch_size=1, max_new_tokens=10)[0] for t in TEXTS
    ]
    assert batched == single
    assert len(set(batched[:9])) > 3  # outputs differ by input, so a shuffled order would show
    assert batched[-1] == ""  # an empty text is not sent to the model


def test_progress_reports_every_batch(m2m: LoadedModel) -> None:
    seen: list[tuple[int, int]] = []
    translate(
        m2m,
        TEXTS,
        src_lang="eng_Latn",
        tgt_lang="hin_Deva",
        batch_size=4,
        max_new_tokens=2,
        on_batch=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(5, 10), (9, 10), (10, 10)]  # the empty text counts as done from the start


def test_unknown_adapter_is_refused(m2m: LoadedModel) -> None:
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        translate(m2m, ["x"], src_lang="eng_Latn", tgt_lang="hin_Deva", adapter="nope")


def test_clean_causal_keeps_only_the_first_line() -> None:
    assert _clean_causal(" नमस्ते दुनिया\nEnglish: Hello world\nHindi:") == "नमस्ते दुनिया"
    assert _clean_causal("  एक  ") == "एक"


@pytest.mark.slow
def test_causal_generation_returns_only_the_translation(tmp_path: Path) -> None:
    # Teach a tiny BLOOM one translation through the real training path, then check translate() returns it
    # alone: no echoed prompt, nothing after it. With adapters disabled the base does not know it.
    base = save_tiny_bloom(tmp_path / "bloom", hidden=64, init_std=0.2)
    src, tgt = "The cat sat.", "बिल्ली बैठी।"
    shard = write_shard(tmp_path / "pairs.parquet", [(src, tgt)], "eng_Latn", "hin_Deva")
    config = config_from_dict(
        {
            "directions": ["eng_Latn-hin_Deva"],
            "base_model": str(base),
            "training": {
                "max_steps": 40,
                "batch_size": 2,
                "learning_rate": 1e-2,
                "checkpoint_every": 40,
                "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            },
        }
    )
    result = train_adapter(
        config=config,
        direction="eng_Latn-hin_Deva",
        shard_paths=[shard],
        out_dir=str(tmp_path / "run"),
        hooks=TrainHooks(eval_texts={}),
    )
    lm = load_base(str(base), languages=[])
    load_adapter(lm, result.adapter_dir, "taught")
    out = translate(lm, [src, src], src_lang="eng_Latn", tgt_lang="hin_Deva", adapter="taught", max_new_tokens=24)
    assert out == [tgt, tgt]
    plain = translate(lm, [src], src_lang="eng_Latn", tgt_lang="hin_Deva", max_new_tokens=8)
    assert plain != [tgt] and "Translate from" not in plain[0]


def test_a_batch_that_runs_out_of_memory_is_halved_and_gives_the_same_translations(m2m: LoadedModel) -> None:
    from bhashaflow.core.memory import AllocationCap

    kwargs = {"src_lang": "eng_Latn", "tgt_lang": "hin_Deva", "max_new_tokens": 10}
    with AllocationCap(None) as free:
        expected = translate(m2m, TEXTS, batch_size=8, **kwargs)  # type: ignore[arg-type]
    with AllocationCap(free.largest // 3) as cap:  # 8 texts do not fit, nor 4; 2 do
        seen: list[tuple[int, int]] = []
        got = translate(m2m, TEXTS, batch_size=8, on_batch=lambda done, total: seen.append((done, total)), **kwargs)  # type: ignore[arg-type]
    assert got == expected
    assert cap.raised == 2  # at 8, then at 4
    assert seen[-1] == (10, 10) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_single_text_that_runs_out_of_memory_alone_raises(m2m: LoadedModel) -> None:
    from bhashaflow.core.memory import AllocationCap

    with AllocationCap(1000) as cap, pytest.raises(torch.OutOfMemoryError):
        translate(m2m, TEXTS, src_lang="eng_Latn", tgt_lang="hin_Deva", batch_size=4, max_new_tokens=4)
    assert cap.raised == 3  # at 4, 2 and 1


def test_the_repetition_penalty_counts_generated_tokens_once_and_nothing_before_them() -> None:
    from bhashaflow.modeling.generation import GeneratedTokensPenalty

    ids = torch.tensor([[2, 6, 5, 5], [2, 7, 7, 3]])
    scores = torch.tensor([[1.2, 1.2, -1.2, 1.2, 0.6, 2.4, 3.6, 1.2], [1.2, 1.2, 1.2, 2.4, 1.2, 1.2, 1.2, -2.4]])
    out = GeneratedTokensPenalty(1.2, start=1)(ids, scores.clone())
    changed = {(b, t) for b, t in (out != scores).nonzero().tolist()}
    assert changed == {(0, 5), (0, 6), (1, 3), (1, 7)}  # the start token 2 is spared; 5 and 7 divided once
    assert out[0, 5].item() == pytest.approx(2.0) and out[0, 6].item() == pytest.approx(3.0)
    assert out[1, 7].item() == pytest.approx(-2.88)  # a negative score is multiplied
    assert torch.equal(GeneratedTokensPenalty(1.2, start=4)(ids, scores.clone()), scores)  # nothing generated yet


def _greedy_by_hand(lm: LoadedModel, text: str, penalty: float, steps: int, *, spare_start: bool) -> str:
    """Greedy search written out: the forced target tag, then argmax under the repetition penalty over the tokens
    generated so far (and over the decoder start token too when `spare_start` is False, as transformers does)."""
    from bhashaflow.modeling.encoding import encode_source, forced_bos_id

    source = torch.tensor([encode_source(lm, text, "eng_Latn", "hin_Deva", 256)])
    tag = forced_bos_id(lm, "hin_Deva")
    eos = int(lm.tokenizer.eos_token_id)
    ids = [int(lm.model.generation_config.decoder_start_token_id), tag]
    with torch.inference_mode():
        while len(ids) <= steps:
            scores = lm.model(input_ids=source, decoder_input_ids=torch.tensor([ids])).logits[0, -1]
            for token in set(ids[1:] if spare_start else ids):
                scores[token] = scores[token] * penalty if scores[token] < 0 else scores[token] / penalty
            ids.append(int(scores.argmax()))
            if ids[-1] == eos:
                break
    return str(lm.tokenizer.decode(ids, skip_special_tokens=True)).strip()


def test_a_base_with_a_repetition_penalty_penalizes_the_generated_tokens_only(
    m2m: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The penalty CTranslate2 applies: not to the decoder start token (`</s>`, which would delay every ending)."""
    monkeypatch.setattr(m2m.model.generation_config, "repetition_penalty", 3.0)
    eos = torch.tensor([m2m.tokenizer.eos_token_id])
    # `</s>` scored 8 higher than the random weights score it, so that translations end (under 10 tokens) and the
    # penalty on the start token shows.
    hook = m2m.model.get_output_embeddings().register_forward_hook(
        lambda _module, _inputs, out: out.index_add(-1, eos, torch.full((*out.shape[:-1], 1), 8.0))
    )
    try:
        got = translate(m2m, TEXTS[:8], src_lang="eng_Latn", tgt_lang="hin_Deva", batch_size=4, max_new_tokens=10)
        spared = [_greedy_by_hand(m2m, t, 3.0, 10, spare_start=True) for t in TEXTS[:8]]
        penalized = [_greedy_by_hand(m2m, t, 3.0, 10, spare_start=False) for t in TEXTS[:8]]
    finally:
        hook.remove()
    assert got == spared
    assert sum(a != b for a, b in zip(spared, penalized, strict=True)) >= 3  # transformers' penalty would differ


def _banned_by_hand(history: list[int], size: int) -> set[int]:
    """Tokens that would complete an n-gram already in `history`, found by walking it."""
    last = tuple(history[len(history) - size + 1 :]) if size > 1 else ()
    return {history[i + size - 1] for i in range(len(history) - size + 1) if tuple(history[i : i + size - 1]) == last}


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_no_repeated_ngrams_among_the_generated_tokens(size: int) -> None:
    from bhashaflow.modeling.generation import GeneratedTokensNoRepeat

    gen = torch.Generator().manual_seed(size)
    ids = torch.randint(0, 3, (16, 12), generator=gen)  # a small vocabulary: n-grams repeat often
    scores = torch.randn(16, 8, generator=gen)
    out = GeneratedTokensNoRepeat(size, start=2)(ids, scores.clone())
    for row in range(16):
        banned = _banned_by_hand(ids[row, 2:].tolist(), size)
        assert {t for t in range(8) if out[row, t] == float("-inf")} == banned  # tokens before `start` count not
        assert torch.equal(
            out[row][[t for t in range(8) if t not in banned]], scores[row][[t for t in range(8) if t not in banned]]
        )
    assert any(_banned_by_hand(ids[row, 2:].tolist(), size) for row in range(16))
    assert torch.equal(GeneratedTokensNoRepeat(size, start=13 - size)(ids, scores.clone()), scores)  # too few yet
