"""Base resolution and loading: hub ids, local folders, families, content hashes, 8-bit and 4-bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bhashaflow.core.settings import Settings
from bhashaflow.modeling.generation import translate
from bhashaflow.modeling.loaded import BaseModelError
from bhashaflow.modeling.loading import load_base, resolve_base


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


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("auto", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)],
)
def test_training_precision_is_the_dtype_the_base_loads_in(m2m: Path, precision: str, dtype: torch.dtype) -> None:
    from bhashaflow.config import config_from_dict
    from bhashaflow.modeling.loading import load_configured_base

    config = config_from_dict(
        {"directions": ["eng_Latn-hin_Deva"], "base_model": str(m2m), "training": {"precision": precision}}
    )
    lm = load_configured_base(config, device="cpu")  # auto: fp32 on the CPU; the others honoured there too
    assert {p.dtype for p in lm.model.parameters()} == {dtype} and lm.compute_dtype == dtype
    # The default is left out of the config's dump: fingerprints and caches of earlier runs still match.
    assert ("precision" in config.training.model_dump(mode="json")) is (precision != "auto")


def test_an_unknown_precision_is_refused_by_name() -> None:
    from bhashaflow.config import ConfigError, config_from_dict
    from bhashaflow.modeling.loading import default_dtype, precision_dtype

    with pytest.raises(ConfigError, match="training.precision"):
        config_from_dict({"directions": ["eng_Latn-hin_Deva"], "training": {"precision": "int8"}})
    with pytest.raises(BaseModelError, match="unknown precision 'tf32': use auto, bf16, fp16 or fp32"):
        precision_dtype("tf32", "cpu")
    assert default_dtype("cpu") == torch.float32 and precision_dtype("auto", "cpu") == torch.float32
