"""Per-client rate limits: a token bucket per client name (configured clients and `anonymous`, so a bounded set)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """`burst` requests at once per key, refilled at `per_minute`; `per_minute` 0 means no limit.

    Args:
        per_minute: sustained requests a minute per key.
        burst: requests a key may make at once (the bucket's size).
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 0 or burst <= 0:
            raise ValueError("per_minute must be >= 0 and burst > 0")
        self.per_minute = per_minute
        self.burst = burst
        self._rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)

    def take(self, key: str) -> float:
        """0.0 when `key` may make a request now (which is counted); else the seconds until it may."""
        if self._rate == 0:
            return 0.0
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self._rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self._rate
