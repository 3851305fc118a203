"""Load of a chaos run: clicks published at a steady rate, a reader polled, lag watched.

The publisher is the site's side: an idempotent producer whose request timeout outlasts a broker
outage, so a stopped broker delays the clicks rather than losing or duplicating them. The
poller runs in a thread of its own (plain HTTP/1.1), so a busy event loop elsewhere does not
show up as reader latency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from driftrec.oncall.lag import LagCollector, LagError
from driftrec.settings import Settings

__all__ = ["PublishStats", "publish_steady", "ReaderPoller", "wait_zero_lag", "Row"]

logger = logging.getLogger(__name__)

Row = tuple[bytes | None, bytes | None]  # (key, value)


@dataclass
class PublishStats:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    started: float = 0.0
    finished: float = 0.0
    #: (partition, offset) of every acked row, in the order of ``rows``.
    positions: list[tuple[int, int]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.finished - self.started


async def publish_steady(settings: Settings, rows: Iterable[Row], rate: float, *,
                         stats: PublishStats | None = None, request_timeout_s: float = 300.0,
                         topic: str | None = None, record_positions: bool = True,
                         max_seconds: float | None = None) -> PublishStats:
    """Send ``rows`` to the clicks topic at ``rate`` per second; wait for every ack.

    A row that fails after the producer's own retries is counted in ``failed`` and not sent
    again: sending it again could duplicate it, and a chaos run must not hide its losses.
    ``stats`` (given or new) is updated as it goes, so another task can watch ``sent``.
    ``rows`` may be a generator (a soak does not hold its million events); ``max_seconds``
    stops sending after that long; ``record_positions=False`` keeps no per-row offsets.
    """
    st = stats if stats is not None else PublishStats()
    ms = int(request_timeout_s * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5, max_batch_size=256 * 1024, request_timeout_ms=ms,
                                retry_backoff_ms=200, metadata_max_age_ms=10_000)
    await producer.start()
    topic = topic or settings.clicks_topic
    pending: list[asyncio.Future[Any]] = []
    st.started = time.monotonic()

    def settle(done: list[Any]) -> None:
        for res in done:
            if isinstance(res, BaseException):
                st.failed += 1
                if record_positions:
                    st.positions.append((-1, -1))
            else:
                st.acked += 1
                if record_positions:
                    st.positions.append((res.partition, res.offset))

    try:
        for key, value in rows:
            pending.append(await producer.send(topic, value, key=key))
            st.sent += 1
            if not record_positions and len(pending) >= 50_000:  # bound what is held
                settle(await asyncio.gather(*pending, return_exceptions=True))
                pending = []
            elapsed = time.monotonic() - st.started
            if max_seconds is not None and elapsed > max_seconds:
                break
            ahead = st.sent / rate - elapsed
            if ahead > 0:
                await asyncio.sleep(ahead)
        settle(await asyncio.gather(*pending, return_exceptions=True))
    finally:
        await producer.stop()
    st.finished = time.monotonic()
    return st


class ReaderPoller(threading.Thread):
    """GET ``/v1/recommendations/<user>?n=10`` at ``rate`` per second until :meth:`stop`.

    Outcomes: ``ok`` (200, fresh), ``degraded`` (200 with ``degraded: true``), ``5xx``, ``4xx``
    and ``error`` (no HTTP answer: refused, reset, timed out).
    """

    def __init__(self, base_url: str, users: Sequence[str], rate: float = 20.0, timeout_s: float = 2.0,
                 seed: int = 0) -> None:
        super().__init__(daemon=True, name="reader-poller")
        self.base_url = base_url.rstrip("/")
        self.users = list(users)
        self.rate = rate
        self.timeout_s = timeout_s
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.timeline: list[tuple[float, str, float]] = []  # (monotonic, outcome, latency s)
        self._halt = threading.Event()

    def one(self) -> str:
        user = self.rng.choice(self.users)
        url = f"{self.base_url}/v1/recommendations/{user}?n=10"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                body = json.loads(resp.read())
                return "degraded" if body.get("degraded") else "ok"
        except urllib.error.HTTPError as exc:
            return "5xx" if exc.code >= 500 else "4xx"
        except (OSError, ValueError):
            return "error"

    def run(self) -> None:
        period = 1.0 / self.rate
        nxt = time.monotonic()
        while not self._halt.is_set():
            t0 = time.monotonic()
            outcome = self.one()
            self.counts[outcome] += 1
            self.timeline.append((t0, outcome, time.monotonic() - t0))
            nxt = max(nxt + period, time.monotonic())
            self._halt.wait(max(0.0, nxt - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def summary(self) -> dict[str, Any]:
        lat = sorted(x for _, o, x in self.timeline if o in ("ok", "degraded"))
        total = len(self.timeline)

        def q(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None

        # The longest run of answers that were neither 200 nor degraded: a "storm" is a long one.
        worst = run = 0
        for _, o, _ in self.timeline:
            run = run + 1 if o in ("5xx", "error") else 0
            worst = max(worst, run)
        return {"requests": total, "ok_200": self.counts["ok"], "degraded_200": self.counts["degraded"],
                "reader_5xx": self.counts["5xx"], "reader_4xx": self.counts["4xx"],
                "no_answer": self.counts["error"], "longest_failure_run": worst,
                "p50_ms": q(0.5), "p99_ms": q(0.99)}

    def outcomes_between(self, t0: float, t1: float) -> dict[str, int]:
        c = Counter(o for t, o, _ in self.timeline if t0 <= t <= t1)
        return dict(c)


async def wait_zero_lag(bootstrap: str, group: str, topic: str, *, timeout_s: float = 300.0,
                        expect_end: dict[int, int] | None = None,
                        on_poll: Callable[[], None] | None = None) -> tuple[float | None, int | None]:
    """Poll the lag collector until the group's lag on ``topic`` is zero.

    ``expect_end`` (partition -> log-end offset) makes "zero" also require that the log holds
    at least that much, so a lag of zero before the last clicks arrived does not count. Returns
    (seconds it took, the last total lag seen); seconds is None on a time-out.
    """
    started = time.monotonic()
    last: int | None = None
    async with LagCollector(bootstrap, groups=[group], topics=[topic], timeout_s=5.0) as lag:
        while time.monotonic() - started < timeout_s:
            if on_poll is not None:
                on_poll()
            try:
                snap = await lag.collect()
            except LagError as exc:
                logger.info("lag collector: %s", exc)
                await asyncio.sleep(1.0)
                continue
            rows = [r for r in snap.partitions if r.topic == topic]
            last = sum(r.lag for r in rows)
            ends_ok = expect_end is None or all(
                any(r.partition == p and r.end_offset >= end for r in rows) for p, end in expect_end.items())
            if rows and last == 0 and ends_ok and all(r.committed is not None for r in rows):
                return time.monotonic() - started, 0
            await asyncio.sleep(0.5)
    return None, last
