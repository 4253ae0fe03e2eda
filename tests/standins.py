"""Stand-ins of the real hub bases users load, placed in a local Hugging Face cache so configs run by hub id offline.

A stand-in carries what a hub download carries that our code can see: the tokenizer class and files, the special
tokens and language codes at the real ids, the real vocabulary size and the config fields (model type,
architectures, special ids, decoder start, tied embeddings, embedding scale, generation config). Only the layers are
tiny (d_model 16, one layer per stack) and random. Tokenizers are trained on FLORES-200 dev text; the vocabulary is
filled to the real size with pieces that never occur (two or three code points of the private use area, or of the
byte-level alphabet, that no merge and no text produces), so every real id exists and means what it means on the hub.

Figures checked against the real repositories are stated where they are used; the ones taken from memory of the
hub files, that could not be checked offline, say so. /tmp/readme/20-standins.md (merged into the README) lists them.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

FLORES_DEV = Path(__file__).resolve().parents[1] / "data" / "flores200" / "dev"
RECIPE_VERSION = 3  # bump whenever a builder below changes what it writes: cached stand-ins are keyed by it

NLLB = "facebook/nllb-200-distilled-600M"
M2M100 = "facebook/m2m100_418M"
MARIAN_EN_HI = "Helsinki-NLP/opus-mt-en-hi"
BLOOMZ = "bigscience/bloomz-560m"
INDICTRANS2 = "ai4bharat/indictrans2-en-indic-dist-200M"
HUB_IDS: tuple[str, ...] = (NLLB, M2M100, MARIAN_EN_HI, BLOOMZ, INDICTRANS2)

TINY = {"d_model": 16, "heads": 2, "ffn": 32}
# The encoder-decoder stand-ins' tiny layers, in the field names M2M100Config and MarianConfig share.
TINY_SEQ2SEQ = {
    "d_model": TINY["d_model"],
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": TINY["heads"],
    "decoder_attention_heads": TINY["heads"],
    "encoder_ffn_dim": TINY["ffn"],
    "decoder_ffn_dim": TINY["ffn"],
}
TRAINED_PIECES = 8000  # pieces learnt from the dev text; the rest of the real vocabulary never occurs
_DONE = "standin.json"  # written last into a built stand-in: its files' blob digests and its commit hash


# ---------------------------------------------------------------------------------------------- text and pieces


def dev_text(langs: Iterable[str] | None = None) -> list[str]:
    """FLORES-200 dev sentences of `langs` (all of data/flores200/dev when None), interleaved by line."""
    files = sorted(FLORES_DEV.glob("*.dev")) if langs is None else [FLORES_DEV / f"{lang}.dev" for lang in langs]
    per_lang = [f.read_text(encoding="utf-8").splitlines() for f in files]
    return [line for group in zip(*per_lang, strict=False) for line in group]


def _never_occurring(n: int, taken: set[str], alphabet: list[str], width: int) -> Iterator[str]:
    """`n` strings of `width` characters of `alphabet` that are not in `taken` (and so never a piece of real text)."""
    size, made, i = len(alphabet), 0, 0
    while made < n:
        piece = "".join(alphabet[(i // size**k) % size] for k in reversed(range(width)))
        i += 1
        if piece not in taken:
            made += 1
            yield piece


def private_use() -> list[str]:
    """The 6,400 code points of the BMP private use area: no FLORES text uses them."""
    return [chr(c) for c in range(0xE000, 0xF900)]


def train_spm(lines: list[str], model_type: str, pieces: int) -> Any:
    """A SentencePiece ModelProto (`model_type` "bpe" or "unigram") with `pieces` pieces learnt from `lines`."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=pieces,
        model_type=model_type,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
        input_sentence_size=0,
        shuffle_input_sentence=False,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buf.getvalue())
    return proto


