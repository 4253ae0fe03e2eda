"""The fresh LoRA adapter: every hidden linear layer adapted (what peft's "all-linear" picks), under peft's file names."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from peft import LoraConfig, get_peft_model
from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from tiny_models import save_tiny_bloom, save_tiny_m2m100

from bhashaflow.config import config_from_dict
from bhashaflow.core.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from bhashaflow.modeling.loading import load_base
from bhashaflow.training.lora import prepare_lora_model

BASES: dict[str, tuple[Callable[[Path], Path], str, list[str]]] = {
    "m2m100": (save_tiny_m2m100, "eng_Latn-hin_Deva", ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]),
    "bloom": (save_tiny_bloom, "eng_Latn-hin_Deva", ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]),
}


def _adapted(model: Any) -> set[str]:
    return {name.removesuffix(".lora_A") for name, _ in model.named_modules() if name.endswith(".lora_A")}


@pytest.mark.parametrize("family", sorted(BASES))
def test_auto_targets_are_the_layers_all_linear_adapts_named_short(family: str, tmp_path: Path) -> None:
    """The same layers as peft's target_modules="all-linear", which would list every layer's full path in
    adapter_config.json instead of the family's short names (so the adapter files would not stay the same)."""
    save, direction, short_names = BASES[family]
    base = save(tmp_path / "base")
    config = config_from_dict({"directions": [direction], "base_model": str(base)})
    ours, targets = prepare_lora_model(load_base(str(base), languages=[]), config)
    assert targets == short_names
    reference = load_base(str(base), languages=[]).model
    all_linear = get_peft_model(
        reference, LoraConfig(r=4, target_modules="all-linear", task_type=ours.peft_config["default"].task_type)
    )
    assert _adapted(ours) == _adapted(all_linear) and _adapted(ours)

    ours.save_pretrained(tmp_path / "adapter")
    assert {ADAPTER_CONFIG, ADAPTER_WEIGHTS} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    assert sorted(json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())["target_modules"]) == sorted(
        short_names
    )


def test_the_adapter_file_names_are_peft_s() -> None:
    """core/names.py spells them out so that reading a registry does not import peft (and torch) for two strings."""
    assert (ADAPTER_WEIGHTS, ADAPTER_CONFIG) == (SAFETENSORS_WEIGHTS_NAME, CONFIG_NAME)
