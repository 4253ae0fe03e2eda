"""The base model families bhashaflow supports, and the ones it refuses with a reason before any work.

Supported (each tested offline on a stand-in with the real tokenizer class, vocabulary and config):
NLLB-200 and M2M100 (`model_type` m2m_100; FLORES-code or `__hi__` language tags), mBART-50 (`hi_IN` tags),
Marian / opus-mt (a SentencePiece model per side, `>>hin<<` target tokens in the multilingual ones), and
decoder-only bases such as BLOOMZ (a prompt template). IndicTrans2 is refused: see `UNSUPPORTED`.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Unsupported:
    """A base family bhashaflow refuses, recognised by hub id pattern or config fields, and why."""

    name: str
    hub_ids: tuple[str, ...]  # fnmatch patterns, case-insensitive
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    reason: str


UNSUPPORTED: tuple[Unsupported, ...] = (
    Unsupported(
        name="IndicTrans2",
        hub_ids=("ai4bharat/indictrans2-*",),
        model_types=("IndicTrans", "indictrans"),
        architectures=("IndicTransForConditionalGeneration",),
        reason=(
            "IndicTrans2 is not supported: its modelling code on the hub imports transformers.onnx, which "
            "transformers 5 removed, and it needs IndicTransToolkit's IndicProcessor around a tokenizer that "
            "takes the language tags inside the text; use facebook/nllb-200-distilled-600M (the same FLORES-200 "
            "codes) instead"
        ),
    ),
)


def unsupported_reason(base_model: str, config: dict[str, object] | None = None) -> str | None:
    """Why `base_model` is refused (one line naming it), or None when its family is supported.

    Args:
        base_model: the configured hub id or folder.
        config: the base's config.json, when it could be read (a local copy of a refused base is known by it).
    """
    config = config or {}
    model_type = str(config.get("model_type", ""))
    architectures = [str(a) for a in config.get("architectures", []) or []]  # type: ignore[attr-defined]
    for family in UNSUPPORTED:
        by_id = any(fnmatch.fnmatch(base_model.lower(), p.lower()) for p in family.hub_ids)
        if by_id or model_type in family.model_types or set(architectures) & set(family.architectures):
            return f"base model {base_model!r}: {family.reason}"
    return None


def read_config_json(path: Path) -> dict[str, Any] | None:
    """A base's config.json as a dict, None when it is missing or not a JSON object (checks read it, never run it)."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None
