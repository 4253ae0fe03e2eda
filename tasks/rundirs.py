"""Where a run's folders are (at the run URI, and this machine's working copy), and how its artifacts are keyed.

The run URI (`<workdir>/<run_name>/<run_id>`, any fsspec URL) is the source of truth: tasks hand each other
URIs inside it. A local directory is only a cache, and on an object store nothing in it is relied on by
another task: what a task needs it fetches from the run URI, verified.
"""

from __future__ import annotations

import re
from pathlib import Path

from bhashaflow.config import PipelineConfig
from bhashaflow.core.fsio import is_local, join, open_fs
from bhashaflow.core.names import ADAPTERS_DIR
from bhashaflow.core.settings import Settings


def local_run_dir(config: PipelineConfig, settings: Settings) -> Path:
    """The run folder itself when the workdir is local; else this machine's working copy under the cache dir.

    Training and generation need local files; a remote workdir (s3://) receives what they finish.
    """
    run_uri = config.run_uri()
    fs, path = open_fs(run_uri, settings.storage_options_for(run_uri))
    if is_local(fs):
        return Path(path)
    return Path(settings.cache_dir).expanduser() / "runs" / config.run_name / config.resolved_run_id()


def direction_uri(config: PipelineConfig, direction: str) -> str:
    """A direction's training folder at the run URI: `adapters/<direction>/{adapter,checkpoints,train_log.jsonl}`."""
    return join(config.run_uri(), ADAPTERS_DIR, direction)


def fetch_dir(config: PipelineConfig, settings: Settings, direction: str, what: str) -> Path:
    """Where this machine keeps a verified copy of something fetched from the run URI or the registry."""
    return local_run_dir(config, settings) / "fetched" / direction / what


def fetch_adapter(config: PipelineConfig, settings: Settings, direction: str, uri: str) -> str:
    """A verified local copy of the adapter a training task published at `uri` (the folder itself when local)."""
    from bhashaflow.core.folders import fetch_folder

    folder = fetch_folder(uri, fetch_dir(config, settings, direction, "candidate"), settings.storage_options_for(uri))
    if folder is None:
        raise FileNotFoundError(f"{uri}: no adapter is published there (a training task that did not finish?)")
    return str(folder)


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) namespaced by its parts."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
