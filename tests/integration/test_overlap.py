"""Overlapped micro-batches on real Redis: planning a batch while Redis applies the one before
it (``BatchProcessor.feed``) leaves exactly the state applying them one after another leaves.

``feed`` loads the next batch ahead of the held batch's apply and reads the keys that apply
writes from its :class:`~driftrec.streams.redis_state.Carry`; a wrong carried value (a history, a user
or item vector, an offset) would change that batch's plan and show up here as a differing key.
Also: what ``feed`` hands back (every batch once, in order), a held batch another writer got
to first, and a Redis error while a batch is in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import orjson
import pytest
import redis
import redis.asyncio as aioredis
import redis.exceptions

from driftrec.keys import Keys
from driftrec.modelformat import pack_factors
from driftrec.online.routes_users import tombstone
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.streams import metrics
from driftrec.streams.forget import Forgetter
from driftrec.streams.processor import BatchOutcome, BatchProcessor, DeadLetter, RawRecord
from driftrec.streams.published import FactorCache
from driftrec.streams.redis_state import RedisState
from tests.integration.test_forget_stores import produce

pytestmark = pytest.mark.integration

BATCH = 400


def dump(r: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key of ``prefix`` with its whole value (sorted sets with their exact scores)."""
    out: dict[str, Any] = {}
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        kind, name = r.type(key), key.decode().replace(prefix, "P", 1)
        if kind == b"zset":
            out[name] = r.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            out[name] = sorted(r.hgetall(key).items())
        elif kind == b"string":
            out[name] = r.get(key)
        else:
            out[name] = kind
    return out


class Worker:
    """A processor with ISGD vectors and forgetting on, on its own key prefix, collecting dead letters."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.client = aioredis.Redis.from_url(s.redis)
        keys = Keys(s.key_prefix)
        self.state = RedisState(self.client, keys, s.clicks_topic, window=s.cooc_window, history_len=s.history_len,
                                neighbours_k=s.neighbours_cut, trending_k=s.trending_k)
        self.dead: list[DeadLetter] = []

        async def sink(dead: Any) -> None:
            self.dead.extend(dead)

        self.proc = BatchProcessor(s, self.state, sink, FactorCache(self.client, keys, s.fold_in_regularization),
                                   forgets=Forgetter(s))


@pytest.fixture()
def prefixes(settings: Settings) -> Iterator[Callable[[str], Settings]]:
    """Settings on further key prefixes of this test (removed afterwards)."""
    made: list[str] = []

    def make(suffix: str) -> Settings:
        made.append(f"{settings.key_prefix}{suffix}")
        return settings.model_copy(update={"key_prefix": made[-1]})

    yield make
    r = redis.Redis.from_url(settings.redis)
    for prefix in made:
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(key)
    r.close()


def records(s: Settings, n: int, *, seed: int, forget: str | None = None) -> list[RawRecord]:
    """Simulator clicks (a few invalid, and a tombstone for ``forget`` two thirds in) on the test's topic."""
    events: list[dict[str, Any]] = list(ShopSimulator(n_users=300, n_items=900, n_categories=6, seed=seed).events(n))
    if forget is not None:
        at = 2 * n // 3
        events.insert(at, tombstone(forget, now=events[at]["timestamp"]).model_dump(mode="json", exclude_none=True))
    sent = asyncio.run(produce(s, events))
    raw = [RawRecord(s.clicks_topic, r.partition, r.offset, r.value) for r in sent]
    # Invalid records where valid ones were: dead letters, and offsets that move all the same.
    for j in range(7, len(raw), 311):
        raw[j] = RawRecord(raw[j].topic, raw[j].partition, raw[j].offset, b"{not json" if j % 2 else
                           orjson.dumps({"user_id": "u1", "item_id": "i1", "type": "teleport", "timestamp": 1.7e9}))
    return raw


def counts(since: dict[str, float] | None = None) -> dict[str, float]:
    """``driftrec_worker_batches_total`` by path (less ``since``)."""
    now = {k: metrics.BATCHES.labels(k)._value.get() for k in ("overlapped", "alone", "in_turn")}
    return {k: v - (since or {}).get(k, 0.0) for k, v in now.items()}


def batches(raw: list[RawRecord]) -> list[list[RawRecord]]:
    return [raw[i:i + BATCH] for i in range(0, len(raw), BATCH)]


async def serially(w: Worker, cut: list[list[RawRecord]]) -> list[BatchOutcome]:
    try:
        return [await w.proc.process(b) for b in cut]
    finally:
        await w.client.aclose()


