"""The write path on the real broker and Redis: poison, replay, crash and drift.

Each test runs ``driftrec worker`` subprocesses against its own topics and Redis prefix and checks
the Redis state against an in-process oracle (:class:`driftrec.models.online.InMemoryState`) fed the very
records the broker holds, in their (partition, offset) order.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError

from driftrec.keys import Keys
from driftrec.modelformat import pack_factors
from driftrec.models.factors import fold_in
from driftrec.models.online import EventView, InMemoryState
from driftrec.publisher import Publisher, publish_events
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.userstate import decode_fields, unpack_vector
from tests.integration.services import wait_http

pytestmark = pytest.mark.integration


# --- helpers --------------------------------------------------------------------------------------
def _raw_redis(s: Settings) -> redis.Redis:
    return redis.Redis.from_url(s.redis)


async def _read_topic(s: Settings, topic: str, partitions: int) -> list[Any]:
    """Every record of ``topic`` up to its end (asked for again until two answers agree)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + 30
        seen_end: dict[Any, int] | None = None
        while True:
            end = await consumer.end_offsets(tps)
            positions = {tp: await consumer.position(tp) for tp in tps}
            if end == seen_end and all(positions[tp] >= end[tp] for tp in tps):
                return out
            seen_end = end
            assert time.monotonic() < deadline, "could not read the topic back"
            for rows in (await consumer.getmany(timeout_ms=300)).values():
                out.extend(rows)
    finally:
        await consumer.stop()


async def _committed(s: Settings, group: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except GroupCoordinatorNotAvailableError:  # the group has not been joined yet
        return {}
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == s.clicks_topic}


def _redis_offsets(r: redis.Redis, s: Settings) -> dict[int, int]:
    raw = r.hgetall(Keys(s.key_prefix).offsets)
    return {int(k.decode().rsplit(":", 1)[1]): int(v) for k, v in raw.items()}


def _applied(r: redis.Redis, s: Settings) -> int:
    return int(r.hget(Keys(s.key_prefix).meta, "applied_events") or 0)


