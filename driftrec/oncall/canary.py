"""The freshness canary: click as a reserved user, then time how long until the read path shows it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import redis.asyncio as aioredis

from driftrec.keys import Keys
from driftrec.userstate import unpack_entry

__all__ = ["CanaryResult", "HistoryProbe", "ReaderProbe", "RedisProbe", "FallbackProbe", "FreshnessCanary"]

logger = logging.getLogger(__name__)

#: Event times are compared after a trip through JSON, Lua strings and a Redis double.
_EPS = 1e-3


class HistoryProbe(Protocol):
    """Says when the canary user's history holds the canary item at event time ``t0`` or later."""

    name: str

    async def seen(self, t0: float) -> bool | None:
        """True / False, or ``None`` when this probe cannot answer (endpoint missing, error)."""
        ...


class ReaderProbe:
    """Asks the reader: ``GET /v1/users/{user}/history`` (the path shoppers' data takes)."""

    name = "reader"

    def __init__(self, client: httpx.AsyncClient, base_url: str, user: str, item: str) -> None:
        self.client = client
        self.url = f"{base_url.rstrip('/')}/v1/users/{user}/history"
        self.item = item

    async def seen(self, t0: float) -> bool | None:
        try:
            resp = await self.client.get(self.url, timeout=2.0)
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        try:
            body: Any = resp.json()
        except ValueError:
            return None
        items = body.get("items") if isinstance(body, dict) else body
        if not isinstance(items, list):
            return None
        for it in items:
            if isinstance(it, dict) and it.get("item_id") == self.item:
                ts = next((it[k] for k in ("timestamp", "event_time", "time", "last_seen") if k in it), None)
                if isinstance(ts, int | float):
                    return ts >= t0 - _EPS
        return False


class RedisProbe:
    """Reads the user's item HASH directly (used until the reader has a history endpoint)."""

    name = "redis"

    def __init__(self, client: aioredis.Redis, keys: Keys, user: str, item: str) -> None:
        self.client = client
        self.key = keys.user_state(user)
        self.item = item

    async def seen(self, t0: float) -> bool | None:
        raw = await self.client.hget(self.key, self.item)
        t, _ = unpack_entry(raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw or b"")
        return t is not None and t >= t0 - _EPS


class FallbackProbe:
    """The first probe that can answer; ``name`` tells which one did, for the metric label."""

    def __init__(self, *probes: HistoryProbe) -> None:
        self.probes = probes
        self.name = probes[0].name

    async def seen(self, t0: float) -> bool | None:
        for probe in self.probes:
            answer = await probe.seen(t0)
            if answer is not None:
                self.name = probe.name
                return answer
        return None


@dataclass(frozen=True, slots=True)
class CanaryResult:
    published_at: float
    #: Seconds from just before the publish to the first poll that saw the click.
    latency_s: float
    seen: bool
    path: str


class FreshnessCanary:
    """Publishes one canary click per cycle and polls ``probe`` until it is visible.

    Parameters
    ----------
    send : callable
        Sends one event dict and waits for the broker's acknowledgement.
    probe : HistoryProbe
        Where visibility is checked.
    user, item : str
        The reserved canary user and item.
    poll_s : float
        Poll period; it bounds the measurement's resolution.
    deadline_s : float
        A click not seen by then is a timeout, observed at the deadline so the histogram's
        upper quantiles show it.
    """

    def __init__(self, send: Callable[[dict[str, Any]], Awaitable[None]], probe: HistoryProbe, *,
                 user: str, item: str, poll_s: float = 0.02, deadline_s: float = 60.0) -> None:
        self.send = send
        self.probe = probe
        self.user = user
        self.item = item
        self.poll_s = poll_s
        self.deadline_s = deadline_s

    def event(self, t0: float) -> dict[str, Any]:
        return {"event_id": f"canary-{uuid.uuid4().hex}", "user_id": self.user, "item_id": self.item,
                "type": "view", "timestamp": t0, "category": "driftrec-canary"}

    async def once(self) -> CanaryResult:
        t0 = time.time()
        await self.send(self.event(t0))
        while True:
            if await self.probe.seen(t0):
                return CanaryResult(t0, time.time() - t0, True, self.probe.name)
            elapsed = time.time() - t0
            if elapsed >= self.deadline_s:
                return CanaryResult(t0, elapsed, False, self.probe.name)
            await asyncio.sleep(self.poll_s)

    async def run(self, interval_s: float, on_result: Callable[[CanaryResult], None]) -> None:
        """Forever: one cycle, then wait out the rest of ``interval_s``."""
        while True:
            started = time.monotonic()
            try:
                result = await self.once()
                on_result(result)
                if not result.seen:
                    logger.warning("canary click not visible after %.0f s", result.latency_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka or Redis down: keep trying, the health panel shows why
                logger.warning("canary cycle failed: %r", exc)
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))