async def overlapped(w: Worker, cut: list[list[RawRecord]], parsed: list[tuple[int, int]] | None = None,
                     ) -> list[tuple[object, BatchOutcome]]:
    """Feed ``cut`` as the worker does, each batch with the next one as ``upcoming``. With
    ``parsed``, each parse is recorded as (index of the batch parsed, index of the feed running)."""
    if parsed is not None:
        parse = w.proc.parse
        running = [-1]

        def recorded(records: Any) -> Any:
            at = [j for j, b in enumerate(cut) if b is records]  # cut[9] is cut[4]: the one fed now or next
            j = next((j for j in at if j in (running[0], running[0] + 1)), at[0] if at else None)
            if j is not None:  # not records the processor read itself (a forget reads the user's)
                parsed.append((j, running[0]))
            return parse(records)
        w.proc.parse = recorded  # type: ignore[method-assign]
    try:
        done = []
        for i, b in enumerate(cut):
            if parsed is not None:
                running[0] = i
            done += await w.proc.feed(b, i, upcoming=cut[i + 1] if i + 1 < len(cut) else None)
        return done + await w.proc.flush()
    finally:
        await w.client.aclose()


def test_overlapped_batches_leave_exactly_what_serial_batches_leave(settings: Settings, rds: redis.Redis,
                                                                   prefixes: Callable[[str], Settings]) -> None:
    raw = records(settings, 6000, seed=31, forget="u17")
    cut = batches(raw)
    cut.insert(9, cut[4])  # a batch delivered twice (a replay after a rebalance): skipped
    one, two = Worker(prefixes("a")), Worker(prefixes("b"))
    serial = asyncio.run(serially(one, cut))
    before = counts()
    parsed: list[tuple[int, int]] = []
    done = asyncio.run(overlapped(two, cut, parsed))
    # In turn: the batch with the tombstone, and the replayed one (nothing to apply). Planned with
    # nothing in flight: the first, and the ones after those two. Every other one overlapped.
    assert counts(before) == {"overlapped": len(cut) - 5, "alone": 3, "in_turn": 2}
    # Each batch parsed once (cut[9] is cut[4]: parsed again as the batch it is); those fed after
    # an overlapped batch were parsed while Redis applied the batch before them.
    assert sorted(j for j, _ in parsed) == list(range(len(cut)))
    ahead = [j for j, running in parsed if running == j - 1]
    assert len(ahead) >= len(cut) - 6 and all(running in (j, j - 1) for j, running in parsed)

    assert [t for t, _ in done] == list(range(len(cut)))  # every batch once, in the order fed
    assert [(o.applied, o.skipped) for _, o in done] == [(o.applied, o.skipped) for o in serial]
    assert sum(o.applied for o in serial) > 5000
    assert serial[9].applied == 0 and serial[9].skipped > 0
    r = redis.Redis.from_url(settings.redis)
    a, b = dump(r, one.s.key_prefix), dump(r, two.s.key_prefix)
    assert any(k.endswith(":vec") for k in a)  # ISGD vectors were written (and compared)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    # Each dead letter sent once, with the same reason.
    assert sorted((d.record.offset, d.record.partition, d.reason) for d in one.dead) == \
        sorted((d.record.offset, d.record.partition, d.reason) for d in two.dead)
    bad = [r for r in raw if r.value is not None and (r.value.startswith(b"{not") or b"teleport" in r.value)]
    assert len(bad) >= 10 and len(one.dead) == len(bad)


def publish_model(s: Settings, item_ids: list[str], version: str = "m1") -> None:
    """Item factors for ``item_ids`` as the live model of ``s``'s prefix (fold-in mode)."""
    r = redis.Redis.from_url(s.redis)
    keys = Keys(s.key_prefix)
    y = np.random.default_rng(5).normal(0, 0.1, (len(item_ids), s.factors))
    for part, blob in pack_factors(item_ids, y, alpha=2.0, regularization=s.fold_in_regularization).items():
        r.set(keys.model_blob(version, part), blob)
    r.set(keys.model_current, version)
    r.close()


