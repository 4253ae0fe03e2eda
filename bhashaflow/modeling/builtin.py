"""The built-in tiny bases: built by the project, reproducibly, and cached in the ordinary Hugging Face layout.

A LoRA adapter is meant to sit on a base that already knows its languages, so a built-in base is pre-trained
the first time it is built, the way real bases are, on FLORES-200 *dev* text only (devtest is the evaluation
set): a tokenizer is trained on the dev text of the configured languages, then the model learns each language
(denoising for the encoder-decoder, language modelling for the decoder-only base) and translation between
them, except *out of English*: eng->X, the directions the adapters learn, is never shown to it.
The result is saved with `save_pretrained` (safetensors) and loaded by `load_base` like any hub model.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from bhashaflow.core.hashing import sha256_dir, sha256_file, sha256_json
from bhashaflow.core.languages import LANGUAGES
from bhashaflow.core.names import BASE_MANIFEST
from bhashaflow.core.schedule import lr_at
from bhashaflow.data.batching import collate, length_grouped_batches
from bhashaflow.data.flores import flores_file, read_flores
from bhashaflow.modeling.encoding import format_prompt
from bhashaflow.modeling.loaded import BUILTIN_PREFIX, BaseModelError

log = logging.getLogger(__name__)

PIVOT = "eng_Latn"
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


@dataclass(frozen=True)
class BuiltinRecipe:
    """How a built-in base is made; every field is part of its cache key."""

    family: Literal["seq2seq", "causal"]
    vocab_size: int = 4000  # BPE pieces trained on the dev text, plus specials and language tags
    d_model: int = 128
    layers: int = 2  # per stack (encoder and decoder each, for seq2seq)
    heads: int = 4
    ffn_dim: int = 512
    steps: int = 1500  # pre-training optimizer steps (about 4 minutes on 2 CPU cores)
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    mask_ratio: float = 0.35  # share of tokens hidden in denoising spans
    translation_share: float = 0.5  # share of examples that translate (never out of English); the rest denoise
    max_length: int = 128
    seed: int = 0
    version: int = 2  # bump when the code that builds bases changes their weights (2: the shared LR schedule)


RECIPES: dict[str, BuiltinRecipe] = {
    "builtin:tiny-seq2seq": BuiltinRecipe(family="seq2seq"),
    "builtin:tiny-causal": BuiltinRecipe(family="causal"),
}


def recipe_for(name: str) -> BuiltinRecipe:
    if name not in RECIPES:
        raise BaseModelError(f"unknown built-in base {name!r}; built-ins are {sorted(RECIPES)}")
    return RECIPES[name]


def read_dev_text(flores_dir: str | Path, languages: list[str]) -> dict[str, list[str]]:
    """FLORES-200 dev sentences per language, through the FLORES reader; devtest is never read here."""
    missing = [lang for lang in languages if not flores_file(flores_dir, lang, "dev").is_file()]
    if missing:
        root = Path(flores_dir) / "dev"
        raise BaseModelError(
            f"built-in bases are trained on FLORES-200 dev text; {root} lacks {', '.join(f'{m}.dev' for m in missing)}"
        )
    return {lang: read_flores(flores_dir, lang, "dev") for lang in languages}


def builtin_dir(
    name: str, *, languages: list[str], cache_dir: str, flores_dir: str, recipe: BuiltinRecipe | None = None
) -> Path:
    """Cache folder of a built-in base: keyed by recipe, language set and the dev text itself."""
    recipe = recipe or recipe_for(name)
    langs = sorted(set(languages) | {PIVOT})
    dev = {lang: flores_file(flores_dir, lang, "dev") for lang in langs}
    key = {
        "name": name,
        "recipe": asdict(recipe),
        "languages": langs,
        "dev": {lang: sha256_file(path) for lang, path in dev.items() if path.is_file()},
    }
    digest = sha256_json(key)[:16]
    return Path(cache_dir).expanduser() / "builtin" / f"{name.removeprefix(BUILTIN_PREFIX)}-{digest}"


def ensure_builtin(
    name: str,
    *,
    languages: list[str],
    cache_dir: str,
    flores_dir: str = "data/flores200",
    recipe: BuiltinRecipe | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """The cache folder of a built-in base, building it first if needed (one builder at a time).

    Args:
        name: builtin:tiny-seq2seq or builtin:tiny-causal.
        languages: FLORES-200 codes the base must know (English is always added: it is the pivot).
        cache_dir: the cache root (Settings.cache_dir).
        flores_dir: FLORES-200 directory; its dev split is the training text.
        recipe: override the named recipe (tests build smaller bases).
        on_progress: called with (step, steps, loss) during pre-training.
    """
    recipe = recipe or recipe_for(name)
    target = builtin_dir(name, languages=languages, cache_dir=cache_dir, flores_dir=flores_dir, recipe=recipe)
    if (target / BASE_MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        # Two directions trained at once both need the base: the second waits for the first to build it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / BASE_MANIFEST).is_file():
            return target
        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        log.info("building %s for %s in %s (first use; cached afterwards)", name, languages, target)
        build_builtin(
            name, languages=languages, flores_dir=flores_dir, out_dir=partial, recipe=recipe, on_progress=on_progress
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    return target


def train_tokenizer(texts: dict[str, list[str]], recipe: BuiltinRecipe) -> Any:
    """A BPE tokenizer over the dev text, with NLLB-style language tags as special tokens.

    BPE rather than unigram: its merges are chosen by integer counts, so the same text always gives the
    same vocabulary, where unigram training sums float scores in a thread-dependent order.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    langs = sorted(texts)
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.normalizer = normalizers.NFKC()
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size, special_tokens=SPECIAL_TOKENS + langs, show_progress=False
    )
    # Interleave languages so each gets its share of the vocabulary.
    lines = [s for group in zip(*(texts[lang] for lang in langs), strict=False) for s in group]
    core.train_from_iterator(lines, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        additional_special_tokens=langs,
        model_max_length=recipe.max_length * 2,
    )
    if recipe.family == "causal":
        tokenizer.add_tokens(["\n"])  # the prompt template's line breaks, where generation stops
    return tokenizer


