"""A loaded base model (with its adapters), the errors of loading one, and the rule that pickles are never loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from bhashaflow.core.names import PICKLE_SUFFIXES

Family = Literal["seq2seq", "causal"]
BUILTIN_PREFIX = "builtin:"


class BaseModelError(RuntimeError):
    """A base model or adapter that cannot be loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    """A base model ready for generation or training, with the facts needed to reproduce it."""

    model: Any  # transformers PreTrainedModel, or a peft PeftModel once adapters are attached
    tokenizer: Any
    family: Family
    base_id: str  # as configured, e.g. "builtin:tiny-seq2seq" or "facebook/nllb-200-distilled-600M"
    base_path: str  # local dir or hub id actually loaded
    revision: str | None  # hub revision, or a content hash for builtin/local bases
    device: str

    @property
    def adapters(self) -> list[str]:
        """Names of the adapters attached to the base."""
        return list(getattr(self.model, "peft_config", {}) or {})

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype activations flow in: that of the (never quantized) input embeddings."""
        dtype: torch.dtype = self.model.get_input_embeddings().weight.dtype
        return dtype


def pickles_in(folder: Path) -> list[str]:
    """Names of pickle-format files in `folder` (they can run code when loaded)."""
    return sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
