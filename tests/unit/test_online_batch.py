"""plan_batch and InMemoryState: hand-computed batches and stream-cutting properties."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.events import TOMBSTONE_TYPE
from driftrec.models.cooccurrence import window_partners
from driftrec.models.decay import SCORE_SCALE, DecayPolicy, EventWeights
from driftrec.models.online import BatchDelta, EventView, InMemoryState, plan_batch

WEIGHTS = EventWeights({"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0})
BIG = 10**9  # bounds that are never reached: no pruning
U = SCORE_SCALE  # stored units per unit of weight at the landmark


def units(d: dict[str, float]) -> dict[str, float]:
    """Hand-computed weights as the stored fixed-point scores (exact: the weights here are
    whole multiples of 1/SCORE_SCALE)."""
    return {k: v * U for k, v in d.items()}


def ev(user: str, item: str, t: float, off: int, type: str = "view", cat: str | None = None,
       part: int = 0) -> EventView:
    return EventView(user=user, item=item, type=type, t=t, category=cat, offset=off, partition=part)


def plan(events: list[EventView], *, histories: dict | None = None, applied: dict | None = None,
         half_life: float = 10.0, landmark: float = 0.0, window: int = 10,
         window_s: float = 1e9, history_len: int = 50) -> BatchDelta:
    return plan_batch(events, histories or {}, applied or {}, DecayPolicy(half_life), WEIGHTS,
                      landmark, window=window, window_s=window_s, history_len=history_len)


# --- hand-computed batches (half-life 10 s, landmark 0: factors are 2^(t/10)) ---------------

def test_one_user_batch_hand_computed() -> None:
    d = plan([ev("u", "a", 0, 0, cat="x"), ev("u", "b", 10, 1, cat="y"),
              ev("u", "c", 20, 2, type="purchase", cat="x")])
    assert d.pop == units({"a": 1.0, "b": 2.0, "c": 20.0})
    assert d.cooc == {"a": units({"b": 2.0, "c": 20.0}),
                      "b": units({"a": 2.0, "c": 20.0}),
                      "c": units({"a": 20.0, "b": 20.0})}
    assert d.trend == {"x": units({"a": 1.0, "c": 20.0}), "y": units({"b": 2.0})}
    assert d.user_items == {"u": units({"a": 1.0, "b": 2.0, "c": 20.0})}
    assert d.user_cats == {"u": units({"x": 21.0, "y": 2.0})}
    assert d.hist == {"u": {"a": 0.0, "b": 10.0, "c": 20.0}}
    assert d.item_cat == {"a": "x", "b": "y", "c": "x"}
    assert d.offsets == {0: 2} and d.base_offsets == {0: -1}
    assert (d.last_event_time, d.applied, d.skipped) == (20.0, 3, 0)


def test_events_are_taken_in_offset_order() -> None:
    shuffled = [ev("u", "c", 20, 2), ev("u", "a", 0, 0), ev("u", "b", 10, 1)]
    ordered = sorted(shuffled, key=lambda e: e.offset)
    assert plan(shuffled) == plan(ordered)


def test_offset_guard_skips_applied_and_repeated_events() -> None:
    events = [ev("u", "a", 0, 0), ev("u", "b", 10, 1), ev("u", "b", 10, 1), ev("u", "c", 20, 2)]
    d = plan(events, applied={0: 0}, histories={"u": [("a", 0.0)]})
    assert (d.applied, d.skipped) == (2, 2)
    assert d.pop == units({"b": 2.0, "c": 4.0})
    # b pairs with the stored history (a); c with both — earlier events of the batch count.
    assert d.cooc["a"] == units({"b": 2.0, "c": 4.0})
    assert d.offsets == {0: 2} and d.base_offsets == {0: 0}


def test_window_and_time_gap_limit_the_pairs() -> None:
    events = [ev("u", "a", 0, 0), ev("u", "b", 10, 1), ev("u", "c", 20, 2)]
    assert set(plan(events, window=1).cooc["c"]) == {"b"}
    assert set(plan(events, window_s=15.0).cooc["c"]) == {"b"}
    assert set(plan(events, window_s=5.0).cooc) == set()


def test_reclick_moves_item_to_front_and_still_adds_weight() -> None:
    events = [ev("u", "a", 0, 0), ev("u", "b", 10, 1), ev("u", "a", 20, 2), ev("u", "d", 30, 3)]
    d = plan(events, window=1)
    assert d.pop["a"] == (1.0 + 4.0) * U  # the repeat view counts again
    assert set(d.cooc["d"]) == {"a"}  # a moved past b, so the window of 1 sees a
    assert d.cooc["a"]["b"] == (2.0 + 4.0) * U  # b→a at t=10, a→b again at t=20
    assert d.hist["u"] == {"a": 20.0, "b": 10.0, "d": 30.0}


def test_late_event_keeps_latest_time_in_history() -> None:
    d = plan([ev("u", "a", 30, 0), ev("u", "a", 10, 1)], histories={"u": [("a", 40.0)]})
    assert d.hist["u"] == {"a": 30.0}  # ZADD GT in the store keeps 40
    state = InMemoryState(DecayPolicy(10.0), WEIGHTS, window=5, window_s=1e9, history_len=5,
                          neighbours_k=BIG, trending_k=BIG)
    state.process([ev("u", "a", 40, 0)])
    state.process([ev("u", "a", 30, 1), ev("u", "a", 10, 2)])
    assert state.history("u") == [("a", 40.0)]


def test_history_bound_limits_pairs() -> None:
    events = [ev("u", "a", 0, 0), ev("u", "b", 10, 1), ev("u", "c", 20, 2)]
    d = plan(events, history_len=1)
    assert set(d.cooc["c"]) == {"b"}  # a fell out of the one-entry history


def test_tombstone_forgets_the_user_in_stream_order() -> None:
    events = [ev("u", "a", 0, 0), ev("u", "", 5, 1, type=TOMBSTONE_TYPE), ev("u", "b", 10, 2),
              ev("v", "a", 0, 0, part=1)]
    d = plan(events, histories={"u": [("z", 0.0)]})
    assert d.forgotten == {"u"}
    assert d.user_items["u"] == units({"b": 2.0})
    assert d.hist["u"] == {"b": 10.0}
    assert "b" not in d.cooc  # the history was cleared before b
    assert d.pop == units({"a": 2.0, "b": 2.0})  # anonymous aggregates stay
    assert d.applied == 4


def test_unknown_type_is_rejected_not_raised() -> None:
    d = plan([ev("u", "a", 0, 0, type="refund"), ev("u", "b", 0, 1)])
    assert [(e.offset, reason.split(":")[0]) for e, reason in d.rejected] == [(0, "type")]
    assert d.pop == {"b": U} and d.offsets == {0: 1} and d.applied == 1


def test_histories_argument_is_not_modified() -> None:
    hist = {"u": [("a", 0.0)]}
    plan([ev("u", "b", 10, 0), ev("u", "a", 20, 1)], histories=hist, history_len=1)
    assert hist == {"u": [("a", 0.0)]}


def test_event_too_far_past_landmark_raises() -> None:
    with pytest.raises(ValueError, match="landmark"):
        plan([ev("u", "a", 1e6, 0)], half_life=1.0)


def test_state_moves_landmark_and_refuses_stale_delta() -> None:
    policy = DecayPolicy(1.0, max_exponent=3.0)
    state = InMemoryState(policy, WEIGHTS, window=5, window_s=1e9, history_len=5,
                          neighbours_k=BIG, trending_k=BIG)
    delta = state.plan([ev("u", "a", 100.0, 0)])
    assert delta.landmark == 100.0
    assert state.apply(delta) and state.landmark == 100.0
    assert not state.apply(delta)  # offsets moved on: a replayed delta changes nothing
    assert state.pop == {"a": U}
    assert state.popular(1, now=101.0) == [("a", 0.5)]


def test_neighbour_trending_and_user_bounds_prune_by_raw_score() -> None:
    state = InMemoryState(DecayPolicy(10.0), WEIGHTS, window=10, window_s=1e9, history_len=3,
                          neighbours_k=2, trending_k=2, user_items_k=2)
    state.process([ev("u", "a", 0, 0, cat="x"), ev("u", "b", 10, 1, cat="x"),
                   ev("u", "c", 20, 2, cat="x"), ev("u", "d", 30, 3, cat="x")])
    # a's increments: b 2, c 4, d 8 -> keeps d, c.  trend x: a1 b2 c4 d8 -> d, c.
    assert state.cooc["a"] == units({"c": 4.0, "d": 8.0})
    assert state.trend["x"] == units({"c": 4.0, "d": 8.0})
    assert state.user_items["u"] == units({"c": 4.0, "d": 8.0})
    assert state.history("u") == [("b", 10.0), ("c", 20.0), ("d", 30.0)]
    # d's row got a, b, c at 8 each: a tie, kept and listed larger member first, like Redis.
    assert [i for i, _ in state.neighbours("d", 5)] == ["c", "b"]


def test_similar_items_uses_popularity_norms_and_shrinkage() -> None:
    state = InMemoryState(DecayPolicy(1e9), WEIGHTS, window=1, window_s=1e9, history_len=5,
                          neighbours_k=BIG, trending_k=BIG)
    events, off = [], 0
    for n in range(20):  # a and b clicked together often: solid evidence
        events += [ev(f"s{n}", "a", 1, off), ev(f"s{n}", "b", 2, off + 1)]
        off += 2
    events += [ev("r", "z", 1, off), ev("r", "a", 2, off + 1)]  # z: one co-click, rare item
    state.process(events)
    got = state.similar_items("a", 2, shrinkage=5.0)
    assert [i for i, _ in got] == ["b", "z"]
    assert got[1][1] == pytest.approx(1.0 / (math.sqrt(21.0 * 1.0) + 5.0), rel=1e-6)


# --- properties --------------------------------------------------------------------------

USERS = [f"u{i}" for i in range(4)]
ITEMS = [f"i{i}" for i in range(6)]
CATS = {"i0": "c0", "i1": "c0", "i2": "c1", "i3": "c1", "i4": None, "i5": "c0"}
TYPES = ["view", "view", "add_to_cart", "purchase", TOMBSTONE_TYPE]


@st.composite
def streams(draw: Any) -> list[EventView]:
    rows = draw(st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 5), st.sampled_from(TYPES),
                  st.floats(0.0, 200.0, allow_nan=False)),
        min_size=1, max_size=40,
    ))
    if draw(st.booleans()):  # mostly in-order streams, sometimes arbitrary event times
        times = sorted(t for *_, t in rows)
        rows = [(u, i, ty, t) for (u, i, ty, _), t in zip(rows, times, strict=True)]
    next_off = [0, 0]
    out = []
    for u, i, ty, t in rows:
        part = u % 2  # Kafka keys by user: one user, one partition
        item = "" if ty == TOMBSTONE_TYPE else ITEMS[i]
        out.append(ev(USERS[u], item, t, next_off[part], ty, CATS.get(item), part))
        next_off[part] += 1
    return out


params = st.fixed_dictionaries({
    "window": st.integers(1, 4),
    "window_s": st.sampled_from([5.0, 50.0, 1e9]),
    "history_len": st.integers(1, 5),
    "half_life": st.sampled_from([20.0, 1e6]),
    # 3 moves the landmark often within a 200 s stream when the half-life is 20 s; 10 (the
    # default) never does here (200 s is 10 half-lives: exponent 6.9).
    "max_exponent": st.sampled_from([3.0, 10.0]),
})


def new_state(p: dict[str, Any]) -> InMemoryState:
    return InMemoryState(DecayPolicy(p["half_life"], max_exponent=p["max_exponent"]), WEIGHTS,
                         window=p["window"], window_s=p["window_s"], history_len=p["history_len"],
                         neighbours_k=BIG, trending_k=BIG)


def tolerance(events: list[EventView], *states: InMemoryState) -> float:
    """How far two ways of cutting the same stream may read apart.

    0 when no state moved its landmark: every stored score is a sum of the same whole-number
    increments, so any cut and any order give the same bits. A rescale rounds every sorted-set
    score to a whole unit again, and states that moved at different points round different
    sums: at most half a unit per rescale and per increment (it is read at ``now`` >= every
    landmark, so a unit is worth at most 1/SCORE_SCALE), at most one rescale per batch.
    """
    if all(s.landmark == 0.0 for s in states):
        return 0.0
    return (2 * len(events) + 2) * 0.5 / U


def read(state: InMemoryState, now: float) -> dict[str, Any]:
    def vals(row: dict[str, float]) -> dict[str, float]:
        return {k: state.value(v, now) for k, v in row.items()}

    out: dict[str, Any] = {"pop": vals(state.pop)}
    for name in ("trend", "cooc", "user_items", "user_cats"):
        out[name] = {k: vals(row) for k, row in getattr(state, name).items()}
    out.update(hist=state.hist, item_cat=state.item_cat, offsets=state.offsets,
               applied=state.applied, last=state.last_event_time)
    return out


def assert_same(a: Any, b: Any, path: str = "", tol: float = 0.0) -> None:
    """Equal; read scores within ``tol`` (a score missing on one side is 0 then: a rescale
    drops a member rounded to 0). Histories hold event times, never rounded: always exact."""
    if path.endswith("hist"):
        tol = 0.0
    if isinstance(a, dict):
        assert isinstance(b, dict), f"{path}: {a} vs {b}"
        scores = all(isinstance(v, float | dict) for v in (*a.values(), *b.values()))
        if tol > 0 and scores and (a or b):
            for k in a.keys() | b.keys():
                here = a.get(k, b.get(k))
                empty = {} if isinstance(here, dict) else 0.0  # a row a rescale emptied, a member it dropped
                assert_same(a.get(k, empty), b.get(k, empty), f"{path}.{k}", tol)
            return
        assert set(a) == set(b), f"keys differ at {path}: {a} vs {b}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}", tol)
    elif isinstance(a, float) and tol > 0:
        assert abs(a - b) <= tol, f"{path}: {a} != {b} (tolerance {tol})"
    else:
        assert a == b, f"{path}: {a} != {b}"


def cuts(draw: Any, n: int) -> list[int]:
    return sorted(set(draw(st.lists(st.integers(0, n), max_size=6))) | {0, n})


@settings(max_examples=200, deadline=None)
@given(events=streams(), p=params, data=st.data())
def test_one_batch_equals_many_batches(events: list[EventView], p: dict, data: Any) -> None:
    one, many = new_state(p), new_state(p)
    one.process(events)
    bounds = cuts(data.draw, len(events))
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        many.process(events[lo:hi])
    now = max(e.t for e in events)
    assert_same(read(one, now), read(many, now), tol=tolerance(events, one, many))


@settings(max_examples=100, deadline=None)
@given(events=streams(), p=params, data=st.data())
def test_replays_are_applied_once(events: list[EventView], p: dict, data: Any) -> None:
    once, replayed = new_state(p), new_state(p)
    once.process(events)
    k = data.draw(st.integers(0, len(events)))
    j = data.draw(st.integers(0, k))
    replayed.process(events[:k])
    replayed.process(events[j:])  # a crash after k: the consumer restarts from j <= k
    delta = replayed.process(events)  # the whole batch again: nothing new
    assert delta.applied == 0 and delta.skipped == len(events)
    now = max(e.t for e in events)
    assert_same(read(once, now), read(replayed, now), tol=tolerance(events, once, replayed))


@settings(max_examples=200, deadline=None)
@given(events=streams(), p=params)
def test_partition_batches_commute(events: list[EventView], p: dict) -> None:
    p0 = [e for e in events if e.partition == 0]
    p1 = [e for e in events if e.partition == 1]
    x, y = new_state(p), new_state(p)
    x.process(p0)
    x.process(p1)
    y.process(p1)
    y.process(p0)
    now = max(e.t for e in events)
    rx, ry = read(x, now), read(y, now)
    tol = tolerance(events, x, y)
    for name in ("pop", "cooc", "trend", "user_items", "hist", "offsets"):
        assert_same(rx[name], ry[name], name, tol)
    if tol == 0:  # no rescale: the stored state itself is the same, bit for bit
        assert (x.pop, x.cooc, x.trend, x.user_items) == (y.pop, y.cooc, y.trend, y.user_items)


@settings(max_examples=200, deadline=None)
@given(events=streams(), p=params, data=st.data(), lag=st.floats(0.0, 100.0))
def test_read_values_equal_direct_decay(events: list[EventView], p: dict, data: Any,
                                       lag: float) -> None:
    state = new_state(p)
    bounds = cuts(data.draw, len(events))
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        state.process(events[lo:hi])
    now = max(e.t for e in events) + lag
    policy = state.policy
    pop: dict[str, float] = {}
    trend: dict[tuple[str, str], float] = {}
    for e in events:
        if e.type == TOMBSTONE_TYPE:
            continue
        w = policy.decayed_weight(WEIGHTS.weight(e.type), e.t, now)
        pop[e.item] = pop.get(e.item, 0.0) + w
        if e.category is not None:
            trend[e.category, e.item] = trend.get((e.category, e.item), 0.0) + w
    # Fixed point: half a unit per increment, and per rescale (at most one per batch).
    tol = (len(events) + len(bounds)) * 0.5 / U
    assert_same({k: state.value(v, now) for k, v in state.pop.items()}, pop, tol=tol)
    assert_same({(c, i): state.value(v, now) for c, row in state.trend.items()
                 for i, v in row.items()}, trend, tol=tol)


@settings(max_examples=200, deadline=None)
@given(events=streams(), p=params)
def test_cooccurrence_matches_a_naive_full_history_reference(events: list[EventView],
                                                             p: dict) -> None:
    """The batch keeps only the newest min(window, history_len) entries; a full history agrees."""
    state = new_state(p)
    state.process(events)
    policy, landmark = state.policy, state.landmark
    hist: dict[str, dict[str, float]] = {}
    cooc: dict[str, dict[str, float]] = {}
    for e in sorted(events, key=lambda e: (e.partition, e.offset)):
        if e.type == TOMBSTONE_TYPE:
            hist.pop(e.user, None)
            continue
        h = hist.setdefault(e.user, {})
        ordered = sorted(h.items(), key=lambda kv: (kv[1], kv[0]))
        inc = policy.increment(WEIGHTS.weight(e.type), e.t, landmark)
        for other in window_partners(ordered, e.item, e.t, p["window"], p["window_s"]):
            for a, b in ((e.item, other), (other, e.item)):
                cooc.setdefault(a, {})[b] = cooc.get(a, {}).get(b, 0.0) + inc
        h[e.item] = max(h.get(e.item, -math.inf), e.t)
        for item, _ in sorted(h.items(), key=lambda kv: (kv[1], kv[0]))[: -p["history_len"]]:
            del h[item]
    assert_same(state.cooc, cooc)
    assert state.hist == hist
