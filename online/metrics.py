"""The reader's Prometheus metrics and the ASGI middleware that records every request.

One reader process keeps its metrics in memory and computes its gauges when Prometheus scrapes.
Under ``driftrec serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set before the processes
start) every process writes its values to files in that folder and a scrape, answered by any
one of them, reads them all (prometheus-client's multiprocess mode): counters and histograms
add up over the processes, and each gauge is reported per process (a ``pid`` label), set by
:meth:`ReaderMetrics.refresh` every second in each process, since a scrape reaches only one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driftrec.online.rowcache import RowCache

__all__ = ["ReaderMetrics", "MetricsMiddleware", "MULTIPROC_ENV", "CONTENT_TYPE_LATEST"]

logger = logging.getLogger(__name__)

# Fine buckets below 10 ms: the reader's target is p99 <= 5 ms.
_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


#: Set (to an empty folder) before the reader processes start: they share their metrics there.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ReaderMetrics:
    """One registry per app, so tests can build many apps in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        r = self.registry
        g: Literal["liveall"] = "liveall"  # a gauge per live process (ignored by a single process)
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
        self.model_loads = Gauge("driftrec_reader_model_loads", "Model versions loaded since start.", registry=r,
                                 multiprocess_mode=g)
        self.snapshot_age = Gauge("driftrec_reader_snapshot_age_seconds",
                                  "Age of the in-memory trending snapshot (-1: none yet).", registry=r,
                                  multiprocess_mode=g)
        self.model_info = Gauge("driftrec_reader_model_version", "1 for the model version served.",
                                ["version"], registry=r, multiprocess_mode=g)
        self.row_cache = Gauge("driftrec_reader_row_cache_lookups", "Shared rows looked up in the reader's "
                               "near cache since start (online/rowcache.py), by cache and outcome (hit, miss).",
                               ["cache", "outcome"], registry=r, multiprocess_mode=g)
        self.catalogue_items = Gauge("driftrec_reader_catalogue_items", "Catalogue records in the reader's "
                                     "in-memory view, by state (all; hidden: unavailable or deleted, never "
                                     "answered).", ["state"], registry=r, multiprocess_mode=g)
        self.catalogue_age = Gauge("driftrec_reader_catalogue_age_seconds", "Since the reader last read the "
                                   "catalogue's change feed (-1: never); past a second, hidden items may still "
                                   "be shown.", registry=r, multiprocess_mode=g)
        self._gauges: list[tuple[Gauge, Callable[[], float]]] = []
        self._version_shown: str | None = None
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
        """Gauges computed when Prometheus scrapes (every second, with several processes)."""
        self._watch(self.snapshot_age, lambda: -1.0 if (a := snapshot_age()) is None else a)
        self._watch(self.model_loads, lambda: float(loads()))
        self._model_version = model_version

    def watch_caches(self, caches: dict[str, RowCache]) -> None:
        """Hit and miss counts of the row caches, read when Prometheus scrapes."""
        for name, cache in caches.items():
            self._watch(self.row_cache.labels(name, "hit"), _reader(cache, "hits"))
            self._watch(self.row_cache.labels(name, "miss"), _reader(cache, "misses"))

    def watch_catalogue(self, items: Callable[[], int], hidden: Callable[[], int],
                        age: Callable[[], float | None]) -> None:
        """The catalogue view's size and freshness (online/catalogue.py), read when Prometheus scrapes."""
        self._watch(self.catalogue_items.labels("all"), lambda: float(items()))
        self._watch(self.catalogue_items.labels("hidden"), lambda: float(hidden()))
        self._watch(self.catalogue_age, lambda: -1.0 if (a := age()) is None else a)

    def _watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        if self.multiprocess:  # a callback's value never reaches the files the scrape reads
            self._gauges.append((gauge, read))
        else:
            gauge.set_function(read)

    def refresh(self) -> None:
        """Set the gauges from their sources and the served version's ``model_version`` series."""
        for gauge, read in self._gauges:
            gauge.set(read())
        version = getattr(self, "_model_version", lambda: None)()
        if version == self._version_shown:
            return
        if self.multiprocess:
            if self._version_shown is not None:  # series live in files: zero the old one
                self.model_info.labels(self._version_shown).set(0)
        else:
            self.model_info.clear()
        if version is not None:
            self.model_info.labels(version).set(1)
        self._version_shown = version

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's metrics, or every reader process's."""
        self.refresh()
        if not self.multiprocess:
            return generate_latest(self.registry)
        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone)
        return generate_latest(everyone)

    async def run(self, interval_s: float = 1.0) -> None:
        """With several processes: keep this process's gauges current until cancelled."""
        while True:
            try:
                self.refresh()
            except Exception as exc:  # a gauge's source failing must not end the loop
                logger.debug("metrics refresh failed: %s", exc)
            await asyncio.sleep(interval_s)

    def process_exited(self) -> None:
        """Drop this process's live gauges from the shared folder (its counters stay counted)."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())


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
