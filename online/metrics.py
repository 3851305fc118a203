"""The reader's Prometheus metrics and the ASGI middleware that records every request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driftrec.online.rowcache import RowCache

__all__ = ["ReaderMetrics", "MetricsMiddleware"]

logger = logging.getLogger(__name__)

# Fine buckets below 10 ms: the reader's target is p99 <= 5 ms.
_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ReaderMetrics:
    """One registry per app, so tests can build many apps in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("driftrec_reader_requests", "HTTP requests by endpoint, method and status.",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("driftrec_reader_request_seconds", "Request latency by endpoint.",
                                 ["endpoint"], buckets=_BUCKETS, registry=r)
        self.degraded = Counter("driftrec_reader_degraded_answers", "Answers served from the in-memory "
                                "snapshot because Redis was unreachable.", ["endpoint"], registry=r)
        self.shed = Counter("driftrec_reader_shed_answers", "Ranking requests answered from the in-memory "
                            "snapshot because the reader was overloaded, by endpoint and reason (in_flight: "
                            "reader_max_in_flight requests were already being worked on; deadline: ranking "
                            "took longer than reader_deadline_s).", ["endpoint", "reason"], registry=r)
        self.items_by_source = Counter("driftrec_reader_items_served", "Recommended items by the source "
                                       "that contributed most to them.", ["source"], registry=r)
        self.events = Counter("driftrec_reader_ingested_events", "Events POSTed, by outcome.",
                              ["outcome"], registry=r)
        self.served_records = Counter("driftrec_reader_served_records", "Answers recorded for click "
                                      "attribution (P:{r:R}), by outcome: written, dropped_full (queue "
                                      "bound), dropped_error (Redis did not take them).", ["outcome"], registry=r)
        self.forgets = Counter("driftrec_reader_forget_requests", "forget_user tombstones produced.", registry=r)
        self.model_loads = Gauge("driftrec_reader_model_loads", "Model versions loaded since start.", registry=r)
        self.snapshot_age = Gauge("driftrec_reader_snapshot_age_seconds",
                                  "Age of the in-memory trending snapshot (-1: none yet).", registry=r)
        self.model_info = Gauge("driftrec_reader_model_version", "1 for the model version served.",
                                ["version"], registry=r)
        self.row_cache = Gauge("driftrec_reader_row_cache_lookups", "Shared rows looked up in the reader's "
                               "near cache since start (online/rowcache.py), by cache and outcome (hit, miss).",
                               ["cache", "outcome"], registry=r)
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        key = (endpoint, method, status)
        child = self._children.get(key)
        if child is None:  # labels() costs a lock and a dict walk: cache the children
            child = (self.requests.labels(endpoint, method, str(status)), self.latency.labels(endpoint))
            self._children[key] = child
        child[0].inc()
        child[1].observe(seconds)

    def count_served(self, outcome: str, n: int) -> None:
        """Records of served answers by outcome (:class:`driftrec.online.served.ServedRecorder`)."""
        self.served_records.labels(outcome).inc(n)

    def watch(self, snapshot_age: Callable[[], float | None], model_version: Callable[[], str | None],
              loads: Callable[[], int]) -> None:
        """Gauges computed when Prometheus scrapes."""
        self.snapshot_age.set_function(lambda: -1.0 if (a := snapshot_age()) is None else a)
        self.model_loads.set_function(lambda: float(loads()))
        self._model_version = model_version

    def watch_caches(self, caches: dict[str, RowCache]) -> None:
        """Hit and miss counts of the row caches, read when Prometheus scrapes."""
        for name, cache in caches.items():
            self.row_cache.labels(name, "hit").set_function(_reader(cache, "hits"))
            self.row_cache.labels(name, "miss").set_function(_reader(cache, "misses"))

    def before_scrape(self) -> None:
        version = getattr(self, "_model_version", lambda: None)()
        self.model_info.clear()
        if version is not None:
            self.model_info.labels(version).set(1)


def _reader(cache: RowCache, attr: str) -> Callable[[], float]:
    return lambda: float(getattr(cache, attr))


class MetricsMiddleware:
    """Pure ASGI (no per-request task or body copy): endpoint label is the matched route's path."""

    def __init__(self, app: ASGIApp, metrics: ReaderMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._labels: dict[int, str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # Routes are unhashable (they define __eq__); the app's routes live as long as it does.
            endpoint = self._labels.get(id(route)) if route is not None else "unmatched"
            if endpoint is None:
                endpoint = self._labels[id(route)] = str(getattr(route, "path", "?")).replace(":path}", "}")
            self.metrics.observe(endpoint, scope["method"], status, time.perf_counter() - started)
