"""The input format each family expects: language tags for encoder-decoder bases, a prompt for decoder-only ones.

Encoder-decoder bases take language tags the NLLB way: the source is `[src_tag] tokens </s>`, the target
`[tgt_tag] tokens </s>`, and generation is forced to start with the target tag. The tag is the FLORES code
itself (NLLB-200, the built-in bases), `__hi__` (M2M100) or `hi_IN` (mBART-50). Marian (opus-mt) bases have a
vocabulary per side: targets go through the target SentencePiece model, and multilingual-target models pick
the output language with a `>>hin<<` token at the start of the source. Decoder-only bases see a prompt
template; training masks the prompt out of the loss and generation returns only the continuation.

A base that marks languages with tags but has none for a configured language is an error naming the base,
the direction and the missing tag, never a silently untagged example. Tags are looked up once per tokenizer
and language: a vocabulary of 256k entries must cost no more per sentence than one of 4k.
"""

from __future__ import annotations

import logging
import re
import weakref
from dataclasses import dataclass
from typing import Any, Literal

from bhashaflow.core.languages import ISO_639_1, LANGUAGES
from bhashaflow.modeling.loaded import BaseModelError, LoadedModel

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "Translate from {src_name} to {tgt_name}.\n{src_name}: {text}\n{tgt_name}:"

# FLORES-200 codes a base may name by another code, with why. NLLB-200's tokenizer names Santali `sat_Beng`
# (its training data was in Bengali script) while FLORES-200 writes Santali in Ol Chiki as `sat_Olck`.
TAG_ALIASES: dict[str, tuple[str, str]] = {
    "sat_Olck": ("sat_Beng", "NLLB-200 names Santali sat_Beng; FLORES-200 writes it in Ol Chiki as sat_Olck"),
}

TagStyle = Literal["flores", "m2m100", "mbart", "marian", "none"]
_STYLE_PATTERNS: dict[TagStyle, re.Pattern[str]] = {
    "flores": re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$"),  # eng_Latn (NLLB-200, built-in bases)
    "m2m100": re.compile(r"^__[a-z]{2,3}__$"),  # __hi__
    "mbart": re.compile(r"^[a-z]{2}_[A-Z]{2}$"),  # hi_IN (mBART-50)
}
_MARIAN_TAG = re.compile(r"^>>[A-Za-z_]{2,12}<<$")  # >>hin<< (multilingual-target opus-mt)


class LanguageTagError(BaseModelError):
    """A base that marks languages with tags has none for a configured language."""


@dataclass(frozen=True)
class LanguageTag:
    """The token that names one configured language to a base."""

    code: str  # the configured FLORES-200 code
    token: str  # the token the base knows it by
    id: int
    note: str = ""  # why `token` names another code than `code` (a known alias), else empty

    @property
    def is_alias(self) -> bool:
        return bool(self.note)


class _TokenizerTags:
    """One tokenizer's tag style and the tags looked up so far (refreshed when tokens are added)."""

    def __init__(self, tokenizer: Any) -> None:
        self.size = len(tokenizer)
        self.style = _detect_style(tokenizer)
        self.ids: dict[str, int | None] = {}
        self.tags: dict[str, LanguageTag | None] = {}


_CACHE: weakref.WeakKeyDictionary[Any, _TokenizerTags] = weakref.WeakKeyDictionary()


def _tags_of(tokenizer: Any) -> _TokenizerTags:
    entry = _CACHE.get(tokenizer)
    if entry is None or entry.size != len(tokenizer):  # tokens added since: look again
        _CACHE[tokenizer] = entry = _TokenizerTags(tokenizer)
    return entry


def _added_tokens(tokenizer: Any) -> list[str]:
    """The tokenizer's added and special tokens (language codes live there), without building its vocabulary."""
    tokens = [str(getattr(t, "content", t)) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()]
    tokens += list(getattr(tokenizer, "lang_token_to_id", {}) or {})  # M2M100's SentencePiece tokenizer
    return tokens


def _is_marian_tokenizer(tokenizer: Any) -> bool:
    return type(tokenizer).__name__.startswith("MarianTokenizer")


def _detect_style(tokenizer: Any) -> TagStyle:
    """How the base names languages: by the tokens it carries (one scan per tokenizer, cached)."""
    if _is_marian_tokenizer(tokenizer):
        # The source vocabulary (a dict it holds), where >>hin<< lives; read once per tokenizer, never built.
        return "marian" if any(_MARIAN_TAG.match(t) for t in tokenizer.encoder) else "none"
    added = _added_tokens(tokenizer)
    for style, pattern in _STYLE_PATTERNS.items():
        if sum(1 for t in added if pattern.match(t)) >= 2:  # a base with tags has one per language, and several
            return style
    return "none"


