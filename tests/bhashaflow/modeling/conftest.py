"""The modeling tests' bases: tiny M2M100 and BLOOM saved like hub models, a dev-only FLORES, a trained adapter."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny_models import FLORES, LANGS, save_tiny_bloom, save_tiny_m2m100, write_shard

from bhashaflow.config import config_from_dict
from bhashaflow.training.loop import TrainHooks, train_adapter


@pytest.fixture(scope="module")
def dev_only_flores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Only the dev split is present: building a base must never need devtest.
    root = tmp_path_factory.mktemp("flores")
    (root / "dev").mkdir()
    for lang in LANGS:
        shutil.copy(FLORES / "dev" / f"{lang}.dev", root / "dev" / f"{lang}.dev")
    return root


@pytest.fixture(scope="module")
def m2m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_m2m100(tmp_path_factory.mktemp("m2m") / "base")


@pytest.fixture(scope="module")
def bloom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bloom(tmp_path_factory.mktemp("bloom") / "base")


@pytest.fixture(scope="module")
def adapter_dir(m2m: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("adapter")
    shard = write_shard(root / "s.parquet", [("Hello there.", "नमस्ते।")] * 4, "eng_Latn", "hin_Deva")
    config = config_from_dict(
        {"directions": ["eng_Latn-hin_Deva"], "base_model": str(m2m), "training": {"max_steps": 1, "batch_size": 2}}
    )
    return train_adapter(
        config=config,
        direction="eng_Latn-hin_Deva",
        shard_paths=[shard],
        out_dir=str(root / "run"),
        hooks=TrainHooks(eval_texts={}),
    ).adapter_dir
