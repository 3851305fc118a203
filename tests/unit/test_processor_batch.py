"""BatchProcessor policies without I/O: outages are retried, bad data and poison records dead-lettered.

The store is a small in-memory stand-in for :class:`driftrec.streams.redis_state.RedisState` (offset guard
as the Lua script has it) over :class:`driftrec.models.online.InMemoryState`; the real script is covered by
the integration tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pytest
import redis.exceptions

from driftrec.events import TOMBSTONE_TYPE
from driftrec.models.online import BatchDelta, InMemoryState
from driftrec.settings import Settings
from driftrec.streams.processor import Backoff, BatchProcessor, DeadLetter, RawRecord, is_retryable
from driftrec.streams.redis_state import APPLIED, STALE_OFFSETS, BatchContext

S = Settings(kafka_bootstrap_servers="x:1", redis_url="redis://x:1/0")


class MemoryStore:
    def __init__(self) -> None:
        self.mem = InMemoryState.from_settings(S, user_items_k=S.history_len, user_cats_k=32)
        self.landmark: float | None = None
        self.fail_loads: list[BaseException] = []
        self.poison_item: str | None = None
        self.applies = 0

    async def load(self, users: Iterable[str], partitions: Iterable[int], *, user_extra: str = "",
                   items: Iterable[str] = ()) -> BatchContext:
        if self.fail_loads:
            raise self.fail_loads.pop(0)
        stored = {p: str(self.mem.offsets.get(p, -1)) for p in partitions}
        hists = {u: self.mem.history(u)[-S.cooc_window:] for u in users}
        return BatchContext(stored, self.landmark, hists,
                            landmark_raw=repr(self.landmark) if self.landmark is not None else None,
                            user_vecs={u: (None, None) for u in users},
                            item_vecs={i: (None, None) for i in items})

    async def load_item_vecs(self, items: Iterable[str]) -> dict[str, Any]:
        return {i: (None, None) for i in items}

    async def apply(self, delta: BatchDelta, ctx: BatchContext, landmark: float | None,
                    vectors: Any = None) -> int:
        if self.poison_item is not None and self.poison_item in delta.pop:
            raise RuntimeError("a bug this item trips")
        for p in delta.offsets:
            if str(self.mem.offsets.get(p, -1)) != ctx.stored_offsets.get(p, "-1"):
                return STALE_OFFSETS
        self.applies += 1
        if landmark is None:
            self.mem.offsets.update(delta.offsets)
            return APPLIED
        if self.landmark is None:
            self.landmark = self.mem.landmark = landmark
        assert self.mem.apply(delta)
        return APPLIED


def _rec(off: int, value: Any, part: int = 0) -> RawRecord:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return RawRecord("clicks", part, off, raw)


def _good(off: int, item: str = "i1", user: str = "u1") -> RawRecord:
    return _rec(off, {"event_id": f"e{off}", "user_id": user, "item_id": item, "type": "view",
                      "timestamp": 1_700_000_000 + off, "category": "c"})


def _processor(store: MemoryStore, sent: list[DeadLetter]) -> BatchProcessor:
    async def sink(dead: Sequence[DeadLetter]) -> None:
        sent.extend(dead)

    from driftrec.streams.published import FactorCache

    factors = FactorCache(None, None, 0.1)  # type: ignore[arg-type]  # never asked to load: no model
    proc = BatchProcessor(S, store, sink, factors, backoff=Backoff(0.001, 0.002))  # type: ignore[arg-type]
    return proc


def test_bad_data_is_dead_lettered_and_moves_the_offset() -> None:
    store, sent = MemoryStore(), []
    proc = _processor(store, sent)
    records = [_good(0), _rec(1, b"{nope"), _good(2, "i2"), _rec(3, {"user_id": "u1"}), _rec(4, b"x" * 20000)]
    out = asyncio.run(proc.process(records))
    assert out.applied == 2 and store.mem.offsets == {0: 4}
    reasons = {d.record.offset: d.reason for d in sent}
    assert reasons[1].startswith("not valid JSON") and reasons[3] == "event_id: field required"
    assert "limit" in reasons[4]
    # Replayed, nothing is applied or sent again.
    again = asyncio.run(proc.process(records))
    assert again.applied == 0 and len(sent) == 3 and again.skipped == 2


def test_outages_are_waited_out() -> None:
    store, sent = MemoryStore(), []
    store.fail_loads = [redis.exceptions.ConnectionError("down"), redis.exceptions.TimeoutError("slow"),
                        redis.exceptions.ResponseError("LOADING Redis is loading the dataset")]
    out = asyncio.run(_processor(store, sent).process([_good(0), _good(1)]))
    assert out.applied == 2 and out.attempts == 4 and not sent


def test_a_poison_record_is_isolated_and_dead_lettered_the_rest_applied() -> None:
    store, sent = MemoryStore(), []
    proc = _processor(store, sent)
    asyncio.run(proc.process([_good(0, "warm-up")]))
    store.poison_item = "boom"
    records = [_good(1, "a"), _good(2, "b"), _good(3, "boom"), _good(4, "c"), _good(5, "d")]
    out = asyncio.run(proc.process(records))
    assert out.applied == 4
    assert [d.record.offset for d in sent] == [3]
    assert sent[0].reason.startswith("internal: RuntimeError")
    assert store.mem.offsets == {0: 5} and set(store.mem.pop) == {"warm-up", "a", "b", "c", "d"}


def test_a_failure_before_anything_was_applied_is_retried_longer() -> None:
    store, sent = MemoryStore(), []
    proc = _processor(store, sent)
    proc.poison_after, proc.poison_after_cold = 2, 5
    store.poison_item = "boom"
    calls = 0
    orig = store.apply

    async def counting(*a: Any, **kw: Any) -> int:
        nonlocal calls
        calls += 1
        return await orig(*a, **kw)

    store.apply = counting  # type: ignore[method-assign]
    asyncio.run(proc.process([_good(0, "boom")]))
    assert calls == 5 + 1  # five failed tries, then the dead letter's offset is stored
    assert [d.record.offset for d in sent] == [0]


def test_retryable_classification() -> None:
    assert is_retryable(redis.exceptions.ConnectionError())
    assert is_retryable(redis.exceptions.ResponseError("OOM command not allowed"))
    assert not is_retryable(redis.exceptions.ResponseError("ERR user_script:1: bad"))
    assert not is_retryable(ValueError())


@pytest.mark.parametrize("value", [None, b"", b"[]", b"\xff\xfe"])
def test_never_raises_on_any_value(value: bytes | None) -> None:
    store, sent = MemoryStore(), []
    out = asyncio.run(_processor(store, sent).process([RawRecord("clicks", 0, 0, value)]))
    assert out.applied == 0 and len(sent) == 1


def test_an_event_dated_past_the_workers_clock_is_dead_lettered_and_places_no_landmark() -> None:
    store, sent = MemoryStore(), []
    proc = _processor(store, sent)
    future = time.time() + 2 * S.max_future_skew_s  # a click "from next year" would round every score to 0
    records = [_good(0), _rec(1, {"event_id": "e1", "user_id": "u1", "item_id": "i9", "type": "view",
                                  "timestamp": future}), _good(2, "i2")]
    out = asyncio.run(proc.process(records))
    assert out.applied == 2 and [d.record.offset for d in sent] == [1]
    assert sent[0].reason.startswith("timestamp:") and "max_future_skew_s" in sent[0].reason
    assert store.landmark == 1_700_000_000 and "i9" not in store.mem.pop and store.mem.offsets == {0: 2}


def test_a_tombstone_neither_places_nor_moves_the_landmark() -> None:
    store, sent = MemoryStore(), []
    proc = _processor(store, sent)

    def tomb(off: int) -> RawRecord:  # as DELETE /v1/users/{id} sends it: stamped with the reader's clock
        return _rec(off, {"event_id": f"f{off}", "user_id": "u9", "item_id": "", "type": TOMBSTONE_TYPE,
                          "timestamp": time.time()})

    assert asyncio.run(proc.process([tomb(0)])).applied == 1
    assert store.landmark is None and store.mem.offsets == {0: 0} and not sent
    assert asyncio.run(proc.process([_good(1), tomb(2), _good(3)])).applied == 3
    assert store.landmark == 1_700_000_001  # the first click's time, not the tombstone's (now)