def tag_style(tokenizer: Any) -> TagStyle:
    """How `tokenizer`'s base names languages: FLORES codes, `__hi__`, `hi_IN`, `>>hin<<`, or not at all."""
    return _tags_of(tokenizer).style


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of `token` if it is one whole token of the vocabulary (never the unknown token's id)."""
    ids = tokenizer.convert_tokens_to_ids([token])
    found = ids[0] if ids else None
    if found is None or found < 0:
        return None
    if found == tokenizer.unk_token_id and token != tokenizer.unk_token:
        return None
    return int(found)


def _candidates(code: str) -> list[str]:
    iso1 = ISO_639_1.get(code)
    iso3 = code.split("_", 1)[0]
    out = [code]
    if code in TAG_ALIASES:
        out.append(TAG_ALIASES[code][0])
    if iso1:
        out.append(f"__{iso1}__")
    out += [f">>{code}<<", f">>{iso3}<<"] + ([f">>{iso1}<<"] if iso1 else [])
    return out


def language_tag_id(tokenizer: Any, code: str) -> int | None:
    """The token id that names language `code` NLLB style (`hin_Deva`), M2M100 style (`__hi__`), mBART-50 style
    (`hi_IN`) or Marian style (`>>hin<<`), if the tokenizer has one. Looked up once per tokenizer and code."""
    entry = _tags_of(tokenizer)
    if code not in entry.ids:
        entry.ids[code] = _lookup(tokenizer, code)
    return entry.ids[code]


def _lookup(tokenizer: Any, code: str) -> int | None:
    for token in _candidates(code):
        found = _token_id(tokenizer, token)
        if found is not None:
            return found
    iso1 = ISO_639_1.get(code)
    if iso1:  # mBART-50's `hi_IN`: the one tag of that language, whatever its region
        tags = [t for t in _added_tokens(tokenizer) if _STYLE_PATTERNS["mbart"].match(t) and t.startswith(f"{iso1}_")]
        if len(tags) == 1:
            return _token_id(tokenizer, tags[0])
    return None


def language_tag(tokenizer: Any, code: str, *, base: str, direction: str) -> LanguageTag | None:
    """The tag that names `code` to a base that uses tags, None for a base that does not.

    Raises:
        LanguageTagError: the base uses language tags and has none for `code`, naming base, direction and tag.
    """
    entry = _tags_of(tokenizer)
    if entry.style == "none":
        return None
    if code in entry.tags:
        return entry.tags[code]
    tag_id = language_tag_id(tokenizer, code)
    if tag_id is None:
        raise LanguageTagError(_missing_message(tokenizer, entry.style, code, base, direction))
    token = str(tokenizer.convert_ids_to_tokens(tag_id))
    note = TAG_ALIASES[code][1] if code in TAG_ALIASES and token == TAG_ALIASES[code][0] else ""
    if note:
        log.warning("base %s has no %s tag: %s stands for it (%s)", base, code, token, note)
    entry.tags[code] = tag = LanguageTag(code=code, token=token, id=tag_id, note=note)
    return tag


def _missing_message(tokenizer: Any, style: TagStyle, code: str, base: str, direction: str) -> str:
    wanted = {
        "flores": code,
        "m2m100": f"__{ISO_639_1.get(code, code.split('_')[0])}__",
        "mbart": f"{ISO_639_1.get(code, code.split('_')[0])}_XX",
        "marian": f">>{code.split('_')[0]}<<",
    }[style]
    name = LANGUAGES.get(code, code)
    return (
        f"base model {base!r} marks languages with tags but has no tag for {code} ({name}; looked for "
        f"{wanted!r} and its known aliases) in direction {direction}: choose a base that knows {name}, "
        "or drop the direction"
    )


def _is_marian(lm: LoadedModel) -> bool:
    return getattr(lm.model.config, "model_type", "") == "marian" or _is_marian_tokenizer(lm.tokenizer)


def direction_tags(lm: LoadedModel, src_lang: str, tgt_lang: str) -> tuple[LanguageTag | None, LanguageTag | None]:
    """The (source, target) tags of a direction on `lm` (None where the base does not use that side's tag).

    Raises:
        LanguageTagError: the base uses tags and lacks one for either language.
    """
    if lm.family != "seq2seq":
        return None, None
    direction = f"{src_lang}-{tgt_lang}"
    if _is_marian(lm):  # only the target is named, by a token at the start of the source
        return None, language_tag(lm.tokenizer, tgt_lang, base=lm.base_id, direction=direction)
    src = language_tag(lm.tokenizer, src_lang, base=lm.base_id, direction=direction)
    return src, language_tag(lm.tokenizer, tgt_lang, base=lm.base_id, direction=direction)


def language_name(code: str) -> str:
    return LANGUAGES.get(code, code)


def format_prompt(text: str, src_lang: str, tgt_lang: str) -> str:
    """The decoder-only prompt; the translation follows it after a space."""
    return PROMPT_TEMPLATE.format(src_name=language_name(src_lang), tgt_name=language_name(tgt_lang), text=text)


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _target_ids(lm: LoadedModel, text: str) -> list[int]:
    """A target sentence's ids: through the target vocabulary where the base has one (Marian's target.spm)."""
    if _is_marian(lm):
        return list(lm.tokenizer(text_target=text, add_special_tokens=False)["input_ids"])
    return _text_ids(lm.tokenizer, text)


def encode_source(lm: LoadedModel, text: str, src_lang: str, tgt_lang: str, max_length: int) -> list[int]:
    """Token ids of the model input for translating `text` (a tagged source, or a prompt)."""
    tok = lm.tokenizer
    if lm.family == "seq2seq":
        src_tag, tgt_tag = direction_tags(lm, src_lang, tgt_lang)
        return _tagged(tok, _text_ids(tok, text), tgt_tag if _is_marian(lm) else src_tag, max_length)
    # Prompts keep the instruction: it is the source text that is cut when too long.
    head, tail = format_prompt("\x00", src_lang, tgt_lang).split("\x00")
    prefix = list(tok(head.rstrip(" "), add_special_tokens=True)["input_ids"])
    body = _text_ids(tok, " " + text)
    suffix = _text_ids(tok, tail)
    room = max(1, max_length - len(prefix) - len(suffix))
    return prefix + body[:room] + suffix


def _tagged(tok: Any, ids: list[int], tag: LanguageTag | None, max_length: int) -> list[int]:
    head = [tag.id] if tag is not None else []
    return head + ids[: max(1, max_length - len(head) - 1)] + [int(tok.eos_token_id)]


def encode_pair(
    lm: LoadedModel, src: str, tgt: str, src_lang: str, tgt_lang: str, max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one training example.

    Seq2seq: the tagged source and the tagged target (the model shifts labels into decoder inputs); Marian's
    target untagged, through its target vocabulary.
    Causal: prompt + translation + eos, with the prompt's labels set to -100 so only the translation is learnt.
    """
    tok = lm.tokenizer
    source = encode_source(lm, src, src_lang, tgt_lang, max_length)
    if lm.family == "seq2seq":
        target_tag = None if _is_marian(lm) else direction_tags(lm, src_lang, tgt_lang)[1]
        return source, _tagged(tok, _target_ids(lm, tgt), target_tag, max_length)
    answer = _text_ids(tok, " " + tgt)[: max(1, max_length - 1)] + [int(tok.eos_token_id)]
    return source + answer, [-100] * len(source) + answer


def forced_bos_id(lm: LoadedModel, tgt_lang: str) -> int | None:
    """The token generation must start with for `tgt_lang` (seq2seq bases with NLLB/M2M100/mBART language tags).

    Raises:
        LanguageTagError: the base uses tags and has none for `tgt_lang`.
    """
    if lm.family != "seq2seq" or _is_marian(lm):
        return None
    tag = language_tag(lm.tokenizer, tgt_lang, base=lm.base_id, direction=f"*-{tgt_lang}")
    return tag.id if tag is not None else None


def language_notes(tokenizer: Any, *, family: str, model_type: str, base: str, directions: list[str]) -> list[str]:
    """What a run should be told about how `base` names the configured languages: each alias used.

    Raises:
        LanguageTagError: the base uses tags and lacks one for a language of a direction.
    """
    if family != "seq2seq":
        return []
    notes: list[str] = []
    marian = model_type == "marian" or _is_marian_tokenizer(tokenizer)
    for direction in directions:
        src, tgt = direction.split("-", 1)
        for code in [tgt] if marian else [src, tgt]:
            tag = language_tag(tokenizer, code, base=base, direction=direction)
            if tag is not None and tag.is_alias and not any(n.startswith(f"{code} ") for n in notes):
                notes.append(f"{code} as {tag.token} ({tag.note})")
    return notes