def fill_spm(proto: Any, total: int, fillers: Iterable[str]) -> Any:
    """`proto` filled to `total` pieces from `fillers`, scored below every learnt piece.

    Fillers are two private-use code points whose single code points are not pieces: neither BPE merges nor a
    unigram segmentation can ever produce them, so the learnt pieces tokenize text exactly as before.
    """
    lowest = min(p.score for p in proto.pieces)
    taken = {p.piece for p in proto.pieces}
    fresh = (piece for piece in fillers if piece not in taken)
    for i in range(total - len(proto.pieces)):
        new = proto.pieces.add()
        new.piece, new.score = next(fresh), lowest - 1.0 - i
    return proto


def spm_fillers(band: int = 0) -> Iterator[str]:
    """Two private-use code points, the first among the band's 100 (bands 0-63 draw disjoint fillers, 640,000 each)."""
    area = private_use()
    return (area[100 * band + i // len(area)] + area[i % len(area)] for i in range(100 * len(area)))


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _save_model(model: Any, out_dir: Path, config_extra: dict[str, Any], generation: dict[str, Any]) -> None:
    """Weights as model.safetensors; config.json with the hub's extra fields; the hub's generation_config.json.

    Older hub configs also carry generation settings (max_length, num_beams) in config.json: transformers 5 reads
    them into the model's generation config as it does the hub's, and generation_config.json takes precedence.
    """
    model.save_pretrained(str(out_dir))
    config = json.loads((out_dir / "config.json").read_text())
    _write_json(out_dir / "config.json", {**config, **config_extra})
    _write_json(out_dir / "generation_config.json", {"_from_model_config": True, **generation})


# ------------------------------------------------------------------------------------------------------- NLLB-200

# NLLB: fairseq's dictionary puts <s> <pad> </s> <unk> at 0-3, the 255,997 SentencePiece pieces after the
# SentencePiece specials at 4..256000 (fairseq_offset 1), the 202 language codes at 256001..256202 (eng_Latn
# 256047) and <mask> at 256203: len(tokenizer) 256,204; the checkpoint's embedding has 256,206 rows.
# Checked: the code list and the offsets in transformers' NllbTokenizer/NllbConverter; eng_Latn 256047, fra_Latn
# 256057, ron_Latn 256145, <mask> 256203 and len 256,204 in transformers' tests of the real tokenizer; 256,206 rows
# in published printouts of the model. The hub's tokenizer_config.json fields are as remembered.
NLLB_SPM_PIECES = 256_000
NLLB_EMBEDDINGS = 256_206


def build_nllb(out_dir: Path) -> None:
    from transformers import M2M100ForConditionalGeneration, NllbTokenizer
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    proto = fill_spm(train_spm(dev_text(), "bpe", TRAINED_PIECES), NLLB_SPM_PIECES, spm_fillers())
    (out_dir / "sentencepiece.bpe.model").write_bytes(proto.SerializeToString())
    codes = list(FAIRSEQ_LANGUAGE_CODES)
    specials = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
    }
    mask = {"content": "<mask>", "lstrip": True, "normalized": True, "rstrip": False, "single_word": False}
    _write_json(
        out_dir / "special_tokens_map.json", {**specials, "mask_token": mask, "additional_special_tokens": codes}
    )
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            **specials,
            "mask_token": mask,
            "additional_special_tokens": codes,
            "legacy_behaviour": False,
            "model_max_length": 1024,
            "sp_model_kwargs": {},
            "src_lang": None,
            "tgt_lang": None,
            "clean_up_tokenization_spaces": True,
            "tokenizer_class": "NllbTokenizer",
        },
    )
    # Converted from the SentencePiece model by transformers itself; it adds <mask> before the language codes, so
    # the added tokens get the hub's ids (codes first, <mask> last) before tokenizer.json is written.
    converted = NllbTokenizer.from_pretrained(str(out_dir))
    ids = {
        "<s>": 0,
        "<pad>": 1,
        "</s>": 2,
        "<unk>": 3,
        **{c: 256_001 + i for i, c in enumerate(codes)},
        "<mask>": 256_203,
    }
    backend = json.loads(converted.backend_tokenizer.to_str())
    backend["added_tokens"] = sorted(
        ({**t, "id": ids[t["content"]]} for t in backend["added_tokens"]), key=lambda t: t["id"]
    )
    for token in backend["post_processor"]["special_tokens"].values():
        token["ids"] = [ids[token["id"]]]
    _write_json(out_dir / "tokenizer.json", backend)

    config = _tiny_m2m100_config(NLLB_EMBEDDINGS, layerdrop=0.0)
    _save_model(
        _seeded(M2M100ForConditionalGeneration, config),
        out_dir,
        {"tokenizer_class": "NllbTokenizer", "max_length": 200},
        {"bos_token_id": 0, "decoder_start_token_id": 2, "eos_token_id": 2, "max_length": 200, "pad_token_id": 1},
    )


