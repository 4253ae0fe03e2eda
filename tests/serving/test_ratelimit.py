"""The per-client token bucket, on a clock the test moves."""

from __future__ import annotations

import pytest

from serving.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate_per_client() -> None:
    clock = Clock()
    limit = RateLimiter(per_minute=30, burst=3, clock=clock)  # one every 2 s
    assert [limit.take("web") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.take("web") == pytest.approx(2.0)
    assert limit.take("other") == 0.0  # every client has a bucket of its own
    clock.now += 1.0
    assert limit.take("web") == pytest.approx(1.0)  # half a token back: a refusal does not cost one
    clock.now += 1.0
    assert limit.take("web") == 0.0 and limit.take("web") == pytest.approx(2.0)
    clock.now += 3600
    assert [limit.take("web") for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # refills up to the burst, no more


def test_zero_is_no_limit_and_nonsense_is_refused() -> None:
    limit = RateLimiter(per_minute=0, burst=1)
    assert all(limit.take("web") == 0.0 for _ in range(1000))
    with pytest.raises(ValueError):
        RateLimiter(per_minute=-1, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(per_minute=1, burst=0)
