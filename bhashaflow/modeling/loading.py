"""Loading base models (hub, local or built-in) and their LoRA adapters, and the input format each family expects.

Encoder-decoder bases take language tags the NLLB way: the source is `[src_tag] tokens </s>`, the target
`[tgt_tag] tokens </s>`, and generation is forced to start with the target tag. Decoder-only bases see a
prompt template; training masks the prompt out of the loss and generation returns only the continuation.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from bhashaflow.core.hashing import sha256_dir
from bhashaflow.core.languages import LANGUAGES
from bhashaflow.core.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_MANIFEST, PICKLE_SUFFIXES
from bhashaflow.core.settings import Settings

log = logging.getLogger(__name__)

Family = Literal["seq2seq", "causal"]
BUILTIN_PREFIX = "builtin:"

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

# ISO 639-1 codes of M2M100's `__xx__` language tokens, for the FLORES codes that have one.
_M2M100_CODES = {
    "eng_Latn": "en", "hin_Deva": "hi", "ben_Beng": "bn", "guj_Gujr": "gu", "kan_Knda": "kn", "mal_Mlym": "ml",
    "mar_Deva": "mr", "npi_Deva": "ne", "ory_Orya": "or", "pan_Guru": "pa", "tam_Taml": "ta", "urd_Arab": "ur",
    "sin_Sinh": "si", "snd_Arab": "sd", "asm_Beng": "as", "pbt_Arab": "ps", "pes_Arab": "fa", "arb_Arab": "ar",
    "fra_Latn": "fr", "deu_Latn": "de", "spa_Latn": "es", "por_Latn": "pt", "ita_Latn": "it", "nld_Latn": "nl",
    "ind_Latn": "id", "zsm_Latn": "ms", "vie_Latn": "vi", "tur_Latn": "tr", "swh_Latn": "sw", "rus_Cyrl": "ru",
    "ukr_Cyrl": "uk", "ell_Grek": "el", "heb_Hebr": "he", "tha_Thai": "th", "zho_Hans": "zh", "jpn_Jpan": "ja",
    "kor_Hang": "ko", "tel_Telu": "te",
}  # fmt: skip

PROMPT_TEMPLATE = "Translate from {src_name} to {tgt_name}.\n{src_name}: {text}\n{tgt_name}:"


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
        from bhashaflow.modeling.builtin import ensure_builtin

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


def default_dtype(device: str) -> torch.dtype:
    """bf16 on CUDA (weights, activations and LoRA alike), fp32 on CPU."""
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


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
        dtype: weights' dtype; default float32 on CPU and bfloat16 on CUDA.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    settings = settings or Settings()
    device = pick_device(device)
    dtype = dtype or default_dtype(device)
    if device.startswith("cuda"):
        prefer_expandable_segments()
    path = resolve_base(base_model, languages=languages, settings=settings, flores_dir=flores_dir)
    is_local = Path(path).is_dir()
    hub_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not is_local:
        hub_kwargs["revision"] = revision
        hub_kwargs["local_files_only"] = settings.hf_hub_offline
        if settings.hf_token is not None:
            hub_kwargs["token"] = settings.hf_token.get_secret_value()
    if is_local:
        _check_local_weights(Path(path))
    try:
        config = AutoConfig.from_pretrained(path, **hub_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs)
    except OSError as exc:
        hint = " (HF_HUB_OFFLINE is set: the model must already be in the Hugging Face cache)" if settings.hf_hub_offline else ""
        raise BaseModelError(f"cannot load base model {base_model!r}{hint}: {exc}") from exc
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise BaseModelError(
            f"base model {base_model!r} needs its own Python code (auto_map in its config) and trust_remote_code "
            "is off; set trust_remote_code: true in the config only if you trust that code"
        ) from None
    family: Family = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
    model_kwargs: dict[str, Any] = dict(hub_kwargs)
    if is_local:
        # Never unpickle a local folder's weights. Hub bases: transformers prefers safetensors too, and falls
        # back to a .bin only through torch's weights-only unpickler (some hub models have nothing else).
        model_kwargs["use_safetensors"] = True
    model_kwargs["dtype"] = dtype
    if quantization != "none":
        model_kwargs["quantization_config"] = _quantization_config(quantization, dtype)
        model_kwargs["device_map"] = {"": device}
    auto: Any = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(path, **model_kwargs)
    except OSError as exc:
        raise BaseModelError(f"cannot load base model weights {base_model!r}: {exc}") from exc
    if quantization == "none":
        model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        # Llama-style tokenizers have no pad token; padding is masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    if family == "causal":
        tokenizer.padding_side = "left"
    if is_local:
        manifest = Path(path) / BASE_MANIFEST
        rev = json.loads(manifest.read_text())["content_hash"] if manifest.is_file() else sha256_dir(path)
    else:
        rev = revision or getattr(config, "_commit_hash", None)
    return LoadedModel(
        model=model, tokenizer=tokenizer, family=family, base_id=base_model, base_path=path, revision=rev, device=device
    )


def _pickles(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))


def _check_local_weights(folder: Path) -> None:
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")):
        pickled = _pickles(folder)
        found = f" (found {', '.join(pickled)}: pickled weights can run code when loaded and are refused)" if pickled else ""
        raise BaseModelError(f"base model directory {folder} has no safetensors weights{found}")


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
    pickled = _pickles(folder)
    if pickled:
        # Beside the safetensors, a pickle is a sign of tampering (and a loader that prefers it would run it).
        raise BaseModelError(f"{folder} holds pickle-format files ({', '.join(pickled)}); only safetensors adapters are loaded")
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
        raise BaseModelError(f"no linear layers to adapt in a {config.model_type} model; set training.lora.target_modules")
    return found


def language_tag_id(tokenizer: Any, code: str) -> int | None:
    """The token id that names language `code` NLLB style (`hin_Deva`) or M2M100 style (`__hi__`), if any."""
    candidates = [code]
    if code in _M2M100_CODES:
        candidates.append(f"__{_M2M100_CODES[code]}__")
    vocab = tokenizer.get_vocab()
    for token in candidates:
        if token in vocab:
            return int(vocab[token])
    return None


def _marian_target_token(tokenizer: Any, tgt_lang: str) -> int | None:
    # Multilingual-target Marian models pick the output language with a `>>hin<<` token in the source.
    return tokenizer.get_vocab().get(f">>{tgt_lang.split('_')[0]}<<")


def _is_marian(lm: LoadedModel) -> bool:
    return getattr(lm.model.config, "model_type", "") == "marian"


def language_name(code: str) -> str:
    return LANGUAGES.get(code, code)


def format_prompt(text: str, src_lang: str, tgt_lang: str) -> str:
    """The decoder-only prompt; the translation follows it after a space."""
    return PROMPT_TEMPLATE.format(src_name=language_name(src_lang), tgt_name=language_name(tgt_lang), text=text)


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_source(lm: LoadedModel, text: str, src_lang: str, tgt_lang: str, max_length: int) -> list[int]:
    """Token ids of the model input for translating `text` (a tagged source, or a prompt)."""
    tok = lm.tokenizer
    if lm.family == "seq2seq":
        if _is_marian(lm):
            marker = _marian_target_token(tok, tgt_lang)
            return _tagged(tok, text, marker, max_length)
        return _tagged(tok, text, language_tag_id(tok, src_lang), max_length)
    # Prompts keep the instruction: it is the source text that is cut when too long.
    head, tail = format_prompt("\x00", src_lang, tgt_lang).split("\x00")
    prefix = list(tok(head.rstrip(" "), add_special_tokens=True)["input_ids"])
    body = _text_ids(tok, " " + text)
    suffix = _text_ids(tok, tail)
    room = max(1, max_length - len(prefix) - len(suffix))
    return prefix + body[:room] + suffix


def _tagged(tok: Any, text: str, tag: int | None, max_length: int) -> list[int]:
    head = [tag] if tag is not None else []
    ids = _text_ids(tok, text)[: max(1, max_length - len(head) - 1)]
    return head + ids + [int(tok.eos_token_id)]


def encode_pair(
    lm: LoadedModel, src: str, tgt: str, src_lang: str, tgt_lang: str, max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one training example.

    Seq2seq: the tagged source and the tagged target (the model shifts labels into decoder inputs).
    Causal: prompt + translation + eos, with the prompt's labels set to -100 so only the translation is learnt.
    """
    tok = lm.tokenizer
    source = encode_source(lm, src, src_lang, tgt_lang, max_length)
    if lm.family == "seq2seq":
        return source, _tagged(tok, tgt, forced_bos_id(lm, tgt_lang), max_length)
    answer = _text_ids(tok, " " + tgt)[: max(1, max_length - 1)] + [int(tok.eos_token_id)]
    return source + answer, [-100] * len(source) + answer


def forced_bos_id(lm: LoadedModel, tgt_lang: str) -> int | None:
    """The token generation must start with for `tgt_lang` (seq2seq bases with NLLB/M2M100 language tags)."""
    if lm.family != "seq2seq" or _is_marian(lm):
        return None
    return language_tag_id(lm.tokenizer, tgt_lang)
