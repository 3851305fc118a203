"""The prequential loop: metrics against hand-computed values, event selection, and no leaks."""

from __future__ import annotations

import math
from collections.abc import Sequence, Set

import numpy as np
import pytest

from driftrec.models.online import EventView
from driftrec.models.prequential import (
    PrequentialResult,
    event_views,
    hit_metrics,
    run_prequential,
    scored_mask,
)


def ev(i: int, user: str, item: str, t: float | None = None) -> EventView:
    return EventView(user=user, item=item, type="view", t=float(i if t is None else t),
                     category=None, offset=i, partition=0)


# --- metrics -------------------------------------------------------------------------------------
def test_hit_metrics_by_hand() -> None:
    assert hit_metrics(["a", "b", "c"], "a") == (1.0, 1.0, 1.0)
    hit, ndcg, rr = hit_metrics(["a", "b", "c"], "b")
    assert (hit, rr) == (1.0, 0.5)
    assert ndcg == pytest.approx(1 / math.log2(3))  # 0.6309
    hit, ndcg, rr = hit_metrics([f"x{i}" for i in range(9)] + ["t"], "t")
    assert (hit, rr) == (1.0, 0.1) and ndcg == pytest.approx(1 / math.log2(11))
    assert hit_metrics([f"x{i}" for i in range(10)] + ["t"], "t") == (0.0, 0.0, 0.0)  # rank 11
    assert hit_metrics(["a", "b"], "t", k=10) == (0.0, 0.0, 0.0)
    assert hit_metrics(["a", "b", "c"], "c", k=2) == (0.0, 0.0, 0.0)


def test_result_averages_by_hand() -> None:
    r = PrequentialResult(methods=["m"], k=10, index=np.arange(4), times=np.arange(4.0),
                          ranks={"m": np.array([1, 0, 3, 2])})
    assert r.hr("m") == pytest.approx(3 / 4)
    assert r.ndcg("m") == pytest.approx((1 + 0 + 1 / math.log2(4) + 1 / math.log2(3)) / 4)
    assert r.mrr("m") == pytest.approx((1 + 0 + 1 / 3 + 1 / 2) / 4)
    mids, per = r.windows(2)
    assert mids.tolist() == [0.5, 2.5] and per["m"].tolist() == [0.5, 1.0]


class Fixed:
    """Always the same list; never learns."""

    def __init__(self, items: list[str]) -> None:
        self.items = items

    def recommend(self, user: str, n: int, exclude: Set[str], now: float) -> list[str]:
        return [i for i in self.items if i not in exclude][:n]

    def update(self, events: Sequence[EventView]) -> None:
        return None


def test_loop_scores_ranks_and_excludes_seen() -> None:
    events = [ev(0, "u", "a"), ev(1, "u", "c"), ev(2, "v", "b"), ev(3, "u", "b")]
    res = run_prequential(events, {"fixed": Fixed(["a", "b", "c"])}, np.ones(4, bool), k=2)
    # u/a: [a, b] -> 1; u/c: a seen -> [b, c] -> 2; v/b: [a, b] -> 2; u/b: a, c seen -> [b] -> 1
    assert res.ranks["fixed"].tolist() == [1, 2, 2, 1]
    assert res.hr("fixed") == 1.0
    assert res.ndcg("fixed") == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(3) + 1) / 4)


# --- which events are scored -----------------------------------------------------------------------
def test_repeats_and_warm_up_are_not_scored() -> None:
    events = [ev(0, "u", "a"), ev(1, "u", "b"), ev(2, "u", "a"), ev(3, "v", "a"),
              ev(4, "u", "b"), ev(5, "u", "c")]
    assert scored_mask(events).tolist() == [False, False, False, True, False, True]
    assert scored_mask(events, 0).tolist() == [True, True, False, True, False, True]


def test_thinning_keeps_whole_evenly_spaced_windows() -> None:
    events = [ev(i, f"u{i}", "a", t=3600.0 * (i // 3) + i % 3) for i in range(30)]  # 10 hours x 3
    mask = scored_mask(events, 0, window_s=3600.0, max_windows=4)
    hours = sorted({int(events[i].t // 3600) for i in np.flatnonzero(mask)})
    assert hours == [0, 3, 6, 9]
    assert mask.sum() == 12  # every event of a kept hour
    assert scored_mask(events, 0, window_s=3600.0, max_windows=20).sum() == 30


def test_event_views_keep_order_and_number_offsets() -> None:
    views = event_views([{"user_id": "u", "item_id": "a", "type": "view", "timestamp": 5},
                         {"user_id": 7, "item_id": "b", "type": "purchase", "timestamp": 6.5,
                          "category": "c"}])
    assert [(v.user, v.item, v.type, v.t, v.category, v.offset) for v in views] == [
        ("u", "a", "view", 5.0, None, 0), ("7", "b", "purchase", 6.5, "c", 1)]


# --- leaks -----------------------------------------------------------------------------------------
class Spy:
    """Records what it was fed; recommends the items it saw last (a leak would make them hits)."""

    def __init__(self) -> None:
        self.applied: list[EventView] = []
        self.asked: list[tuple[str, float, int]] = []

    def recommend(self, user: str, n: int, exclude: Set[str], now: float) -> list[str]:
        self.asked.append((user, now, len(self.applied)))
        mine = [e.item for e in self.applied if e.user == user]
        return list(reversed(mine))[:n]

    def update(self, events: Sequence[EventView]) -> None:
        self.applied.extend(events)


@pytest.mark.parametrize(("batch_size", "bulk_size"), [(1, None), (1, 4), (3, None), (2, 5)])
def test_the_loop_never_sees_an_event_before_scoring_it(batch_size: int, bulk_size: int | None) -> None:
    rng = np.random.default_rng(0)
    events = [ev(i, f"u{rng.integers(3)}", f"i{i}") for i in range(40)]  # every item new
    mask = scored_mask(events, 10)
    spy = Spy()
    res = run_prequential(events, {"spy": spy}, mask, batch_size=batch_size, bulk_size=bulk_size)
    assert res.hr("spy") == 0.0  # the next item is never among those already fed
    assert len(spy.asked) == mask.sum() == res.scored
    for (user, now, fed), i in zip(spy.asked, np.flatnonzero(mask), strict=True):
        assert (user, now) == (events[i].user, events[i].t)
        assert fed <= i  # only events before the scored one were fed
        assert all(e.offset < i for e in spy.applied[:fed])
        if batch_size == 1:
            assert fed == i  # and, with batches of one, all of them
    assert [e.offset for e in spy.applied] == list(range(40))  # every event fed once, in order


def test_a_leaking_loop_would_be_caught() -> None:
    """The spy scores a hit on every event when it is fed the event first: the check can fail."""
    events = [ev(i, "u", f"i{i}") for i in range(10)]
    spy = Spy()
    hits = 0
    for e in events:  # train-then-test, the wrong order
        spy.update([e])
        hits += int(hit_metrics(spy.recommend(e.user, 10, frozenset(), e.t), e.item)[0])
    assert hits == 10


def test_batches_hide_earlier_events_of_the_same_batch() -> None:
    events = [ev(i, "u", f"i{i}") for i in range(6)]
    spy = Spy()
    run_prequential(events, {"spy": spy}, np.ones(6, bool), batch_size=3, bulk_size=None)
    assert [fed for _, _, fed in spy.asked] == [0, 0, 0, 3, 3, 3]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        run_prequential([ev(0, "u", "a")], {}, [True], batch_size=0)
    with pytest.raises(ValueError):
        run_prequential([ev(0, "u", "a")], {}, [True, False])
