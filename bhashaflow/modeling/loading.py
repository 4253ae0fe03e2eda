"""Loading base models (hub, local or built-in) on a device and dtype, the same way for every caller."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from bhashaflow.config import PipelineConfig
from bhashaflow.core.hashing import sha256_dir
from bhashaflow.core.names import BASE_MANIFEST
from bhashaflow.core.settings import Settings
from bhashaflow.modeling.builtin import ensure_builtin
from bhashaflow.modeling.families import read_config_json, unsupported_reason
from bhashaflow.modeling.loaded import BUILTIN_PREFIX, BaseModelError, Family, LoadedModel, pickles_in

log = logging.getLogger(__name__)


def resolve_base(
    base_model: str,
    *,
    languages: list[str],
    settings: Settings | None = None,
    flores_dir: str = "data/flores200",
) -> str:
    """Turn a configured base into something `from_pretrained` takes: a local directory or a hub id.

    Args:
        base_model: a hub id, a local directory, or `builtin:tiny-seq2seq` / `builtin:tiny-causal`.
        languages: FLORES-200 codes the base must know; they key the built-in cache.
        settings: where the built-in cache lives (`cache_dir`).
        flores_dir: FLORES-200 directory whose dev split trains the built-in bases.
    """
    if base_model.startswith(BUILTIN_PREFIX):
        settings = settings or Settings()
        return str(ensure_builtin(base_model, languages=languages, cache_dir=settings.cache_dir, flores_dir=flores_dir))
    local = Path(base_model).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise BaseModelError(f"base model directory {local} has no config.json")
        return str(local.resolve())
    if base_model.startswith((".", "/", "~")):
        raise BaseModelError(f"base model directory {base_model} does not exist")
    return base_model


def pick_device(device: str | None = None) -> str:
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


PRECISIONS: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def default_dtype(device: str) -> torch.dtype:
    """What `device` computes fastest in (weights, activations and LoRA alike): bf16 on GPUs with native bf16
    (compute capability 8 on, or ROCm), fp16 on older ones (a T4 emulates bf16 slowly), fp32 on the CPU."""
    if not device.startswith("cuda"):
        return torch.float32
    prefer_expandable_segments()  # asking the card starts CUDA: the allocator's setting must come first
    with torch.cuda.device(torch.device(device)):
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float16


def precision_dtype(precision: str, device: str) -> torch.dtype:
    """The dtype of `training.precision` (auto, bf16, fp16, fp32) on `device`."""
    if precision == "auto":
        return default_dtype(device)
    if precision not in PRECISIONS:
        raise BaseModelError(f"unknown precision {precision!r}: use auto, bf16, fp16 or fp32")
    return PRECISIONS[precision]


def prefer_expandable_segments() -> None:
    """Let the CUDA caching allocator grow segments instead of caching odd-sized blocks.

    Training batches change shape every step (dynamic padding); with fixed segments the cache fragments and
    reserved memory ends far above allocated memory, which is what a 6 GB card runs out of. It must be set
    before CUDA's first allocation; a setting of the user's own wins.
    """
    if not torch.cuda.is_initialized():
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def _quantization_config(quantization: str, dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        # The layers bitsandbytes leaves unquantized (embeddings, LM head, norms) keep `dtype`: nothing upcasts them.
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        # bitsandbytes' CPU backend (0.50 here) runs NF4 too, slowly: bf16 compute only pays off on a GPU.
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    raise BaseModelError(f"unknown quantization {quantization!r}: use none, 8bit or 4bit")


def load_base(
    base_model: str,
    *,
    languages: list[str],
    quantization: str = "none",
    revision: str | None = None,
    trust_remote_code: bool = False,
    settings: Settings | None = None,
    device: str | None = None,
    flores_dir: str = "data/flores200",
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load a base model and its tokenizer, built-in bases through the same path as hub ones.

    Args:
        base_model: a hub id, a local directory, or a `builtin:` name.
        languages: FLORES-200 codes the base must know (built-ins are built for them).
        quantization: none, 8bit or 4bit (bitsandbytes; both also run on its CPU backend).
        revision: hub revision; ignored for local and built-in bases, which are identified by a content hash.
        trust_remote_code: run Python code the model ships (auto_map in its config, hub or local folder).
        settings: hub token, offline mode and the built-in cache directory.
        device: cpu or cuda[:n]; default cuda when available.
        flores_dir: FLORES-200 directory for building built-in bases.
        dtype: weights' dtype; default `default_dtype(device)` (fp32 on the CPU, bf16 or fp16 on CUDA).
    """
    settings = settings or Settings()
    device = pick_device(device)
    if device.startswith("cuda"):
        prefer_expandable_segments()
    dtype = dtype or default_dtype(device)
    path = resolve_base(base_model, languages=languages, settings=settings, flores_dir=flores_dir)
    is_local = Path(path).is_dir()
    refused = unsupported_reason(base_model, read_config_json(Path(path) / "config.json") if is_local else None)
    if refused:
        raise BaseModelError(refused)
    if is_local:
        _check_local_weights(Path(path))
    hub_kwargs = _hub_kwargs(is_local, revision, trust_remote_code, settings)
    config, tokenizer = _load_config_and_tokenizer(base_model, path, hub_kwargs, settings)
    family: Family = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
    model = _load_weights(base_model, path, family, hub_kwargs, is_local, quantization, dtype, device)
    _prepare_tokenizer(tokenizer, family)
    rev = _content_revision(path) if is_local else revision or getattr(config, "_commit_hash", None)
    return LoadedModel(
        model=model, tokenizer=tokenizer, family=family, base_id=base_model, base_path=path, revision=rev, device=device
    )


