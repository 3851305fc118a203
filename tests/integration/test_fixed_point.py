"""Fixed-point decayed scores on real Redis: landmark moves round every score exactly as the oracle
does, on one node and on a cluster; the worker refuses a store written in another score format.

Decayed sorted-set scores are whole units of 1/SCORE_SCALE (models/decay.py), so increments add
exactly in any order, and a rescale (streams/lua/rescale.lua) rounds each score back to a whole
unit. Here a short half-life makes the landmark move several times within the stream.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from driftrec.errors import StoreFormatError
from driftrec.keys import Keys
from driftrec.models.decay import SCORE_SCALE, DecayPolicy
from driftrec.models.online import EventView, InMemoryState
from driftrec.redis_conn import async_client, sync_client
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.streams import rescale
from driftrec.streams.processor import RawRecord
from driftrec.streams.redis_state import check_score_format
from tests.integration.test_forget_stores import processor, produce
from tools.chaos.stack import LocalRedisCluster
from tools.chaos.state import compare, read_redis, views_of

pytestmark = pytest.mark.integration


@dataclass
class Stream:
    """Simulator clicks on the test's topic, cut into the batches the worker and the oracle both get."""

    s: Settings
    keys: Keys
    raw: list[RawRecord]
    views: list[EventView]
    batches: list[tuple[int, int]]

    def oracle(self) -> InMemoryState:
        """The oracle fed the same batches, from where the worker starts: its first batch's earliest click."""
        by_pos = {(v.partition, v.offset): v for v in self.views}
        cut = [[by_pos[(r.partition, r.offset)] for r in self.raw[lo:hi] if (r.partition, r.offset) in by_pos]
               for lo, hi in self.batches]
        state = InMemoryState.from_settings(self.s, user_items_k=self.s.history_len, user_cats_k=32,
                                            landmark=min(v.t for v in cut[0]))
        for views in cut:
            state.process(views)
        return state


def stream(settings: Settings, cluster: LocalRedisCluster, where: str, *, seed: int, n: int,
           half_lives: float) -> Stream:
    """``n`` clicks spanning ``half_lives`` half-lives (the landmark moves every 14.4: max exponent 10)."""
    events = list(ShopSimulator(n_users=50, n_items=150, n_categories=4, seed=seed).events(n))
    span = events[-1]["timestamp"] - events[0]["timestamp"]
    s = settings.model_copy(update={"half_life_s": span / half_lives, "neighbours_k": 20,
                                    "neighbours_kept": 20, "trending_k": 30})
    if where == "cluster":
        s = s.model_copy(update={"redis_url": cluster.url})
    records = asyncio.run(produce(s, events))
    raw = [RawRecord(s.clicks_topic, r.partition, r.offset, r.value) for r in records]
    views, _ = views_of(records, s.event_types)
    return Stream(s, Keys(s.key_prefix), raw, views, [(i, i + 250) for i in range(0, len(raw), 250)])


def assert_equals_oracle(snap: Any, st: Stream) -> None:
    oracle = st.oracle()
    assert float(snap.meta["landmark"]) == oracle.landmark
    cmp = compare(snap, oracle, st.s, rel_tol=0.0)  # bit for bit, not close
    assert cmp.equal, cmp.as_dict()


@pytest.mark.parametrize("where", ["node", "cluster"])
def test_landmark_moves_on_redis_equal_the_oracle_bit_for_bit(settings: Settings, cluster: LocalRedisCluster,
                                                              where: str) -> None:
    st = stream(settings, cluster, where, seed=11, n=2500, half_lives=50)

    async def run() -> None:
        client = async_client(st.s.redis, socket_timeout=10)
        proc = processor(st.s, client, where == "cluster")
        for lo, hi in st.batches:
            await proc.process(st.raw[lo:hi])
        await client.aclose()

    asyncio.run(run())
    sync = sync_client(st.s.redis)
    snap = read_redis(sync, st.keys)
    policy = DecayPolicy(st.s.half_life_s)
    moved = (float(snap.meta["landmark"]) - min(v.t for v in st.views)) * policy.rate / policy.max_exponent
    assert moved >= 3, f"the landmark moved too little to test rescales: {moved:.1f} budgets"
    assert_equals_oracle(snap, st)
    # Every decayed sorted-set score is a whole number of units (the fast listpack encoding).
    scores = [*snap.pop.values(), *(v for row in snap.cooc.values() for v in row.values()),
              *(v for row in snap.trend.values() for v in row.values()),
              *(v for row in snap.user_cats.values() for v in row.values())]
    assert scores and all(v == math.floor(v) and v >= 1 for v in scores)
    sync.close()


