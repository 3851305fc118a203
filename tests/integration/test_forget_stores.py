"""Forgetting subtracts the user's share on real Kafka and real Redis, one node and a cluster.

The processor reads the victims' clicks back from the test's own topic (streams/forget.py,
key-filtered), and the apply scripts (apply_batch.lua, apply_slot.lua) subtract. Batches are cut
off by a crash and replayed with other boundaries: the end state equals
:class:`driftrec.models.forget.ForgettingState` fed the stream, and popularity, trending and co-occurrence
equal a replay that never saw the forgotten clicks.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from driftrec.events import TOMBSTONE_TYPE
from driftrec.keys import Keys
from driftrec.models.forget import ForgettingState
from driftrec.models.online import EventView
from driftrec.redis_conn import async_client, sync_client
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.streams.cluster_state import ClusterRedisState, inflight_key
from driftrec.streams.forget import Forgetter
from driftrec.streams.processor import BatchProcessor, RawRecord
from driftrec.streams.redis_state import RedisState
from tools.chaos.stack import LocalRedisCluster
from tools.chaos.state import TopicRecord, build_oracle, compare, read_redis, views_of

pytestmark = pytest.mark.integration


def stream_with_forgets(n: int, seed: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Simulator clicks with tombstones: one user forgotten twice, one mid-stream, one last."""
    events = list(ShopSimulator(n_users=60, n_items=200, n_categories=5, seed=seed).events(n))
    counts: dict[str, int] = {}
    for e in events:
        counts[e["user_id"]] = counts.get(e["user_id"], 0) + 1
    victims = sorted(counts, key=lambda u: (-counts[u], u))[:3]

    def tomb(i: int, user: str) -> dict[str, Any]:
        return {"event_id": f"forget-{i}-{user}", "user_id": user, "item_id": "", "type": TOMBSTONE_TYPE,
                "timestamp": events[min(i, len(events) - 1)]["timestamp"]}

    places = [(int(n * 0.35), victims[0]), (int(n * 0.55), victims[1]), (int(n * 0.8), victims[0]),
              (n, victims[2])]
    for i, user in sorted(places, reverse=True):
        events.insert(i, tomb(i, user))
    return events, victims


async def produce(s: Settings, events: list[dict[str, Any]]) -> list[TopicRecord]:
    """Send the events keyed by user to the test's topic; the records as the broker stored them."""
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = []
        for e in events:
            key, value = e["user_id"].encode(), orjson.dumps(e)
            p = zlib.crc32(key) % s.topic_partitions
            sent.append((key, value, await producer.send(s.clicks_topic, value, key=key, partition=p)))
        metas = await asyncio.gather(*(f for *_, f in sent))
        return [TopicRecord(m.partition, m.offset, key, value) for (key, value, _), m in zip(sent, metas, strict=True)]
    finally:
        await producer.stop()


class Crash(BaseException):
    """The process dies here (BaseException: nothing on the way may catch it)."""


def processor(s: Settings, client: Any, cluster: bool, crash_after_groups: int | None = None) -> BatchProcessor:
    kind = ClusterRedisState if cluster else RedisState
    state = kind(client, Keys(s.key_prefix), s.clicks_topic, window=s.cooc_window, history_len=s.history_len,
                 neighbours_k=s.neighbours_cut, trending_k=s.trending_k)
    state.session_index_k = s.session_index_k
    if crash_after_groups is not None:
        async def dies_mid_batch(batch_id: str, groups: list[tuple[str, bytes]], finish: Any) -> None:
            await state._scripts(state._slot, [([g], [p]) for g, p in groups[:crash_after_groups]])  # type: ignore[attr-defined]
            raise Crash()
        state._complete = dies_mid_batch  # type: ignore[attr-defined]

    async def sink(dead: Any) -> None:
        raise AssertionError(f"no dead letters expected: {dead}")

    return BatchProcessor(s, state, sink, None, forgets=Forgetter(s))


