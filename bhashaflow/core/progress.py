"""Progress of a run's long phases as plain events, for whatever watches them in this process (the CLI).

Tasks publish a `PhaseProgress` as they go (rows ingested, steps trained, sentences translated); the CLI
subscribes with `watching` and draws progress bars. Nothing subscribes on a Dask worker or a Prefect worker:
there the tasks' periodic log lines (every `training.log_every` steps) and the Prefect artifacts tell the same.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

Phase = Literal["ingest", "train", "evaluate"]
# Set on a log record that repeats what a progress bar shows, so a console that draws the bars can drop it.
PROGRESS_LOG_EXTRA = {"bhashaflow_progress": True}


@dataclass(frozen=True)
class PhaseProgress:
    """Where one long phase stands: a source being ingested, a direction training, a model translating."""

    phase: Phase
    name: str  # the source, the direction, or `<direction> <model>`
    done: int
    total: int | None  # None while unknown (a streamed source has no length)
    unit: str  # rows | steps | sentences
    note: str = ""  # what else a person watches, e.g. `loss 2.314, 1,840 tokens/s`
    finished: bool = False

    @property
    def key(self) -> str:
        return f"{self.phase} {self.name}"


Watcher = Callable[[PhaseProgress], None]
_watchers: list[Watcher] = []
_lock = threading.Lock()


def publish(event: PhaseProgress) -> None:
    """Hand `event` to every watcher of this process; a failing watcher never fails the work it watches."""
    with _lock:
        watchers = list(_watchers)
    for watcher in watchers:
        try:
            watcher(event)
        except Exception:  # a display must not stop training
            log.debug("progress watcher failed on %s", event.key, exc_info=True)


@contextmanager
def watching(watcher: Watcher) -> Iterator[None]:
    """Call `watcher` with every event published while the block runs (from any thread of this process)."""
    with _lock:
        _watchers.append(watcher)
    try:
        yield
    finally:
        with _lock:
            _watchers.remove(watcher)


def format_duration(seconds: float) -> str:
    """`0:04:07` for 247 seconds; `-` when unknown."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):  # NaN or unknown
        return "-"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
