"""Forgetting a user subtracts their share: the negated plan, the store's subtraction, the processor."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.events import TOMBSTONE_TYPE
from driftrec.models.decay import DecayPolicy
from driftrec.models.forget import ForgettingState, events_to_forget, forget_share, subtract_share
from driftrec.models.online import FORGET_RESIDUE, BatchDelta, EventView, InMemoryState
from driftrec.streams.forget import Forgetter
from driftrec.streams.processor import Backoff, BatchProcessor, DeadLetter, RawRecord
from tests.unit.test_online_batch import (
    BIG,
    WEIGHTS,
    assert_same,
    cuts,
    ev,
    params,
    plan,
    streams,
    tolerance,
    units,
)
from tests.unit.test_processor_batch import MemoryStore, S

TOMB = TOMBSTONE_TYPE


def _state(p: dict[str, Any], cls: type[InMemoryState] = InMemoryState) -> InMemoryState:
    # max_exponent 3 moves the landmark often within a 200 s stream when the half-life is 20 s.
    return cls(DecayPolicy(p["half_life"], max_exponent=p.get("max_exponent", 3.0)), WEIGHTS, window=p["window"],
               window_s=p["window_s"], history_len=p["history_len"], neighbours_k=BIG, trending_k=BIG)


SHARED = ("pop", "trend", "cooc")
EVERYTHING = (*SHARED, "user_items", "user_cats", "hist")


def snapshot(state: InMemoryState, now: float, parts: Sequence[str] = EVERYTHING) -> dict[str, Any]:
    """The state's scores read at ``now`` (independent of its landmark), histories as stored."""
    def vals(row: dict[str, float]) -> dict[str, float]:
        return {k: state.value(v, now) for k, v in row.items()}

    out: dict[str, Any] = {}
    for name in parts:
        table = getattr(state, name)
        if name == "pop":
            out[name] = vals(table)
        elif name == "hist":
            out[name] = table
        else:
            out[name] = {k: vals(row) for k, row in table.items()}
    return out


def assert_close(a: Any, b: Any, events: Sequence[EventView], *states: InMemoryState) -> None:
    """Equal, bit for bit while no state moved its landmark (whole-number scores add exactly,
    so a subtracted share leaves exactly what was never added); within the fixed point's
    rounding after a rescale (see :func:`tests.unit.test_online_batch.tolerance`)."""
    assert_same(a, b, tol=tolerance(list(events), *states))


def without_forgotten(events: Sequence[EventView]) -> list[EventView]:
    """The stream as if every forgotten click had never been sent: each user's events up to their
    last tombstone (and the tombstones) removed."""
    last: dict[str, tuple[int, int]] = {}
    for e in events:
        if e.type == TOMB:
            last[e.user] = max(last.get(e.user, (-1, -1)), (e.partition, e.offset))
    return [e for e in events if e.type != TOMB and (e.partition, e.offset) > last.get(e.user, (-1, -1))]


# --- the segments and the negated plan, by hand ---------------------------------------------

def test_each_new_tombstone_takes_the_segment_it_closes() -> None:
    log = [ev("u", "a", 0, 0), ev("v", "x", 1, 1), ev("u", "", 2, 2, type=TOMB),
           ev("u", "b", 3, 3), ev("u", "c", 4, 4), ev("u", "", 5, 5, type=TOMB),
           ev("u", "d", 6, 6), ev("u", "", 7, 7, type=TOMB)]
    got, from_start = events_to_forget(log, {(0, 5), (0, 7)})
    assert [e.offset for e in got] == [3, 4, 5, 6, 7]  # not a: the tombstone at 2 took it before
    assert from_start == set()
    got, from_start = events_to_forget(log + log[:1], {(0, 2)})  # repeats count once
    assert [e.offset for e in got] == [0, 2] and from_start == {"u"}
    assert events_to_forget(log, set()) == ([], set())


