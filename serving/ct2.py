"""The CTranslate2 engine's models: a promoted adapter merged into the base, converted, cached, and translating.

CTranslate2 has no LoRA, so each adapter version is merged into a fresh copy of the base (peft's
`merge_and_unload`), saved with the tokenizer, and converted; the converted folder is cached under the cache dir
by a hash of the adapter's manifest, the base's revision and the compute type, so a restart (or another replica on
the same disk) converts nothing again. The inputs are the torch engine's own: the tagged source or the prompt of
`encode_source`, the forced target tag as the target prefix, the base's repetition guards, the same length limit.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bhashaflow.config import PipelineConfig
from bhashaflow.core.hashing import sha256_json
from bhashaflow.core.settings import Settings
from bhashaflow.modeling.encoding import encode_source, forced_bos_id
from bhashaflow.modeling.loaded import LoadedModel
from bhashaflow.registry.store import VersionInfo

log = logging.getLogger(__name__)

MODEL_FILE = "model.bin"  # what a finished CTranslate2 conversion holds (the folder is renamed into place last)
MAX_SOURCE_TOKENS = 256  # as the torch engine's translate(): longer sources are cut


class ConversionUnsupported(RuntimeError):
    """The base (or this adapter on it) cannot be served by CTranslate2; the torch engine serves it instead."""


class AdapterRefused(RuntimeError):
    """The adapter does not load onto the base (its cause says why): refused, as the torch engine refuses it."""


def default_compute_type(device: str, configured: str | None) -> str:
    """serving.compute_type, else int8 on CPU and int8_float16 on CUDA."""
    if configured:
        return configured
    return "int8_float16" if device.startswith("cuda") else "int8"


def check_convertible(lm: LoadedModel) -> None:
    """Raise ConversionUnsupported when CTranslate2's transformers converter has no loader for the base."""
    from ctranslate2.converters.transformers import _MODEL_LOADERS

    config_class = type(lm.model.config).__name__
    if config_class not in _MODEL_LOADERS:
        raise ConversionUnsupported(f"CTranslate2 cannot convert {config_class.removesuffix('Config')} models")


def cache_key(info: VersionInfo, base_revision: str | None, compute_type: str) -> str:
    """The converted folder's name: the adapter's manifest, the base it is merged into, the type, the converter."""
    import ctranslate2

    return sha256_json(
        {
            "manifest_sha256": info.manifest_sha256,
            "base_model": info.base_model,
            "base_revision": base_revision,
            "compute_type": compute_type,
            "ctranslate2": ctranslate2.__version__,
        }
    )[:32]