def test_overlapped_fold_in_batches_leave_exactly_what_serial_batches_leave(
        settings: Settings, prefixes: Callable[[str], Settings]) -> None:
    """With a published model the batch folds each user in against the item factors (and keeps
    the decayed item weights the fold-in reads): the carried user HASHes must be exact here too.
    A third of the items are not in the model (new since the training)."""
    raw = records(settings, 4000, seed=34, forget="u23")
    cut = batches(raw)
    in_model = [f"i{j}" for j in range(900) if j % 3]
    one, two = prefixes("fa"), prefixes("fb")
    for s in (one, two):
        publish_model(s, in_model)
    w1, w2 = Worker(one), Worker(two)
    serial = asyncio.run(serially(w1, cut))
    early = w2.state.load_then_apply
    calls = []

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await early(*args, **kwargs)

    w2.state.load_then_apply = counted  # type: ignore[method-assign]
    before = counts()
    done = asyncio.run(overlapped(w2, cut))
    assert counts(before) == {"overlapped": len(cut) - 3, "alone": 2, "in_turn": 1}  # the forget's batch in turn
    assert len(calls) >= len(cut) - 4  # the apply went out before the next load's reply was decoded
    assert [t for t, _ in done] == list(range(len(cut)))
    assert [(o.applied, o.skipped) for _, o in done] == [(o.applied, o.skipped) for o in serial]
    r = redis.Redis.from_url(settings.redis)
    a, b = dump(r, one.key_prefix), dump(r, two.key_prefix)
    vecs = [k for k in a if k.endswith(":vec")]
    assert len(vecs) > 100 and all(a[k].startswith(b"m1\0") for k in vecs)  # fold-in vectors, not ISGD
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_a_held_batch_another_writer_applied_first_is_skipped_not_applied_twice(
        settings: Settings, prefixes: Callable[[str], Settings]) -> None:
    raw = records(settings, 1600, seed=32)
    cut = batches(raw)
    ref, s = Worker(prefixes("ref")), prefixes("x")
    asyncio.run(serially(ref, cut))

    async def race() -> list[tuple[object, BatchOutcome]]:
        w, other = Worker(s), Worker(s)
        try:
            done = await w.proc.feed(cut[0], 0)
            assert done == [] and w.proc.holding
            await other.proc.process(cut[0])  # another writer gets there first
            await other.proc.process(cut[1])
            for i in range(1, len(cut)):
                done += await w.proc.feed(cut[i], i)
            return done + await w.proc.flush()
        finally:
            await w.client.aclose()
            await other.client.aclose()

    done = asyncio.run(race())
    assert [t for t, _ in done] == list(range(len(cut)))
    assert done[0][1].applied == 0 and done[1][1].applied == 0  # the other writer's
    r = redis.Redis.from_url(settings.redis)
    a, b = dump(r, ref.s.key_prefix), dump(r, s.key_prefix)
    assert [k for k in a.keys() | b.keys() if a.get(k) != b.get(k)] == []


@pytest.mark.parametrize("fold_in", [False, True], ids=["isgd", "fold_in"])
def test_a_redis_error_while_a_batch_is_in_flight_loses_nothing(settings: Settings,
                                                               prefixes: Callable[[str], Settings],
                                                               fold_in: bool) -> None:
    """A lost send and a lost reply; with a published model the apply goes out before the next
    load's reply is decoded (``RedisState.load_then_apply``), through the same ``send_apply``."""
    raw = records(settings, 4000, seed=33)
    cut = batches(raw)
    s_ref, s_w = prefixes("ref"), prefixes("y")
    if fold_in:
        for s in (s_ref, s_w):
            publish_model(s, [f"i{j}" for j in range(900)])
    ref, w = Worker(s_ref), Worker(s_w)
    serial = asyncio.run(serially(ref, cut))
    send = w.state.send_apply
    calls = []

    async def flaky(prepared: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # not sent: Redis never ran it
            raise redis.exceptions.ConnectionError("connection reset")
        pending = await send(prepared)
        if len(calls) != 3:
            return pending

        async def lost_reply() -> int:  # Redis ran it, the worker never hears so
            await pending
            raise redis.exceptions.ConnectionError("connection reset")
        return asyncio.ensure_future(lost_reply())

    w.state.send_apply = flaky  # type: ignore[method-assign]
    done = asyncio.run(overlapped(w, cut))
    assert len(calls) >= 5
    assert [t for t, _ in done] == list(range(len(cut)))
    # The batch whose reply was lost was applied once: its retry found its offsets stored and skipped it.
    assert sum(o.applied + o.skipped for _, o in done) == sum(o.applied + o.skipped for o in serial)
    assert sum(o.applied for _, o in done) < sum(o.applied for o in serial)
    r = redis.Redis.from_url(settings.redis)
    a, b = dump(r, ref.s.key_prefix), dump(r, w.s.key_prefix)
    assert [k for k in a.keys() | b.keys() if a.get(k) != b.get(k)] == []
