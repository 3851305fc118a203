"""The live recommender in-process: hand-computed blends, the fold-in hand-over, shared readers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.live_eval import LiveModel, LiveRecommender, _TopCache, _zrevrange, publish_parts
from driftrec.models.blend import SOURCES, BlendWeights
from driftrec.models.online import EventView
from driftrec.models.prequential import run_prequential
from driftrec.settings import Settings

ONLY = {s: 0.0 for s in SOURCES}


def ev(i: int, user: str, item: str, kind: str = "view") -> EventView:
    return EventView(user=user, item=item, type=kind, t=1_700_000_000.0 + i, category=None,
                     offset=i, partition=0)


EVENTS = [ev(0, "u1", "a"), ev(1, "u1", "b"), ev(2, "u2", "a"), ev(3, "u2", "c"), ev(4, "u3", "a"),
          ev(5, "u3", "c"), ev(6, "x", "d", "purchase"), ev(7, "me", "a")]


def test_blend_of_the_state_by_hand() -> None:
    s = Settings(half_life_s=1e12)  # no decay to speak of: the numbers stay counts
    live = LiveRecommender(s)
    live.update(EVENTS)
    # item-item for "me" (history a): c co-occurs twice, b once; pop a=4, b=1, c=2, d=5
    # sim(a,c) = 2 / (sqrt(4*2) + 5) = 0.2556, sim(a,b) = 1 / (sqrt(4*1) + 5) = 0.1429
    # (trending back-fills a short list with a tiny score, whatever its weight)
    assert live.rank("me", 3, frozenset(), BlendWeights(**{**ONLY, "item_item": 1.0})) == ["c", "b", "d"]
    assert live.rank("me", 3, frozenset(), BlendWeights(**{**ONLY, "trending": 1.0})) == ["d", "c", "b"]
    # default blend: c = 1 + .15*2/5 = 1.06; b = .1429/.2556 + .15/5 = 0.589; d = .15
    assert live.recommend("me", 3, frozenset(), 0.0) == ["c", "b", "d"]
    # the request's exclusions and the stored history are both removed
    assert live.recommend("me", 3, {"c"}, 0.0) == ["b", "d"]
    assert "a" not in live.recommend("me", 10, frozenset(), 0.0)


def test_views_and_readers_share_one_state() -> None:
    s = Settings(half_life_s=1e12)
    feed = LiveRecommender(s)
    other = feed.reader(s.model_copy(update={"reader_recent_items": 1}))
    view = feed.view(BlendWeights(**{**ONLY, "trending": 1.0}))
    res = run_prequential(EVENTS, {"feed": feed, "other": other, "view": view}, np.ones(len(EVENTS), bool))
    assert feed.state.applied == len(EVENTS)  # fed once, though three methods read it
    assert res.scored == len(EVENTS)
    assert view.recommend("me", 3, frozenset(), 0.0) == ["d", "c", "b"]


def _model(s: Settings) -> LiveModel:
    items = ["a", "b", "c", "d"]
    Y = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    return LiveModel("v1", publish_parts(items, Y, alpha=1.0, regularization=0.1,
                                         user_ids=["u1", "u2"], user_factors=[[1.0, 0.0], [0.0, 1.0]]), s)


def test_users_are_folded_in_only_after_the_publish_offset() -> None:
    s = Settings()
    live = LiveRecommender(s, model=_model(s), publish_offset=4)
    live.update(EVENTS[:4])
    assert live.vectors == {}  # before the model was published: no vectors
    live.update(EVENTS[4:])
    assert set(live.vectors) == {"u3", "x", "me"}
    assert all(live.vector_versions[u] == "v1" for u in live.vectors)
    vec = BlendWeights(**{**ONLY, "user_vector": 1.0})
    # "me" clicked a: its folded vector points at a's direction, so b (0.9, 0.1) comes first
    assert live.rank("me", 2, frozenset(), vec)[0] == "b"
    # u1 (offsets 0, 1) was not folded in: its training vector (1, 0) serves it; a and b are
    # seen, c scores 0 (the blend keeps positive scores only) and only comes back as trending
    # back-fill, after d
    assert live.rank("u1", 3, frozenset(), vec) == ["d", "c"]


def test_user_vector_of_a_trained_user_is_the_training_vector() -> None:
    s = Settings()
    live = LiveRecommender(s, model=_model(s), publish_offset=100)
    live.update(EVENTS[:2])  # u1 clicks a, b before publication: no fold-in
    vec = BlendWeights(**{**ONLY, "user_vector": 1.0})
    # training vector (1, 0): a, b seen; d scores 0.1, c 0 (dropped: only positive scores blend)
    assert live.rank("u1", 2, frozenset(), vec) == ["d"]
    # a stranger with no history and no vector gets the trending back-fill only: a and b, one
    # view each, 1 s apart, tie (a second is below the stored scores' resolution at the default
    # 7-day half-life: 1.1e-6 of a view, against units of 1/65536), and ties go by item id
    assert live.rank("stranger", 2, frozenset(), vec) == ["a", "b"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from("abcdefghij"), st.floats(0.01, 100.0)), max_size=4),
                max_size=12), st.integers(1, 12))
def test_top_cache_follows_increments(batches, n) -> None:  # type: ignore[no-untyped-def]
    scores: dict[str, float] = {}
    cache = _TopCache(scores, 5)
    for batch in batches:
        for key, inc in batch:
            scores[key] = scores.get(key, 0.0) + inc
        cache.touched([k for k, _ in batch])
        assert cache.read(n) == _zrevrange(scores, n)


def test_zrevrange_breaks_ties_by_member_descending() -> None:
    assert _zrevrange({"a": 1.0, "b": 1.0, "c": 2.0}, 3) == [("c", 2.0), ("b", 1.0), ("a", 1.0)]
    assert _zrevrange({"a": 1.0, "b": 1.0, "c": 2.0}, 2) == [("c", 2.0), ("b", 1.0)]


def test_unknown_blend_source_is_rejected() -> None:
    with pytest.raises(ValueError):
        BlendWeights().with_overrides({"nope": 1.0})
