"""Named adapters side by side, pickles refused, the default LoRA targets per architecture."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bhashaflow.modeling.adapters import default_target_modules, load_adapter, unload_adapter
from bhashaflow.modeling.generation import translate
from bhashaflow.modeling.loaded import BaseModelError
from bhashaflow.modeling.loading import load_base


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


def test_default_target_modules_per_architecture(m2m: Path, bloom: Path) -> None:
    assert default_target_modules(load_base(str(m2m), languages=[]).model) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "fc1",
        "fc2",
    ]
    assert default_target_modules(load_base(str(bloom), languages=[]).model) == [
        "query_key_value",
        "dense",
        "dense_h_to_4h",
        "dense_4h_to_h",
    ]
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    neox = GPTNeoXForCausalLM(
        GPTNeoXConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    # No table entry: every hidden linear layer, never the output layer.
    assert default_target_modules(neox) == ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]
