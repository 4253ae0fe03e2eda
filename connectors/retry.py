"""Retrying a streaming read: back off with jitter, then resume from the last record handed out."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bhashaflow.core.records import Position, RawRecord
from connectors.base import SourceError, TransientSourceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """How often and how patiently a connector retries a failing read.

    `attempts` counts consecutive failures without a record in between: a long stream that makes progress
    between occasional drops is never given up on.
    """

    attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 30.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, failure: int, hint: float | None = None) -> float:
        """Seconds to wait before retry number `failure` (1-based); `hint` is a server's Retry-After."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (failure - 1))
        # "Equal jitter": never less than half the ceiling, so retries still back off, but spread out.
        wait = self.rng.uniform(ceiling / 2, ceiling)
        if hint is not None:
            wait = max(wait, min(hint, self.max_delay))
        return wait


def one_line(exc: BaseException) -> str:
    """`Type: message` on a single line, for error messages that land in logs and run summaries."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def stream_with_retries(
    read_from: Callable[[Position | None], Iterator[RawRecord]],
    start: Position | None,
    *,
    backoff: Backoff,
    is_transient: Callable[[BaseException], bool],
    what: str | Callable[[], str],
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[RawRecord]:
    """Yield `read_from(start)`, reopening it at the last yielded position after each transient failure.

    Args:
        read_from: opens the source at a position (None: the beginning) and streams records after it.
        start: where to begin.
        backoff: retry policy.
        is_transient: whether an exception is worth a retry; others propagate unchanged.
        what: names the source and place in messages, e.g. "source 'web': GET https://x/pairs.jsonl", or a
            callable giving it when a message is written (the place may change while streaming).
        sleep: waits between attempts (tests may pass a recorder).
    """
    position = start
    failures = 0
    while True:
        resumed_at = position
        records = read_from(position)
        try:
            for record in records:
                position = record.position
                yield record
            return
        except SourceError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            error = exc
        finally:
            # Release the failed attempt's connection before waiting, not whenever it is collected.
            close = getattr(records, "close", None)
            if close is not None:
                close()
        if position is not resumed_at:
            failures = 0
        failures += 1
        where = what() if callable(what) else what
        if failures >= backoff.attempts:
            raise TransientSourceError(
                f"{where} failed {failures} times in a row; last error: {one_line(error)}"
            ) from error
        wait = backoff.delay(failures, getattr(error, "retry_after", None))
        log.warning("%s: %s; retry %d of %d in %.1fs", where, one_line(error), failures, backoff.attempts - 1, wait)
        sleep(wait)
