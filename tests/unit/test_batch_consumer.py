"""The batch consumer's fetch splitting and commit bookkeeping (no I/O, no broker)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest
from faust.types import TP

from driftrec.settings import load_settings
from driftrec.streams.app import create_app
from driftrec.streams.batch_consumer import Batch, BatchConsumer, split_fetch
from driftrec.streams.processor import RawRecord


@dataclass
class Row:
    offset: int
    value: bytes


def _rows(first: int, n: int) -> list[Row]:
    return [Row(o, b"%d" % o) for o in range(first, first + n)]


def test_split_keeps_order_limit_and_every_record() -> None:
    a, b = TP("t", 0), TP("t", 1)
    pending = [(a, _rows(10, 7)), (b, _rows(0, 2))]
    batches = list(split_fetch(pending, 4))
    assert [len(r) for r, _ in batches] == [4, 4, 1]
    flat = [(r.partition, r.offset) for records, _ in batches for r in records]
    assert sorted(flat) == sorted([(0, o) for o in range(10, 17)] + [(1, 0), (1, 1)])
    for p in (0, 1):  # offset order within a partition, across batches too
        offsets = [o for q, o in flat if q == p]
        assert offsets == sorted(offsets)
    assert batches[0][1] == {a: 11, b: 1}  # both partitions share the first batch
    assert batches[-1][1] == {a: 16}


def test_split_of_nothing_is_nothing() -> None:
    assert list(split_fetch([], 10)) == []
    assert list(split_fetch([(TP("t", 0), [])], 10)) == []


@pytest.fixture
def consumer(tmp_path: Path) -> BatchConsumer:
    s = load_settings(kafka_bootstrap_servers="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0", home=tmp_path)
    app = create_app(s)
    c = app.consumer
    assert isinstance(c, BatchConsumer)
    c.batch_topics["clicks"] = 100
    return c


def _batch(c: BatchConsumer, last: dict[TP, int]) -> Batch:
    return Batch([], last, 0, c)


def test_only_applied_batches_become_commit_offsets(consumer: BatchConsumer) -> None:
    tp0, tp1 = TP("clicks", 0), TP("clicks", 1)
    taken = _batch(consumer, {tp0: 41, tp1: 7})
    assert list(consumer._filter_tps_with_pending_acks()) == []  # taken, not applied: nothing
    taken.applied()
    assert set(consumer._filter_tps_with_pending_acks()) == {tp0, tp1}
    assert consumer._filter_committable_offsets([tp0, tp1]) == {tp0: 42, tp1: 8}  # next to read
    assert consumer._new_offset(tp0) is None  # handed out once


def test_an_older_batch_never_moves_the_offset_back(consumer: BatchConsumer) -> None:
    tp = TP("clicks", 0)
    _batch(consumer, {tp: 99}).applied()
    _batch(consumer, {tp: 50}).applied()
    assert consumer._new_offset(tp) == 100


def test_revoked_partitions_forget_their_applied_offsets(consumer: BatchConsumer) -> None:
    tp0, tp1 = TP("clicks", 0), TP("clicks", 1)
    _batch(consumer, {tp0: 5, tp1: 6}).applied()
    asyncio.run(consumer.on_partitions_revoked({tp0}))
    assert list(consumer._filter_tps_with_pending_acks()) == [tp1]


def test_wait_empty_waits_for_the_batch_in_flight(consumer: BatchConsumer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop or revoke commits only after the batch the agent is applying was applied."""
    from faust.transport.consumer import Consumer

    order: list[str] = []

    async def base_wait_empty(self: Consumer) -> None:  # Faust's part: commit what is applied
        order.append("commit " + repr(sorted(self._filter_committable_offsets([TP("clicks", 0)]).values())))

    monkeypatch.setattr(Consumer, "wait_empty", base_wait_empty)

    async def scenario() -> None:
        batch = _batch(consumer, {TP("clicks", 0): 3})
        consumer._in_flight += 1
        consumer._idle.clear()

        async def agent() -> None:
            await asyncio.sleep(0.05)
            order.append("applied")
            batch.applied()
            batch.release()

        task = asyncio.ensure_future(agent())
        await consumer.wait_empty()
        await task

    asyncio.run(scenario())
    assert order == ["applied", "commit [4]"]


class _Channel:
    topics = ("clicks",)

    def __aiter__(self) -> _Channel:
        return self

    async def __anext__(self) -> None:
        raise StopAsyncIteration


class _Stream:
    channel = _Channel()


