"""What the run URI and the registry already hold finished, so that no host does it again.

A direction whose adapter is published at the run URI (`adapters/<direction>/adapter/` with its manifest, or
the folder itself on a local disk) under the same training config is trained; an adapter whose very files the
registry holds is registered (and promoted, if PROMOTED points at it). The pipeline's tasks ask Prefect's cache
first (result records in the run folder, tasks/reuse.py); these answer when a record is missing: a task killed
after publishing and before Prefect wrote its result, or `prefect-results/` deleted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bhashaflow.config import PipelineConfig
from bhashaflow.core.folders import read_manifest
from bhashaflow.core.fsio import is_local, join, open_fs, read_json
from bhashaflow.core.hashing import sha256_file, sha256_json
from bhashaflow.core.names import ADAPTER_DIR, INCOMPLETE, TRAINING_CONFIG
from bhashaflow.registry.manifest import adapter_files
from bhashaflow.registry.promotion import PromotionOutcome
from bhashaflow.registry.store import Registry
from bhashaflow.training.loop import TrainResult


def published_files(adapter_uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, str] | None:
    """Name -> sha256 of each file of the adapter published at `adapter_uri`; None when none is (or one is half-way)."""
    fs, path = open_fs(adapter_uri, storage_options)
    if not is_local(fs):
        manifest = read_manifest(adapter_uri, storage_options)
        return None if manifest is None else {name: entry["sha256"] for name, entry in manifest["files"].items()}
    folder = Path(path)
    if not (folder / TRAINING_CONFIG).is_file() or (folder / INCOMPLETE).exists():
        return None
    return {entry.name: sha256_file(entry) for entry in sorted(folder.iterdir()) if entry.is_file()}


def adapter_identity(adapter_uri: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """A digest of the published adapter's files (None when none is published): equal exactly when the bytes are."""
    files = published_files(adapter_uri, storage_options)
    return None if files is None else sha256_json(files)


def published_training(
    config: PipelineConfig, direction: str, direction_uri: str, storage_options: dict[str, Any] | None = None
) -> TrainResult | None:
    """The training of `direction` that the run URI already holds finished, or None when it must (still) train.

    Finished means the adapter is published (its manifest written last) and its `training_config.json` records
    the same direction, base model and training section as `config`.

    Args:
        config: the run's config.
        direction: e.g. eng_Latn-hin_Deva.
        direction_uri: the direction's training folder at the run URI (`<run_uri>/adapters/<direction>`).
        storage_options: fsspec options for `direction_uri`.
    """
    adapter_uri = join(direction_uri, ADAPTER_DIR)
    files = published_files(adapter_uri, storage_options)
    if files is None or TRAINING_CONFIG not in files:
        return None
    resolved = read_json(join(adapter_uri, TRAINING_CONFIG), storage_options)
    same = (resolved.get("direction"), resolved.get("base_model"), resolved.get("config", {}).get("training"))
    if same != (direction, config.base_model, config.training.model_dump(mode="json")):
        return None
    known = {f.name for f in dataclasses.fields(TrainResult)}
    summary = {k: v for k, v in resolved.items() if k in known and k not in ("direction", "base_model", "files")}
    return TrainResult(
        adapter_dir=adapter_uri,
        files=sorted(files),
        adapter_uri=adapter_uri,
        direction=direction,
        base_model=config.base_model,
        objective=config.training.objective,
        reused=True,
        **summary,
    )


def promoted_outcome(registry: Registry, direction: str, adapter_dir: str | Path) -> PromotionOutcome | None:
    """The promotion of this very adapter (the same files, byte for byte) when the registry already serves it.

    None otherwise: a version that holds it unpromoted may be a promotion killed before it moved PROMOTED, which
    `promote_adapter` finishes (reusing that version when the metrics are the same).
    """
    found = registry.promoted(direction)
    if found is None or found.files != {src.name: sha256_file(src) for src in adapter_files(Path(adapter_dir))}:
        return None
    reason = f"promoted by an earlier run of this adapter ({found.version}); nothing registered or promoted again"
    return PromotionOutcome(found.version, True, reason, registry.adapter_uri(direction, found.version))
