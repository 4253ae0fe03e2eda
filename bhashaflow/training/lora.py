"""Wrapping a base in a fresh LoRA adapter for training: the base frozen as loaded, the adapter in its dtype."""

from __future__ import annotations

from typing import Any

import torch

from bhashaflow.config import PipelineConfig
from bhashaflow.modeling.adapters import default_target_modules
from bhashaflow.modeling.loaded import LoadedModel

ADAPTER_NAME = "default"  # peft's name for the adapter get_peft_model creates


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant checkpoints) instead of keeping them."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def prepare_lora_model(lm: LoadedModel, config: PipelineConfig) -> tuple[Any, list[str]]:
    """Wrap the base in a fresh LoRA adapter ("default"): the base frozen as loaded, the adapter in its dtype.

    Nothing of the base is upcast (peft's k-bit preparation would turn the 262M-parameter shared embedding
    and every norm into fp32), and the LoRA weights take the compute dtype, so no layer casts activations.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    train_cfg = config.training
    model = lm.model
    model.requires_grad_(False)
    if train_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    targets = train_cfg.lora.target_modules
    # "auto" adapts the layers peft's target_modules="all-linear" would (tests/bhashaflow/training/test_lora.py), but
    # by the family's short names: "all-linear" writes every layer's full path into adapter_config.json.
    resolved = default_target_modules(model) if targets == "auto" else list(targets)
    lora = LoraConfig(
        r=train_cfg.lora.r,
        lora_alpha=train_cfg.lora.alpha,
        lora_dropout=train_cfg.lora.dropout,
        target_modules=resolved,
        task_type=TaskType.SEQ_2_SEQ_LM if lm.family == "seq2seq" else TaskType.CAUSAL_LM,
    )
    torch.manual_seed(train_cfg.seed)  # LoRA A matrices are random: same seed, same adapter
    wrapped = get_peft_model(model, lora, autocast_adapter_dtype=False)
    dtype = lm.compute_dtype
    for param in wrapped.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)  # beside int8/NF4 weights peft leaves LoRA in fp32
    return wrapped, resolved