def test_a_quiet_topic_gives_empty_batches_and_loses_no_batch(consumer: BatchConsumer) -> None:
    """With ``idle_s`` an empty batch comes while nothing arrives; a batch that arrives is yielded."""

    async def scenario() -> list[int]:
        sizes: list[int] = []
        it = consumer.batches(_Stream(), 100, idle_s=0.02)  # type: ignore[arg-type]
        first = await it.__anext__()
        sizes.append(len(first.records))
        first.release()
        gen = consumer.app.consumer_generation_id
        await consumer._handoff.put(Batch([RawRecord("clicks", 0, 5, b"{}")], {TP("clicks", 0): 5}, gen, consumer))
        second = await it.__anext__()
        sizes.append(len(second.records))
        second.release()
        await it.aclose()
        return sizes

    assert asyncio.run(scenario()) == [0, 1]
    assert consumer._in_flight == 0


async def test_the_worker_consumer_fetches_with_the_settings_batching(tmp_path: Path) -> None:
    """Faust builds the aiokafka consumer with no fetch_min_bytes; ours waits for the settings'."""
    s = load_settings(home=tmp_path, worker_fetch_min_bytes=12_345, worker_fetch_max_wait_ms=17)
    app = create_app(s)
    kafka = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
    try:
        assert (kafka._fetch_min_bytes, kafka._fetch_max_wait_ms) == (12_345, 17)
    finally:
        await kafka.stop()  # never started: closes its client
    defaults = load_settings(home=tmp_path)
    assert defaults.worker_fetch_min_bytes == 1 << 20 and defaults.worker_fetch_max_wait_ms == 20


def _assign(c: BatchConsumer, monkeypatch: pytest.MonkeyPatch, tps: set[TP]) -> None:
    monkeypatch.setattr(c, "assignment", lambda: set(tps))
    c._set_active_tps(set(tps))


def test_a_full_handoff_pauses_the_clicks_and_keeps_fetching_the_items(
        consumer: BatchConsumer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches the agent cannot take yet wait with the click partitions paused, so the fetch loop
    keeps serving the items topic; as the agent takes batches they move on in order, and the
    clicks are fetched again once none wait."""
    clicks0, clicks1, items0 = TP("clicks", 0), TP("clicks", 1), TP("items", 0)
    _assign(consumer, monkeypatch, {clicks0, clicks1, items0})
    fetched = [_batch(consumer, {clicks0: o}) for o in range(consumer.handoff_size + 3)]
    consumer._waiting.extend(fetched)
    consumer._refill()
    assert consumer._handoff.full() and len(consumer._waiting) == 3
    assert consumer._hold()  # the items partition is left to fetch
    assert consumer._get_active_partitions() == {items0}
    assert consumer._paused_partitions == {clicks0, clicks1}

    taken = []
    while not consumer._handoff.empty():
        taken.append(consumer._handoff.get_nowait())
        consumer._refill()  # what batches() does after each batch it takes
        if consumer._waiting:
            assert consumer._get_active_partitions() == {items0}
    assert taken == fetched
    assert consumer._get_active_partitions() == {clicks0, clicks1, items0}
    assert not consumer._paused_partitions and not consumer._held


def test_with_nothing_else_to_fetch_the_hold_says_so(consumer: BatchConsumer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    clicks0 = TP("clicks", 0)
    _assign(consumer, monkeypatch, {clicks0})
    assert not consumer._hold()  # the fetch loop then waits for the agent instead of fetching
    consumer._release_held()
    assert consumer._get_active_partitions() == {clicks0}


def test_a_rebalance_drops_waiting_batches_and_leaves_pausing_to_faust(
        consumer: BatchConsumer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A revoke stops the flow (the next owner re-reads the waiting batches) and forgets what this
    class paused; Faust pauses the assignment itself and its recovery resumes it."""
    clicks0, clicks1, items0 = TP("clicks", 0), TP("clicks", 1), TP("items", 0)
    _assign(consumer, monkeypatch, {clicks0, clicks1, items0})
    consumer._waiting.extend(_batch(consumer, {clicks0: o}) for o in range(consumer.handoff_size + 1))
    consumer._refill()
    consumer._hold()
    monkeypatch.setattr(consumer, "assignment", lambda: {clicks0, items0})
    asyncio.run(consumer.on_partitions_revoked({clicks1}))  # the app's callback calls stop_flow
    assert not consumer._waiting and consumer._handoff.empty() and not consumer._held
    consumer._refill()  # the agent's side after the rebalance: does not unpause Faust's pause
    assert not consumer._get_active_partitions()
    consumer.resume_partitions({clicks0, items0})  # Faust's recovery, once the rebalance is done
    assert consumer._get_active_partitions() == {clicks0, items0}