def _make_model(recipe: BuiltinRecipe, tokenizer: Any) -> Any:
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        M2M100Config,
        M2M100ForConditionalGeneration,
    )

    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    torch.manual_seed(recipe.seed)
    model: Any
    if recipe.family == "seq2seq":
        # M2M100 (NLLB's layout): pre-layer-norm, which trains from scratch far better than post-LN Marian.
        seq2seq = M2M100Config(
            vocab_size=len(tokenizer),
            d_model=recipe.d_model,
            encoder_layers=recipe.layers,
            decoder_layers=recipe.layers,
            encoder_attention_heads=recipe.heads,
            decoder_attention_heads=recipe.heads,
            encoder_ffn_dim=recipe.ffn_dim,
            decoder_ffn_dim=recipe.ffn_dim,
            max_position_embeddings=recipe.max_length * 2,
            dropout=0.1,
            attention_dropout=0.0,
            activation_dropout=0.0,
            # No layer drop: with two decoder layers it would now and then skip all of them (and every adapter).
            encoder_layerdrop=0.0,
            decoder_layerdrop=0.0,
            scale_embedding=True,
            tie_word_embeddings=True,
            decoder_start_token_id=tokenizer.eos_token_id,
            **ids,
        )
        model = M2M100ForConditionalGeneration(seq2seq)
    else:
        causal = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=recipe.d_model,
            intermediate_size=recipe.ffn_dim,
            num_hidden_layers=recipe.layers * 2,
            num_attention_heads=recipe.heads,
            num_key_value_heads=recipe.heads,
            max_position_embeddings=recipe.max_length * 4,
            tie_word_embeddings=True,
            **ids,
        )
        model = LlamaForCausalLM(causal)
    decoding: dict[str, Any] = {}
    if recipe.family == "seq2seq":
        # A model this small loops on a phrase under greedy search; the usual guards (CTRL's repetition
        # penalty 1.2, BART's no-repeat 3-grams) ship in its generation config, as real bases ship theirs. Both
        # serving engines apply the penalty to the generated tokens only (modeling.generation.GeneratedTokensPenalty).
        decoding = {
            "decoder_start_token_id": tokenizer.eos_token_id,
            "repetition_penalty": 1.2,
            "no_repeat_ngram_size": 3,
        }
    model.generation_config = GenerationConfig(max_new_tokens=128, **decoding, **ids)
    return model


def _noise(ids: list[int], mask_id: int, ratio: float, rng: random.Random) -> list[int]:
    """mBART-style span masking: spans of ~3 tokens each replaced by one mask token."""
    out: list[int] = []
    i = 0
    while i < len(ids):
        if rng.random() < ratio / 3.0:
            out.append(mask_id)
            i += max(1, min(int(rng.expovariate(1 / 3)), len(ids) - i))
        else:
            out.append(ids[i])
            i += 1
    return out


