"""What the run URI and the registry already hold finished: a published adapter, a promoted version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from bhashaflow.config import PipelineConfig, load_config
from bhashaflow.core.names import INCOMPLETE
from bhashaflow.pipeline.reuse import adapter_identity, promoted_outcome, published_training
from bhashaflow.registry.promotion import decide_promotion, promote_adapter
from bhashaflow.registry.store import Registry

REPO = Path(__file__).resolve().parents[3]
DIRECTION = "eng_Latn-hin_Deva"


def config(*overrides: str) -> PipelineConfig:
    return load_config(REPO / "configs" / "smoke.yaml", ["base_model=tiny", *overrides])


def publish(direction_dir: Path, cfg: PipelineConfig, seed: int = 1) -> Path:
    """An adapter folder as training leaves it: weights, config and the training record."""
    adapter = direction_dir / "adapter"
    adapter.mkdir(parents=True)
    save_file({"lora_A.weight": np.full((2, 4), seed, dtype=np.float32)}, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "seed": seed}))
    resolved = {
        "direction": DIRECTION,
        "base_model": cfg.base_model,
        "base_revision": "abc",
        "steps": 2,
        "resumed_from": None,
        "final_loss": 3.5,
        "tokens_per_s": 100.0,
        "decontaminated": 0,
        "target_modules": ["q_proj"],
        "validation_pairs": 0,
        "best_step": None,
        "best_chrf_pp": None,
        "stopped_early": False,
        "validation": [],
        "family": "seq2seq",
        "config": cfg.model_dump(mode="json"),
    }
    (adapter / "training_config.json").write_text(json.dumps(resolved))
    return adapter


def test_a_published_adapter_under_the_same_training_config_is_a_finished_training(tmp_path: Path) -> None:
    cfg = config()
    adapter = publish(tmp_path, cfg)
    found = published_training(cfg, DIRECTION, str(tmp_path))
    assert found is not None and found.reused
    assert (found.steps, found.final_loss, found.base_revision, found.target_modules) == (2, 3.5, "abc", ["q_proj"])
    assert found.adapter_uri == str(adapter) and found.files == sorted(p.name for p in adapter.iterdir())
    assert published_training(cfg, "eng_Latn-tam_Taml", str(tmp_path)) is None  # another direction's record
    assert published_training(config("training.max_steps=3"), DIRECTION, str(tmp_path)) is None  # trained otherwise
    (adapter / INCOMPLETE).touch()
    assert published_training(cfg, DIRECTION, str(tmp_path)) is None  # half-written


def test_nothing_published_is_no_finished_training_and_no_identity(tmp_path: Path) -> None:
    assert published_training(config(), DIRECTION, str(tmp_path)) is None
    assert adapter_identity(str(tmp_path / "adapter")) is None


def test_the_identity_of_an_adapter_changes_with_its_bytes(tmp_path: Path) -> None:
    first = adapter_identity(str(publish(tmp_path / "a", config(), seed=1)))
    assert first == adapter_identity(str(publish(tmp_path / "b", config(), seed=1)))
    assert first != adapter_identity(str(publish(tmp_path / "c", config(), seed=2)))


def test_only_a_promoted_adapter_counts_as_a_finished_promotion(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "registry"))
    adapter = publish(tmp_path / "run", config())
    assert promoted_outcome(registry, DIRECTION, adapter) is None  # nothing registered yet

    def promote(candidate: float) -> None:
        promote_adapter(
            registry,
            DIRECTION,
            adapter,
            decide_promotion(candidate, None, 40.0, 0.5),
            judged_against=None,
            base_model="tiny",
            base_revision=None,
            data_manifest_sha256="0" * 64,
            config={},
            metrics={"chrf_pp": candidate},
        )

    promote(39.0)  # registered, refused: a re-run may still promote it
    assert promoted_outcome(registry, DIRECTION, adapter) is None
    promote(45.0)
    outcome = promoted_outcome(registry, DIRECTION, adapter)
    assert outcome is not None and (outcome.version, outcome.promoted) == ("v0002", True)
    assert outcome.adapter_uri == registry.adapter_uri(DIRECTION, "v0002")
    assert promoted_outcome(registry, DIRECTION, publish(tmp_path / "other", config(), seed=2)) is None
