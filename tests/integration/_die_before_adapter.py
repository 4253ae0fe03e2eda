"""A `dask worker --preload`: the trainer on this worker dies on the spot (os._exit, no cleanup) as it is about to
publish the adapter, after its last checkpoint is published: a kill in the gap that test_rerun_reuse resumes.

It wraps the publisher without changing what anything writes before it.
"""

from __future__ import annotations

import os
from pathlib import Path

from bhashaflow.training import checkpoints

HARD_EXIT = 86


def _die(self: checkpoints.RunMirror, folder: Path) -> str:
    os._exit(HARD_EXIT)


checkpoints.RunMirror.push_adapter = _die  # type: ignore[method-assign]