class _PretrainingData:
    """Endless pre-training examples: one language alone (denoising / language modelling) or a translation X -> Y
    with X not English."""

    def __init__(self, texts: dict[str, list[str]], tokenizer: Any, recipe: BuiltinRecipe) -> None:
        self.recipe = recipe
        self.tok = tokenizer
        self.langs = sorted(texts)
        self.texts = texts
        cut = recipe.max_length - 2
        self.ids = {
            lang: [tokenizer(s, add_special_tokens=False)["input_ids"][:cut] for s in texts[lang]]
            for lang in self.langs
        }
        self.tag = {lang: tokenizer.convert_tokens_to_ids(lang) for lang in self.langs}
        self.directions = [(a, b) for a in self.langs for b in self.langs if a != b and a != PIVOT]
        self.rng = random.Random(recipe.seed)

    def _seq2seq(self, src: str, tgt: str, k: int) -> tuple[list[int], list[int]]:
        eos, tag, ids = self.tok.eos_token_id, self.tag, self.ids
        target = [tag[tgt]] + ids[tgt][k] + [eos]
        if src != tgt:
            return [tag[src]] + ids[src][k] + [eos], target
        return [tag[src]] + _noise(ids[src][k], self.tok.mask_token_id, self.recipe.mask_ratio, self.rng) + [
            eos
        ], target

    def _causal(self, src: str, tgt: str, k: int) -> tuple[list[int], list[int]]:
        eos = self.tok.eos_token_id
        if src != tgt:
            prompt = self.tok(format_prompt(self.texts[src][k], src, tgt), add_special_tokens=False)["input_ids"]
            answer = self.tok(" " + self.texts[tgt][k], add_special_tokens=False)["input_ids"] + [eos]
            return prompt + answer, prompt + answer  # the whole text is language-modelled
        seq = [self.tok.bos_token_id] + self.ids[src][k] + [eos]
        return seq, seq

    def __iter__(self) -> Iterator[tuple[list[int], list[int]]]:
        n = min(len(v) for v in self.ids.values())
        make = self._seq2seq if self.recipe.family == "seq2seq" else self._causal
        while True:
            k = self.rng.randrange(n)
            if self.directions and self.rng.random() < self.recipe.translation_share:
                yield make(*self.rng.choice(self.directions), k)
            else:
                lang = self.rng.choice(self.langs)
                yield make(lang, lang, k)


def pretrain(
    model: Any,
    tokenizer: Any,
    texts: dict[str, list[str]],
    recipe: BuiltinRecipe,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> float:
    """Pre-train in place; returns the mean loss of the last steps."""
    torch.manual_seed(recipe.seed)
    data = _PretrainingData(texts, tokenizer, recipe)
    batches = length_grouped_batches(data, recipe.batch_size, random.Random(recipe.seed), pool_batches=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    model.train()
    recent: list[float] = []
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, peak=recipe.learning_rate, warmup=recipe.warmup_steps, max_steps=recipe.steps)
        batch = collate(next(batches), int(tokenizer.pad_token_id))
        if recipe.family == "causal":
            batch["labels"] = batch["labels"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [float(loss.item())])[-20:]
        if on_progress is not None:
            on_progress(step + 1, recipe.steps, recent[-1])
        if (step + 1) % 100 == 0:
            log.info("pre-training step %d/%d loss %.3f", step + 1, recipe.steps, sum(recent) / len(recent))
    model.eval()
    return sum(recent) / len(recent) if recent else float("nan")


def build_builtin(
    name: str,
    *,
    languages: list[str],
    flores_dir: str,
    out_dir: str | Path,
    recipe: BuiltinRecipe | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Build a built-in base into `out_dir`: tokenizer, pre-trained model, manifest."""
    recipe = recipe or recipe_for(name)
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown:
        raise BaseModelError(f"unknown FLORES-200 codes {unknown}")
    langs = sorted(set(languages) | {PIVOT})
    started = time.perf_counter()
    random.seed(recipe.seed)
    texts = read_dev_text(flores_dir, langs)
    tokenizer = train_tokenizer(texts, recipe)
    model = _make_model(recipe, tokenizer)
    final_loss = pretrain(model, tokenizer, texts, recipe, on_progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    manifest = {
        "name": name,
        "recipe": asdict(recipe),
        "languages": langs,
        "trained_on": f"{Path(flores_dir) / 'dev'} (FLORES-200 dev only)",
        "pretrain_final_loss": final_loss,
        "build_seconds": round(time.perf_counter() - started, 1),
        "content_hash": sha256_dir(out),
    }
    (out / BASE_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out


def small_recipe(name: str, **changes: Any) -> BuiltinRecipe:
    """A named recipe with some fields changed (tests build bases in seconds)."""
    return replace(recipe_for(name), **changes)
