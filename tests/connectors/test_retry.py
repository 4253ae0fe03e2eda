"""Backoff and the resume-after-failure loop shared by the streaming connectors."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from bhashaflow.core.records import Position, RawRecord
from connectors.base import SourceError, TransientSourceError
from connectors.retry import Backoff, stream_with_retries


def test_backoff_doubles_with_jitter_up_to_the_cap_and_honours_retry_after() -> None:
    backoff = Backoff(attempts=6, base_delay=1.0, max_delay=5.0, rng=random.Random(0))
    for failure, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        waits = [backoff.delay(failure) for _ in range(200)]
        assert ceiling / 2 <= min(waits) and max(waits) <= ceiling
        assert max(waits) - min(waits) > ceiling / 4  # really jittered
    assert backoff.delay(1, hint=3.0) == 3.0
    assert backoff.delay(1, hint=60.0) == 5.0  # a server's hint never exceeds our own cap


class _FlakySource:
    """Yields 0..n-1, failing with `error` whenever a planned failure point is reached."""

    def __init__(self, n: int, fail_at: list[int], error: Exception) -> None:
        self.n, self.fail_at, self.error = n, list(fail_at), error
        self.opened_at: list[int] = []

    def read_from(self, position: Position | None) -> Iterator[RawRecord]:
        start = position["i"] if position else 0
        self.opened_at.append(start)
        for i in range(start, self.n):
            if self.fail_at and self.fail_at[0] == i:
                self.fail_at.pop(0)
                raise self.error
            yield RawRecord({"i": i + 1}, f"r:{i + 1}", row={"i": i})


def _stream(source: _FlakySource, attempts: int = 3) -> list[int]:
    sleeps: list[float] = []
    records = stream_with_retries(
        source.read_from, None, backoff=Backoff(attempts=attempts, base_delay=0.5, max_delay=1.0),
        is_transient=lambda exc: isinstance(exc, ConnectionError), what="source 'x'", sleep=sleeps.append,
    )
    out = [r.row["i"] for r in records if r.row is not None]
    assert all(0.25 <= s <= 1.0 for s in sleeps)
    return out


def test_failures_resume_at_the_last_yielded_record_and_progress_resets_the_count() -> None:
    source = _FlakySource(10, fail_at=[3, 3, 5, 7, 7], error=ConnectionError("reset"))
    assert _stream(source, attempts=3) == list(range(10))
    assert source.opened_at == [0, 3, 3, 5, 7, 7]


def test_consecutive_failures_give_up_with_a_transient_source_error() -> None:
    source = _FlakySource(10, fail_at=[4, 4, 4], error=ConnectionError("reset\nby peer"))
    with pytest.raises(TransientSourceError, match=r"^source 'x' failed 3 times in a row; last error: "
                                                   r"ConnectionError: reset by peer$"):
        _stream(source, attempts=3)


def test_errors_that_are_not_transient_are_not_retried() -> None:
    source = _FlakySource(10, fail_at=[2], error=ValueError("bad data"))
    with pytest.raises(ValueError, match="bad data"):
        _stream(source)
    source = _FlakySource(10, fail_at=[2], error=SourceError("gone"))
    with pytest.raises(SourceError, match="gone"):
        _stream(source)
    assert source.opened_at == [0]
