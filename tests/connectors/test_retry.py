"""The retry policy, the Retry-After parser and the resume-after-failure loop of the streaming connectors."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from bhashaflow.core.records import Position, RawRecord
from connectors.base import SourceError, TransientSourceError
from connectors.retry import RetryPolicy, parse_retry_after, stream_with_retries


def test_backoff_doubles_with_jitter_up_to_the_cap_and_honours_retry_after() -> None:
    backoff = RetryPolicy(attempts=6, base_delay_s=1.0, max_delay_s=5.0, rng=random.Random(0))
    for failure, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        waits = [backoff.delay(failure) for _ in range(200)]
        assert ceiling / 2 <= min(waits) and max(waits) <= ceiling
        assert max(waits) - min(waits) > ceiling / 4  # really jittered
    assert backoff.delay(1, retry_after_s=3.0) == 3.0
    assert backoff.delay(1, retry_after_s=60.0) == 5.0  # a server's hint never exceeds our own cap


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),  # an HTTP-date, 30 s after `now`
        ("Wednesday, 21-Oct-15 07:28:10 GMT", 10.0),  # the obsolete RFC 850 form
        ("Wed Oct 21 07:29:00 2015", 60.0),  # asctime
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # a date in the past: retry now
        ("-5", None),
        ("-1.5", None),
        ("soon", None),
        ("1.5s", None),
        ("nan", None),
        ("inf", None),
        ("1e3", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_reads_delta_seconds_and_http_dates(value: str | None, seconds: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == seconds


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
        source.read_from,
        None,
        policy=RetryPolicy(attempts=attempts, base_delay_s=0.5, max_delay_s=1.0),
        is_transient=lambda exc: isinstance(exc, ConnectionError),
        what="source 'x'",
        sleep=sleeps.append,
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
    with pytest.raises(
        TransientSourceError,
        match=r"^source 'x' failed 3 times in a row; last error: "
        r"ConnectionError: reset by peer$",
    ):
        _stream(source, attempts=3)


def test_errors_that_are_not_transient_are_not_retried() -> None:
    source = _FlakySource(10, fail_at=[2], error=ValueError("bad data"))
    with pytest.raises(ValueError, match="bad data"):
        _stream(source)
    source = _FlakySource(10, fail_at=[2], error=SourceError("gone"))
    with pytest.raises(SourceError, match="gone"):
        _stream(source)
    assert source.opened_at == [0]