def converted_model(
    config: PipelineConfig,
    settings: Settings,
    info: VersionInfo,
    adapter_dir: str,
    *,
    base_revision: str | None,
    compute_type: str,
) -> Path:
    """The converted folder of an adapter version: from the cache, else merged and converted now.

    Args:
        config: the pipeline config (the base to merge into).
        settings: the cache dir and the hub credentials of the base.
        info: the version's manifest (its hash keys the cache).
        adapter_dir: the downloaded adapter.
        base_revision: the served base's revision (part of the key).
        compute_type: CTranslate2 quantization of the weights.
    """
    root = Path(settings.cache_dir).expanduser() / "ctranslate2"
    target = root / f"{info.direction}-{cache_key(info, base_revision, compute_type)}"
    if (target / MODEL_FILE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bhashaflow-merge-", dir=root) as tmp:
        merged = Path(tmp) / "merged"
        try:
            _merge(config, settings, adapter_dir, merged)
        except Exception as exc:  # noqa: BLE001 - the files are intact (verified) but do not load: a refusal
            raise AdapterRefused(str(exc)) from exc
        partial = Path(tmp) / "converted"
        _convert(merged, partial, compute_type)
        if not (target / MODEL_FILE).is_file():  # another process may have finished the same conversion meanwhile
            shutil.rmtree(target, ignore_errors=True)
            os.replace(partial, target)
    log.info("converted %s/%s to CTranslate2 (%s) in %s", info.direction, info.version, compute_type, target)
    return target


def _merge(config: PipelineConfig, settings: Settings, adapter_dir: str, out: Path) -> None:
    """A fresh float32 copy of the base with the adapter merged in, saved with its tokenizer.

    The adapter is attached through `load_adapter`, so it passes the torch engine's checks (safetensors only, no
    pickle beside them) before anything of it is read.
    """
    import torch

    from bhashaflow.modeling.adapters import load_adapter
    from bhashaflow.modeling.loading import load_base

    base = load_base(
        config.base_model,
        languages=config.languages,
        revision=config.base_revision,
        trust_remote_code=config.trust_remote_code,
        settings=settings,
        device="cpu",
        flores_dir=config.evaluation.flores_dir,
        dtype=torch.float32,
    )
    merged = load_adapter(base, adapter_dir, "merged").model.merge_and_unload()
    merged.save_pretrained(str(out), safe_serialization=True)
    base.tokenizer.save_pretrained(str(out))


def _convert(merged: Path, out: Path, compute_type: str) -> None:
    from ctranslate2.converters import TransformersConverter

    try:
        TransformersConverter(str(merged), low_cpu_mem_usage=True).convert(str(out), quantization=compute_type)
    except Exception as exc:  # noqa: BLE001 - the converter raises what its loaders raise; all mean "use torch"
        raise ConversionUnsupported(f"CTranslate2 conversion failed: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class Decoding:
    """The generation settings both engines share: the base's repetition guards, beams and length limit."""

    num_beams: int
    max_new_tokens: int
    repetition_penalty: float
    no_repeat_ngram_size: int

    @classmethod
    def of(cls, lm: LoadedModel, num_beams: int, max_new_tokens: int) -> Decoding:
        generation = getattr(lm.model, "generation_config", None)
        return cls(
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            repetition_penalty=float(getattr(generation, "repetition_penalty", None) or 1.0),
            no_repeat_ngram_size=int(getattr(generation, "no_repeat_ngram_size", None) or 0),
        )


class CT2Model:
    """One converted adapter version, translating one direction.

    Args:
        path: the converted folder.
        lm: the torch base (its tokenizer and family build the same inputs as the torch engine's).
        src_lang: FLORES-200 code of the sources.
        tgt_lang: FLORES-200 code of the translations.
        device: cpu or cuda[:n].
        compute_type: as converted.
        threads: CPU threads one batch uses.
    """

    def __init__(
        self, path: Path, lm: LoadedModel, src_lang: str, tgt_lang: str, *, device: str, compute_type: str, threads: int
    ) -> None:
        import ctranslate2

        self.lm = lm
        self.src_lang = src_lang
        self.tgt_lang = tgt_lang
        kind, index = (device.split(":", 1) + ["0"])[:2] if device.startswith("cuda") else ("cpu", "0")
        kwargs: dict[str, Any] = {
            "device": kind,
            "device_index": int(index),
            "compute_type": compute_type,
            "inter_threads": 1,
            "intra_threads": threads,
        }
        self.causal = lm.family == "causal"
        self.model: Any = (ctranslate2.Generator if self.causal else ctranslate2.Translator)(str(path), **kwargs)
        bos = None if self.causal else forced_bos_id(lm, tgt_lang)
        self._prefix = [lm.tokenizer.convert_ids_to_tokens(bos)] if bos is not None else None
        self._lock = threading.Lock()  # one batch at a time per version: its batches come from one queue anyway

    def source_tokens(self, text: str) -> list[str]:
        """The model input as tokens: the torch engine's ids (`encode_source`), spelt as the vocabulary's tokens."""
        ids = encode_source(self.lm, text, self.src_lang, self.tgt_lang, MAX_SOURCE_TOKENS)
        return list(self.lm.tokenizer.convert_ids_to_tokens(ids))

    def translate(self, texts: list[str], decoding: Decoding, max_batch_tokens: int) -> list[str]:
        """Translations of `texts` in order; empty texts give empty translations, as with the torch engine."""
        outputs = [""] * len(texts)
        index = [i for i, t in enumerate(texts) if t.strip()]
        if not index:
            return outputs
        sources = [self.source_tokens(texts[i]) for i in index]
        # CTranslate2 sorts the batch by length and cuts it into sub-batches of at most max_batch_tokens source
        # tokens; a finished sentence leaves the running batch, so no one waits for the longest output.
        common: dict[str, Any] = {
            "max_batch_size": max(max_batch_tokens, max(len(s) for s in sources)),
            "batch_type": "tokens",
            "beam_size": decoding.num_beams,
            "repetition_penalty": decoding.repetition_penalty,
            "no_repeat_ngram_size": decoding.no_repeat_ngram_size,
        }
        with self._lock:
            if not self.causal:
                texts_out = self._translate(sources, decoding, common)
            elif decoding.repetition_penalty == 1.0 and decoding.no_repeat_ngram_size == 0:
                texts_out = self._generate(sources, decoding, common)
            else:
                texts_out = self._generate_by_length(sources, decoding, common)
        for i, text in zip(index, texts_out, strict=True):
            outputs[i] = text
        return outputs

    def _translate(self, sources: list[list[str]], decoding: Decoding, common: dict[str, Any]) -> list[str]:
        prefix = [self._prefix] * len(sources) if self._prefix else None
        # The forced target tag counts towards max_new_tokens in transformers' generate, and towards the length here.
        results = self.model.translate_batch(
            sources, target_prefix=prefix, max_decoding_length=decoding.max_new_tokens, **common
        )
        tok = self.lm.tokenizer
        return [
            tok.decode(tok.convert_tokens_to_ids(r.hypotheses[0]), skip_special_tokens=True).strip() for r in results
        ]

    def _generate_by_length(self, prompts: list[list[str]], decoding: Decoding, common: dict[str, Any]) -> list[str]:
        """`_generate` over groups of prompts of one length. CTranslate2's Generator feeds a batch's prompts up to the
        shortest one's length before decoding, and decodes the rest of each longer prompt as a forced prefix that its
        repetition guards then count; in a group of one length they count the generated tokens only, as the torch
        engine's guards do (`GeneratedTokensPenalty`)."""
        by_length: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            by_length.setdefault(len(prompt), []).append(i)
        outputs = [""] * len(prompts)
        for group in by_length.values():
            for i, text in zip(group, self._generate([prompts[i] for i in group], decoding, common), strict=True):
                outputs[i] = text
        return outputs

    def _generate(self, prompts: list[list[str]], decoding: Decoding, common: dict[str, Any]) -> list[str]:
        tok = self.lm.tokenizer
        results = self.model.generate_batch(
            prompts,
            max_length=decoding.max_new_tokens,
            include_prompt_in_result=False,
            end_token=tok.eos_token,
            **common,
        )
        # Only the continuation, cut at the first line break: what follows is the model continuing the template.
        texts = [tok.decode(r.sequences_ids[0], skip_special_tokens=True) for r in results]
        return [t.split("\n", 1)[0].strip() for t in texts]

    def unload(self) -> None:
        """Free the model's memory (a retired version nobody holds any more)."""
        with self._lock:
            self.model.unload_model()
