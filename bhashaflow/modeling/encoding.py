"""The input format each family expects: language tags for encoder-decoder bases, a prompt for decoder-only ones.

Encoder-decoder bases take language tags the NLLB way: the source is `[src_tag] tokens </s>`, the target
`[tgt_tag] tokens </s>`, and generation is forced to start with the target tag. Decoder-only bases see a
prompt template; training masks the prompt out of the loss and generation returns only the continuation.
"""

from __future__ import annotations

from typing import Any

from bhashaflow.core.languages import LANGUAGES
from bhashaflow.modeling.loaded import LoadedModel

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
