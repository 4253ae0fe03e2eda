"""The one retry policy of sources and sinks, the one Retry-After parser, and the streaming read's retry loop.

A streaming read backs off with jitter, then resumes from the last record handed out; a sink's write is
retried by `connectors.sinks.with_retries` under the same policy.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from bhashaflow.config import SourceRetryConfig
from bhashaflow.core.records import Position, RawRecord
from connectors.base import SourceError, TransientSourceError

log = logging.getLogger(__name__)

_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a read or a write is retried: exponential backoff with equal jitter.

    `attempts` counts consecutive failures without progress in between: a stream that yields records
    between occasional drops is never given up on, and a write of one part is tried at most `attempts` times.
    The defaults live with their users: `SourceRetryConfig` for sources, `connectors.sinks.SINK_RETRY` for sinks.
    """

    attempts: int
    base_delay_s: float
    max_delay_s: float
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: SourceRetryConfig) -> RetryPolicy:
        """The policy of a pipeline's `source_retry` settings."""
        return cls(attempts=config.attempts, base_delay_s=config.base_delay_s, max_delay_s=config.max_delay_s)

    def delay(self, failure: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failure number `failure` (1-based); `retry_after_s` is a server's Retry-After."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (failure - 1))
        # "Equal jitter": never less than half the ceiling, so retries still back off, but spread out.
        wait = self.rng.uniform(ceiling / 2, ceiling)
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.max_delay_s))  # a server's hint never exceeds our cap
        return wait


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a `Retry-After` header asks to wait (RFC 9110): delta-seconds, fractional allowed, or an HTTP-date.

    None for a missing, negative or unreadable value (our own backoff applies); 0.0 for a date in the past.

    Args:
        value: the header's value.
        now: the current time, for an HTTP-date (the clock when None).
    """
    value = (value or "").strip()
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": a time in UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def one_line(exc: BaseException) -> str:
    """`Type: message` on a single line, for error messages that land in logs and run summaries."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def stream_with_retries(
    read_from: Callable[[Position | None], Iterator[RawRecord]],
    start: Position | None,
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    what: str | Callable[[], str],
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[RawRecord]:
    """Yield `read_from(start)`, reopening it at the last yielded position after each transient failure.

    Args:
        read_from: opens the source at a position (None: the beginning) and streams records after it.
        start: where to begin.
        policy: how often and how long to wait.
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
        failures = 1 if position is not resumed_at else failures + 1
        where = what() if callable(what) else what
        if failures >= policy.attempts:
            raise TransientSourceError(
                f"{where} failed {failures} times in a row; last error: {one_line(error)}"
            ) from error
        wait = policy.delay(failures, getattr(error, "retry_after_s", None))
        log.warning("%s: %s; retry %d of %d in %.1fs", where, one_line(error), failures, policy.attempts - 1, wait)
        sleep(wait)
