"""Micro-batches applied in chunks of bounded cost (streams/chunked.py) on real Redis: the same
state as one script per batch, and exactly once when the worker dies between two chunks, whether
it is then restarted (a real ``kill -9``, compared with the in-memory oracle) or keeps sending its
chunks while another finishes the batch from its write-ahead copy; on Redis Cluster, a slot's
group over the budget applied in parts, once each across a crash between two of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from driftrec.keys import Keys
from driftrec.modelformat import pack_factors
from driftrec.publisher import publish_events
from driftrec.redis_conn import async_client, sync_client
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.streams import chunked
from driftrec.streams.cluster_state import ClusterRedisState, guard_key
from driftrec.streams.forget import Forgetter
from driftrec.streams.processor import BatchProcessor, DeadLetter, RawRecord
from driftrec.streams.published import FactorCache
from driftrec.streams.redis_state import RedisState
from tests.integration.test_overlap import batches, dump, prefixes, publish_model, records  # noqa: F401
from tests.integration.test_redis_cluster import _records as cluster_records
from tests.integration.test_write_path_guarantees import (
    _applied,
    _redis_offsets,
    _wait,
    assert_state_is_the_oracles,
)
from tools.chaos.stack import LocalRedisCluster
from tools.chaos.state import TopicRecord, build_oracle, compare, read_redis, views_of

pytestmark = pytest.mark.integration

#: A budget small enough that every batch takes many chunks and the big ops are split.
SMALL = 120


class Crash(BaseException):
    """The process dies here (BaseException: nothing on the way may catch it)."""


class Worker:
    """A processor with ISGD vectors (or fold-in, when a model is published) and forgetting on."""

    def __init__(self, s: Settings, chunk_cost: float) -> None:
        self.s = s
        self.client = aioredis.Redis.from_url(s.redis)
        keys = Keys(s.key_prefix)
        self.state = RedisState(self.client, keys, s.clicks_topic, window=s.cooc_window, history_len=s.history_len,
                                neighbours_k=s.neighbours_cut, trending_k=s.trending_k, chunk_cost=chunk_cost)
        self.state.session_index_k = s.session_index_k  # as `driftrec worker` sets it
        self.dead: list[DeadLetter] = []

        async def sink(dead: Any) -> None:
            self.dead.extend(dead)

        self.proc = BatchProcessor(s, self.state, sink, FactorCache(self.client, keys, s.fold_in_regularization),
                                   forgets=Forgetter(s))

    def dies_after(self, chunks: int, *, then_resume: asyncio.Event | None = None) -> None:
        """The next chunked apply sends begin and its first ``chunks`` chunks, then the process
        dies (Crash) or, with ``then_resume``, stalls until it is set and sends the rest."""
        state, send = self.state, self.state._chunks.send

        async def cut(commands: list[tuple[Any, ...]]) -> Any:
            state._chunks.send = send  # type: ignore[method-assign]
            head = await (await send(commands[:2 + chunks]))()  # the copy's SET, begin, chunks
            assert head[1][0] == 1 and all(r == 1 for r in head[2:]), head
            if then_resume is None:
                raise Crash()
            await then_resume.wait()
            rest = await send(commands[2 + chunks:])

            async def replies() -> list[Any]:
                return [*head, *await rest()]
            return replies

        state._chunks.send = cut  # type: ignore[method-assign]


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _serially(w: Worker, cut: list[list[RawRecord]]) -> None:
    try:
        for b in cut:
            await w.proc.process(b)
    finally:
        await w.client.aclose()


async def _overlapped(w: Worker, cut: list[list[RawRecord]]) -> None:
    try:
        for i, b in enumerate(cut):
            await w.proc.feed(b, i, upcoming=cut[i + 1] if i + 1 < len(cut) else None)
        await w.proc.flush()
    finally:
        await w.client.aclose()


def _no_batch_in_flight(r: redis.Redis, s: Settings) -> None:
    keys = Keys(s.key_prefix)
    assert not r.exists(chunked.inflight_key(keys), chunked.chunks_key(keys))
    assert not list(r.scan_iter(match=chunked.wal_key(keys, "*")))


def _differing(r: redis.Redis, a: Settings, b: Settings) -> list[str]:
    x, y = dump(r, a.key_prefix), dump(r, b.key_prefix)
    return sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))


@pytest.mark.parametrize("fold_in", [False, True], ids=["isgd", "fold_in"])
def test_chunked_batches_leave_exactly_what_one_script_per_batch_leaves(
        settings: Settings, prefixes: Callable[[str], Settings], fold_in: bool) -> None:  # noqa: F811
    raw = records(settings, 3000, seed=41, forget="u7")  # dead letters and a forget too
    cut = batches(raw)
    ref, serial, over = prefixes("ref"), prefixes("ser"), prefixes("ovl")
    if fold_in:
        for s in (ref, serial, over):
            publish_model(s, [f"i{j}" for j in range(900)])
    _run(_serially(Worker(ref, 0), cut))
    serial_worker = Worker(serial, SMALL)
    sent = serial_worker.state.commands_sent
    _run(_serially(serial_worker, cut))
    _run(_overlapped(Worker(over, SMALL), cut))
    assert serial_worker.state.commands_sent - sent > 20 * len(cut)  # many chunks a batch
    r = redis.Redis.from_url(settings.redis)
    assert len(dump(r, ref.key_prefix)) > 500
    assert _differing(r, ref, serial) == []
    assert _differing(r, ref, over) == []
    for s in (serial, over):
        _no_batch_in_flight(r, s)


@pytest.mark.parametrize("overlap", [False, True], ids=["serial", "overlapped"])
def test_a_batch_cut_off_between_chunks_is_finished_once_by_the_next_load(
        settings: Settings, prefixes: Callable[[str], Settings], overlap: bool) -> None:  # noqa: F811
    raw = records(settings, 2400, seed=42)
    cut = batches(raw)
    ref, s = prefixes("ref"), prefixes("x")
    _run(_serially(Worker(ref, 0), cut))
    r = redis.Redis.from_url(settings.redis)
    keys = Keys(s.key_prefix)

    async def dies() -> None:
        w = Worker(s, SMALL)
        try:
            for b in cut[:2]:
                await w.proc.process(b)
            w.dies_after(5)
            with pytest.raises(Crash):
                await (w.proc.feed(cut[2], 2) if overlap else w.proc.process(cut[2]))
                await w.proc.feed(cut[3], 3)  # overlapped: the held batch is sent with the next one
        finally:
            await w.client.aclose()

    _run(dies())
    inflight = r.hgetall(chunked.inflight_key(keys))
    assert inflight and len(set(inflight.values())) == 1
    (batch_id,) = set(inflight.values())
    assert r.hget(chunked.chunks_key(keys), batch_id) == b"5" and r.exists(chunked.wal_key(keys, batch_id.decode()))
    applied_before = _applied(r, s)

    async def restarted() -> int:
        w = Worker(s, SMALL)
        # The successor replays the whole stream (it does not know what was in): what is in is skipped.
        await _serially(w, cut)
        return w.state.recovered

    assert _run(restarted()) == 1
    assert _applied(r, s) > applied_before
    assert _differing(r, ref, s) == []
    _no_batch_in_flight(r, s)


def test_a_worker_that_keeps_sending_after_its_successor_finished_the_batch_changes_nothing(
        settings: Settings, prefixes: Callable[[str], Settings]) -> None:  # noqa: F811
    """A rebalance while a worker stalls mid-batch: the partition's next owner finishes the batch
    from its copy; the stalled worker then sends its remaining chunks and finish, all refused."""
    raw = records(settings, 2400, seed=43)
    cut = batches(raw)
    ref, s = prefixes("ref"), prefixes("x")
    _run(_serially(Worker(ref, 0), cut))
    r = redis.Redis.from_url(settings.redis)

    async def race() -> Any:
        stalled, successor = Worker(s, SMALL), Worker(s, SMALL)
        resume = asyncio.Event()
        try:
            await stalled.proc.process(cut[0])
            stalled.dies_after(3, then_resume=resume)
            first = asyncio.ensure_future(stalled.proc.process(cut[1]))
            while not r.exists(chunked.inflight_key(Keys(s.key_prefix))):
                await asyncio.sleep(0.01)
            for b in cut[1:]:
                await successor.proc.process(b)
            resume.set()
            return await first, successor.state.recovered
        finally:
            await stalled.client.aclose()
            await successor.client.aclose()

    outcome, recovered = _run(race())
    assert recovered == 1
    assert outcome.applied > 0  # the stalled worker's batch is in: by the successor, once
    assert _differing(r, ref, s) == []
    _no_batch_in_flight(r, s)


def test_kill_9_between_two_chunks_then_restart_equals_the_oracle(settings: Settings, spawn: Any) -> None:
    # Bounds no run reaches, so the result may not depend on how the stream was cut into batches.
    s = settings.model_copy(update={"neighbours_k": 5000, "trending_k": 5000, "history_len": 5000,
                                    "batch_max_events": 500, "apply_chunk_cost": 150.0})
    sim = ShopSimulator(n_users=150, n_items=600, n_categories=6, seed=9)
    events = list(sim.events(8000))
    r = redis.Redis.from_url(s.redis)
    keys = Keys(s.key_prefix)
    model_items = [f"i{j}" for j in range(480)]
    parts = pack_factors(model_items, np.random.default_rng(1).normal(0, 0.3, (480, 8)), alpha=2.0,
                         regularization=0.5)
    for part, blob in parts.items():
        r.set(keys.model_blob("v1", part), blob)
    r.set(keys.model_current, "v1")
    publish_events(s, events[:4000])
    # The first batch that has more than 7 chunks: the worker dies right after its 7th.
    doomed = spawn(["worker"], s.model_copy(update={"fault_exit_after_chunk": 7}))
    deadline = time.monotonic() + 90
    while doomed.alive():
        assert time.monotonic() < deadline, doomed.tail()
        time.sleep(0.1)
    assert doomed.proc is not None and doomed.proc.returncode == -9, doomed.tail()
    inflight = r.hgetall(keys.prefix + ":{g}:inflight")
    assert inflight, "the worker died with a batch in flight"
    (batch_id,) = {v.decode() for v in inflight.values()}
    assert r.hget(chunked.chunks_key(keys), batch_id) == b"7"
    assert r.exists(chunked.wal_key(keys, batch_id))
    at_kill = _applied(r, s)
    publish_events(s, events[4000:])

    restarted = spawn(["worker"], s)
    _wait(lambda: sum(_redis_offsets(r, s).values()) + s.topic_partitions == len(events), 120,
          "restart to catch up", restarted)
    assert _applied(r, s) == len(events), "every event applied exactly once"
    assert restarted.count_in_log("from its write-ahead copy") >= 1
    print(f"chunk crash test: killed with {at_kill} events applied and batch {batch_id} at chunk 7")
    _no_batch_in_flight(r, s)

    assert_state_is_the_oracles(r, s, keys, len(events))


def test_cluster_slot_groups_over_the_budget_are_applied_in_parts_once_across_a_crash(
        cluster: LocalRedisCluster) -> None:
    """Redis Cluster: the ``{g}`` slot's group (popularity, trending, categories of a whole batch)
    is applied in parts of bounded cost, each with a guard field of its own; a process that dies
    between two parts leaves the rest to the next load."""
    s = Settings(redis_url=cluster.url, kafka_bootstrap_servers="unused:1", key_prefix="clparts",
                 clicks_topic="clicks", apply_chunk_cost=SMALL, session_index_k=50)  # the index's ops too
    keys = Keys(s.key_prefix)
    records = cluster_records(3000, seed=8)
    sync = sync_client(s.redis)

    def raw(rs: list[TopicRecord]) -> list[RawRecord]:
        return [RawRecord(s.clicks_topic, r.partition, r.offset, r.value) for r in rs]

    def state(client: Any) -> ClusterRedisState:
        st = ClusterRedisState(client, keys, s.clicks_topic, window=s.cooc_window, history_len=s.history_len,
                               neighbours_k=s.neighbours_cut, trending_k=s.trending_k, chunk_cost=SMALL)
        st.session_index_k = s.session_index_k
        return st

    async def run() -> int:
        client = async_client(s.redis, socket_timeout=10)

        async def sink(dead: Any) -> None:
            raise AssertionError(dead)

        first = state(client)
        await BatchProcessor(s, first, sink).process(raw(records[:1000]))
        dying = state(client)

        async def dies(batch_id: str, groups: list[tuple[str, bytes]], finish: Any) -> None:
            g = guard_key(keys, key_slot(keys.popularity.encode()))
            parts = [j for j, (guard, _) in enumerate(groups) if guard == g]
            assert len(parts) > 3, "the {g} slot's group is cut into parts"
            await dying._scripts(dying._slot, [([guard], [p]) for guard, p in groups[:parts[2]]])
            raise Crash()
        dying._complete = dies  # type: ignore[method-assign]
        with pytest.raises(Crash):
            await BatchProcessor(s, dying, sink).process(raw(records[1000:2000]))
        again = state(client)
        for i in range(1000, len(records), 700):
            await BatchProcessor(s, again, sink).process(raw(records[i: i + 700]))
        await client.aclose()
        return again.recovered

    assert asyncio.run(run()) == 1
    g = guard_key(keys, key_slot(keys.popularity.encode()))
    assert any(b"#" in f for f in sync.hkeys(g)), "parts past the first have guard fields of their own"
    snap = read_redis(sync, keys)
    views, _ = views_of(records, s.event_types)
    cmp = compare(snap, build_oracle(s, views, float(snap.meta["landmark"])), s, session_index=True)
    assert cmp.equal, cmp.as_dict()
    assert snap.applied == len(records)
    sync.close()
