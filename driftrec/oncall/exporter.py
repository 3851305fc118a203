"""The on-call exporter: lag from the broker, health, canary and attribution, kept for the dashboard."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis

from driftrec.errors import DriftrecError
from driftrec.keys import Keys
from driftrec.oncall.attribution import Attributor, Credit
from driftrec.oncall.canary import (
    CanaryResult,
    FallbackProbe,
    FreshnessCanary,
    ReaderProbe,
    RedisProbe,
)
from driftrec.oncall.experiment_stats import ExperimentCollector, read_experiments, summarise
from driftrec.oncall.lag import LagCollector, LagError, LagSnapshot
from driftrec.oncall.lagmath import Series, quantile, rate_per_s
from driftrec.oncall.metrics import ExporterMetrics
from driftrec.settings import Settings

__all__ = ["ExporterConfig", "Exporter", "default_groups"]

logger = logging.getLogger(__name__)
# One line per health probe every few seconds would drown the exporter's own log.
logging.getLogger("httpx").setLevel(logging.WARNING)
# The timestamp reader re-assigns partitions on every lagging cycle; aiokafka logs each one.
logging.getLogger("aiokafka.consumer.consumer").setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class ExporterConfig:
    """What one exporter watches and which optional parts run."""

    groups: tuple[str, ...]
    reader_url: str | None = None
    worker_metrics_url: str | None = None
    canary: bool = True
    attribution: bool = True
    #: Seconds of history kept for the sparklines.
    horizon_s: float = 600.0
    #: Window of the freshness quantiles and of the rates.
    freshness_window_s: float = 300.0
    rate_window_s: float = 30.0


class Exporter:
    """Runs the collection loops; :meth:`state` is what ``/api/state`` serves."""

    def __init__(self, settings: Settings, config: ExporterConfig) -> None:
        self.settings = settings
        self.config = config
        self.keys = Keys(settings.key_prefix)
        self.latest: LagSnapshot | None = None
        self.metrics = ExporterMetrics(lambda: self.latest)
        self.series: dict[str, Series] = {}
        self.freshness: deque[tuple[float, float, bool, str]] = deque(maxlen=2000)
        self.health: dict[str, dict[str, Any]] = {}
        self.info: dict[str, Any] = {"model_version": None, "last_event_time": None, "applied_events": None}
        self.credits: dict[tuple[str, str], int] = {}
        self.unattributed: dict[str, int] = {}
        #: The latest figures of every defined experiment (driftrec.oncall.experiment_stats.summarise).
        self.experiments: list[dict[str, Any]] = []
        self._experiments_error = ""
        self.metrics.registry.register(ExperimentCollector(lambda: self.experiments))
        self.redis = aioredis.Redis.from_url(settings.redis, socket_timeout=2, socket_connect_timeout=2)
        self.http = httpx.AsyncClient()
        self._collector: LagCollector | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._loop(), name="lag"))
        if self.config.canary:
            self._tasks.append(asyncio.create_task(self._canary(), name="canary"))
        if self.config.attribution:
            self._tasks.append(asyncio.create_task(self._attribution(), name="attribution"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._collector is not None:
            await self._collector.close()
        await self.http.aclose()
        await self.redis.aclose()

    @property
    def attribution_group(self) -> str:
        return f"{self.settings.consumer_group}.attribution"

    # --- lag and health -------------------------------------------------------------------
    def _set_health(self, name: str, status: str, detail: str = "") -> None:
        prev = self.health.get(name)
        since = prev["since"] if prev and prev["status"] == status else time.time()
        self.health[name] = {"status": status, "detail": detail, "since": since}
        self.metrics.up.labels(name).set(1 if status == "ok" else 0)

    async def collect_once(self) -> None:
        s = self.settings
        started = time.perf_counter()
        try:
            if self._collector is None:
                # The attribution consumer is watched too: its lag is how late the click counts are.
                groups = list(self.config.groups) + ([self.attribution_group] if self.config.attribution else [])
                collector = LagCollector(s.bootstrap, groups=list(dict.fromkeys(groups)), topics=[s.clicks_topic],
                                         extra_topics=[s.dead_letter_topic], timeout_s=5.0)
                await collector.start()
                self._collector = collector
            snap = await self._collector.collect()
        except LagError as exc:
            if self.health.get("kafka", {}).get("status") != "down":
                logger.warning("broker collection failing: %s", exc)
            self.metrics.scrape_ok.set(0)
            self._set_health("kafka", "down", str(exc)[:300])
            if self._collector is not None:
                await self._collector.close()
                self._collector = None
        else:
            self.metrics.scrape_ok.set(1)
            self.metrics.scrape_seconds.observe(time.perf_counter() - started)
            self._set_health("kafka", "ok", f"{len(snap.logs)} partitions watched")
            self.latest = snap
            self._record(snap)
        await self._redis_once()
        await self._experiments_once()
        await self._worker_health()
        if self.config.reader_url:
            self._set_health("reader", *await self._http_ok(f"{self.config.reader_url.rstrip('/')}/readyz"))

    def _series(self, name: str) -> Series:
        if name not in self.series:
            self.series[name] = Series(self.config.horizon_s)
        return self.series[name]

    def _record(self, snap: LagSnapshot) -> None:
        s, t = self.settings, snap.taken_at
        consumed = 0
        for row in snap.partitions:
            tag = f"{row.group}|{row.topic}|{row.partition}"
            self._series(f"lag|{tag}").add(t, row.lag)
            if row.lag_seconds is not None:
                self._series(f"lagsec|{tag}").add(t, row.lag_seconds)
            if row.group == s.consumer_group and row.topic == s.clicks_topic and row.committed is not None:
                consumed += row.committed
        produced = sum(hi for (topic, _), (_, hi) in snap.logs.items() if topic == s.clicks_topic)
        dead = sum(hi for (topic, _), (_, hi) in snap.logs.items() if topic == s.dead_letter_topic)
        self._series("produced_total").add(t, produced)
        self._series("consumed_total").add(t, consumed)
        self._series("dead_total").add(t, dead)
        for name in ("produced", "consumed", "dead"):
            r = rate_per_s(self._series(f"{name}_total").points(), self.config.rate_window_s)
            if r is not None:
                self._series(f"{name}_per_s").add(t, r)

    async def _redis_once(self) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(self.keys.model_current)
            pipe.hmget(self.keys.meta, "last_event_time", "applied_events")
            version, (last, applied) = await pipe.execute()
        except (aioredis.RedisError, OSError) as exc:
            self._set_health("redis", "down", str(exc)[:300])
            return
        self._set_health("redis", "ok")
        version = version.decode() if isinstance(version, bytes) else version
        if version != self.info["model_version"]:
            self.metrics.model_info.clear()
            if version:
                self.metrics.model_info.labels(version).set(1)
        self.info["model_version"] = version
        self.info["last_event_time"] = float(last) if last else None
        self.info["applied_events"] = int(applied) if applied else None
        if last:
            age = time.time() - float(last)
            self.metrics.last_event_age.set(age)
            self._series("last_event_age").add(time.time(), age)
        if applied:
            self.metrics.applied_events.set(int(applied))

    async def _experiments_once(self) -> None:
        """Experiments' figures from their counters in Redis (the readers and the attribution write them)."""
        s = self.settings
        types = sorted(s.event_types)
        try:
            found = await read_experiments(self.redis, s.key_prefix, types, s.experiments_file)
        except (aioredis.RedisError, OSError) as exc:
            logger.debug("experiments not read: %s", exc)
            return
        except DriftrecError as exc:  # a bad experiments file: the rest of the cycle must still run
            if str(exc) != self._experiments_error:
                logger.error("experiments not reported: %s", exc)
            self._experiments_error = str(exc)
            return
        self._experiments_error = ""
        self.experiments = [summarise(exp, counts, types) for exp, counts in found]

    async def _http_ok(self, url: str) -> tuple[str, str]:
        try:
            resp = await self.http.get(url, timeout=1.5)
        except httpx.HTTPError as exc:
            return "down", f"{url}: {type(exc).__name__}"
        return ("ok", "") if resp.status_code == 200 else ("down", f"{url}: HTTP {resp.status_code}")

    async def _worker_health(self) -> None:
        """Down when the group has no member; degraded while it rebalances or its /metrics is silent."""
        snap = self.latest
        if snap is None or self.health.get("kafka", {}).get("status") != "ok":
            self._set_health("worker", "unknown", "Kafka unreachable: group membership unknown")
            return
        info = snap.groups.get(self.settings.consumer_group)
        if info is None or info.members == 0:
            self._set_health("worker", "down", f"group {self.settings.consumer_group} has no members "
                             f"({info.state if info else 'unknown'})")
            return
        if self.config.worker_metrics_url:
            status, detail = await self._http_ok(self.config.worker_metrics_url)
            if status != "ok":
                self._set_health("worker", "degraded", f"in group, but metrics silent: {detail}")
                return
        if info.state != "Stable":
            self._set_health("worker", "degraded", f"group {info.state}, {info.members} member(s)")
            return
        self._set_health("worker", "ok", f"{info.members} member(s), {info.state}")

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.collect_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad cycle must not end the exporter
                logger.exception("collection cycle failed")
            await asyncio.sleep(max(0.0, self.settings.lag_interval_s - (time.monotonic() - started)))

    # --- canary ---------------------------------------------------------------------------
    def _on_canary(self, r: CanaryResult) -> None:
        self.freshness.append((r.published_at, r.latency_s, r.seen, r.path))
        self.metrics.freshness.labels(r.path).observe(r.latency_s)
        if r.seen:
            self.metrics.canary_last_success.set(time.time())
        else:
            self.metrics.canary_timeouts.inc()

    async def _canary(self) -> None:
        from driftrec.publisher import Publisher

        s = self.settings
        probes: list[Any] = []
        if self.config.reader_url:
            probes.append(ReaderProbe(self.http, self.config.reader_url, s.canary_user_id, s.canary_item_id))
        probes.append(RedisProbe(self.redis, self.keys, s.canary_user_id, s.canary_item_id))
        while True:
            try:
                async with Publisher(s) as pub:
                    async def send(event: dict[str, Any]) -> None:
                        await pub.send(event)
                        await pub.flush()

                    canary = FreshnessCanary(send, FallbackProbe(*probes), user=s.canary_user_id,
                                             item=s.canary_item_id, deadline_s=max(30.0, s.canary_interval_s * 6))
                    await canary.run(s.canary_interval_s, self._on_canary)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("canary publisher failed (%r); retrying", exc)
                await asyncio.sleep(s.canary_interval_s)

    # --- attribution ----------------------------------------------------------------------
    def _on_credit(self, credit: Credit) -> None:
        if credit.source is None:
            reason = credit.reason or "unknown"
            self.unattributed[reason] = self.unattributed.get(reason, 0) + 1
            self.metrics.unattributed.labels(reason).inc()
            return
        strategy = credit.strategy or "unknown"
        key = (strategy, credit.source)
        self.credits[key] = self.credits.get(key, 0) + 1
        self.metrics.attributed.labels(strategy, credit.source, credit.click.type).inc()

    async def _attribution(self) -> None:
        s = self.settings
        while True:
            attributor = Attributor(s.bootstrap, s.clicks_topic, self.attribution_group, self.redis, self.keys,
                                    self._on_credit)
            try:
                await attributor.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("attribution consumer failed (%r); retrying", exc)
                await asyncio.sleep(5)

    # --- the dashboard's view -------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything the dashboard draws, as plain JSON-able data."""
        now = time.time()
        snap = self.latest
        rows = []
        for row in snap.partitions if snap else []:
            tag = f"{row.group}|{row.topic}|{row.partition}"
            rows.append({
                "group": row.group, "topic": row.topic, "partition": row.partition,
                "committed": row.committed, "end": row.end_offset, "lag": row.lag,
                "lag_seconds": row.lag_seconds,
                "lag_series": _pts(self.series.get(f"lag|{tag}")),
                "lag_seconds_series": _pts(self.series.get(f"lagsec|{tag}")),
            })
        recent = [(t, lat, ok, path) for t, lat, ok, path in self.freshness
                  if t >= now - self.config.freshness_window_s]
        lats = [lat for _, lat, _, _ in recent]
        return {
            "now": now,
            "settings": {"consumer_group": self.settings.consumer_group, "clicks_topic": self.settings.clicks_topic,
                         "dead_letter_topic": self.settings.dead_letter_topic,
                         "interval_s": self.settings.lag_interval_s},
            "snapshot_at": snap.taken_at if snap else None,
            "health": self.health,
            "groups": [{"group": g.group, "state": g.state, "members": g.members}
                       for g in (snap.groups.values() if snap else [])],
            "partitions": rows,
            "throughput": {name: {"last": _last(self.series.get(f"{name}_per_s")),
                                  "series": _pts(self.series.get(f"{name}_per_s"))}
                           for name in ("produced", "consumed", "dead")},
            "dead_letters_total": _last(self.series.get("dead_total")),
            "freshness": {"p50": quantile(lats, 0.5), "p99": quantile(lats, 0.99), "count": len(lats),
                          "timeouts": sum(1 for _, _, ok, _ in recent if not ok),
                          "path": recent[-1][3] if recent else None,
                          "series": [[round(t, 3), round(lat, 4)] for t, lat, _, _ in recent]},
            "model_version": self.info["model_version"],
            "last_event_time": self.info["last_event_time"],
            "applied_events": self.info["applied_events"],
            "attribution": [{"strategy": st, "source": so, "clicks": n}
                            for (st, so), n in sorted(self.credits.items(), key=lambda kv: -kv[1])],
            "unattributed": self.unattributed,
            "experiments": self.experiments,
        }


def _pts(series: Series | None) -> list[list[float]]:
    return [[round(t, 3), round(v, 3)] for t, v in series.points()] if series else []


def _last(series: Series | None) -> float | None:
    return series.last() if series else None


def default_groups(settings: Settings, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The worker's group first, then any extra groups asked for, without repeats."""
    return tuple(dict.fromkeys([settings.consumer_group, *extra]))