def _tiny_m2m100_config(vocab_size: int, *, layerdrop: float) -> Any:
    """NLLB's and M2M100's config fields (both are M2M100ForConditionalGeneration) with tiny layers."""
    from transformers import M2M100Config

    return M2M100Config(
        vocab_size=vocab_size,
        **TINY_SEQ2SEQ,
        max_position_embeddings=1024,
        activation_function="relu",
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        encoder_layerdrop=layerdrop,
        decoder_layerdrop=layerdrop,
        init_std=0.02,
        scale_embedding=True,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
    )


def _seeded(cls: Any, config: Any) -> Any:
    import torch

    torch.manual_seed(0)
    return cls(config)


# -------------------------------------------------------------------------------------------------- BLOOMZ-560m

# BLOOM's byte-level BPE: <unk> <s> </s> <pad> at 0-3, 250,680 entries (len(tokenizer), as the BLOOM paper gives
# it); the embedding has 250,880 rows (padded for tensor parallelism). Checked: 250,880, bos 1 and eos 2 in
# transformers' BloomConfig defaults; the pre-tokenizer (the split pattern, then ByteLevel without prefix space or
# regex) in several reimplementations of BLOOM's tokenizer. <unk> 0, <pad> 3 and tokenizer_config.json are as
# remembered.
BLOOM_TOKENS = 250_680
BLOOM_EMBEDDINGS = 250_880
BLOOM_SPLIT = " ?[^(\\s|[.,!?…。，、।۔،])]+"


