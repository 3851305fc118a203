"""Attribution and the freshness canary without a broker: their logic on in-memory stand-ins."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson

from driftrec.events import validate_event
from driftrec.oncall.attribution import STRATEGY_FIELD, Click, attribute, parse_click
from driftrec.oncall.canary import FallbackProbe, FreshnessCanary, ReaderProbe


def test_parse_click_takes_request_id_item_and_type() -> None:
    raw = orjson.dumps({"event_id": "e1", "user_id": "u", "item_id": "sku-1", "type": "purchase",
                        "timestamp": 1.0, "request_id": "r-9"})
    assert parse_click(raw) == Click("r-9", "sku-1", "purchase", "u")


def test_parse_click_ignores_clicks_without_request_id_and_garbage() -> None:
    assert parse_click(orjson.dumps({"user_id": "u", "item_id": "i", "type": "view"})) is None
    assert parse_click(b"not json but mentions request_id") is None
    assert parse_click(b'["request_id"]') is None
    assert parse_click(orjson.dumps({"request_id": 5, "item_id": "i"})) is None
    assert parse_click(None) is None


def test_attribute_credits_the_source_that_showed_the_item() -> None:
    served = {"sku-1": "item_item", "sku-2": "trending", STRATEGY_FIELD: "blend-v2"}
    c = attribute(Click("r", "sku-2", "view"), served)
    assert (c.strategy, c.source, c.reason) == ("blend-v2", "trending", None)
    miss = attribute(Click("r", "sku-3", "view"), served)
    assert (miss.source, miss.reason) == (None, "item_not_served")
    gone = attribute(Click("r", "sku-1", "view"), {})
    assert (gone.source, gone.reason) == (None, "unknown_request")


class _Store:
    """Stands in for Kafka + worker + Redis: an event becomes visible ``delay`` s after sending."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.visible_at: list[tuple[float, float]] = []  # (wall time visible, event time)
        self.sent: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any]) -> None:
        self.sent.append(event)
        self.visible_at.append((time.time() + self.delay, event["timestamp"]))


class _StoreProbe:
    name = "fake"

    def __init__(self, store: _Store) -> None:
        self.store = store

    async def seen(self, t0: float) -> bool | None:
        now = time.time()
        return any(vis <= now and ts >= t0 for vis, ts in self.store.visible_at)


def test_canary_measures_publish_to_visible_latency() -> None:
    store = _Store(delay=0.15)
    canary = FreshnessCanary(store.send, _StoreProbe(store), user="driftrec-canary",
                             item="driftrec-canary-item", poll_s=0.01, deadline_s=5)
    result = asyncio.run(canary.once())
    assert result.seen and result.path == "fake"
    assert 0.15 <= result.latency_s < 0.15 + 0.1
    # The canary event passes the same validation as the shop's events.
    ev = validate_event(store.sent[0])
    assert ev.user_id == "driftrec-canary" and ev.item_id == "driftrec-canary-item"


def test_an_old_canary_click_does_not_count_for_a_new_one() -> None:
    store = _Store(delay=0.0)
    store.visible_at.append((0.0, time.time() - 10))  # an earlier cycle's click, long visible
    store.delay = 0.2
    canary = FreshnessCanary(store.send, _StoreProbe(store), user="c", item="i", poll_s=0.01, deadline_s=5)
    assert asyncio.run(canary.once()).latency_s >= 0.2


def test_canary_gives_up_at_the_deadline() -> None:
    store = _Store(delay=60.0)
    canary = FreshnessCanary(store.send, _StoreProbe(store), user="c", item="i", poll_s=0.01, deadline_s=0.2)
    result = asyncio.run(canary.once())
    assert not result.seen and 0.2 <= result.latency_s < 0.5


def _reader(handler: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_reader_probe_reads_the_history_endpoint_and_falls_back_when_missing() -> None:
    t0 = 1_800_000_000.0

    def with_history(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/users/driftrec-canary/history"
        return httpx.Response(200, json={"items": [{"item_id": "other", "timestamp": t0 + 9},
                                                   {"item_id": "ci", "timestamp": t0 + 0.5}]})

    def missing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "http", "detail": "Not Found"})

    class _Always:
        name = "redis"

        async def seen(self, t0: float) -> bool | None:
            return True

    async def run() -> None:
        ok = ReaderProbe(_reader(with_history), "http://reader", "driftrec-canary", "ci")
        assert await ok.seen(t0) is True
        assert await ok.seen(t0 + 1) is False
        gone = ReaderProbe(_reader(missing), "http://reader", "driftrec-canary", "ci")
        assert await gone.seen(t0) is None
        both = FallbackProbe(gone, _Always())
        assert await both.seen(t0) is True and both.name == "redis"
        first = FallbackProbe(ok, _Always())
        assert await first.seen(t0) is True and first.name == "reader"

    asyncio.run(run())
