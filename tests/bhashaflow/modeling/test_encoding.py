"""The input formats: NLLB-style tags for encoder-decoders, a masked prompt for decoder-only bases."""

from __future__ import annotations

from pathlib import Path

from bhashaflow.modeling.encoding import encode_pair, encode_source, forced_bos_id, language_tag_id
from bhashaflow.modeling.loading import load_base


def test_seq2seq_format_is_nllb_style(m2m: Path) -> None:
    lm = load_base(str(m2m), languages=[])
    tok = lm.tokenizer
    src, labels = encode_pair(lm, "Hello.", "नमस्ते।", "eng_Latn", "hin_Deva", max_length=64)
    assert src[0] == tok.convert_tokens_to_ids("eng_Latn") and src[-1] == tok.eos_token_id
    assert labels[0] == tok.convert_tokens_to_ids("hin_Deva") and labels[-1] == tok.eos_token_id
    assert forced_bos_id(lm, "hin_Deva") == labels[0]
    assert len(encode_source(lm, "word " * 500, "eng_Latn", "hin_Deva", max_length=20)) == 20


def test_causal_format_masks_the_prompt(bloom: Path) -> None:
    lm = load_base(str(bloom), languages=[])
    tok = lm.tokenizer
    ids, labels = encode_pair(lm, "Hello.", "नमस्ते।", "eng_Latn", "hin_Deva", max_length=64)
    n_prompt = labels.count(-100)
    assert labels[:n_prompt] == [-100] * n_prompt and -100 not in labels[n_prompt:]
    assert ids[:n_prompt] == encode_source(lm, "Hello.", "eng_Latn", "hin_Deva", max_length=64)
    assert tok.decode(ids[:n_prompt]).replace(" ", "") == "TranslatefromEnglishtoHindi.\nEnglish:Hello.\nHindi:"
    assert tok.decode(labels[n_prompt:], skip_special_tokens=True).strip() == "नमस्ते।"
    assert labels[-1] == tok.eos_token_id and forced_bos_id(lm, "hin_Deva") is None
    long_prompt = encode_source(lm, "word " * 500, "eng_Latn", "hin_Deva", max_length=60)
    assert len(long_prompt) == 60 and tok.decode(long_prompt).replace(" ", "").endswith("\nHindi:")


def test_m2m100_style_language_tokens(m2m: Path) -> None:
    tok = load_base(str(m2m), languages=[]).tokenizer
    tok.add_tokens(["__ta__"], special_tokens=True)
    assert language_tag_id(tok, "tam_Taml") == tok.convert_tokens_to_ids("tam_Taml")  # NLLB style wins
    assert language_tag_id(tok, "kor_Hang") is None
    tok.add_tokens(["__ko__"], special_tokens=True)
    assert language_tag_id(tok, "kor_Hang") == tok.convert_tokens_to_ids("__ko__")
