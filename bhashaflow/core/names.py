"""The one home of the file and folder names bhashaflow writes and reads (peft's constants.py is the model)."""

from __future__ import annotations

# Ingestion's run folder.
DATA_MANIFEST = "manifest.json"  # written last: no manifest, no finished ingestion
QUARANTINE = "quarantine.jsonl"  # rejected rows with their reasons
STAGING_DIR = "staging"  # staging/<source>/: one source's committed parts, resumable
STAGING_PROGRESS = "progress.json"  # a source's position and counts, replaced at every commit

# A training run folder.
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
TRAIN_LOG = "train_log.jsonl"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.safetensors"
OPTIMIZER_SKELETON = "optimizer.json"
RNG_STATE = "rng.safetensors"

# An adapter folder (peft's names) and what training adds to it.
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
TRAINING_CONFIG = "training_config.json"

# The registry.
VERSION_MANIFEST = "manifest.json"  # a version is complete once this lands
PROMOTED = "PROMOTED"

# A built-in base's folder.
BASE_MANIFEST = "bhashaflow_base.json"

# A folder published to a run URI is vouched for by `<folder>.manifest.json` beside it (core/folders.py).
FOLDER_MANIFEST_SUFFIX = ".manifest.json"
# A direction's training folder inside the run folder: adapters/<direction>/{adapter,checkpoints,train_log.jsonl}.
ADAPTERS_DIR = "adapters"

# Writers put this file in a folder first and remove it last: such a folder is never read as complete.
INCOMPLETE = ".incomplete"

# Formats that unpickle (run code) when loaded: never loaded, never registered.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib")
