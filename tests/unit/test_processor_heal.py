"""Healing a Redis rollback without a new batch: the processor's ``heal`` and the committed
offsets the agent hands it (no I/O; the in-memory store of ``test_processor_batch``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest
import redis.exceptions
from faust.types import TP

from driftrec.settings import load_settings
from driftrec.streams.app import create_app
from driftrec.streams.batch_consumer import BatchConsumer
from driftrec.streams.processor import BatchProcessor, DeadLetter, RawRecord
from tests.unit.test_processor_batch import MemoryStore, _good, _processor


class LogFiller:
    """A topic in memory, read back as :class:`driftrec.streams.gapfill.KafkaGapFiller` reads Kafka."""

    max_records = 1000

    def __init__(self, records: list[RawRecord]) -> None:
        self.records = records
        self.asked: list[dict[int, tuple[int, int]]] = []

    async def fetch(self, gaps: Mapping[int, tuple[int, int]]) -> list[tuple[int, int, bytes | None]]:
        self.asked.append(dict(gaps))
        return [(r.partition, r.offset, r.value) for r in self.records
                if r.partition in gaps and gaps[r.partition][0] <= r.offset < gaps[r.partition][1]]


def _healing(store: MemoryStore, log: list[RawRecord], sent: list[DeadLetter]) -> tuple[BatchProcessor, LogFiller]:
    proc = _processor(store, sent)
    proc.gaps = filler = LogFiller(log)  # type: ignore[assignment]
    return proc, filler


LOG = [_good(o, item=f"i{o % 4}", user=f"u{o % 3}") for o in range(10)]


def _rolled_back(upto: int) -> MemoryStore:
    """A store holding only the records before ``upto``: Redis after losing the rest."""
    store = MemoryStore()
    asyncio.run(_processor(store, []).process(LOG[:upto]))
    return store


def _same_state(a: MemoryStore, b: MemoryStore) -> None:
    assert a.mem.offsets == b.mem.offsets
    assert a.mem.pop == pytest.approx(b.mem.pop, rel=1e-12)
    assert {u: a.mem.history(u) for u in ("u0", "u1", "u2")} == {u: b.mem.history(u) for u in ("u0", "u1", "u2")}


def test_heal_reads_back_what_redis_lost_after_the_last_batch() -> None:
    store, sent = MemoryStore(), list[DeadLetter]()
    proc, filler = _healing(store, LOG, sent)
    asyncio.run(proc.process(LOG))
    assert asyncio.run(proc.heal({0: 10})).applied == 0 and filler.asked[-1] == {}  # nothing lost
    proc.state = lost = _rolled_back(6)  # type: ignore[assignment]
    out = asyncio.run(proc.heal({0: 10}))
    assert out.applied == 4 and {0: (6, 10)} in filler.asked
    _same_state(lost, _rolled_back(10))
    assert asyncio.run(proc.heal({0: 10})).applied == 0  # once: the offsets now say so


def test_a_fresh_worker_heals_from_its_consumer_position_alone() -> None:
    lost = _rolled_back(3)
    proc, filler = _healing(lost, LOG, [])
    assert not proc.seen  # it never saw Redis accept anything: only the position tells
    assert asyncio.run(proc.heal({0: 10})).applied == 7
    _same_state(lost, _rolled_back(10))
    # A position Redis already stores beyond (applied, commit not yet done) reads nothing.
    assert asyncio.run(proc.heal({0: 4})).applied == 0 and filler.asked[-1] == {}


def test_heal_waits_out_outages_and_never_raises() -> None:
    lost = _rolled_back(5)
    proc, _ = _healing(lost, LOG, [])
    lost.fail_loads = [redis.exceptions.ConnectionError("down"), redis.exceptions.ResponseError("LOADING")]
    assert asyncio.run(proc.heal({0: 10})).applied == 5
    lost.poison_item = "i1"  # a bug a record read back trips: logged, nothing raised
    proc.state = broken = _rolled_back(5)  # type: ignore[assignment]
    broken.poison_item = "i1"
    assert asyncio.run(proc.heal({0: 10})).applied == 0
    assert broken.mem.offsets == {0: 4}


def test_without_a_gap_filler_heal_does_nothing() -> None:
    store = _rolled_back(2)
    proc = _processor(store, [])
    assert asyncio.run(proc.heal({0: 10})).applied == 0 and store.mem.offsets == {0: 1}


@pytest.fixture
def consumer(tmp_path: Path) -> BatchConsumer:
    s = load_settings(kafka_bootstrap_servers="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0", home=tmp_path)
    c = create_app(s).consumer
    assert isinstance(c, BatchConsumer)
    return c


def test_heal_reads_up_to_the_committed_offsets_of_the_topic(consumer: BatchConsumer) -> None:
    consumer._committed_offset.update({TP("clicks", 0): 120, TP("clicks", 1): None, TP("other", 0): 9})
    assert consumer.committed("clicks") == {0: 120}  # not fetched batches: those are not applied yet
    assert consumer.committed("nothing") == {}
