"""POST /v1/events and DELETE /v1/users on the real broker: what the reader accepts lands on the
clicks topic, keyed by user, and a broker outage is a 503."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from driftrec.events import TOMBSTONE_TYPE
from driftrec.online.ingest import KafkaSink
from driftrec.settings import Settings
from tests.integration.services import free_port
from tests.integration.test_reader_support import reader

pytestmark = pytest.mark.integration


def ev(i: int, user: str = "u1", **kw: Any) -> dict[str, Any]:
    return {"event_id": f"e{i}", "user_id": user, "item_id": f"i{i}", "type": "view",
            "timestamp": 1.7e9 + i, **kw}


async def consume(settings: Settings, n: int, timeout: float = 30.0) -> list[tuple[bytes | None, dict[str, Any]]]:
    consumer = AIOKafkaConsumer(settings.clicks_topic, bootstrap_servers=settings.bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[tuple[bytes | None, dict[str, Any]]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(out) < n and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend((r.key, orjson.loads(r.value)) for r in records)
    finally:
        await consumer.stop()
    return out


async def test_posted_events_and_tombstones_reach_the_clicks_topic(settings: Settings) -> None:
    s = settings.model_copy(update={"api_keys": ("secret-1",)})
    async with reader(s, sink=KafkaSink(s)) as (_, client):
        batch = [ev(1, "alice"), ev(2, "bob", category="shoes"), ev(3, "alice", type="teleport"), ev(4, "carol")]
        r = await client.post("/v1/events", json={"events": batch}, headers={"x-api-key": "secret-1"})
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == 3 and r.json()["rejected"] == 1
        assert r.json()["errors"] == [{"index": 2, "error": r.json()["errors"][0]["error"], "field": "type"}]
        assert (await client.post("/v1/events", json=ev(9))).status_code == 401
        r = await client.delete("/v1/users/bob", headers={"authorization": "Bearer secret-1"})
        assert r.status_code == 202
        tomb_id = r.json()["event_id"]
    got = await consume(s, 4)
    # Keyed by user: order holds within a user (one partition), not across users.
    assert sorted((k, v["event_id"]) for k, v in got if v["type"] != TOMBSTONE_TYPE) == [
        (b"alice", "e1"), (b"bob", "e2"), (b"carol", "e4")]
    assert next(v for k, v in got if v["event_id"] == "e2")["category"] == "shoes"
    tomb = [(k, v) for k, v in got if v["type"] == TOMBSTONE_TYPE]
    assert len(tomb) == 1 and tomb[0][0] == b"bob"
    assert tomb[0][1]["event_id"] == tomb_id and tomb[0][1]["item_id"] == "" and tomb[0][1]["user_id"] == "bob"
    # Same key, same partition: bob's tombstone comes after his click in stream order.
    order = [v["event_id"] for k, v in got if k == b"bob"]
    assert order == ["e2", tomb_id]


async def test_broker_down_is_a_503_and_reads_still_work(settings: Settings) -> None:
    s = settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    async with reader(s, sink=KafkaSink(s, timeout_s=2.0)) as (_, client):
        r = await client.post("/v1/events", json=ev(1))
        assert r.status_code == 503 and r.json()["error"] == "Unavailable"
        assert (await client.delete("/v1/users/u1")).status_code == 503
        r = await client.get("/v1/recommendations/u1")
        assert r.status_code == 200 and r.json()["degraded"] is False