def _wait(cond: Callable[[], bool], timeout: float, what: str, worker: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker is not None:
            assert worker.alive(), f"worker died:\n{worker.tail()}"
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{worker.tail() if worker else ''}")


def _snapshot(r: redis.Redis, prefix: str) -> dict[bytes, tuple[bytes, Any]]:
    """Every key under the prefix with its exact bytes (scores as Redis prints them)."""
    out: dict[bytes, tuple[bytes, Any]] = {}
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        kind = r.type(key)
        if kind == b"zset":
            value: Any = r.execute_command("ZRANGE", key, 0, -1, "WITHSCORES")
        elif kind == b"hash":
            value = sorted(r.hgetall(key).items())
        else:
            value = r.get(key)
        out[key] = (kind, value)
    return out


def _zset(r: redis.Redis, key: str) -> dict[str, float]:
    return {m.decode(): s for m, s in r.zrange(key, 0, -1, withscores=True)}


def _views(records: list[Any]) -> list[EventView]:
    out = []
    for rec in records:
        d = orjson.loads(rec.value)
        out.append(EventView(str(d["user_id"]), str(d["item_id"]), d["type"], float(d["timestamp"]),
                             d.get("category"), rec.offset, rec.partition))
    return out


def _close(a: dict[str, float], b: dict[str, float], what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: members differ: {set(a) ^ set(b)}"
    for k, v in a.items():
        assert math.isclose(v, b[k], rel_tol=1e-9, abs_tol=1e-12), f"{what}[{k}]: {v} != {b[k]}"


def assert_state_is_the_oracles(r: redis.Redis, s: Settings, keys: Keys, n_events: int) -> InMemoryState:
    """Every key under ``s``'s prefix equals the in-process oracle fed the whole topic in order,
    and the oracle applied all ``n_events`` (each exactly once); returns the oracle."""
    oracle = InMemoryState.from_settings(s, user_items_k=s.history_len, user_cats_k=32,
                                         landmark=float(r.hget(keys.meta, "landmark")))
    views = sorted(_views(asyncio.run(_read_topic(s, s.clicks_topic, s.topic_partitions))),
                   key=lambda v: (v.partition, v.offset))
    for i in range(0, len(views), 1000):
        oracle.process(views[i: i + 1000])
    assert oracle.applied == n_events
    _close(_zset(r, keys.popularity), oracle.pop, "pop")
    for cat, row in oracle.trend.items():
        _close(_zset(r, keys.trending(cat)), row, f"trend:{cat}")
    for item, row in oracle.cooc.items():
        _close(_zset(r, keys.item_nbrs(item)), row, f"nbr:{item}")
    for user in oracle.user_items:
        times, weights = decode_fields(r.hgetall(keys.user_state(user)))
        _close(weights, oracle.user_items[user], f"w:{user}")
        _close(_zset(r, keys.user_cats(user)), oracle.user_cats[user], f"cats:{user}")
        assert times == oracle.hist[user]
    assert oracle.sessions  # the worker keeps the session index by default
    for item, row in oracle.sessions.items():  # event times, exact
        assert _zset(r, keys.item_sessions(item)) == row, f"us:{item}"
    assert sum(1 for _ in r.scan_iter(match=keys.item_sessions("*"), count=1000)) == len(oracle.sessions)
    for user, value in oracle.click_logs.items():  # the click logs, byte for byte
        assert r.get(keys.user_clicks(user)) == value, f"clk:{user}"
    assert sum(1 for _ in r.scan_iter(match=keys.user_clicks("*"), count=1000)) == len(oracle.click_logs)
    assert {k.decode(): v.decode() for k, v in r.hgetall(keys.item_category).items()} == oracle.item_cat
    assert _redis_offsets(r, s) == oracle.offsets
    return oracle


async def _send_raw(s: Settings, rows: list[tuple[bytes | None, bytes]]) -> None:
    async with Publisher(s, validate=False) as pub:
        for key, value in rows:
            await pub.send_raw(value, key=key)
        await pub.flush()


# --- poison ---------------------------------------------------------------------------------------
def test_poison_events_go_to_the_dead_letter_topic_with_reasons(settings: Settings, spawn: Any) -> None:
    s = settings
    good = [{"event_id": f"g{i}", "user_id": f"u{i % 3}", "item_id": f"i{i % 4}", "type": "view",
             "timestamp": 1_700_000_000 + i, "category": "c"} for i in range(30)]
    bad = {
        b"{not json": "not valid JSON",
        orjson.dumps({**good[0], "event_id": "b1", "user_id": "has space"}): "user_id: user_id must be",
        orjson.dumps({**good[0], "event_id": "b2", "properties": {"x": "y" * 20_000}}): "event is",
        orjson.dumps({**good[0], "event_id": "b3", "type": "wishlist"}): "type: unknown event type 'wishlist'",
        orjson.dumps({"event_id": "b4", "user_id": "u1", "type": "view"}): "item_id: field required",
        b"[1, 2, 3]": "event must be a JSON object",
    }
    rows: list[tuple[bytes | None, bytes]] = []
    bad_items = list(bad)
    for i, ev in enumerate(good):
        rows.append((ev["user_id"].encode(), orjson.dumps(ev)))
        if i % 5 == 2 and bad_items:
            rows.append((b"u1", bad_items.pop()))
    assert not bad_items
    asyncio.run(_send_raw(s, rows))
    worker = spawn(["worker"])
    r = _raw_redis(s)
    _wait(lambda: _applied(r, s) >= len(good), 60, "good events applied", worker)
    dlq = asyncio.run(_wait_dlq(s, len(bad)))
    got = {rec.value: dict(rec.headers) for rec in dlq}
    assert set(got) == set(bad), "every bad record in the DLQ once, with its original bytes"
    for value, reason in bad.items():
        assert got[value]["driftrec-reason"].decode().startswith(reason), got[value]
        topic, part, off = got[value]["driftrec-source"].decode().rsplit(":", 2)
        assert topic == s.clicks_topic and int(part) >= 0 and int(off) >= 0
    pop = _zset(r, Keys(s.key_prefix).popularity)
    assert set(pop) == {"i0", "i1", "i2", "i3"}
    assert _applied(r, s) == len(good)
    # The dead letters' offsets are covered too: everything up to the end is marked applied.
    ends = Counter(rec.partition for rec in asyncio.run(_read_topic(s, s.clicks_topic, s.topic_partitions)))
    _wait(lambda: all(_redis_offsets(r, s).get(p, -1) == n - 1 for p, n in ends.items()), 20,
          "offsets at the end", worker)


async def _wait_dlq(s: Settings, n: int) -> list[Any]:
    deadline = time.monotonic() + 30
    while True:
        rows = await _read_topic(s, s.dead_letter_topic, 1)
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.3)


# --- replay ---------------------------------------------------------------------------------------
def test_replay_from_the_beginning_leaves_redis_byte_for_byte_identical(settings: Settings, spawn: Any) -> None:
    s = settings
    sim = ShopSimulator(n_users=80, n_items=300, n_categories=4, seed=11)
    events = list(sim.events(3000))
    publish_events(s, events)
    asyncio.run(_send_raw(s, [(b"u1", b"{broken"), (b"u2", b'{"user_id": "x"}')]))
    r = _raw_redis(s)
    first = spawn(["worker"])
    _wait(lambda: _applied(r, s) == len(events) and sum(_redis_offsets(r, s).values()) + s.topic_partitions
          == len(events) + 2, 90, "first pass", first)
    time.sleep(1.5)  # let a commit happen; nothing may change from here on
    before = _snapshot(r, s.key_prefix)
    dlq_before = len(asyncio.run(_wait_dlq(s, 2)))
    first.stop()

    again = s.model_copy(update={"consumer_group": s.consumer_group + "-replay"})
    second = spawn(["worker"], again)
    ends = {p: n for p, n in Counter(rec.partition for rec in asyncio.run(
        _read_topic(s, s.clicks_topic, s.topic_partitions))).items()}
    _wait(lambda: asyncio.run(_committed(again, again.consumer_group)) == ends, 90,
          "the replaying group to commit the end of every partition", second)
    after = _snapshot(r, s.key_prefix)
    assert after.keys() == before.keys()
    assert after == before
    assert dlq_before == 2 and len(asyncio.run(_read_topic(s, s.dead_letter_topic, 1))) == 2


# --- crash ----------------------------------------------------------------------------------------
def test_kill_9_mid_stream_then_restart_equals_the_oracle(settings: Settings, spawn: Any) -> None:
    # Bounds no run reaches, so the result may not depend on how the stream was cut into batches.
    s = settings.model_copy(update={"neighbours_k": 5000, "trending_k": 5000, "history_len": 5000,
                                    "batch_max_events": 500})
    sim = ShopSimulator(n_users=150, n_items=600, n_categories=6, seed=5)
    events = list(sim.events(20_000))
    r = _raw_redis(s)
    keys = Keys(s.key_prefix)
    # A published model over 80% of the items: users are folded in, the rest start cold.
    rng = np.random.default_rng(0)
    model_items = [f"i{j}" for j in range(480)]
    parts = pack_factors(model_items, rng.normal(0, 0.3, (480, 8)), alpha=2.0, regularization=0.5)
    for part, blob in parts.items():
        r.set(keys.model_blob("v1", part), blob)
    r.set(keys.model_current, "v1")
    # The stream is live when the worker dies: 4,000 events wait in the topic at its start and a
    # producer thread keeps adding 2,000/s until the kill, so the kill lands mid-stream however fast
    # the machine is; whatever the thread did not send is published after the kill, in order.
    sent = [4000]
    publish_events(s, events[:sent[0]])
    stop = threading.Event()

    def trickle() -> None:
        async def go() -> None:
            async with Publisher(s) as pub:
                while sent[0] < len(events) - 2000 and not stop.is_set():
                    await pub.publish(events[sent[0]: sent[0] + 200])
                    sent[0] += 200
                    await asyncio.sleep(0.1)
        asyncio.run(go())

    producer = threading.Thread(target=trickle, daemon=True)
    t0 = time.monotonic()
    worker = spawn(["worker"], s)
    producer.start()
    checked = 0
    # Until 4,000 events are applied and at least one Kafka commit was checked (the batch consumer
    # can apply 4,000 before its first commit).
    while _applied(r, s) < 4000 or not checked:
        assert worker.alive(), worker.tail()
        # Kafka commits never run ahead of what Redis holds (committed = next offset to read).
        committed = asyncio.run(_committed(s, s.consumer_group))
        stored = _redis_offsets(r, s)
        for p, c in committed.items():
            assert c <= stored.get(p, -1) + 1, f"partition {p}: committed {c}, Redis has {stored.get(p)}"
        checked += len(committed)
        time.sleep(0.2)
    worker.kill9()
    at_kill, published_at_kill = _applied(r, s), sent[0]
    stop.set()
    producer.join(30)
    assert not producer.is_alive(), "the producer thread did not stop"
    assert checked, "the commit invariant was never checked"
    publish_events(s, events[sent[0]:])

    restarted = spawn(["worker"], s)
    _wait(lambda: sum(_redis_offsets(r, s).values()) + s.topic_partitions == len(events), 120,
          "restart to catch up", restarted)
    assert _applied(r, s) == len(events), "every event applied exactly once"
    print(f"crash test: killed at {at_kill} of {published_at_kill} published events, "
          f"caught up {time.monotonic() - t0:.1f}s after start")

    oracle = assert_state_is_the_oracles(r, s, keys, len(events))

    # User vectors: the fold-in of the final decayed weights, read at the user's newest event.
    Y = np.asarray(np.load(__import__("io").BytesIO(parts["item_factors"])), dtype=np.float64)
    index = {i: j for j, i in enumerate(model_items)}
    for user, hist in oracle.hist.items():
        now = max(hist.values())
        weights = oracle.user_weights(user, now=now)
        rows = [(index[i], 2.0 * w) for i, w in weights.items() if i in index]
        want = fold_in(Y, Y.T @ Y, [j for j, _ in rows], [c for _, c in rows], 0.5)
        vec, tag = unpack_vector(r.get(keys.user_vec(user)))
        assert tag == "v1" and vec is not None
        np.testing.assert_allclose(np.frombuffer(vec, dtype=np.float32), want, rtol=2e-4, atol=2e-5)
    # Items outside the model that were co-clicked with model items have a cold-start vector.
    cold = [i for i in oracle.pop if i not in index]
    assert cold and all(unpack_vector(r.get(keys.item_vec(i)))[1] == "v1" for i in cold)


# --- drift ----------------------------------------------------------------------------------------
def _recs(s: Settings, user: str, n: int = 10) -> list[str]:
    sep = "" if "?" in user else "?"
    url = f"http://127.0.0.1:{s.reader_port}/v1/recommendations/{user}{sep}n={n}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return [it["item_id"] for it in json.loads(resp.read())["items"]]


def test_a_drifting_user_is_followed_within_one_half_life(settings: Settings, spawn: Any) -> None:
    s = settings.model_copy(update={"half_life_s": 6 * 3600.0})
    sim = ShopSimulator(n_users=150, n_items=800, n_categories=4, seed=2, drift_every_s=None)
    background = list(sim.events(6000))
    t_end = max(e["timestamp"] for e in background)
    a, b = sim.categories[0], sim.categories[1]
    before = sim.scripted_user_drift("drifter", a, b, 16, 0, start=t_end + 60, spacing_s=300)
    t_drift = before[-1]["timestamp"] + 300
    after = sim.scripted_user_drift("drifter", a, b, 0, 16, start=t_drift, spacing_s=1000)
    assert after[-1]["timestamp"] - t_drift < s.half_life_s
    r = _raw_redis(s)
    keys = Keys(s.key_prefix)
    worker = spawn(["worker"], s)
    reader = spawn(["serve"], s)
    publish_events(s, background + before)
    _wait(lambda: _applied(r, s) == len(background) + len(before), 90, "background + before", worker)
    wait_http(f"http://127.0.0.1:{s.reader_port}/readyz", 30, reader)
    cats = sim.item_category

    def top_category() -> str:
        row = _zset(r, keys.user_cats("drifter"))
        return max(row, key=row.__getitem__)

    def share(items: list[str], cat: str) -> float:
        return sum(cats(i) == cat for i in items) / max(len(items), 1)

    assert top_category() == a
    def leads(items: list[str], cat: str) -> bool:
        """``cat`` is the one most common category of ``items`` (strictly)."""
        counts = Counter(cats(i) for i in items).most_common()
        return counts[0][0] == cat and (len(counts) == 1 or counts[0][1] > counts[1][1])

    first = _recs(s, "drifter")
    assert leads(first, a) and share(first, a) >= 0.4, [cats(i) for i in first]

    publish_events(s, after)
    _wait(lambda: _applied(r, s) == len(background) + len(before) + len(after), 60, "after", worker)
    # The write-path state the reader blends from, read through the one decay (ratios within a
    # key do not depend on the read time, so stored forward scores rank as decayed ones do).
    assert top_category() == b
    hist, weights = decode_fields(r.hgetall(keys.user_state("drifter")))
    assert share(sorted(weights, key=weights.__getitem__, reverse=True)[:10], b) > 0.5
    recent = sorted(hist, key=hist.__getitem__, reverse=True)[:5]
    neighbours = []
    for item in recent:
        row = _zset(r, keys.item_nbrs(item))
        neighbours += [j for j in sorted(row, key=row.__getitem__, reverse=True)[:5] if j != item]
    assert share(neighbours, b) > 0.6, [(j, cats(j)) for j in neighbours]
    assert unpack_vector(r.get(keys.user_vec("drifter")))[1] == "isgd"
    # And the reader's answer follows.
    # And the reader's answer follows: the new category leads its top ten (the blend mixes in
    # global trending on purpose, so it need not fill it).
    got = _recs(s, "drifter")
    assert leads(got, b) and share(got, b) >= 0.4, [cats(i) for i in got]
