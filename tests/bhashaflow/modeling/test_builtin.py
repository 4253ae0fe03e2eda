"""The built-in bases: built once from FLORES dev text, reproducibly, and loaded like hub models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import LANGS

from bhashaflow.core.names import BASE_MANIFEST as MANIFEST
from bhashaflow.core.settings import Settings
from bhashaflow.modeling import builtin as builtin_bases
from bhashaflow.modeling.builtin import ensure_builtin, small_recipe
from bhashaflow.modeling.encoding import language_tag_id
from bhashaflow.modeling.generation import translate
from bhashaflow.modeling.loaded import BaseModelError
from bhashaflow.modeling.loading import load_base, resolve_base

FAST = {"vocab_size": 300, "d_model": 32, "layers": 1, "ffn_dim": 64, "steps": 4, "batch_size": 4, "warmup_steps": 1}


@pytest.mark.parametrize(
    "name,family,arch",
    [
        ("builtin:tiny-seq2seq", "seq2seq", "M2M100ForConditionalGeneration"),
        ("builtin:tiny-causal", "causal", "LlamaForCausalLM"),
    ],
)
def test_builtin_is_built_once_from_dev_text_and_loaded_like_a_hub_model(
    name: str, family: str, arch: str, dev_only_flores: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The named recipes pre-train for minutes; a smaller recipe runs the same build and load path in seconds.
    monkeypatch.setitem(builtin_bases.RECIPES, name, small_recipe(name, **FAST))
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    lm = load_base(name, languages=["hin_Deva", "tam_Taml"], settings=settings, flores_dir=str(dev_only_flores))
    folder = Path(lm.base_path)
    assert folder.parent == tmp_path / "cache" / "builtin" and folder.name.startswith(name.split(":")[1] + "-")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            MANIFEST,
        ]
    )
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["languages"] == ["eng_Latn", "hin_Deva", "tam_Taml"]  # English is always the pivot
    assert lm.family == family and type(lm.model).__name__ == arch
    assert lm.base_id == name and lm.revision == manifest["content_hash"]
    assert [language_tag_id(lm.tokenizer, code) is not None for code in LANGS] == [True, True, True]
    out = translate(lm, ["A short test."], src_lang="eng_Latn", tgt_lang="hin_Deva", max_new_tokens=4)
    assert len(out) == 1

    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = resolve_base(name, languages=["tam_Taml", "hin_Deva"], settings=settings, flores_dir=str(dev_only_flores))
    assert again == str(folder) and (folder / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rebuilt
    other = resolve_base(name, languages=["hin_Deva"], settings=settings, flores_dir=str(dev_only_flores))
    assert other != str(folder)  # another language set is another base


def test_builtin_build_is_reproducible(dev_only_flores: Path, tmp_path: Path) -> None:
    recipe = small_recipe("builtin:tiny-seq2seq", **FAST)
    dirs = [
        ensure_builtin(
            "builtin:tiny-seq2seq",
            languages=["hin_Deva"],
            cache_dir=str(tmp_path / c),
            flores_dir=str(dev_only_flores),
            recipe=recipe,
        )
        for c in ("a", "b")
    ]
    hashes = [json.loads((d / MANIFEST).read_text())["content_hash"] for d in dirs]
    assert hashes[0] == hashes[1]


def test_builtin_without_dev_text_names_the_missing_files(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="lacks eng_Latn.dev, hin_Deva.dev"):
        ensure_builtin(
            "builtin:tiny-seq2seq",
            languages=["hin_Deva"],
            cache_dir=str(tmp_path),
            flores_dir=str(tmp_path),
            recipe=small_recipe("builtin:tiny-seq2seq", **FAST),
        )


def test_built_in_bases_read_dev_text_aligned_across_a_line_separator(tmp_path: Path) -> None:
    from bhashaflow.modeling.builtin import read_dev_text

    flores = tmp_path / "flores200"
    (flores / "dev").mkdir(parents=True)
    eng = ["One.", "Two\u2028 still two.", "Three."]
    hin = ["एक।", "दो।", "तीन\u2029 अब भी तीन।"]
    (flores / "dev" / "eng_Latn.dev").write_text("\n".join(eng) + "\n", encoding="utf-8")
    (flores / "dev" / "hin_Deva.dev").write_text("\n".join(hin) + "\n", encoding="utf-8")

    texts = read_dev_text(flores, ["eng_Latn", "hin_Deva"])

    assert texts == {"eng_Latn": eng, "hin_Deva": hin}  # line k of one language still translates line k of the other