def build_bloomz(out_dir: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import BloomConfig, BloomForCausalLM

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(BLOOM_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_PIECES,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(dev_text(), trainer)
    backend = json.loads(core.to_str())
    vocab: dict[str, int] = backend["model"]["vocab"]
    # Three byte-level characters no merge makes: decodable bytes, never produced by encoding.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for piece in _never_occurring(BLOOM_TOKENS - len(vocab), set(vocab), alphabet, 3):
        vocab[piece] = len(vocab)
    _write_json(out_dir / "tokenizer.json", backend)
    named = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    _write_json(out_dir / "special_tokens_map.json", named)
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            **named,
            "add_prefix_space": False,
            "model_max_length": 1_000_000_000_000_000_019_884_624_838_656,
            "padding_side": "left",
            "tokenizer_class": "BloomTokenizerFast",
        },
    )

    config = BloomConfig(
        vocab_size=BLOOM_EMBEDDINGS,
        hidden_size=TINY["d_model"],
        n_layer=2,
        n_head=TINY["heads"],
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        unk_token_id=0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        apply_residual_connection_post_layernorm=False,
        slow_but_exact=False,
        pretraining_tp=1,
    )
    _save_model(
        _seeded(BloomForCausalLM, config), out_dir, {}, {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
    )


# ------------------------------------------------------------------------------------------------- M2M100 418M

# M2M100: vocab.json is fairseq's dictionary (<s> <pad> </s> <unk> at 0-3, then the pieces): 128,004 entries;
# the 100 language tokens __af__..__zu__ follow at 128004 + their index (__en__ 128022, __hi__ 128036); the
# embedding has 128,112 rows (8 "madeup words" after the codes). Checked: the code list, the id rule and the
# madeup words in transformers' M2M100Tokenizer; __ar__ 128006, __en__ 128022, __fr__ 128028, __mr__ 128063 and
# __ro__ 128076 in transformers' tests of the real tokenizer (so vocab.json has 128,004 entries). 128,112 and the
# generation settings are from the hub config as remembered; the SentencePiece model's own size (128,000 here) is
# not visible through the tokenizer and was not checked.
M2M100_SPM_PIECES = 128_000
M2M100_VOCAB = 128_004
M2M100_EMBEDDINGS = 128_112


def build_m2m100(out_dir: Path) -> None:
    from transformers import M2M100ForConditionalGeneration
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    proto = fill_spm(train_spm(dev_text(), "bpe", TRAINED_PIECES), M2M100_SPM_PIECES, spm_fillers(1))
    (out_dir / "sentencepiece.bpe.model").write_bytes(proto.SerializeToString())
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for piece in [p.piece for p in proto.pieces[3:]] + list(_never_occurring(3, set(), private_use(), 3)):
        vocab[piece] = len(vocab)
    assert len(vocab) == M2M100_VOCAB
    _write_json(out_dir / "vocab.json", vocab)
    lang_tokens = [f"__{code}__" for code in FAIRSEQ_LANGUAGE_CODES["m2m100"]]
    specials = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
    }
    _write_json(out_dir / "special_tokens_map.json", {**specials, "additional_special_tokens": lang_tokens})
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            **specials,
            "src_lang": None,
            "tgt_lang": None,
            "language_codes": "m2m100",
            "num_madeup_words": 8,
            "model_max_length": 1024,
            "sp_model_kwargs": {},
            "tokenizer_class": "M2M100Tokenizer",
        },
    )

    config = _tiny_m2m100_config(M2M100_EMBEDDINGS, layerdrop=0.05)
    generation = {
        "bos_token_id": 0,
        "decoder_start_token_id": 2,
        "early_stopping": True,
        "eos_token_id": 2,
        "max_length": 200,
        "num_beams": 5,
        "pad_token_id": 1,
    }
    legacy = {k: generation[k] for k in ("early_stopping", "max_length", "num_beams")}  # also in the hub's config.json
    _save_model(_seeded(M2M100ForConditionalGeneration, config), out_dir, legacy, generation)


# --------------------------------------------------------------------------------------------- opus-mt-en-hi

# Marian: one vocabulary shared by both sides (</s> 0, <unk> 1, the pieces of both SentencePiece models, <pad>
# last), 61,950 entries; pad = decoder_start = 61949, eos = 0. source.spm is English, target.spm Hindi, each a
# 32,000-piece unigram model ("spm32k" in the model card). Checked: the file names and the vocabulary's layout in
# transformers' MarianTokenizer, and the config the converter (convert_marian_to_pytorch) writes: <pad> last,
# pad = decoder_start, bos = eos = 0, bad_words_ids [[pad]], max_length 512, positions = d_model 512, scaled
# embeddings. 61,950, swish, 4 beams and the source_lang/target_lang values are from the hub files as remembered.
MARIAN_SPM_PIECES = 32_000
MARIAN_VOCAB = 61_950


