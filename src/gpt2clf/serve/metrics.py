"""Prometheus metrics of one app: requests by route and status, latency, batch sizes, queue depth.

:class:`ServiceMetrics` keeps its own registry, so several apps can live in one process;
:class:`MetricsMiddleware` (outermost, pure ASGI) counts every response, 401s and 413s included,
under a bounded set of route labels. Labels are route templates and statuses only: never a
header, a text or a key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gpt2clf.serve.extra import missing_extra

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
except ImportError as err:  # pragma: no cover - exercised by a test that hides the extra
    raise missing_extra(err) from err

__all__ = ["MetricsMiddleware", "ServiceMetrics"]


class ServiceMetrics:
    """Prometheus metrics in a registry of their own, so several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("gpt2clf_http_requests", "HTTP requests answered, by route and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("gpt2clf_http_request_duration_seconds", "Time from request to response.",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch_texts = Histogram("gpt2clf_batch_texts", "Texts per model call.", registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.batch_requests = Histogram("gpt2clf_batch_requests", "Requests merged into one model call.",
                                        registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.queue_depth = Gauge("gpt2clf_queue_depth", "Requests waiting for the model.", registry=self.registry)
        self.rejected = Counter("gpt2clf_rejected_requests", "Requests refused or dropped by the batcher.",
                                ["reason"], registry=self.registry)

    def record_batch(self, texts: int, requests: int) -> None:
        """One model call of the batcher: how many texts, merged from how many requests."""
        self.batch_texts.observe(texts)
        self.batch_requests.observe(requests)


class MetricsMiddleware:
    """Counts every response by route template and status, and times it (pure ASGI)."""

    def __init__(self, app: Any, metrics: ServiceMetrics, routes: set[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        # Known paths by name, everything else as one label: fuzzers and scanners must not
        # create a time series per random URL.
        route = path if path in self.routes else ("/static" if path.startswith("/static/") else "other")
        status = 500
        started = time.perf_counter()

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(scope.get("method", ""), route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

