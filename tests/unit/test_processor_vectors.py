"""Vector maths of the write path: batched fold-in and ISGD against models.factors, the plans."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.errors import ModelError
from driftrec.modelformat import pack_factors
from driftrec.models.decay import SCORE_SCALE, DecayPolicy, EventWeights
from driftrec.models.factors import fold_in, init_vector, isgd_update
from driftrec.models.online import EventView, plan_batch
from driftrec.streams.published import ISGD_MODEL, unpack_factors
from driftrec.streams.vectors import (
    applied_events,
    fold_in_many,
    from_f32,
    isgd_many,
    isgd_partners_to_load,
    plan_fold_in,
    plan_isgd,
    to_f32,
)

WEIGHTS = EventWeights({"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0})
POLICY = DecayPolicy(3600.0)


def _model(n: int = 6, k: int = 4, alpha: float = 2.0, reg: float = 0.3):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    ids = [f"m{j}" for j in range(n)]
    parts = pack_factors(ids, rng.normal(0, 0.5, (n, k)), alpha=alpha, regularization=reg)
    return unpack_factors("v1", parts, 0.1)


def _ev(user: str, item: str, t: float, off: int, part: int = 0, typ: str = "view") -> EventView:
    return EventView(user, item, typ, t, "c", off, part)


def _plan(events: list[EventView], landmark: float = 0.0):  # type: ignore[no-untyped-def]
    return plan_batch(events, {}, {}, POLICY, WEIGHTS, landmark, window=5, window_s=1e9, history_len=50)


def test_fold_in_many_matches_fold_in() -> None:
    m = _model()
    rng = np.random.default_rng(2)
    rows = [np.array([0, 3]), np.array([5]), np.array([1, 2, 3, 4])]
    confs = [rng.uniform(0.5, 3, len(r)) for r in rows]
    got = fold_in_many(m.Yz, m.YtY, rows, confs, m.regularization)
    for u, (r, c) in enumerate(zip(rows, confs, strict=True)):
        want = fold_in(m.Y.astype(np.float64), m.YtY, r, c, m.regularization)
        np.testing.assert_allclose(got[u], want, rtol=1e-10, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6)), min_size=1, max_size=60))
def test_isgd_many_equals_sequential_updates(pairs: list[tuple[int, int]]) -> None:
    rng = np.random.default_rng(len(pairs))
    U, V = rng.normal(0, 0.3, (5, 3)), rng.normal(0, 0.3, (7, 3))
    U2, V2 = U.copy(), V.copy()
    for u, i in pairs:
        U2[u], V2[i] = isgd_update(U2[u], V2[i], 0.05, 0.01)
    isgd_many(U, V, [u for u, _ in pairs], [i for _, i in pairs], 0.05, 0.01)
    np.testing.assert_allclose(U, U2, atol=1e-12)
    np.testing.assert_allclose(V, V2, atol=1e-12)


def test_fold_in_plan_uses_weights_after_the_batch_decayed_at_the_users_newest_event() -> None:
    m = _model()
    events = [_ev("a", "m1", 100.0, 0), _ev("a", "m2", 200.0, 1, typ="purchase"), _ev("a", "new", 300.0, 2)]
    delta = _plan(events)
    stored = {"a": [("m0", 4.0)]}
    hist = {"a": [("m0", 50.0)]}
    plan = plan_fold_in(m, delta, stored, hist, {}, POLICY, history_len=50)
    merged = {"m0": 4.0, **delta.user_items["a"]}
    scale = m.alpha * math.exp(-POLICY.rate * 300.0) / SCORE_SCALE  # stored scores are fixed point
    items = [i for i in sorted(merged) if i in m.index]
    want = fold_in(m.Y.astype(np.float64), m.YtY, [m.index[i] for i in items],
                   [merged[i] * scale for i in items], m.regularization)
    assert plan.model == "v1"
    np.testing.assert_allclose(from_f32(plan.users["a"], 4), want, rtol=1e-6, atol=1e-6)
    # "new" is outside the model: it starts from the factors of what it was co-clicked with.
    cold = from_f32(plan.items_set["new"], 4)
    w = np.array([delta.cooc["new"][o] for o in ("m1", "m2")])
    want_cold = (w[:, None] * m.Y[[1, 2]].astype(np.float64)).sum(0) / w.sum()
    np.testing.assert_allclose(cold, want_cold, rtol=1e-6)
    assert "m1" not in plan.items_set
    # Already has a vector of this version: left alone.
    again = plan_fold_in(m, delta, stored, hist, {"new": "v1"}, POLICY, history_len=50)
    assert "new" not in again.items_set


def test_fold_in_plan_skips_users_with_nothing_in_the_model() -> None:
    plan = plan_fold_in(_model(), _plan([_ev("b", "zzz", 1.0, 0)]), {}, {}, {}, POLICY, history_len=50)
    assert plan.users == {}


def test_isgd_plan_starts_new_items_from_co_clicked_vectors() -> None:
    k = 3
    known = np.array([0.5, -0.25, 1.0])
    events = [_ev("u", "old", 1.0, 0), _ev("u", "fresh", 2.0, 1)]
    delta = _plan(events)
    item_vecs = {"old": (to_f32(known), ISGD_MODEL), "fresh": (None, None)}
    assert isgd_partners_to_load(delta, item_vecs) == set()
    plan = plan_isgd(applied_events(events, {}, WEIGHTS), delta, {}, item_vecs, k=k, lr=0.05, reg=0.01)
    base_fresh, d_fresh = (from_f32(b, k) for b in plan.items_add["fresh"])
    np.testing.assert_allclose(base_fresh, known, rtol=1e-6)  # its only co-clicked item
    # Replaying the updates by hand from the same starting points gives the same result.
    u = init_vector("u:u", k).astype(np.float32).astype(np.float64)
    u, old = isgd_update(u, known, 0.05, 0.01)
    u, fresh = isgd_update(u, base_fresh, 0.05, 0.01)
    np.testing.assert_allclose(from_f32(plan.users["u"], k), u, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(base_fresh + d_fresh, fresh, rtol=1e-5, atol=1e-7)
    base_old, d_old = (from_f32(b, k) for b in plan.items_add["old"])
    np.testing.assert_allclose(base_old + d_old, old, rtol=1e-5, atol=1e-7)


def test_isgd_partners_to_load_names_unread_co_clicked_items() -> None:
    events = [_ev("u", "x", 1.0, 0), _ev("u", "y", 2.0, 1)]
    delta = _plan(events)
    assert isgd_partners_to_load(delta, {"y": (None, None)}) == {"x"}


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 30), st.sampled_from(["view", "purchase", "wish"])),
                max_size=40),
       st.dictionaries(st.integers(0, 2), st.integers(-1, 20), max_size=3))
def test_applied_events_are_those_plan_batch_applies(rows: list[tuple[int, int, str]], done: dict[int, int]) -> None:
    events = [EventView(f"u{o % 3}", f"i{o % 5}", typ, float(o), None, o, p) for p, o, typ in rows]
    got = applied_events(events, done, WEIGHTS)
    delta = plan_batch(events, {}, done, POLICY, WEIGHTS, 0.0, window=3, window_s=1e9, history_len=10)
    assert len(got) == delta.applied
    assert [(e.partition, e.offset) for e in got] == sorted((e.partition, e.offset) for e in got)


def test_published_factors_round_trip_and_corruption() -> None:
    m = _model(n=3, k=2)
    assert m.ids == ("m0", "m1", "m2") and m.factors == 2 and m.alpha == 2.0
    np.testing.assert_allclose(m.YtY, m.Y.astype(np.float64).T @ m.Y.astype(np.float64))
    parts = pack_factors(["a", "b"], np.ones((2, 2)), alpha=1.0, regularization=0.1)
    for broken in ({**parts, "item_factors": parts["item_factors"][:-4]}, {**parts, "item_ids": b"a"},
                   {**parts, "item_factors": None}, {}, {**parts, "alpha": b"junk"}):
        with pytest.raises(ModelError):
            unpack_factors("v", broken, 0.1)
    defaults = unpack_factors("v", {"item_ids": parts["item_ids"], "item_factors": parts["item_factors"]}, 0.7)
    assert (defaults.alpha, defaults.regularization) == (1.0, 0.7)
    with pytest.raises(ModelError):
        pack_factors(["a\nb"], np.ones((1, 2)), alpha=1.0, regularization=0.1)