def build_marian_en_hi(out_dir: Path) -> None:
    from transformers import MarianConfig, MarianMTModel

    learnt = 2000  # about as many as unigram training finds in 997 sentences of one language
    source = train_spm(dev_text(["eng_Latn"]), "unigram", learnt)
    target = train_spm(dev_text(["hin_Deva"]), "unigram", learnt)
    learnt_overlap = len({p.piece for p in source.pieces[3:]} & {p.piece for p in target.pieces[3:]})
    fill_spm(source, MARIAN_SPM_PIECES, spm_fillers(2))
    # Both models' pieces share the vocabulary: the target model reuses as many of the source model's fillers as
    # make the joint vocabulary exactly the real size.
    reused = 2 + 2 * (MARIAN_SPM_PIECES - 3) + 1 - MARIAN_VOCAB - learnt_overlap
    fill_spm(target, MARIAN_SPM_PIECES, [*(p.piece for p in source.pieces[learnt : learnt + reused]), *spm_fillers(3)])
    (out_dir / "source.spm").write_bytes(source.SerializeToString())
    (out_dir / "target.spm").write_bytes(target.SerializeToString())
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in [p.piece for p in source.pieces[3:]] + [p.piece for p in target.pieces[3:]]:
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    assert len(vocab) == MARIAN_VOCAB
    _write_json(out_dir / "vocab.json", vocab)
    _write_json(out_dir / "special_tokens_map.json", {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})
    _write_json(out_dir / "tokenizer_config.json", {"target_lang": "hi", "source_lang": "en"})

    pad = MARIAN_VOCAB - 1
    config = MarianConfig(
        vocab_size=MARIAN_VOCAB,
        decoder_vocab_size=MARIAN_VOCAB,
        **TINY_SEQ2SEQ,
        max_position_embeddings=512,
        activation_function="swish",
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        init_std=0.02,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=pad,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
    )
    generation = {
        "bad_words_ids": [[pad]],
        "bos_token_id": 0,
        "decoder_start_token_id": pad,
        "eos_token_id": 0,
        "forced_eos_token_id": 0,
        "max_length": 512,
        "num_beams": 4,
        "pad_token_id": pad,
    }
    # The converter (convert_marian_to_pytorch) wrote these into config.json; generation_config.json came later.
    legacy = {k: generation[k] for k in ("bad_words_ids", "max_length", "num_beams")}
    _save_model(_seeded(MarianMTModel, config), out_dir, {**legacy, "static_position_embeddings": True}, generation)


# -------------------------------------------------------------------------------------- IndicTrans2 (detection)

# IndicTrans2 runs only with its own remote code (trust_remote_code), which bhashaflow does not run: the stand-in
# has just what detecting it takes, its config.json and tokenizer_config.json, with the remote-code auto_map (and,
# like the hub repo without its .py files, AutoConfig refuses it offline). Checked: model_type "IndicTrans" in
# AI4Bharat/IndicTrans2 huggingface_interface/configuration_indictrans.py, whose module names the auto_map uses;
# the tokenizer's auto_map and file names as code loading the hub repo uses them. The sizes are from the hub's
# config.json as remembered, not checked (the hub repos are gated).
INDICTRANS2_CONFIG = {
    "architectures": ["IndicTransForConditionalGeneration"],
    "auto_map": {
        "AutoConfig": "configuration_indictrans.IndicTransConfig",
        "AutoModelForSeq2SeqLM": "modeling_indictrans.IndicTransForConditionalGeneration",
    },
    "model_type": "IndicTrans",
    "is_encoder_decoder": True,
    "encoder_vocab_size": 32322,
    "decoder_vocab_size": 122672,
    "encoder_embed_dim": 512,
    "decoder_embed_dim": 512,
    "encoder_layers": 18,
    "decoder_layers": 18,
    "bos_token_id": 0,
    "pad_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 2,
    "scale_embedding": True,
    "tokenizer_class": "IndicTransTokenizer",
}
INDICTRANS2_TOKENIZER_CONFIG = {
    "auto_map": {"AutoTokenizer": ["tokenization_indictrans.IndicTransTokenizer", None]},
    "tokenizer_class": "IndicTransTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "src_vocab_file": "dict.SRC.json",
    "tgt_vocab_file": "dict.TGT.json",
    "src_spm_file": "model.SRC",
    "tgt_spm_file": "model.TGT",
    "model_max_length": 256,
}


def build_indictrans2(out_dir: Path) -> None:
    _write_json(out_dir / "config.json", INDICTRANS2_CONFIG)
    _write_json(out_dir / "tokenizer_config.json", INDICTRANS2_TOKENIZER_CONFIG)


# ------------------------------------------------------------------------------------------------ build and cache

BUILDERS: dict[str, Callable[[Path], None]] = {
    NLLB: build_nllb,
    M2M100: build_m2m100,
    MARIAN_EN_HI: build_marian_en_hi,
    BLOOMZ: build_bloomz,
    INDICTRANS2: build_indictrans2,
}