class Crash(BaseException):
    """The rescaling worker dies here (BaseException: nothing on the way catches it)."""


@pytest.mark.parametrize("where", ["node", "cluster"])
def test_a_rescale_cut_off_midway_is_finished_by_the_next_worker_exactly_once(
        settings: Settings, cluster: LocalRedisCluster, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    st = stream(settings, cluster, where, seed=12, n=2000, half_lives=25)
    s, keys, raw, batches = st.s, st.keys, st.raw, st.batches
    sync = sync_client(s.redis)

    monkeypatch.setattr(rescale, "_CHUNK", 40)
    real_acquire = rescale._acquire
    calls = {"n": 0, "crashed": False}

    async def dies_in_the_third_chunk(client: Any, keys_: Keys, owner: str) -> bool:
        calls["n"] += 1
        if calls["n"] == 3 and not calls["crashed"]:  # the start, two chunks done, then death
            calls["crashed"] = True
            raise Crash()
        return await real_acquire(client, keys_, owner)

    monkeypatch.setattr(rescale, "_acquire", dies_in_the_third_chunk)

    async def run() -> int:
        client = async_client(s.redis, socket_timeout=10)
        first = processor(s, client, where == "cluster")
        i = 0
        with pytest.raises(Crash):
            for i, (lo, hi) in enumerate(batches):  # noqa: B007 - i says where it died
                await first.process(raw[lo:hi])
        # What a kill -9 leaves: the fence, the plan, progress markers, and a lease that only
        # expires (the dead worker never released it).
        meta = sync.hgetall(keys.meta)
        assert meta[b"rescaling"] == b"1" and b"rescale_to" in meta
        assert list(sync.scan_iter(match=f"{s.key_prefix}:*:rescaled")), "it died with keys part done"
        sync.set(rescale.lease_key(keys), "dead-worker", px=1500)
        second = processor(s, client, where == "cluster")
        for lo, hi in batches[i:]:
            await second.process(raw[lo:hi])
        await client.aclose()
        return i

    died_at = asyncio.run(run())
    assert died_at > 0 and calls["crashed"]
    snap = read_redis(sync, keys)
    assert snap.meta.get("rescaling") == "0" and "rescale_to" not in snap.meta
    assert_equals_oracle(snap, st)  # no key multiplied twice, none skipped
    leftover = [k for k in sync.scan_iter(match=f"{s.key_prefix}:*:rescaled")]
    assert leftover == [], leftover  # the finished plan's progress markers are gone
    sync.close()


def test_the_worker_refuses_a_store_in_another_score_format(settings: Settings, rds: redis.Redis) -> None:
    keys = Keys(settings.key_prefix)
    check_score_format(rds, keys)  # a fresh store: it is given this version's scale
    assert float(rds.hget(keys.meta, "score_scale")) == SCORE_SCALE
    check_score_format(rds, keys)  # and accepted from then on
    rds.hset(keys.meta, "score_scale", "1024.0")
    with pytest.raises(StoreFormatError, match="score_scale '1024.0'"):
        check_score_format(rds, keys)
    rds.hdel(keys.meta, "score_scale")
    rds.hset(keys.meta, "landmark", "1700000000.0")  # state written before fixed-point scores
    with pytest.raises(StoreFormatError, match="no score_scale"):
        check_score_format(rds, keys)