def test_the_share_is_the_users_events_planned_alone() -> None:
    # half-life 10 s, landmark 0: factors 2^(t/10).
    events = [ev("u", "a", 0, 0, cat="x"), ev("u", "b", 10, 1, cat="x"), ev("u", "", 20, 2, type=TOMB)]
    share = forget_share(events, DecayPolicy(10.0), WEIGHTS, 0.0, window=10, window_s=1e9, history_len=50)
    assert share.pop == units({"a": 1.0, "b": 2.0})
    assert share.trend == {"x": units({"a": 1.0, "b": 2.0})}
    assert share.cooc == {"a": units({"b": 2.0}), "b": units({"a": 2.0})}
    # Added to a batch: the user's increments cancel, another user's stay.
    delta = plan([ev("u", "b", 10, 1, cat="x"), ev("w", "a", 10, 0, part=1)])
    subtract_share(delta, share)
    assert delta.pop == units({"a": 2.0 - 1.0, "b": 0.0})
    assert delta.pop["b"] == 0.0  # whole units cancel exactly: a pure subtraction of nothing
    with pytest.raises(ValueError):
        subtract_share(plan([ev("w", "a", 10, 0)], landmark=5.0), share)


def test_the_store_subtracts_skips_missing_members_and_drops_residue() -> None:
    state = _state({"half_life": 10.0, "window": 3, "window_s": 1e9, "history_len": 5})
    state.pop = {"a": 3.0, "b": 1.0}
    state.cooc = {"a": {"b": 1.0}}
    delta = BatchDelta(pop={"a": -1.0, "b": -1.0 * (1 + 1e-15), "c": -2.0, "d": 0.0},
                       cooc={"a": {"b": -1.0}, "z": {"a": -1.0}})
    assert state.apply(delta)
    assert state.pop == {"a": 2.0}  # b left at rounding level: gone; c, d never there: not added
    assert state.cooc == {}  # a's row emptied, z's never existed
    assert FORGET_RESIDUE < 1e-6


# --- properties ------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(events=streams(), p=params, data=st.data())
def test_applying_a_users_events_then_their_negated_share_equals_never_applying_them(
        events: list[EventView], p: dict, data: Any) -> None:
    events = [e for e in events if e.type != TOMB]
    if not events:
        return
    victim = data.draw(st.sampled_from(sorted({e.user for e in events})))
    mine = [e for e in events if e.user == victim]
    seen, never = _state(p), _state(p)
    bounds = cuts(data.draw, len(events))
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        seen.process(events[lo:hi])
        never.process([e for e in events[lo:hi] if e.user != victim])
    part = mine[0].partition
    tomb = ev(victim, "", max(e.t for e in events), max(e.offset for e in events if e.partition == part) + 1,
              type=TOMB, part=part)
    delta = seen.plan([tomb])
    share = forget_share(mine + [tomb], seen.policy, seen.weights, delta.landmark, window=seen.window,
                         window_s=seen.window_s, history_len=seen.history_len)
    subtract_share(delta, share)
    assert seen.apply(delta)
    now = max(e.t for e in events)
    assert_close(snapshot(seen, now), snapshot(never, now), events, seen, never)


@settings(max_examples=300, deadline=None)
@given(events=streams(), p=params, data=st.data())
def test_forgetting_state_equals_a_stream_without_the_forgotten_clicks(
        events: list[EventView], p: dict, data: Any) -> None:
    """Tombstones anywhere, the stream cut anywhere: in-batch clicks before a tombstone net out."""
    forgetting, clean = _state(p, ForgettingState), _state(p)
    bounds = cuts(data.draw, len(events))
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        forgetting.process(events[lo:hi])
    clean.process(without_forgotten(events))
    now = max(e.t for e in events)
    assert_close(snapshot(forgetting, now), snapshot(clean, now), events, forgetting, clean)


@settings(max_examples=100, deadline=None)
@given(events=streams(), p=params, data=st.data())
def test_a_replayed_tombstone_does_not_subtract_twice(events: list[EventView], p: dict, data: Any) -> None:
    once, replayed = _state(p, ForgettingState), _state(p, ForgettingState)
    once.process(events)
    k = data.draw(st.integers(0, len(events)))
    j = data.draw(st.integers(0, k))
    replayed.process(events[:k])
    replayed.process(events[j:])  # a crash after k: the consumer restarts from j <= k
    assert replayed.process(events).applied == 0
    now = max(e.t for e in events)
    assert_close(snapshot(replayed, now), snapshot(once, now), events, replayed, once)


# --- the processor: read-back, negated share and apply in one batch ------------------------------


