"""Tiny random models of the real architectures (M2M100 = NLLB's layout, BLOOM), saved like hub models.

They run the same code paths as facebook/nllb-200-distilled-600M and bigscience/bloomz-560m, offline and in
seconds: a unigram tokenizer trained on a little FLORES-200 dev text, NLLB-style language tags, safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bhashaflow.modeling.builtin import small_recipe, train_tokenizer

FLORES = Path(__file__).resolve().parents[1] / "data" / "flores200"
LANGS = ("eng_Latn", "hin_Deva", "tam_Taml")


def dev_lines(lang: str, n: int | None = None) -> list[str]:
    lines = (FLORES / "dev" / f"{lang}.dev").read_text(encoding="utf-8").splitlines()
    return lines[:n] if n else lines


def devtest_lines(lang: str, n: int | None = None) -> list[str]:
    lines = (FLORES / "devtest" / f"{lang}.devtest").read_text(encoding="utf-8").splitlines()
    return lines[:n] if n else lines


def tiny_tokenizer(family: str, n_lines: int = 150, vocab_size: int = 400) -> Any:
    recipe = small_recipe(
        "builtin:tiny-seq2seq" if family == "seq2seq" else "builtin:tiny-causal", vocab_size=vocab_size
    )
    return train_tokenizer({lang: dev_lines(lang, n_lines) for lang in LANGS}, recipe)


def save_tiny_m2m100(path: Path, d_model: int = 32, init_std: float = 0.02, vocab_size: int | None = None) -> Path:
    """A 1+1-layer M2M100 (NLLB's architecture) with random weights and a tagged tokenizer.

    A large `init_std` makes the random model's output depend on its input, which order tests need.
    `vocab_size` widens the embedding and output layer beyond the tokenizer (NLLB's 256,206, say).
    """
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    tok = tiny_tokenizer("seq2seq")
    config = M2M100Config(
        vocab_size=vocab_size or len(tok),
        d_model=d_model,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id,
        dropout=0.0,
        scale_embedding=True,
        init_std=init_std,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
    )
    import torch

    torch.manual_seed(0)
    M2M100ForConditionalGeneration(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def save_tiny_bloom(path: Path, hidden: int = 32, init_std: float = 0.02, vocab_size: int | None = None) -> Path:
    """A 2-layer BLOOM (bloomz-560m's architecture) with random weights."""
    from transformers import BloomConfig, BloomForCausalLM

    tok = tiny_tokenizer("causal")
    config = BloomConfig(
        vocab_size=vocab_size or len(tok),
        hidden_size=hidden,
        n_layer=2,
        n_head=2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        initializer_range=init_std,
    )
    import torch

    torch.manual_seed(0)
    BloomForCausalLM(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def build_tiny_base(out: Path, languages: list[str]) -> str:
    """builtin:tiny-seq2seq's layout at 1 layer, its tokenizer trained on the FLORES dev text of `languages`, no
    pre-training: built in seconds (the configs' own base takes minutes to pre-train on this machine)."""
    from bhashaflow.modeling.builtin import build_builtin

    name = "builtin:tiny-seq2seq"
    recipe = small_recipe(name, vocab_size=600, d_model=32, layers=1, heads=2, ffn_dim=64, steps=0)
    build_builtin(name, languages=languages, flores_dir=str(FLORES), out_dir=out, recipe=recipe)
    return str(out)


def write_shard(path: Path, pairs: list[tuple[str, str]], src_lang: str, tgt_lang: str, source: str = "test") -> str:
    """A Parquet shard in the ingestion layout: src, tgt, src_lang, tgt_lang, source, id."""
    table = pa.table(
        {
            "src": [s for s, _ in pairs],
            "tgt": [t for _, t in pairs],
            "src_lang": [src_lang] * len(pairs),
            "tgt_lang": [tgt_lang] * len(pairs),
            "source": [source] * len(pairs),
            "id": [f"{source}:{i}" for i in range(len(pairs))],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))
    return str(path)