def load_configured_base(
    config: PipelineConfig, settings: Settings | None = None, device: str | None = None
) -> LoadedModel:
    """The configured base, loaded the one way every task, the fit check and the service load it.

    Args:
        config: the pipeline config (base_model, base_revision, trust_remote_code, training.quantization and
            training.precision).
        settings: hub token, offline mode and the built-in cache directory.
        device: cpu or cuda[:n]; default cuda when available.
    """
    device = pick_device(device)
    return load_base(
        config.base_model,
        languages=config.languages,
        quantization=config.training.quantization,
        revision=config.base_revision,
        trust_remote_code=config.trust_remote_code,
        settings=settings,
        device=device,
        flores_dir=config.evaluation.flores_dir,
        dtype=precision_dtype(config.training.precision, device),
    )


def load_config_and_tokenizer(
    base_model: str, *, revision: str | None = None, trust_remote_code: bool = False, settings: Settings | None = None
) -> tuple[Any, Any]:
    """A hub or local base's config and tokenizer, without its weights (preflight, reports).

    Args:
        base_model: a hub id or a local directory (built-in bases are built first: use `load_base`).
        revision: hub revision.
        trust_remote_code: run Python code the model ships.
        settings: hub token and offline mode.
    """
    settings = settings or Settings()
    local = Path(base_model).expanduser()
    is_local = local.is_dir()
    path = str(local.resolve()) if is_local else base_model
    refused = unsupported_reason(base_model, read_config_json(local / "config.json") if is_local else None)
    if refused:
        raise BaseModelError(refused)
    return _load_config_and_tokenizer(
        base_model, path, _hub_kwargs(is_local, revision, trust_remote_code, settings), settings
    )


def _hub_kwargs(is_local: bool, revision: str | None, trust_remote_code: bool, settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not is_local:
        kwargs["revision"] = revision
        kwargs["local_files_only"] = settings.hf_hub_offline
        if settings.hf_token is not None:
            kwargs["token"] = settings.hf_token.get_secret_value()
    return kwargs


def _load_config_and_tokenizer(
    base_model: str, path: str, hub_kwargs: dict[str, Any], settings: Settings
) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoTokenizer

    try:
        return AutoConfig.from_pretrained(path, **hub_kwargs), AutoTokenizer.from_pretrained(path, **hub_kwargs)
    except OSError as exc:
        hint = (
            " (HF_HUB_OFFLINE is set: the model must already be in the Hugging Face cache)"
            if settings.hf_hub_offline
            else ""
        )
        raise BaseModelError(f"cannot load base model {base_model!r}{hint}: {exc}") from exc
    except ImportError as exc:  # the base's own code (auto_map) imports what this transformers lacks
        raise BaseModelError(
            f"base model {base_model!r}: its own Python code cannot be imported with transformers "
            f"{_transformers_version()}: {type(exc).__name__}: {exc}"
        ) from exc
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise BaseModelError(
            f"base model {base_model!r} needs its own Python code (auto_map in its config) and trust_remote_code "
            "is off; set trust_remote_code: true in the config only if you trust that code"
        ) from None


def _load_weights(
    base_model: str,
    path: str,
    family: Family,
    hub_kwargs: dict[str, Any],
    is_local: bool,
    quantization: str,
    dtype: torch.dtype,
    device: str,
) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    kwargs: dict[str, Any] = {**hub_kwargs, "dtype": dtype}
    if is_local:
        # Never unpickle a local folder's weights. Hub bases: transformers prefers safetensors too, and falls
        # back to a .bin only through torch's weights-only unpickler (some hub models have nothing else).
        kwargs["use_safetensors"] = True
    if quantization != "none":
        kwargs["quantization_config"] = _quantization_config(quantization, dtype)
        kwargs["device_map"] = {"": device}
    auto: Any = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise BaseModelError(f"cannot load base model weights {base_model!r}: {exc}") from exc
    if quantization == "none":
        model.to(device)
    model.eval()
    if getattr(model, "generation_config", None) is not None:
        # Every generate call passes max_new_tokens; a hub generation config's max_length (NLLB's 200) would only
        # make transformers warn on every call that both are set.
        model.generation_config.max_length = None
    return model


def _prepare_tokenizer(tokenizer: Any, family: Family) -> None:
    if tokenizer.pad_token_id is None:
        # Llama-style tokenizers have no pad token; padding is masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    if family == "causal":
        tokenizer.padding_side = "left"


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


def _content_revision(path: str) -> str:
    """A local or built-in base's identity: its recorded content hash, or a hash of its files."""
    manifest = Path(path) / BASE_MANIFEST
    return str(json.loads(manifest.read_text())["content_hash"]) if manifest.is_file() else sha256_dir(path)


def _check_local_weights(folder: Path) -> None:
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")):
        pickled = pickles_in(folder)
        found = (
            f" (found {', '.join(pickled)}: pickled weights can run code when loaded and are refused)"
            if pickled
            else ""
        )
        raise BaseModelError(f"base model directory {folder} has no safetensors weights{found}")
