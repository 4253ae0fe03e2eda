"""The batcher's scheduling, with a stand-in for the model: coalescing, round-robin, deadlines, back-pressure."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from serving.batcher import Batcher, BatcherStopped, DeadlineExceeded, QueueFull

T = TypeVar("T")


class Recorder:
    """A run_batch that upper-cases texts and remembers every batch it was given."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[tuple[str, list[str]]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, key: str, texts: list[str]) -> list[str]:
        self.threads.add(threading.current_thread().name)
        self.batches.append((key, list(texts)))
        if key == self.fail_on:
            raise RuntimeError(f"adapter {key} broke")
        return [t.upper() for t in texts]


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro_fn(), 20))  # type: ignore[arg-type]


def _make(run: Recorder, **kw: float) -> Batcher:
    opts = {"max_batch_size": 4, "max_wait_ms": 0, "queue_limit": 64, **kw}
    batcher = Batcher(run, **opts)  # type: ignore[arg-type]
    batcher.start()
    return batcher


async def _until(cond: Callable[[], bool]) -> None:
    for _ in range(2000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


def _hold(batcher: Batcher) -> threading.Event:
    """Keep the worker busy until the returned event is set, so texts pile up in the queue."""
    release = threading.Event()
    batcher.call_in_worker(lambda: release.wait(10))
    return release


def test_waiting_texts_are_coalesced_up_to_the_batch_size() -> None:
    run = Recorder()
    batcher = _make(run, max_batch_size=8)

    async def main() -> list[list[str]]:
        release = _hold(batcher)
        tasks = [asyncio.create_task(batcher.submit("a", [f"t{i}"], 5)) for i in range(10)]
        await _until(lambda: batcher.queue_depth == 10)
        release.set()
        return await asyncio.gather(*tasks)

    results = _run(main)
    batcher.stop()
    assert results == [[f"T{i}"] for i in range(10)]
    assert [len(texts) for _, texts in run.batches] == [8, 2]
    assert run.threads == {"bhashaflow-generate"}


def test_a_lone_text_waits_max_wait_for_company() -> None:
    run = Recorder()
    batcher = _make(run, max_wait_ms=150)

    async def main() -> float:
        start = time.monotonic()
        assert await batcher.submit("a", ["x"], 5) == ["X"]
        return time.monotonic() - start

    elapsed = _run(main)
    batcher.stop()
    assert 0.14 <= elapsed < 2.0


def test_a_request_larger_than_a_batch_is_split_and_reassembled_in_order() -> None:
    run = Recorder()
    batcher = _make(run, max_batch_size=3)
    texts = [f"s{i}" for i in range(8)]
    assert _run(lambda: batcher.submit("a", texts, 5)) == [t.upper() for t in texts]
    batcher.stop()
    assert [b for _, b in run.batches] == [["s0", "s1", "s2"], ["s3", "s4", "s5"], ["s6", "s7"]]


def test_adapters_take_turns_so_a_busy_one_cannot_starve_a_quiet_one() -> None:
    run = Recorder()
    batcher = _make(run, max_batch_size=4)

    async def main() -> None:
        release = _hold(batcher)
        busy = asyncio.create_task(batcher.submit("busy", [f"b{i}" for i in range(20)], 5))
        quiet = asyncio.create_task(batcher.submit("quiet", ["q0", "q1"], 5))
        await _until(lambda: batcher.queue_depth == 22)
        release.set()
        await asyncio.gather(busy, quiet)

    _run(main)
    batcher.stop()
    assert [key for key, _ in run.batches] == ["busy", "quiet", "busy", "busy", "busy", "busy"]


def test_a_request_past_its_deadline_is_dropped_from_the_queue() -> None:
    run = Recorder()
    batcher = _make(run)

    async def main() -> None:
        release = _hold(batcher)
        with pytest.raises(DeadlineExceeded, match="0.1s"):
            await batcher.submit("a", ["late-1", "late-2"], 0.1)
        assert batcher.queue_depth == 0
        release.set()
        assert await batcher.submit("a", ["on time"], 5) == ["ON TIME"]

    _run(main)
    batcher.stop()
    assert run.batches == [("a", ["on time"])]


@pytest.mark.parametrize(("queue_limit", "queued", "asked", "hint"), [(150, 120, 80, 26), (1000, 996, 8, 60)])
def test_the_retry_hint_grows_with_the_queue_and_is_capped_at_a_minute(
    queue_limit: int, queued: int, asked: int, hint: int
) -> None:
    run = Recorder()
    batcher = _make(run, queue_limit=queue_limit)

    async def main() -> int:
        release = _hold(batcher)
        first = asyncio.create_task(batcher.submit("a", [str(i) for i in range(queued)], 30))
        await _until(lambda: batcher.queue_depth == queued)
        with pytest.raises(QueueFull) as refused:
            await batcher.submit("b", [str(i) for i in range(asked)], 30)
        release.set()
        await first
        return refused.value.retry_after_s

    # No batch has run yet, so one counts 0.5 s: (120 + 80) / 4 batches * 0.5 s + 0.5 = 25.5 -> 26 s;
    # (996 + 8) / 4 * 0.5 + 0.5 = 126 -> capped at 60 s.
    assert _run(main) == hint
    batcher.stop()


def test_a_full_queue_refuses_with_a_retry_hint() -> None:
    run = Recorder()
    batcher = _make(run, queue_limit=4)

    async def main() -> None:
        release = _hold(batcher)
        first = asyncio.create_task(batcher.submit("a", ["1", "2", "3"], 5))
        await _until(lambda: batcher.queue_depth == 3)
        with pytest.raises(QueueFull) as refused:
            await batcher.submit("b", ["4", "5"], 5)
        # No batch has run yet, so a batch counts 0.5 s: (3 queued + 2) / 4 per batch * 0.5 s, rounded up: 1 s.
        assert refused.value.retry_after_s == 1
        release.set()
        assert await first == ["1", "2", "3"]
        assert await batcher.submit("b", ["4", "5"], 5) == ["4", "5"]

    _run(main)
    batcher.stop()


def test_a_failing_batch_fails_only_its_requests() -> None:
    run = Recorder(fail_on="broken")
    batcher = _make(run)

    async def main() -> None:
        release = _hold(batcher)
        bad = asyncio.create_task(batcher.submit("broken", ["x"], 5))
        good = asyncio.create_task(batcher.submit("fine", ["y"], 5))
        await _until(lambda: batcher.queue_depth == 2)
        release.set()
        with pytest.raises(RuntimeError, match="adapter broken broke"):
            await bad
        assert await good == ["Y"]
        assert await batcher.submit("fine", ["z"], 5) == ["Z"]

    _run(main)
    batcher.stop()


def test_stop_fails_queued_requests_and_refuses_new_ones() -> None:
    run = Recorder()
    batcher = _make(run)

    async def main() -> None:
        release = _hold(batcher)
        queued = asyncio.create_task(batcher.submit("a", ["x"], 5))
        await _until(lambda: batcher.queue_depth == 1)
        stopping = asyncio.create_task(asyncio.to_thread(batcher.stop))
        with pytest.raises(BatcherStopped):
            await queued  # failed while the worker is still busy
        release.set()
        await stopping
        with pytest.raises(BatcherStopped):
            await batcher.submit("a", ["y"], 5)

    _run(main)
    assert batcher.queue_depth == 0


def test_calls_in_the_worker_run_between_batches_in_its_thread() -> None:
    run = Recorder()
    batcher = _make(run)
    assert batcher.call_in_worker(lambda: threading.current_thread().name).result(5) == "bhashaflow-generate"
    failing = batcher.call_in_worker(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    assert _run(lambda: batcher.submit("a", ["still works"], 5)) == ["STILL WORKS"]
    batcher.stop()


def test_a_batch_that_runs_out_of_memory_is_split_and_only_a_text_that_fails_alone_is_refused() -> None:
    import torch

    from serving.batcher import OutOfMemory

    batches: list[list[str]] = []
    outcomes: list[str] = []

    def small_device(key: str, texts: list[str]) -> list[str]:  # room for 6 characters at a time
        batches.append(list(texts))
        if sum(len(t) for t in texts) > 6:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [t.upper() for t in texts]

    batcher = Batcher(small_device, max_batch_size=8, max_wait_ms=0, queue_limit=64, on_out_of_memory=outcomes.append)
    batcher.start()

    async def scenario() -> list[list[str] | BaseException]:
        release = _hold(batcher)
        requests = [batcher.submit("k", texts, 10) for texts in (["aa", "bb"], ["a-much-longer-text", "c"], ["dd"])]
        tasks = [asyncio.ensure_future(r) for r in requests]
        await _until(lambda: batcher.queue_depth == 5)
        release.set()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    try:
        first, too_long, third = _run(scenario)
    finally:
        batcher.stop()
    assert first == ["AA", "BB"] and third == ["DD"]
    assert isinstance(too_long, OutOfMemory) and too_long.retry_after_s >= 1
    assert batches[0] == ["aa", "bb", "a-much-longer-text", "c", "dd"]
    assert ["a-much-longer-text"] in batches and ["c"] not in batches  # its request failed: "c" is not run for nothing
    assert outcomes.count("refused") == 1 and outcomes.count("split") >= 1
