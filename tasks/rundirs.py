"""Where a run keeps its local working files, and how its Prefect artifacts are keyed."""

from __future__ import annotations

import re
from pathlib import Path

from bhashaflow.config import PipelineConfig
from bhashaflow.core.fsio import is_local, open_fs
from bhashaflow.core.settings import Settings


def local_run_dir(config: PipelineConfig, settings: Settings) -> Path:
    """The run folder itself when the workdir is local; else a local mirror under the cache dir.

    Training and generation need local files; a remote workdir (s3://) receives the results.
    """
    run_uri = config.run_uri()
    fs, path = open_fs(run_uri, settings.storage_options_for(run_uri))
    if is_local(fs):
        return Path(path)
    return Path(settings.cache_dir).expanduser() / "runs" / config.run_name / config.resolved_run_id()


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) namespaced by its parts."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
