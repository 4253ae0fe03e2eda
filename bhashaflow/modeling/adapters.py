"""LoRA adapters on a loaded base: which layers to adapt, and attaching or removing named adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bhashaflow.core.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from bhashaflow.modeling.loaded import BaseModelError, LoadedModel, pickles_in

# LoRA targets per architecture: every linear layer of attention and feed-forward, the usual QLoRA choice.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "m2m_100": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "nllb_moe": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "marian": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "mbart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "t5": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    "mt5": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    "bloom": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def default_target_modules(model: Any) -> list[str]:
    """LoRA target module names for a model: the architecture's defaults, else all its hidden linear layers."""
    config = model.config
    known = DEFAULT_TARGET_MODULES.get(getattr(config, "model_type", ""))
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if known:
        present = [m for m in known if m in names]
        if present:
            return present
    output = model.get_output_embeddings()
    found = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not output
        }
    )
    if not found:
        raise BaseModelError(
            f"no linear layers to adapt in a {config.model_type} model; set training.lora.target_modules"
        )
    return found


def load_adapter(lm: LoadedModel, adapter_dir: str, name: str) -> LoadedModel:
    """Attach a LoRA adapter under `name`; several adapters share the one base.

    Args:
        lm: the loaded base (possibly with adapters already).
        adapter_dir: local directory with adapter_config.json and adapter_model.safetensors.
        name: adapter name used to select it in `translate`.
    """
    from peft import PeftModel

    folder = Path(adapter_dir)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise BaseModelError(f"{folder} has no adapter_config.json")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        # pickled adapter_model.bin files can run code on load: refused.
        raise BaseModelError(f"{folder} has no adapter_model.safetensors (only safetensors adapters are loaded)")
    pickled = pickles_in(folder)
    if pickled:
        # Beside the safetensors, a pickle is a sign of tampering (and a loader that prefers it would run it).
        raise BaseModelError(
            f"{folder} holds pickle-format files ({', '.join(pickled)}); only safetensors adapters are loaded"
        )
    if name in lm.adapters:
        raise BaseModelError(f"an adapter named {name!r} is already loaded; unload it first")
    # peft adds the adapter's layers before it loads the weights; weights that do not fit the config
    # fail only then, so a failed load is undone here: the model is left as it was.
    if isinstance(lm.model, PeftModel):
        try:
            lm.model.load_adapter(str(folder), adapter_name=name, is_trainable=False, use_safetensors=True)
        except Exception:
            if name in lm.adapters:
                lm.model.delete_adapter(name)
            raise
    else:
        from peft import PeftConfig, get_peft_model

        config = PeftConfig.from_pretrained(str(folder))
        config.inference_mode = True
        wrapped = get_peft_model(lm.model, config, adapter_name=name)  # injects into the base in place
        try:
            wrapped.load_adapter(str(folder), adapter_name=name, is_trainable=False, use_safetensors=True)
        except Exception:
            lm.model = wrapped.unload()  # takes the injected layers out of the base again
            raise
        lm.model = wrapped
    lm.model.eval()
    return lm


def unload_adapter(lm: LoadedModel, name: str) -> None:
    """Remove the adapter `name`; with no adapter left the plain base is restored."""
    if name not in lm.adapters:
        raise BaseModelError(f"no adapter named {name!r} is loaded")
    if len(lm.adapters) == 1:
        lm.model = lm.model.unload()
    else:
        lm.model.delete_adapter(name)
