"""The compared methods: hand-computed baselines, the hourly batch's refit rule, the blend's fast path."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.models.baselines import (
    HourlyBatchRecommender,
    Interactions,
    ISGDRecommender,
    PopularityRecommender,
    RawCooccurrenceRecommender,
    StaticModelRecommender,
    top_unseen,
)
from driftrec.models.batch.knn import ItemKNNModel
from driftrec.models.blend import Candidates, item_item_scores
from driftrec.models.cooccurrence import similarity
from driftrec.models.decay import EventWeights
from driftrec.models.online import EventView

W = EventWeights({"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0})
STORE = {"window": 10, "window_s": 1e9, "history_len": 50, "neighbours_k": 50, "trending_k": 50}


def ev(i: int, user: str, item: str, t: float | None = None, kind: str = "view") -> EventView:
    return EventView(user=user, item=item, type=kind, t=float(i if t is None else t),
                     category=None, offset=i, partition=0)


def test_top_unseen_orders_by_score_then_index_and_drops_excluded() -> None:
    names = ["a", "b", "c", "d"]
    index = {n: i for i, n in enumerate(names)}
    scores = np.array([1.0, 3.0, 3.0, -np.inf])
    assert top_unseen(scores, names, 3, frozenset(), index) == ["b", "c", "a"]
    assert top_unseen(scores, names, 3, {"b"}, index) == ["c", "a"]


def test_popularity_counts_event_weights() -> None:
    p = PopularityRecommender(W)
    p.update([ev(0, "u", "a"), ev(1, "v", "b", kind="purchase"), ev(2, "w", "a"), ev(3, "x", "c")])
    assert p.recommend("z", 3, frozenset(), 4.0) == ["b", "a", "c"]  # 5, 2, 1
    assert p.recommend("z", 3, {"b"}, 4.0) == ["a", "c"]


def test_raw_cooccurrence_sums_counts_over_the_history() -> None:
    r = RawCooccurrenceRecommender.create(["view", "purchase"], **STORE)
    # u1: a b c   u2: a b   u3: b d   -> counts a-b 2, a-c 1, b-c 1, b-d 1
    r.update([ev(0, "u1", "a"), ev(1, "u1", "b"), ev(2, "u1", "c", kind="purchase"),
              ev(3, "u2", "a"), ev(4, "u2", "b"), ev(5, "u3", "b"), ev(6, "u3", "d")])
    r.update([ev(7, "me", "a")])
    # me has a: b 2, c 1; purchases weigh 1 like views (raw counts)
    assert r.recommend("me", 2, {"a"}, 8.0) == ["b", "c"]
    r.update([ev(8, "me", "d")])
    # a + d: b 2+1=3, c 1
    assert r.recommend("me", 3, {"a", "d"}, 9.0) == ["b", "c"]
    # nobody: most clicked
    assert r.recommend("new", 2, frozenset(), 9.0) == ["b", "a"]


def test_isgd_is_deterministic_and_learns_the_clicked_item() -> None:
    events = [ev(i, "u", "a") for i in range(30)] + [ev(30 + i, f"v{i}", f"x{i}") for i in range(20)]
    a, b = ISGDRecommender(factors=8, lr=0.1, seed=3), ISGDRecommender(factors=8, lr=0.1, seed=3)
    a.update(events)
    b.update(events)
    assert a.recommend("u", 5, frozenset(), 0.0) == b.recommend("u", 5, frozenset(), 0.0)
    assert a.recommend("u", 1, frozenset(), 0.0) == ["a"]


def _stream(n: int = 120, seed: int = 1) -> list[EventView]:
    rng = np.random.default_rng(seed)
    return [ev(i, f"u{rng.integers(8)}", f"i{rng.integers(15)}", t=600.0 * i,
               kind=str(rng.choice(["view", "purchase"]))) for i in range(n)]


def test_hourly_item_knn_equals_the_fitted_model() -> None:
    events = _stream()
    now = events[-1].t + 1.0
    hour = math.floor(now / 3600) * 3600
    # with the hour's askers announced (one call for all) and without (one call each)
    ahead = HourlyBatchRecommender(lambda: ItemKNNModel(neighbours=4, shrink=1.0), W,
                                   schedule={hour: {f"u{k}" for k in range(8)}})
    h = HourlyBatchRecommender(lambda: ItemKNNModel(neighbours=4, shrink=1.0), W)
    h.update(events)
    ahead.update(events)
    data = Interactions(W)
    data.add([e for e in events if e.t < math.floor(now / 3600) * 3600])
    x = data.matrix()
    model = ItemKNNModel(neighbours=4, shrink=1.0).fit(x)
    for user, row in data.users.items():
        idx, scores = model.recommend(np.array([row]), 5, exclude=x[[row]])
        expected = [data.item_names[i] for i, s in zip(idx[0], scores[0], strict=True) if i >= 0]
        assert h.recommend(user, 5, frozenset(), now) == expected
        assert ahead.recommend(user, 5, frozenset(), now) == expected
    assert h.fits == 0  # no whole-table fit was needed


def test_hourly_lists_stay_fixed_within_the_hour_and_follow_the_next_refit() -> None:
    h = HourlyBatchRecommender(lambda: ItemKNNModel(neighbours=10), W)
    # before 3600: u1 a b, u2 a c
    h.update([ev(0, "u1", "a", 10.0), ev(1, "u1", "b", 20.0), ev(2, "u2", "a", 30.0), ev(3, "u2", "c", 40.0)])
    first = h.recommend("u1", 3, {"a", "b"}, 3700.0)
    assert first == ["c"]
    # in the same hour u3 clicks b then d many times: the list must not move
    h.update([ev(4 + i, f"w{i}", it, 3800.0 + i) for i in range(6) for it in ("b", "d")])
    assert h.recommend("u1", 3, {"a", "b"}, 4000.0) == first
    # items met since H are removed from the cached list
    assert h.recommend("u1", 3, {"a", "b", "c"}, 4100.0) == []
    # the next hour's refit knows b-d
    assert "d" in h.recommend("u1", 3, {"a", "b"}, 7300.0)
    # a user unknown at H gets the most popular items at H (users per item)
    assert h.recommend("new", 1, frozenset(), 3700.0) == ["a"]


def test_static_model_serves_training_rows_and_popularity_to_strangers() -> None:
    data = Interactions(W)
    data.add([ev(0, "u1", "a"), ev(1, "u1", "b"), ev(2, "u2", "a"), ev(3, "u2", "c"), ev(4, "u3", "c")])
    model = ItemKNNModel(neighbours=10).fit(data.matrix())
    s = StaticModelRecommender(model, data)
    assert s.recommend("u1", 2, {"a", "b"}, 0.0) == ["c"]
    assert s.recommend("stranger", 2, frozenset(), 0.0) == ["a", "c"]  # 2 users each, lower index first
    s.update([ev(5, "u1", "z")])  # never learns
    assert s.recommend("u1", 2, {"a", "b"}, 0.0) == ["c"]


def test_interactions_matrix_sums_weights_and_keeps_ids() -> None:
    data = Interactions(W)
    data.add([ev(0, "u", "a"), ev(1, "u", "a", kind="purchase"), ev(2, "v", "b"),
              EventView("u", "x", "unknown", 3.0, None, 3, 0)])
    m = data.matrix()
    assert m.shape == (2, 2) and m[0, 0] == 6.0 and m[1, 1] == 1.0
    assert data.matrix(1)[0, 0] == 1.0 and len(data) == 3
    assert isinstance(m, sp.csr_matrix)


# --- blend's inlined item-item loop equals the definition -----------------------------------------
def _reference(c: Candidates, shrinkage: float) -> tuple[dict[str, float], dict[str, str]]:
    scores: dict[str, float] = {}
    best: dict[str, tuple[float, str]] = {}
    top = max((w for _, w in c.recent), default=0.0)
    if top <= 0:
        return scores, {}
    for r, w in c.recent:
        for j, co in c.neighbours.get(r, ()):
            s = (w / top) * similarity(co, c.norms.get(r, 0.0), c.norms.get(j, 0.0), shrinkage)
            if s <= 0:
                continue
            scores[j] = scores.get(j, 0.0) + s
            if s > best.get(j, (0.0, ""))[0]:
                best[j] = (s, r)
    return scores, {j: r for j, (_, r) in best.items()}


items = st.sampled_from([f"i{k}" for k in range(8)])
pos = st.floats(0.0, 1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(recent=st.lists(st.tuples(items, pos), max_size=5, unique_by=lambda p: p[0]),
       nbrs=st.dictionaries(items, st.lists(st.tuples(items, pos), max_size=6), max_size=8),
       norms=st.dictionaries(items, pos, max_size=8), shrinkage=st.one_of(st.just(0.0), st.floats(1e-3, 50.0)))
def test_item_item_scores_equal_the_definition(recent, nbrs, norms, shrinkage) -> None:  # type: ignore[no-untyped-def]
    c = Candidates(recent=recent, neighbours=nbrs, norms=norms)
    assert item_item_scores(c, shrinkage) == _reference(c, shrinkage)


def test_hourly_serves_nothing_before_any_event() -> None:
    h = HourlyBatchRecommender(lambda: ItemKNNModel(), W)
    assert h.recommend("u", 3, frozenset(), 10.0) == []
    h.update([ev(0, "v", "a", 5.0)])
    assert h.recommend("u", 3, frozenset(), 10.0) == []  # "a" is after H = 0
    assert h.recommend("u", 3, frozenset(), 3601.0) == ["a"]