def build_standin(hub_id: str, out_dir: Path) -> Path:
    """Build the stand-in of `hub_id` into `out_dir` (created; must not hold another model) and return it."""
    if hub_id not in BUILDERS:
        raise KeyError(f"no stand-in for {hub_id!r}; stand-ins exist for {sorted(BUILDERS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    BUILDERS[hub_id](out_dir)
    return out_dir


def default_cache_dir() -> Path:
    """BHASHAFLOW_CACHE_DIR (default ~/.cache/bhashaflow), as the library's Settings.cache_dir defaults it."""
    return Path(os.environ.get("BHASHAFLOW_CACHE_DIR") or "~/.cache/bhashaflow").expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def built_standin(hub_id: str, cache_dir: Path | None = None) -> Path:
    """The stand-in of `hub_id` under `cache_dir`/standins/, built once (one builder at a time, across processes)."""
    target = (cache_dir or default_cache_dir()) / "standins" / f"v{RECIPE_VERSION}" / hub_id.replace("/", "--")
    if (target / _DONE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _DONE).is_file():
            return target
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        build_standin(hub_id, partial)
        blobs = {p.name: _sha256(p) for p in sorted(partial.iterdir()) if p.is_file()}
        commit = hashlib.sha1(json.dumps([hub_id, RECIPE_VERSION, blobs]).encode()).hexdigest()
        _write_json(
            partial / _DONE, {"hub_id": hub_id, "recipe_version": RECIPE_VERSION, "commit": commit, "blobs": blobs}
        )
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    return target


def _place(built: Path, repo_dir: Path) -> None:
    """Lay `built` out as huggingface_hub does: blobs by digest, snapshots/<commit>/ linking to them, refs/main."""
    manifest = json.loads((built / _DONE).read_text())
    commit = manifest["commit"]
    refs = repo_dir / "refs" / "main"
    if refs.is_file() and refs.read_text() == commit and (repo_dir / "snapshots" / commit).is_dir():
        return
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo_dir / "snapshots" / commit
    partial = snapshot.with_name(f"{commit}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, digest in manifest["blobs"].items():
        blob = repo_dir / "blobs" / digest
        if not blob.is_file():
            tmp = blob.with_name(f"{digest}.incomplete-{os.getpid()}")
            try:
                os.link(built / name, tmp)
            except OSError:  # another file system: copy
                shutil.copyfile(built / name, tmp)
            os.replace(tmp, blob)
        (partial / name).symlink_to(Path("..", "..", "blobs", digest))
    shutil.rmtree(snapshot, ignore_errors=True)
    os.replace(partial, snapshot)
    refs.parent.mkdir(parents=True, exist_ok=True)
    refs.write_text(commit)  # no newline, like huggingface_hub


def ensure_hf_cache(hub_cache: Path, hub_ids: Iterable[str] = HUB_IDS, *, cache_dir: Path | None = None) -> Path:
    """Place the stand-ins of `hub_ids` in the Hugging Face hub cache `hub_cache` (HF_HUB_CACHE) and return it.

    Each stand-in is built once into <cache_dir>/standins/v<RECIPE_VERSION>/ and reused by every later session;
    placing it is idempotent and takes milliseconds once built.

    Args:
        hub_cache: the hub cache folder (holding models--<org>--<name>/).
        hub_ids: which stand-ins to place; all of HUB_IDS by default.
        cache_dir: where built stand-ins are kept across sessions; BHASHAFLOW_CACHE_DIR (default
            ~/.cache/bhashaflow) when None, read at call time.
    """
    hub_cache = Path(hub_cache)
    hub_cache.mkdir(parents=True, exist_ok=True)
    for hub_id in hub_ids:
        built = built_standin(hub_id, cache_dir)
        repo = "models--" + hub_id.replace("/", "--")
        (hub_cache / ".locks").mkdir(exist_ok=True)
        with open(hub_cache / ".locks" / f"{repo}.standin.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _place(built, hub_cache / repo)
    return hub_cache
