"""Click -> Kafka -> Faust worker -> Redis -> reader, on the real broker and Redis."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from driftrec.publisher import publish_events
from driftrec.settings import Settings
from tests.integration.services import wait_http

pytestmark = pytest.mark.integration


def _recs(settings: Settings, user: str, n: int = 5) -> list[str]:
    url = f"http://127.0.0.1:{settings.reader_port}/v1/recommendations/{user}?n={n}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    return [it["item_id"] for it in body["items"]]


def _ev(i: int, user: str, item: str, kind: str = "view", t: float = 1_700_000_000.0) -> dict:
    return {"event_id": f"e{i}", "user_id": user, "item_id": item, "type": kind, "timestamp": t + i}


def test_clicks_reach_the_reader(settings: Settings, spawn) -> None:  # type: ignore[no-untyped-def]
    worker = spawn(["worker"])
    reader = spawn(["serve"])
    wait_http(f"http://127.0.0.1:{settings.reader_port}/readyz", 30, reader)

    # Background traffic: item "b" is bought a lot, "a" viewed a little.
    events = [_ev(i, f"u{i % 7}", "b", "purchase") for i in range(20)]
    events += [_ev(100 + i, f"u{i % 7}", "a") for i in range(5)]
    events += [_ev(200, "alice", "b")]
    publish_events(settings, events)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert worker.alive(), worker.tail()
        bob, alice = _recs(settings, "bob"), _recs(settings, "alice")
        if bob[:2] == ["b", "a"] and "b" not in alice and alice[:1] == ["a"]:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"reader never reflected the clicks: bob={bob} alice={alice}\n{worker.tail()}")

    # Popularity moves: "c" overtakes "b" after a burst of purchases, and bob sees it first.
    publish_events(settings, [_ev(300 + i, f"v{i}", "c", "purchase", t=1_700_000_100.0) for i in range(40)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _recs(settings, "bob")[:1] == ["c"]:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"popularity never moved: bob={_recs(settings, 'bob')}\n{worker.tail()}")
