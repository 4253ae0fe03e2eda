"""Prometheus metrics of one app, on its own CollectorRegistry (two apps in a process never share counters)."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    """Requests by status, latency, batch sizes, queue depth, translated texts, adapter swaps and refusals,
    feedback and rate-limited feedback by client."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bhashaflow_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bhashaflow_request_latency_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "bhashaflow_batch_size", "Texts per generate call.", buckets=BATCH_BUCKETS, registry=self.registry
        )
        # The owner points it at the batcher: queue_depth.set_function(...).
        self.queue_depth = Gauge("bhashaflow_queue_depth", "Texts waiting for a batch.", registry=self.registry)
        self.out_of_memory = Counter(
            "bhashaflow_out_of_memory",
            "Batches that ran out of device memory: split (split in two and run again) or "
            "refused (a text that ran out alone; its request answered 503).",
            ["outcome"],
            registry=self.registry,
        )
        self.texts = Counter(
            "bhashaflow_texts_translated",
            "Texts translated, by direction and adapter version.",
            ["direction", "version"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "bhashaflow_adapter_swaps",
            "Adapters swapped in by a reload, by direction.",
            ["direction"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "bhashaflow_adapter_refusals",
            "Promoted adapter versions refused at load (tampered, broken), by direction.",
            ["direction"],
            registry=self.registry,
        )
        # Labelled by client name: configured clients, `token` and `anonymous` only, so the series stay few.
        self.feedback = Counter(
            "bhashaflow_feedback",
            "Feedback stored, by the API client that gave it.",
            ["client"],
            registry=self.registry,
        )
        self.feedback_limited = Counter(
            "bhashaflow_feedback_rate_limited",
            "Feedback refused with 429 by the per-client rate limit, by client.",
            ["client"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every response by status and times it, including errors raised before a route runs."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The route template, not the raw path: arbitrary paths must not create new series.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
