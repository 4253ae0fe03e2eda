"""Base resolution and loading (hub id, local dir, built-in), quantization, named adapters, input formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import FLORES, LANGS, save_tiny_bloom, save_tiny_m2m100, write_shard

from bhashaflow.config import config_from_dict
from bhashaflow.core.names import BASE_MANIFEST as MANIFEST
from bhashaflow.core.settings import Settings
from bhashaflow.modeling import builtin as builtin_bases
from bhashaflow.modeling.adapters import default_target_modules, load_adapter, unload_adapter
from bhashaflow.modeling.builtin import ensure_builtin, small_recipe
from bhashaflow.modeling.encoding import encode_pair, encode_source, forced_bos_id, language_tag_id
from bhashaflow.modeling.generation import translate
from bhashaflow.modeling.loaded import BaseModelError
from bhashaflow.modeling.loading import load_base, resolve_base
from bhashaflow.training.loop import train_adapter

FAST = {"vocab_size": 300, "d_model": 32, "layers": 1, "ffn_dim": 64, "steps": 4, "batch_size": 4, "warmup_steps": 1}


@pytest.fixture(scope="module")
def dev_only_flores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Only the dev split is present: building a base must never need devtest.
    root = tmp_path_factory.mktemp("flores")
    (root / "dev").mkdir()
    for lang in LANGS:
        shutil.copy(FLORES / "dev" / f"{lang}.dev", root / "dev" / f"{lang}.dev")
    return root


@pytest.fixture(scope="module")
def m2m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_m2m100(tmp_path_factory.mktemp("m2m") / "base")


@pytest.fixture(scope="module")
def bloom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bloom(tmp_path_factory.mktemp("bloom") / "base")


@pytest.fixture(scope="module")
def adapter_dir(m2m: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("adapter")
    shard = write_shard(root / "s.parquet", [("Hello there.", "नमस्ते।")] * 4, "eng_Latn", "hin_Deva")
    config = config_from_dict({"directions": ["eng_Latn-hin_Deva"], "base_model": str(m2m),
                               "training": {"max_steps": 1, "batch_size": 2}})  # fmt: skip
    return train_adapter(config=config, direction="eng_Latn-hin_Deva", shard_paths=[shard], out_dir=str(root / "run"),
                         eval_texts={}).adapter_dir  # fmt: skip


def test_resolve_base_passes_hub_ids_and_resolves_local_dirs(m2m: Path, tmp_path: Path) -> None:
    assert resolve_base("facebook/nllb-200-distilled-600M", languages=[]) == "facebook/nllb-200-distilled-600M"
    assert resolve_base(str(m2m), languages=[]) == str(m2m.resolve())
    with pytest.raises(BaseModelError, match="does not exist"):
        resolve_base(str(tmp_path / "missing"), languages=[])
    with pytest.raises(BaseModelError, match="no config.json"):
        resolve_base(str(tmp_path), languages=[])
    with pytest.raises(BaseModelError, match="unknown built-in base 'builtin:huge'"):
        resolve_base("builtin:huge", languages=[], settings=Settings(cache_dir=str(tmp_path)))


def test_hub_id_offline_and_absent_fails_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BaseModelError, match="HF_HUB_OFFLINE is set"):
        load_base("no-such-org/no-such-model", languages=[], settings=Settings(HF_HUB_OFFLINE=True))


@pytest.mark.parametrize("name,family,arch", [("builtin:tiny-seq2seq", "seq2seq", "M2M100ForConditionalGeneration"),
                                               ("builtin:tiny-causal", "causal", "LlamaForCausalLM")])  # fmt: skip
def test_builtin_is_built_once_from_dev_text_and_loaded_like_a_hub_model(
    name: str, family: str, arch: str, dev_only_flores: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The named recipes pre-train for minutes; a smaller recipe runs the same build and load path in seconds.
    monkeypatch.setitem(builtin_bases.RECIPES, name, small_recipe(name, **FAST))
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    lm = load_base(name, languages=["hin_Deva", "tam_Taml"], settings=settings, flores_dir=str(dev_only_flores))
    folder = Path(lm.base_path)
    assert folder.parent == tmp_path / "cache" / "builtin" and folder.name.startswith(name.split(":")[1] + "-")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MANIFEST]
    )
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["languages"] == ["eng_Latn", "hin_Deva", "tam_Taml"]  # English is always the pivot
    assert lm.family == family and type(lm.model).__name__ == arch
    assert lm.base_id == name and lm.revision == manifest["content_hash"]
    assert [language_tag_id(lm.tokenizer, code) is not None for code in LANGS] == [True, True, True]
    out = translate(lm, ["A short test."], src_lang="eng_Latn", tgt_lang="hin_Deva", max_new_tokens=4)
    assert len(out) == 1

    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = resolve_base(name, languages=["tam_Taml", "hin_Deva"], settings=settings, flores_dir=str(dev_only_flores))
    assert again == str(folder) and (folder / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rebuilt
    other = resolve_base(name, languages=["hin_Deva"], settings=settings, flores_dir=str(dev_only_flores))
    assert other != str(folder)  # another language set is another base


def test_builtin_build_is_reproducible(dev_only_flores: Path, tmp_path: Path) -> None:
    recipe = small_recipe("builtin:tiny-seq2seq", **FAST)
    dirs = [ensure_builtin("builtin:tiny-seq2seq", languages=["hin_Deva"], cache_dir=str(tmp_path / c),
                           flores_dir=str(dev_only_flores), recipe=recipe) for c in ("a", "b")]  # fmt: skip
    hashes = [json.loads((d / MANIFEST).read_text())["content_hash"] for d in dirs]
    assert hashes[0] == hashes[1]


def test_builtin_without_dev_text_names_the_missing_files(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="lacks eng_Latn.dev, hin_Deva.dev"):
        ensure_builtin("builtin:tiny-seq2seq", languages=["hin_Deva"], cache_dir=str(tmp_path), flores_dir=str(tmp_path),
                       recipe=small_recipe("builtin:tiny-seq2seq", **FAST))  # fmt: skip


def test_families_and_content_hash_of_local_bases(m2m: Path, bloom: Path) -> None:
    seq, causal = load_base(str(m2m), languages=[]), load_base(str(bloom), languages=[])
    assert (seq.family, causal.family) == ("seq2seq", "causal")
    assert seq.revision is not None and seq.revision.startswith("sha256:")
    assert load_base(str(m2m), languages=[]).revision == seq.revision
    assert seq.device == "cpu" and seq.model.dtype == torch.float32
    assert causal.tokenizer.padding_side == "left"  # decoder-only generation pads on the left


def test_eight_and_four_bit_bases_load_quantized_linears_and_generate(m2m: Path) -> None:
    lm = load_base(str(m2m), languages=[], quantization="8bit")
    fc1 = lm.model.model.encoder.layers[0].fc1
    assert type(fc1).__name__ == "Linear8bitLt" and fc1.weight.dtype == torch.int8
    assert len(translate(lm, ["Hello."], src_lang="eng_Latn", tgt_lang="hin_Deva", max_new_tokens=3)) == 1
    nf4 = load_base(str(m2m), languages=[], quantization="4bit")
    assert type(nf4.model.model.encoder.layers[0].fc1).__name__ == "Linear4bit"
    with pytest.raises(BaseModelError, match="unknown quantization '3bit'"):
        load_base(str(m2m), languages=[], quantization="3bit")


def test_named_adapters_load_side_by_side_and_unload(m2m: Path, adapter_dir: str) -> None:
    lm = load_base(str(m2m), languages=[])
    base_out = translate(lm, ["Hello there."], src_lang="eng_Latn", tgt_lang="hin_Deva", max_new_tokens=5)
    load_adapter(lm, adapter_dir, "v1")
    load_adapter(lm, adapter_dir, "v2")
    assert lm.adapters == ["v1", "v2"]
    with pytest.raises(BaseModelError, match="already loaded"):
        load_adapter(lm, adapter_dir, "v1")
    # adapter=None disables every adapter: the base's own output.
    assert translate(lm, ["Hello there."], src_lang="eng_Latn", tgt_lang="hin_Deva", max_new_tokens=5) == base_out
    unload_adapter(lm, "v1")
    assert lm.adapters == ["v2"]
    unload_adapter(lm, "v2")
    assert lm.adapters == [] and type(lm.model).__name__ == "M2M100ForConditionalGeneration"
    with pytest.raises(BaseModelError, match="no adapter named 'v2'"):
        unload_adapter(lm, "v2")


def test_pickled_adapters_are_refused(m2m: Path, adapter_dir: str, tmp_path: Path) -> None:
    shutil.copy(Path(adapter_dir) / "adapter_config.json", tmp_path / "adapter_config.json")
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(BaseModelError, match="only safetensors adapters are loaded"):
        load_adapter(load_base(str(m2m), languages=[]), str(tmp_path), "bad")


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


def test_default_target_modules_per_architecture(m2m: Path, bloom: Path) -> None:
    assert default_target_modules(load_base(str(m2m), languages=[]).model) == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert default_target_modules(load_base(str(bloom), languages=[]).model) == [
        "query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]  # fmt: skip
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=32))  # fmt: skip
    # No table entry: every hidden linear layer, never the output layer.
    assert default_target_modules(neox) == ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]


def test_m2m100_style_language_tokens(m2m: Path) -> None:
    tok = load_base(str(m2m), languages=[]).tokenizer
    tok.add_tokens(["__ta__"], special_tokens=True)
    assert language_tag_id(tok, "tam_Taml") == tok.convert_tokens_to_ids("tam_Taml")  # NLLB style wins
    assert language_tag_id(tok, "kor_Hang") is None
    tok.add_tokens(["__ko__"], special_tokens=True)
    assert language_tag_id(tok, "kor_Hang") == tok.convert_tokens_to_ids("__ko__")


def test_built_in_bases_read_dev_text_aligned_across_a_line_separator(tmp_path: Path) -> None:
    from bhashaflow.modeling.builtin import read_dev_text

    flores = tmp_path / "flores200"
    (flores / "dev").mkdir(parents=True)
    eng = ["One.", "Two\u2028 still two.", "Three."]
    hin = ["एक।", "दो।", "तीन\u2029 अब भी तीन।"]
    (flores / "dev" / "eng_Latn.dev").write_text("\n".join(eng) + "\n", encoding="utf-8")
    (flores / "dev" / "hin_Deva.dev").write_text("\n".join(hin) + "\n", encoding="utf-8")

    texts = read_dev_text(flores, ["eng_Latn", "hin_Deva"])

    assert texts == {"eng_Latn": eng, "hin_Deva": hin}  # line k of one language still translates line k of the other
