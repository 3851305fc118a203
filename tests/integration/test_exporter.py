"""The exporter against the real broker, Redis, worker and reader: lag, canary, dead letters, attribution."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from driftrec.keys import Keys
from driftrec.oncall.attribution import STRATEGY_FIELD
from driftrec.publisher import Publisher, publish_events
from driftrec.settings import Settings
from tests.integration.services import free_port, wait_http

pytestmark = pytest.mark.integration


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read()


def _samples(base: str) -> list[tuple[str, dict[str, str], float]]:
    text = _get(f"{base}/metrics").decode()
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def _wait(what: str, check: Callable[[], Any], timeout: float, *procs: Any) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.alive(), proc.tail()
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}\n" + "\n".join(p.tail(2000) for p in procs))


def _ev(i: int, user: str, item: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"x{i}-{time.time_ns()}", "user_id": user, "item_id": item, "type": "view",
            "timestamp": time.time(), **extra}


def test_exporter_end_to_end(settings: Settings, spawn, rds: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    s = settings.model_copy(update={"exporter_port": free_port(), "lag_interval_s": 0.5, "canary_interval_s": 0.5})
    base = f"http://127.0.0.1:{s.exporter_port}"
    worker = spawn(["worker"], s)
    reader = spawn(["serve"], s)
    exporter = spawn(["lag", "--serve", "--port", str(s.exporter_port)], s)
    wait_http(f"{base}/healthz", 30, exporter)
    wait_http(f"http://127.0.0.1:{s.reader_port}/readyz", 30, reader)
    state = lambda: json.loads(_get(f"{base}/api/state"))  # noqa: E731

    # Health: every component answers once the worker has joined its group.
    _wait("all healthy", lambda: all(state()["health"].get(c, {}).get("status") == "ok"
                                     for c in ("kafka", "redis", "worker", "reader")), 45, worker, exporter)

    # Freshness: canary clicks go publish -> worker -> Redis -> reader's history endpoint.
    fresh = _wait("3 canary clicks", lambda: (f := state()["freshness"])["count"] >= 3 and f, 30, exporter)
    assert fresh["path"] == "reader" and fresh["timeouts"] == 0
    assert 0 < fresh["p50"] < 2.0, fresh
    hist = {(n, lb.get("le")): v for n, lb, v in _samples(base) if n.startswith("driftrec_freshness_seconds")}
    assert hist[("driftrec_freshness_seconds_count", None)] >= 3

    # Lag: after a burst, the committed offsets reach the log end on every partition.
    publish_events(s, [_ev(i, f"u{i % 13}", f"sku-{i % 29}") for i in range(300)])

    def caught_up() -> bool:
        rows = _samples(base)
        ends = {lb["partition"]: v for n, lb, v in rows
                if n == "kafka_topic_partition_current_offset" and lb["topic"] == s.clicks_topic}
        cur = {lb["partition"]: v for n, lb, v in rows if n == "kafka_consumergroup_current_offset"
               and lb["consumergroup"] == s.consumer_group and lb["topic"] == s.clicks_topic}
        lag = {lb["partition"]: v for n, lb, v in rows if n == "kafka_consumergroup_lag"
               and lb["consumergroup"] == s.consumer_group and lb["topic"] == s.clicks_topic}
        if len(ends) != s.topic_partitions or set(lag) != set(ends):
            return False
        # One scrape is one snapshot: lag is exactly end - committed on every partition (a
        # partition nobody wrote to has neither a commit nor lag).
        assert lag == {p: ends[p] - cur.get(p, 0) for p in ends}, (lag, ends, cur)
        # The canary clicks twice a second, so its partition may be a commit interval behind.
        return sum(cur.values()) >= 300 and sum(lag.values()) <= 3

    _wait("worker caught up", caught_up, 45, worker, exporter)

    # Dead letters: a message the worker rejects shows up in the dead-letter topic's end offset.
    async def poison() -> None:
        async with Publisher(s) as pub:
            await pub.send_raw(b"{not json", key=b"u1")

    asyncio.run(poison())
    _wait("one dead letter", lambda: state()["dead_letters_total"] == 1, 30, worker, exporter)

    # Attribution: the reader records which source showed each item of an answer (P:{r:R});
    # clicks carrying that request_id are credited to it.
    keys = Keys(s.key_prefix)
    rds.hset(keys.served("r-answer"), mapping={"sku-1": "item_item", "sku-2": "trending", STRATEGY_FIELD: "blend"})
    rds.expire(keys.served("r-answer"), 600)
    # The attribution consumer starts at the log end: wait until it has counted a probe click.
    n = [0]

    def probe_counted() -> bool:
        n[0] += 1
        publish_events(s, [_ev(10_000 + n[0], "shopper", "sku-9", request_id="r-unknown")])
        time.sleep(0.5)
        return state()["unattributed"].get("unknown_request", 0) > 0

    _wait("attribution consumer running", probe_counted, 30, exporter)
    clicks = ([_ev(20_000 + i, "shopper", "sku-1", request_id="r-answer") for i in range(3)]
              + [_ev(20_100, "shopper", "sku-2", request_id="r-answer", type="purchase")]
              + [_ev(20_200, "shopper", "sku-7", request_id="r-answer")])
    publish_events(s, clicks)

    def credited() -> dict[tuple[str, str, str], float]:
        got = {(lb["strategy"], lb["source"], lb["type"]): v for n, lb, v in _samples(base)
               if n == "driftrec_attributed_clicks_total"}
        return got if sum(got.values()) >= 4 else {}

    got = _wait("attributed clicks", credited, 30, exporter)
    assert got == {("blend", "item_item", "view"): 3.0, ("blend", "trending", "purchase"): 1.0}
    assert _wait("item not served", lambda: state()["unattributed"].get("item_not_served") == 1, 10, exporter)

    # The dashboard page is served by the exporter itself, with no external resources.
    page = _get(f"{base}/dashboard").decode()
    assert "driftrec on-call" in page and "http://" not in page and "https://" not in page
