"""Dynamic batching: texts queued per adapter, coalesced into one generate call, served round-robin.

The asyncio side only queues texts and awaits a future; one worker thread owns the model and runs
every generate call and every model change (loading or unloading an adapter), so torch is never
entered from two threads and no lock is held around a whole request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bhashaflow.core.memory import is_out_of_memory, release_memory

log = logging.getLogger(__name__)

T = TypeVar("T")

RunBatch = Callable[[str, list[str]], list[str]]


class QueueFull(Exception):
    """The bounded queue has no room for the request's texts."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the queue is full; retry in {retry_after_s}s")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """The request was not translated before its deadline."""


class BatcherStopped(Exception):
    """The batcher is shutting down or its worker died."""


class OutOfMemory(Exception):
    """A text of the request ran out of device memory even in a batch of its own."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            f"out of device memory translating a text of this request, even alone; retry in {retry_after_s}s"
        )
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class _Job:
    """One request: its texts fill `results` as the batches that carry them finish."""

    key: str
    texts: list[str]
    future: asyncio.Future[list[str]]
    loop: asyncio.AbstractEventLoop
    results: list[str | None] = field(init=False)
    remaining: int = field(init=False)
    abandoned: bool = False  # timed out or cancelled: its texts are no longer wanted

    def __post_init__(self) -> None:
        self.results = [None] * len(self.texts)
        self.remaining = len(self.texts)


@dataclass(frozen=True, slots=True)
class _Slot:
    job: _Job
    index: int
    enqueued_at: float


@dataclass(frozen=True, slots=True)
class _Batch:
    key: str
    slots: list[_Slot]


@dataclass(frozen=True, slots=True)
class _Control:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class Batcher:
    """Coalesces queued texts per key (one key per loaded adapter) into batches for `run_batch`.

    A key's queue is ready when it holds `max_batch_size` texts or its oldest text has waited
    `max_wait_ms`; ready keys are served least-recently-served first, so a busy adapter cannot
    starve a quiet one. With several workers, batches of different keys run at once and a key's
    batches one after another (a key's next batch fills while its current one runs).

    Args:
        run_batch: translates texts with the adapter named by the key; runs in the worker thread.
        max_batch_size: most texts per call.
        max_wait_ms: longest a text waits for others to fill its batch.
        queue_limit: most texts waiting (not yet in a batch); more are refused with QueueFull.
        on_batch: told the size of every batch run (for metrics); runs in the worker thread.
        on_out_of_memory: told `split` when a batch ran out of memory and is split in two, `refused` when a text
            ran out of memory alone and its request fails with OutOfMemory (for metrics); runs in the worker thread.
        workers: worker threads (1: every batch and control call in one thread, one at a time).
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        queue_limit: int,
        on_batch: Callable[[int], None] | None = None,
        on_out_of_memory: Callable[[str], None] | None = None,
        workers: int = 1,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_limit = queue_limit
        self._on_batch = on_batch
        self._on_out_of_memory = on_out_of_memory
        self._cond = threading.Condition()
        # Per-key queues, least recently served first.
        self._queues: OrderedDict[str, deque[_Slot]] = OrderedDict()
        self._controls: deque[_Control] = deque()
        self._depth = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self.workers = max(1, workers)
        self._running: set[str] = set()  # keys with a batch in a worker
        self._batch_seconds = 0.5  # running mean of a batch's duration, for Retry-After

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread."""
        names = (
            ["bhashaflow-generate"] if self.workers == 1 else [f"bhashaflow-generate-{i}" for i in range(self.workers)]
        )
        self._threads = [threading.Thread(target=self._work, name=name, daemon=True) for name in names]
        self._thread = self._threads[0]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking work, fail what is still queued, and wait for the running batch to end."""
        with self._cond:
            self._stopping = True
            queued = [slot for q in self._queues.values() for slot in q]
            self._queues.clear()
            self._depth = 0
            controls = list(self._controls)
            self._controls.clear()
            self._cond.notify_all()
        for job in {slot.job for slot in queued}:
            _settle(job, BatcherStopped("the service is shutting down"))
        for control in controls:
            control.future.set_exception(BatcherStopped("the service is shutting down"))
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def queue_depth(self) -> int:
        """Texts waiting for a batch."""
        return self._depth

    # --- the asyncio side ---------------------------------------------------------------------------

    async def submit(self, key: str, texts: list[str], timeout_s: float) -> list[str]:
        """Queue `texts` for the adapter `key` and wait for their translations, in order.

        Raises QueueFull when there is no room, DeadlineExceeded after `timeout_s` (the texts still
        waiting are removed from the queue), and whatever `run_batch` raised for their batch.
        """
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        job = _Job(key, list(texts), loop.create_future(), loop)
        now = time.monotonic()
        with self._cond:
            if self._stopping or self._thread is None:
                raise BatcherStopped("the service is not running")
            if self._depth + len(texts) > self.queue_limit:
                raise QueueFull(self._retry_after_locked(len(texts)))
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = deque()
            queue.extend(_Slot(job, i, now) for i in range(len(texts)))
            self._depth += len(texts)
            self._cond.notify_all()
        try:
            return await asyncio.wait_for(job.future, timeout_s)
        except TimeoutError:
            self._abandon(job)
            raise DeadlineExceeded(f"not translated within {timeout_s:g}s") from None
        except asyncio.CancelledError:
            self._abandon(job)  # the client went away: free its place in the queue
            raise

    def call_in_worker(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `fn` in the worker thread between two batches (before any further batch)."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                fut.set_exception(BatcherStopped("the service is shutting down"))
                return fut
            self._controls.append(_Control(fn, fut))
            self._cond.notify_all()
        return fut

    def _abandon(self, job: _Job) -> None:
        with self._cond:
            job.abandoned = True
            queue = self._queues.get(job.key)
            if queue:
                kept = deque(s for s in queue if s.job is not job)
                self._depth -= len(queue) - len(kept)
                if kept:
                    self._queues[job.key] = kept
                else:
                    del self._queues[job.key]

    def _retry_after_locked(self, extra: int) -> int:
        # Roughly how long until the queue drains enough for this request.
        batches = (self._depth + extra) / self.max_batch_size
        return max(1, min(60, round(batches * self._batch_seconds + 0.5)))

    # --- the worker thread --------------------------------------------------------------------------

    def _next_work(self) -> _Batch | _Control | None:
        """Wait for a control call or a ready batch; None when stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                if self._controls:
                    return self._controls.popleft()
                now = time.monotonic()
                wake_at: float | None = None
                for key, queue in self._queues.items():
                    if key in self._running:
                        continue  # its running batch ends with a notify
                    ready_at = queue[0].enqueued_at + self.max_wait_s
                    if len(queue) >= self.max_batch_size or ready_at <= now:
                        slots = [queue.popleft() for _ in range(min(self.max_batch_size, len(queue)))]
                        self._depth -= len(slots)
                        self._running.add(key)
                        if queue:
                            self._queues.move_to_end(key)  # served: to the back of the round
                        else:
                            del self._queues[key]
                        return _Batch(key, slots)
                    wake_at = ready_at if wake_at is None else min(wake_at, ready_at)
                self._cond.wait(None if wake_at is None else max(0.0, wake_at - now))

    def _work(self) -> None:
        while (work := self._next_work()) is not None:
            if isinstance(work, _Batch):
                try:
                    self._run(work.key, work.slots)
                finally:
                    with self._cond:
                        self._running.discard(work.key)
                        self._cond.notify_all()
            elif work.future.set_running_or_notify_cancel():
                try:
                    work.future.set_result(work.fn())
                except BaseException as exc:  # noqa: BLE001 - handed to whoever asked for the call
                    work.future.set_exception(exc)

    def _run(self, key: str, slots: list[_Slot]) -> None:
        slots = [s for s in slots if not s.job.abandoned]
        if not slots:
            return
        started = time.monotonic()
        try:
            outputs = self._run_batch(key, [s.job.texts[s.index] for s in slots])
            if len(outputs) != len(slots):
                raise RuntimeError(f"run_batch returned {len(outputs)} outputs for {len(slots)} texts")
        except Exception as exc:  # noqa: BLE001 - the batch's requests fail, the worker lives on
            if is_out_of_memory(exc):
                outputs = None  # split below, outside this block: its traceback holds the failed batch's tensors
            else:
                log.exception("batch of %d texts for %s failed", len(slots), key)
                self._fail(slots, exc)
                return
        finally:
            elapsed = time.monotonic() - started
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
        if outputs is None:
            self._out_of_memory(key, slots)
            return
        if self._on_batch is not None:
            self._on_batch(len(slots))
        for slot, out in zip(slots, outputs, strict=True):
            job = slot.job
            job.results[slot.index] = out
            job.remaining -= 1
            if job.remaining == 0 and not job.abandoned:
                _settle(job, [r if r is not None else "" for r in job.results])

    def _out_of_memory(self, key: str, slots: list[_Slot]) -> None:
        """Split a batch that ran out of memory and run both halves; a text that runs out alone fails its request."""
        release_memory()
        if len(slots) == 1:
            log.warning(
                "a text of %d characters for %s ran out of memory alone", len(slots[0].job.texts[slots[0].index]), key
            )
            with self._cond:
                retry_after = self._retry_after_locked(0)
            self._fail(slots, OutOfMemory(retry_after))
            self._tell_out_of_memory("refused")
            return
        log.warning("a batch of %d texts for %s ran out of memory: splitting it", len(slots), key)
        self._tell_out_of_memory("split")
        half = len(slots) // 2
        self._run(key, slots[:half])
        self._run(key, slots[half:])  # _run drops the slots of requests the first half failed

    def _tell_out_of_memory(self, outcome: str) -> None:
        if self._on_out_of_memory is not None:
            self._on_out_of_memory(outcome)

    def _fail(self, slots: list[_Slot], exc: BaseException) -> None:
        for job in {s.job for s in slots}:
            self._abandon(job)  # its other texts need not be translated
            _settle(job, exc)


def _settle(job: _Job, outcome: list[str] | BaseException) -> None:
    """Resolve the job's future from the worker thread, on its event loop."""

    def settle() -> None:
        if job.future.done():
            return
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:
        pass  # the event loop is closed: nobody is waiting any more
