"""The stand-ins load by hub id, offline, from the Hugging Face cache alone, and carry the real bases' ids and shapes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from standins import BLOOMZ, NLLB, ensure_hf_cache


def _tokenizer(hub_id: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hub_id, local_files_only=True)


def _config(hub_id: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(hub_id, local_files_only=True)


@pytest.fixture(scope="module")
def nllb(hf_standins: Path) -> Any:
    return _tokenizer(NLLB)


@pytest.fixture(scope="module")
def bloomz(hf_standins: Path) -> Any:
    return _tokenizer(BLOOMZ)


def test_the_cache_is_huggingface_hubs_layout_and_resolves_offline(hf_standins: Path) -> None:
    from huggingface_hub import constants, try_to_load_from_cache

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert Path(constants.HF_HUB_CACHE) == hf_standins
    repo = hf_standins / "models--facebook--nllb-200-distilled-600M"
    commit = (repo / "refs" / "main").read_text()
    snapshot = repo / "snapshots" / commit
    assert sorted(p.name for p in snapshot.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "sentencepiece.bpe.model",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    assert all(p.is_symlink() and p.resolve().parent == repo / "blobs" for p in snapshot.iterdir())
    assert try_to_load_from_cache(NLLB, "config.json") == str(snapshot / "config.json")


def test_placing_again_changes_nothing(hf_standins: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in hf_standins.rglob("*") if "/.locks" not in str(p)}
    assert ensure_hf_cache(hf_standins) == hf_standins
    assert {p: p.stat().st_mtime_ns for p in hf_standins.rglob("*") if "/.locks" not in str(p)} == before


def test_nllb_tokenizer_has_the_real_ids(nllb: Any) -> None:
    assert type(nllb).__name__ == "NllbTokenizer"
    assert len(nllb) == 256_204
    assert (nllb.bos_token_id, nllb.pad_token_id, nllb.eos_token_id, nllb.unk_token_id) == (0, 1, 2, 3)
    assert nllb.mask_token_id == 256_203
    codes = {"ace_Arab": 256_001, "eng_Latn": 256_047, "hin_Deva": 256_068, "sat_Beng": 256_150, "zul_Latn": 256_202}
    assert {code: nllb.convert_tokens_to_ids(code) for code in codes} == codes
    assert nllb.convert_tokens_to_ids("sat_Olck") == nllb.unk_token_id  # NLLB writes Santali in Bengali script


def test_nllb_tokenizer_encodes_like_nllb(nllb: Any) -> None:
    nllb.src_lang = "hin_Deva"
    ids = nllb("भारत एक देश है।").input_ids
    assert ids[0] == 256_068 and ids[-1] == 2 and nllb.unk_token_id not in ids
    assert nllb.decode(ids, skip_special_tokens=True) == "भारत एक देश है।"
    nllb.src_lang = "eng_Latn"


def test_nllb_config_and_model_are_the_real_ones_made_tiny(hf_standins: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM

    config = _config(NLLB)
    assert (config.model_type, config.architectures) == ("m2m_100", ["M2M100ForConditionalGeneration"])
    assert (config.vocab_size, config.decoder_start_token_id, config.pad_token_id, config.eos_token_id) == (
        256_206, 2, 1, 2,
    )  # fmt: skip
    assert config.scale_embedding and config.tie_word_embeddings and config.d_model <= 32
    model = AutoModelForSeq2SeqLM.from_pretrained(NLLB, local_files_only=True)
    assert model.generation_config.max_length == 200
    out = model(input_ids=torch.tensor([[256_047, 5, 2]]), decoder_input_ids=torch.tensor([[2, 256_068]]))
    assert out.logits.shape == (1, 2, 256_206)


def test_bloomz_tokenizer_has_the_real_ids(bloomz: Any) -> None:
    assert type(bloomz).__name__ == "TokenizersBackend"  # what transformers 5 loads for BloomTokenizerFast
    assert len(bloomz) == 250_680
    assert (bloomz.unk_token_id, bloomz.bos_token_id, bloomz.eos_token_id, bloomz.pad_token_id) == (0, 1, 2, 3)
    assert bloomz.padding_side == "left"
    text = "Translate to Hindi: India is a country. भारत एक देश है।"
    ids = bloomz(text).input_ids
    assert bloomz.unk_token_id not in ids and bloomz.decode(ids) == text


def test_bloomz_config_and_model_are_the_real_ones_made_tiny(hf_standins: Path) -> None:
    from transformers import AutoModelForCausalLM

    config = _config(BLOOMZ)
    assert (config.model_type, config.architectures) == ("bloom", ["BloomForCausalLM"])
    assert (config.vocab_size, config.bos_token_id, config.eos_token_id, config.pad_token_id) == (250_880, 1, 2, 3)
    assert config.tie_word_embeddings and config.n_layer <= 2
    model = AutoModelForCausalLM.from_pretrained(BLOOMZ, local_files_only=True)
    assert model(input_ids=torch.tensor([[1, 5, 6]])).logits.shape == (1, 3, 250_880)
