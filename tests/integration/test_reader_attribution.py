"""The reader records what each answer served (``P:{r:R}``) and the exporter credits clicks with it."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from driftrec.keys import Keys
from driftrec.oncall.attribution import STRATEGY_FIELD, Attributor, parse_click
from driftrec.online.served import STRATEGY_FIELD as READER_STRATEGY_FIELD
from driftrec.publisher import publish_events
from driftrec.settings import Settings
from tests.integration.services import free_port, wait_http
from tests.integration.test_reader_support import (
    reader,
    reference_state,
    shop_events,
    wait_for,
    write_state,
)

pytestmark = pytest.mark.integration


@pytest.fixture()
def users(settings: Settings) -> list[str]:
    """The reference shop in Redis; its users with the longest histories first."""
    st = reference_state(settings, shop_events())
    client = redis.Redis.from_url(settings.redis)
    try:
        write_state(client, Keys(settings.key_prefix), st)
    finally:
        client.close()
    return sorted(st.hist, key=lambda u: (-len(st.hist[u]), u))


def _click(user: str, item: str, request_id: str, kind: str = "view") -> bytes:
    """A click as the site publishes it (the bytes the exporter reads off the topic)."""
    return orjson.dumps({"event_id": f"e-{time.time_ns()}", "user_id": user, "item_id": item, "type": kind,
                         "timestamp": time.time(), "request_id": request_id})


async def test_served_answers_are_recorded_and_clicks_credited_to_their_source(
        settings: Settings, users: list[str], rds: redis.Redis) -> None:
    keys = Keys(settings.key_prefix)
    async with reader(settings) as (app, client):
        bodies = [
            ("blend", (await client.get(f"/v1/recommendations/{users[0]}", params={"n": 8})).json()),
            ("item_item", (await client.get(f"/v1/recommendations/{users[1]}",
                                             params={"n": 5, "strategy": "item_item"})).json()),
            ("trending", (await client.get(f"/v1/recommendations/{users[2]}",
                                            params={"n": 5, "strategy": "trending"})).json()),
        ]
        item = bodies[0][1]["items"][0]["item_id"]
        bodies.append(("similar_items", (await client.get(f"/v1/items/{item}/similar", params={"n": 5})).json()))

        async def recorded() -> bool:
            return all(rds.exists(keys.served(b["request_id"])) for _, b in bodies)

        await wait_for(recorded, timeout=5)
        written = app.state.metrics.served_records.labels("written")._value.get()
    assert written == len(bodies)
    assert READER_STRATEGY_FIELD == STRATEGY_FIELD

    attributor = Attributor(settings.bootstrap, settings.clicks_topic, "unused", redis.asyncio.Redis.from_url(
        settings.redis), keys, on_credit=lambda _: None)
    try:
        for strategy, body in bodies:
            assert body["items"], body
            rid = body["request_id"]
            served = rds.hgetall(keys.served(rid))
            assert served.pop(STRATEGY_FIELD) == strategy
            assert served == {x["item_id"]: x["source"] for x in body["items"]}
            assert 0 < rds.ttl(keys.served(rid)) <= 3600
            # Every item shown is credited to the source that showed it; an item the answer did
            # not show, and a request id never served, are not.
            clicks = [parse_click(_click(users[0], x["item_id"], rid)) for x in body["items"]]
            clicks.append(parse_click(_click(users[0], "not-shown", rid, "purchase")))
            clicks.append(parse_click(_click(users[0], body["items"][0]["item_id"], "f" * 32)))
            credits = await attributor.credit([c for c in clicks if c is not None])
            assert len(credits) == len(body["items"]) + 2
            assert [(c.strategy, c.source) for c in credits[:-2]] == [(strategy, x["source"]) for x in body["items"]]
            assert (credits[-2].strategy, credits[-2].source, credits[-2].reason) == (strategy, None, "item_not_served")
            assert (credits[-1].source, credits[-1].reason) == (None, "unknown_request")
    finally:
        await attributor.client.aclose()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read()


def test_exporter_credits_a_click_on_a_reader_answer(settings: Settings, users: list[str], spawn: Any) -> None:
    """Reader and exporter as processes: GET an answer, click one of its items, read the counter."""
    s = settings.model_copy(update={"exporter_port": free_port(), "lag_interval_s": 0.5, "canary_interval_s": 5.0})
    reader_proc = spawn(["serve"], s)
    exporter = spawn(["lag", "--serve", "--port", str(s.exporter_port)], s)
    base = f"http://127.0.0.1:{s.exporter_port}"
    wait_http(f"http://127.0.0.1:{s.reader_port}/readyz", 30, reader_proc)
    wait_http(f"{base}/healthz", 30, exporter)
    body = json.loads(_get(f"http://127.0.0.1:{s.reader_port}/v1/recommendations/{users[0]}?n=6"))
    rid = body["request_id"]
    by_source = {x["source"]: x["item_id"] for x in body["items"]}
    assert by_source, body

    # The attribution consumer starts at the log end: wait until it has counted a probe click.
    def counted(probe: int) -> bool:
        publish_events(s, [json.loads(_click("shopper", "probe", f"probe{probe}"))])
        time.sleep(0.5)
        return json.loads(_get(f"{base}/api/state"))["unattributed"].get("unknown_request", 0) > 0

    deadline = time.monotonic() + 30
    probe = 0
    while not counted(probe):
        probe += 1
        assert time.monotonic() < deadline and exporter.alive(), exporter.tail()
    publish_events(s, [json.loads(_click("shopper", item, rid)) for item in by_source.values()])

    def credited() -> dict[tuple[str, str], float]:
        text = _get(f"{base}/metrics").decode()
        return {(x.labels["strategy"], x.labels["source"]): x.value
                for fam in text_string_to_metric_families(text) for x in fam.samples
                if x.name == "driftrec_attributed_clicks_total"}

    deadline = time.monotonic() + 30
    while sum(credited().values()) < len(by_source) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert credited() == {("blend", source): 1.0 for source in by_source}, (body, exporter.tail())