class FakeTopic:
    """Records by partition, read back as :func:`driftrec.streams.gapfill.read_log` does."""

    def __init__(self, log_start: int = 0) -> None:
        self.rows: dict[int, list[tuple[int, bytes, bytes]]] = {}
        self.log_start = log_start
        self.reads = 0

    def add(self, event: dict[str, Any], part: int) -> RawRecord:
        rows = self.rows.setdefault(part, [])
        off = len(rows)
        value = orjson.dumps(event)
        rows.append((off, event["user_id"].encode(), value))
        return RawRecord(S.clicks_topic, part, off, value)

    async def read(self, ranges: Mapping[int, tuple[int | None, int]],
                   keys: Mapping[int, Collection[bytes]]) -> tuple[list[tuple[int, int, bytes | None]], dict[int, int]]:
        self.reads += 1
        out: list[tuple[int, int, bytes | None]] = []
        for p, (start, end) in ranges.items():
            first = self.log_start if start is None else max(start, self.log_start)
            out += [(p, o, v) for o, k, v in self.rows.get(p, []) if first <= o < end and k in keys[p]]
        return out, {p: self.log_start for p in ranges}


def click(n: int, user: str, item: str, type: str = "view") -> dict[str, Any]:
    return {"event_id": f"e{n}", "user_id": user, "item_id": item, "type": type,
            "timestamp": 1_700_000_000 + 60 * n, "category": f"c{int(item[1:]) % 2}"}


def forget(n: int, user: str) -> dict[str, Any]:
    return {"event_id": f"f{n}", "user_id": user, "item_id": "", "type": TOMB,
            "timestamp": 1_700_000_000 + 60 * n}


def _processor(store: MemoryStore, topic: FakeTopic, sent: list[DeadLetter]) -> BatchProcessor:
    async def sink(dead: Sequence[DeadLetter]) -> None:
        sent.extend(dead)

    return BatchProcessor(S, store, sink, None, backoff=Backoff(0.001, 0.002),  # type: ignore[arg-type]
                          forgets=Forgetter(S, topic.read))


@pytest.mark.parametrize("batch", [1, 4, 7, 100])
def test_the_processor_subtracts_the_read_back_share_in_the_tombstones_batch(batch: int) -> None:
    users, items = ["u1", "u2", "u3"], ["i1", "i2", "i3", "i4", "i5"]
    stream = [click(n, users[(n * 7) % 3], items[(n * 3 + n // 4) % 5], ("view", "purchase")[n % 3 == 0])
              for n in range(40)]
    stream.insert(25, forget(25, "u2"))
    stream.insert(33, forget(33, "u2"))  # a second forget takes only what came after the first
    stream.append(forget(99, "u1"))  # its clicks before it in the same batch net out
    topic = FakeTopic()
    records = [topic.add(e, part=int(e["user_id"][1:]) % 2) for e in stream]
    records.sort(key=lambda r: (r.offset, r.partition))  # partitions interleave, each in order
    store, sent = MemoryStore(), list[DeadLetter]()
    proc = _processor(store, topic, sent)
    for lo in range(0, len(records), batch):
        asyncio.run(proc.process(records[lo:lo + batch]))
    assert asyncio.run(proc.process(records)).applied == 0  # a whole replay subtracts nothing again

    views = proc.parse(records)[0]
    clean = InMemoryState.from_settings(S, user_items_k=S.history_len, user_cats_k=32)
    clean.process(without_forgotten(views))
    now = max(v.t for v in views)
    assert_close(snapshot(store.mem, now), snapshot(clean, now), views, store.mem, clean)
    with_tombstones = {i // batch for i, r in enumerate(records) if r.value and TOMB.encode() in r.value}
    assert sent == [] and topic.reads == len(with_tombstones)  # one read per such batch, not per replay
    assert "u1" not in store.mem.user_items and "u1" not in store.mem.hist
    assert store.mem.pop and "u3" in store.mem.user_items  # u3's clicks stay


def test_a_trimmed_log_is_counted_as_an_incomplete_forget() -> None:
    from driftrec.streams import metrics

    topic = FakeTopic(log_start=1)
    records = [topic.add(click(0, "u1", "i1"), 0), topic.add(click(1, "u1", "i2"), 0),
               topic.add(forget(2, "u1"), 0)]
    store, sent = MemoryStore(), list[DeadLetter]()
    proc = _processor(store, topic, sent)
    before = metrics.FORGETS_INCOMPLETE._value.get()
    asyncio.run(proc.process(records[1:]))  # the consumer starts at the log start too
    assert metrics.FORGETS_INCOMPLETE._value.get() == before + 1
    assert store.mem.pop == {}
