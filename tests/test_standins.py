"""The stand-ins load by hub id, offline, from the Hugging Face cache alone, with the real bases' ids and shapes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from standins import BLOOMZ, HUB_IDS, INDICTRANS2, M2M100, MARIAN_EN_HI, NLLB, ensure_hf_cache


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
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "sentencepiece.bpe.model",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert all(p.is_symlink() and p.resolve().parent == repo / "blobs" for p in snapshot.iterdir())
    assert try_to_load_from_cache(NLLB, "config.json") == str(snapshot / "config.json")


def test_placing_again_changes_nothing(hf_standins: Path) -> None:
    def placed() -> dict[Path, int]:
        repos = [hf_standins / f"models--{hub_id.replace('/', '--')}" for hub_id in HUB_IDS]
        snapshots = [repo / "snapshots" / (repo / "refs" / "main").read_text() for repo in repos]
        files = [repo / "refs" / "main" for repo in repos] + [f for s in snapshots for f in s.iterdir()]
        return {f: f.lstat().st_mtime_ns for f in files}

    before = placed()
    assert ensure_hf_cache(hf_standins) == hf_standins
    assert placed() == before


def test_nllb_tokenizer_has_the_real_ids(nllb: Any) -> None:
    assert type(nllb).__name__ == "NllbTokenizer"
    assert len(nllb) == 256_204
    assert (nllb.bos_token_id, nllb.pad_token_id, nllb.eos_token_id, nllb.unk_token_id) == (0, 1, 2, 3)
    assert nllb.mask_token_id == 256_203
    # eng_Latn, fra_Latn, ron_Latn, <mask> and len() as transformers' own NLLB tests assert them on the real tokenizer
    codes = {
        "ace_Arab": 256_001,
        "eng_Latn": 256_047,
        "fra_Latn": 256_057,
        "hin_Deva": 256_068,
        "ron_Latn": 256_145,
        "sat_Beng": 256_150,
        "zul_Latn": 256_202,
    }
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
        256_206,
        2,
        1,
        2,
    )
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


def test_m2m100_tokenizer_has_the_real_ids(hf_standins: Path) -> None:
    m2m = _tokenizer(M2M100)
    assert type(m2m).__name__ == "M2M100Tokenizer"
    assert (m2m.vocab_size, len(m2m)) == (128_004, 128_104)
    assert (m2m.bos_token_id, m2m.pad_token_id, m2m.eos_token_id, m2m.unk_token_id) == (0, 1, 2, 3)
    # __ar__, __en__, __fr__, __mr__ and __ro__ as transformers' own M2M100 tests assert them on the real tokenizer
    tokens = {
        "__af__": 128_004,
        "__ar__": 128_006,
        "__en__": 128_022,
        "__fr__": 128_028,
        "__hi__": 128_036,
        "__mr__": 128_063,
        "__ro__": 128_076,
        "__ta__": 128_089,
        "__zu__": 128_103,
    }
    assert {token: m2m.convert_tokens_to_ids(token) for token in tokens} == tokens
    assert m2m.convert_tokens_to_ids("__te__") == m2m.convert_tokens_to_ids("__as__") == m2m.unk_token_id
    m2m.src_lang, m2m.tgt_lang = "en", "hi"
    encoded = m2m("India is a country.", text_target="भारत एक देश है।")
    assert encoded.input_ids[0] == 128_022 and encoded.labels[0] == 128_036 and encoded.labels[-1] == 2
    assert m2m.decode(encoded.labels, skip_special_tokens=True) == "भारत एक देश है।"


def test_m2m100_config_and_model_are_the_real_ones_made_tiny(hf_standins: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM

    config = _config(M2M100)
    assert (config.model_type, config.architectures) == ("m2m_100", ["M2M100ForConditionalGeneration"])
    assert (config.vocab_size, config.decoder_start_token_id, config.pad_token_id) == (128_112, 2, 1)
    assert config.scale_embedding and config.tie_word_embeddings
    model = AutoModelForSeq2SeqLM.from_pretrained(M2M100, local_files_only=True).eval()
    out = model(input_ids=torch.tensor([[128_022, 5, 2]]), decoder_input_ids=torch.tensor([[2, 128_036]]))
    assert out.logits.shape == (1, 2, 128_112)


def test_marian_tokenizer_has_two_sentencepiece_models_and_one_vocabulary(hf_standins: Path) -> None:
    from huggingface_hub import try_to_load_from_cache

    marian = _tokenizer(MARIAN_EN_HI)
    assert type(marian).__name__ == "MarianTokenizer"
    assert len(marian) == 61_950
    assert (marian.eos_token_id, marian.unk_token_id, marian.pad_token_id) == (0, 1, 61_949)
    assert (marian.source_lang, marian.target_lang) == ("en", "hi")
    source, target = (Path(str(try_to_load_from_cache(MARIAN_EN_HI, name))) for name in ("source.spm", "target.spm"))
    assert source.read_bytes() != target.read_bytes()
    encoded = marian("India is a country.", text_target="भारत एक देश है।")
    assert marian.unk_token_id not in encoded.input_ids + encoded.labels
    assert marian.decode(encoded.input_ids, skip_special_tokens=True) == "India is a country."
    assert marian.decode(encoded.labels, skip_special_tokens=True) == "भारत एक देश है।"


def test_marian_config_and_model_are_the_real_ones_made_tiny(hf_standins: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM

    config = _config(MARIAN_EN_HI)
    assert (config.model_type, config.architectures) == ("marian", ["MarianMTModel"])
    assert (config.vocab_size, config.decoder_vocab_size) == (61_950, 61_950)
    assert (config.pad_token_id, config.decoder_start_token_id, config.eos_token_id) == (61_949, 61_949, 0)
    assert config.share_encoder_decoder_embeddings and config.tie_word_embeddings and config.scale_embedding
    model = AutoModelForSeq2SeqLM.from_pretrained(MARIAN_EN_HI, local_files_only=True).eval()
    assert model.generation_config.bad_words_ids == [[61_949]]
    out = model(input_ids=torch.tensor([[5, 6, 0]]), decoder_input_ids=torch.tensor([[61_949, 7]]))
    assert out.logits.shape == (1, 2, 61_950)


def test_indictrans2_is_there_to_be_detected_not_loaded(hf_standins: Path) -> None:
    from huggingface_hub import try_to_load_from_cache

    config = json.loads(Path(str(try_to_load_from_cache(INDICTRANS2, "config.json"))).read_text())
    assert config["model_type"] == "IndicTrans"
    assert config["architectures"] == ["IndicTransForConditionalGeneration"]
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_indictrans.IndicTransForConditionalGeneration"
    tokenizer_config = json.loads(Path(str(try_to_load_from_cache(INDICTRANS2, "tokenizer_config.json"))).read_text())
    assert tokenizer_config["auto_map"]["AutoTokenizer"][0] == "tokenization_indictrans.IndicTransTokenizer"
    assert try_to_load_from_cache(INDICTRANS2, "model.safetensors") is None


def test_two_processes_building_and_placing_at_once_both_get_one_valid_copy(tmp_path: Path) -> None:
    import subprocess
    import sys

    place = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import standins;"
        "standins.ensure_hf_cache(Path(sys.argv[2]), [standins.INDICTRANS2])"
    )
    env = {**os.environ, "BHASHAFLOW_CACHE_DIR": str(tmp_path / "cache")}
    tests_dir, hub = str(Path(__file__).parent), str(tmp_path / "hub")
    procs = [subprocess.Popen([sys.executable, "-c", place, tests_dir, hub], env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert sorted(p.name for p in (tmp_path / "cache" / "standins").rglob("*") if p.parent.name.startswith("v")) == [
        "ai4bharat--indictrans2-en-indic-dist-200M",
        "ai4bharat--indictrans2-en-indic-dist-200M.lock",
    ]
    repo = tmp_path / "hub" / "models--ai4bharat--indictrans2-en-indic-dist-200M"
    assert [p.name for p in (repo / "snapshots").iterdir()] == [(repo / "refs" / "main").read_text()]
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(INDICTRANS2, "config.json", cache_dir=str(tmp_path / "hub"))
    assert json.loads(Path(str(config)).read_text())["model_type"] == "IndicTrans"
