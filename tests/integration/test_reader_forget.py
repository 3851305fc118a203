"""DELETE /v1/users/{id} end to end: reader -> tombstone on Kafka -> worker -> Redis.

After the worker reaches the tombstone the Redis state must equal the state of a replay of the
same clicks without that user (the in-memory reference), read at one ``now``.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import redis
from redis.client import NEVER_DECODE

from driftrec.keys import Keys
from driftrec.models.online import InMemoryState
from driftrec.online.ingest import KafkaSink
from driftrec.settings import Settings
from driftrec.userstate import decode_fields
from tests.integration.test_reader_support import reader, reference_state, shop_events

pytestmark = pytest.mark.integration


def _zset(r: redis.Redis, key: str) -> dict[str, float]:
    return {m: float(s) for m, s in r.zrange(key, 0, -1, withscores=True)}


def _user_items(r: redis.Redis, keys: Keys, user: str) -> tuple[dict[str, float], dict[str, float]]:
    # The values are binary: read them undecoded whatever the client decodes.
    return decode_fields(r.execute_command("HGETALL", keys.user_state(user), **{NEVER_DECODE: True}))


def redis_state(r: redis.Redis, keys: Keys, items: set[str], users: set[str], cats: set[str]) -> dict[str, Any]:
    """The decayed shared state and every user's keys, as plain dicts valued at the stored ``now``."""
    landmark = float(r.hget(keys.meta, "landmark") or 0.0)
    now = float(r.hget(keys.meta, "last_event_time") or 0.0)
    return {
        "landmark": landmark, "now": now,
        "pop": _zset(r, keys.popularity),
        "trend": {c: _zset(r, keys.trending(c)) for c in cats},
        "cooc": {i: _zset(r, keys.item_nbrs(i)) for i in items},
        "user_items": {u: _user_items(r, keys, u)[1] for u in users},
        "hist": {u: _user_items(r, keys, u)[0] for u in users},
        "user_cats": {u: _zset(r, keys.user_cats(u)) for u in users},
    }


def decayed(rows: dict[str, float], rate: float, landmark: float, now: float) -> dict[str, float]:
    f = math.exp(-rate * (now - landmark))
    return {k: v * f for k, v in rows.items() if v * f > 1e-12}


def assert_same(got: dict[str, float], want: dict[str, float], what: str) -> None:
    assert set(got) == set(want), (what, sorted(set(got) ^ set(want))[:10])
    for k in want:
        assert got[k] == want[k], (what, k, got[k], want[k])  # whole units: exact


async def forget_scenario(settings: Settings, spawn: Any) -> tuple[Settings, dict[str, Any], InMemoryState, set[str], set[str]]:
    """Clicks POSTed to the reader, applied by a real worker, then one user DELETEd.

    Returns the settings, the Redis state after the tombstone, the reference replay without the
    forgotten user, and the items and users of the stream.
    """
    # Bounds out of reach, so the result does not depend on how the stream was cut into batches.
    s = settings.model_copy(update={"neighbours_k": 500, "trending_k": 500, "history_len": 500})
    events = shop_events(400, users=12, items=40, categories=3, seed=21)
    counts: dict[str, int] = {}
    for e in events:
        counts[e["user_id"]] = counts.get(e["user_id"], 0) + 1
    victim = max(counts, key=lambda u: (counts[u], u))
    keys = Keys(s.key_prefix)
    r = redis.Redis.from_url(s.redis, decode_responses=True)
    worker = spawn(["worker"], s)
    try:
        async with reader(s, sink=KafkaSink(s)) as (_, client):
            for start in range(0, len(events), 100):
                resp = await client.post("/v1/events", json=events[start:start + 100])
                assert resp.status_code == 202 and resp.json()["accepted"] == len(events[start:start + 100])

            async def applied(n: int) -> bool:
                return int(r.hget(keys.meta, "applied_events") or 0) >= n

            await _wait(lambda: applied(len(events)), 120, worker)
            before = (await client.get(f"/v1/users/{victim}/history")).json()["items"]
            assert before, "the victim had a history"

            resp = await client.delete(f"/v1/users/{victim}")
            assert resp.status_code == 202
            await _wait(lambda: applied(len(events) + 1), 60, worker)
            assert (await client.get(f"/v1/users/{victim}/history")).json()["items"] == []
            recs = (await client.get(f"/v1/recommendations/{victim}")).json()["items"]
            assert all(x["source"] == "trending" for x in recs)  # a stranger again
    finally:
        worker.stop()

    for suffix in ("iw", "cats", "vec"):
        assert not r.exists(f"{s.key_prefix}:{{u:{victim}}}:{suffix}"), suffix

    # From the worker's landmark: the same events then give the same whole-number increments, so
    # the subtraction must leave exactly what a replay without the user adds up to.
    landmark = float(r.hget(keys.meta, "landmark") or 0.0)
    reference: InMemoryState = reference_state(s, [e for e in events if e["user_id"] != victim], landmark=landmark)
    assert reference.landmark == landmark  # no landmark move in this stream
    items = set(reference.pop) | {e["item_id"] for e in events}
    users = {e["user_id"] for e in events}
    got = redis_state(r, keys, items, users, set(reference.trend))
    r.close()

    return s, got, reference, items, users


async def test_forgetting_removes_the_user_and_leaves_everyone_else_as_in_a_replay(settings: Settings, spawn) -> None:  # type: ignore[no-untyped-def]
    s, got, reference, items, users = await forget_scenario(settings, spawn)
    rate, now = s.decay_rate, got["now"]

    def ref(rows: dict[str, float]) -> dict[str, float]:
        return decayed(rows, rate, reference.landmark, now)

    def red(rows: dict[str, float]) -> dict[str, float]:
        return decayed(rows, rate, got["landmark"], now)

    for u in users:
        assert_same(red(got["user_items"][u]), ref(reference.user_items.get(u, {})), f"user_items {u}")
        assert_same(red(got["user_cats"][u]), ref(reference.user_cats.get(u, {})), f"user_cats {u}")
        assert got["hist"][u] == pytest.approx(reference.hist.get(u, {}))


async def test_forgetting_subtracts_the_user_from_popularity_trending_and_cooccurrence(settings: Settings, spawn) -> None:  # type: ignore[no-untyped-def]
    s, got, reference, items, users = await forget_scenario(settings, spawn)
    rate, now = s.decay_rate, got["now"]

    def ref(rows: dict[str, float]) -> dict[str, float]:
        return decayed(rows, rate, reference.landmark, now)

    def red(rows: dict[str, float]) -> dict[str, float]:
        return decayed(rows, rate, got["landmark"], now)

    assert_same(red(got["pop"]), ref(reference.pop), "pop")
    for c in reference.trend:
        assert_same(red(got["trend"][c]), ref(reference.trend[c]), f"trend {c}")
    for i in items:
        assert_same(red(got["cooc"][i]), ref(reference.cooc.get(i, {})), f"cooc {i}")


async def _wait(predicate: Any, timeout: float, worker: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        assert worker.alive(), worker.tail()
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"worker did not get there in {timeout}s\n{worker.tail()}")