def forgotten_clean(views: list[EventView]) -> list[EventView]:
    last: dict[str, tuple[int, int]] = {}
    for v in views:
        if v.type == TOMBSTONE_TYPE:
            last[v.user] = max(last.get(v.user, (-1, -1)), (v.partition, v.offset))
    return [v for v in views if v.type != TOMBSTONE_TYPE and (v.partition, v.offset) > last.get(v.user, (-1, -1))]


def assert_rows_close(got: dict[str, float], want: dict[str, float], what: str) -> None:
    assert set(got) == set(want), (what, sorted(set(got) ^ set(want))[:10])
    for k, v in want.items():
        assert math.isclose(got[k], v, rel_tol=1e-9), (what, k, got[k], v)


@pytest.mark.parametrize("where", ["node", "cluster"])
def test_forgets_subtract_once_across_a_crash(settings: Settings, cluster: LocalRedisCluster, where: str) -> None:
    s = settings.model_copy(update={"neighbours_k": 1000, "trending_k": 1000})  # bounds out of reach
    if where == "cluster":
        s = s.model_copy(update={"redis_url": cluster.url})
    keys = Keys(s.key_prefix)
    events, victims = stream_with_forgets(3000, seed=5)
    records = asyncio.run(produce(s, events))
    raw = [RawRecord(s.clicks_topic, r.partition, r.offset, r.value) for r in records]
    second_forget = next(i for i, e in enumerate(events) if e["type"] == TOMBSTONE_TYPE and e["user_id"] == victims[1])
    sync = sync_client(s.redis)

    async def run() -> int:
        client = async_client(s.redis, socket_timeout=10)
        first = processor(s, client, where == "cluster")
        cut = second_forget - 100
        for i in range(0, cut, 400):
            await first.process(raw[i: min(i + 400, cut)])
        if where == "cluster":
            # Dies after 30 slot groups of the batch holding a tombstone: its copy is in, offsets not.
            with pytest.raises(Crash):
                await processor(s, client, True, crash_after_groups=30).process(raw[cut: cut + 300])
            assert sync.hlen(inflight_key(keys)) > 0
        else:
            await first.process(raw[cut: cut + 300])  # applied, then the process dies before Kafka commits
        again = processor(s, client, where == "cluster")
        for i in range(cut - 50, len(raw), 350):  # the replay starts before what Redis has
            await again.process(raw[i: i + 350])
        await client.aclose()
        return again.state.recovered if isinstance(again.state, ClusterRedisState) else 0

    assert asyncio.run(run()) == (1 if where == "cluster" else 0)
    snap = read_redis(sync, keys)
    views, _ = views_of(records, s.event_types)
    landmark = float(snap.meta["landmark"])
    oracle = ForgettingState.from_settings(s, user_items_k=s.history_len, user_cats_k=32, landmark=landmark)
    for i in range(0, len(views), 1000):
        oracle.process(views[i: i + 1000])
    cmp = compare(snap, oracle, s, session_index=True)
    assert cmp.equal, cmp.as_dict()
    assert snap.applied == len(records)
    assert snap.sessions and not any(victims[2] in row for row in snap.sessions.values())
    assert snap.click_logs and victims[2] not in snap.click_logs  # compare() checked the bytes

    clean = build_oracle(s, forgotten_clean(views), landmark)
    assert clean.landmark == landmark  # no rescale in this stream: raw scores compare
    assert_rows_close(snap.pop, clean.pop, "pop")
    for cat in snap.trend.keys() | clean.trend.keys():
        assert_rows_close(snap.trend.get(cat, {}), clean.trend.get(cat, {}), f"trend {cat}")
    for item in snap.cooc.keys() | clean.cooc.keys():
        assert_rows_close(snap.cooc.get(item, {}), clean.cooc.get(item, {}), f"cooc {item}")
    assert victims[2] not in snap.hist and victims[2] not in snap.user_items  # forgotten last
    sync.close()
