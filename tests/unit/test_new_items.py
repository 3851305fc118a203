"""The catalogue's new-item source: the scoring rule, the reader's in-memory index of the newest
items per category and tag, the blend, and the evaluation's live recommender fed a catalogue."""

from __future__ import annotations

import math

import pytest

from driftrec.catalogue import encode_item_event, validate_item_event
from driftrec.evaluate import catalogue_changes, hit_intervals, prior_clicks, title_year
from driftrec.keys import Keys
from driftrec.live_eval import LiveRecommender
from driftrec.models.blend import BlendWeights, Candidates, blend
from driftrec.models.candidates import NewItemRule, new_item_scores
from driftrec.models.online import EventView
from driftrec.models.prequential import PrequentialResult
from driftrec.online.catalogue import CatalogueView
from driftrec.settings import Settings

DAY = 86400.0
NOW = 1_700_000_000.0
RULE = NewItemRule(half_life_s=10 * DAY, max_age_s=30 * DAY, per_feature=20)


def record(item: str, **fields: object) -> bytes:
    return encode_item_event(validate_item_event({"item_id": item, **fields}))


def view_of(*items: tuple[str, dict[str, object]], kept: int = 100) -> CatalogueView:
    view = CatalogueView(None, Keys("t"), newest_kept=kept)
    view.apply_records((item, record(item, **f)) for item, f in items)
    return view


def test_a_new_item_sharing_metadata_scores_by_overlap_and_age_and_nothing_else_does() -> None:
    view = view_of(
        ("seen", {"category": "shoes", "tags": ["running"], "added_at": NOW - 400 * DAY}),
        ("both", {"category": "shoes", "tags": ["running"], "added_at": NOW - 10 * DAY}),  # one half-life
        ("cat", {"category": "shoes", "added_at": NOW}),
        ("stale", {"category": "shoes", "tags": ["running"], "added_at": NOW - 31 * DAY}),  # past max age
        ("other", {"category": "hats", "added_at": NOW}),
        ("no-date", {"category": "shoes"}),
    )
    scores, labels = new_item_scores([("seen", 2.0)], view, NOW, RULE)
    got = dict(scores)
    assert set(got) == {"both", "cat"}  # not the shopper's own, not stale, not unrelated, not undated
    # both: Jaccard 1, half its boost left; cat: Jaccard 1/2 ({c:shoes} of {c:shoes, t:running}), new
    assert got["both"] == pytest.approx(0.5)
    assert got["cat"] == pytest.approx(0.5)
    assert labels == {"both": "shoes", "cat": "shoes"}
    # A weaker recent item adds its share; an item listed after ``now`` counts as just added.
    view.apply_records([("later", record("later", tags=["running"], added_at=NOW + 60))])
    later = dict(new_item_scores([("seen", 2.0), ("x", 1.0)], view, NOW, RULE)[0])
    assert later["later"] == pytest.approx(0.5)  # Jaccard({c:shoes, t:running}, {t:running}), age 0
    assert new_item_scores([], view, NOW, RULE) == ([], {})


def test_the_index_keeps_the_newest_visible_items_and_refills_a_cut_list() -> None:
    view = view_of(*((f"i{k}", {"category": "c", "added_at": NOW - k * DAY}) for k in range(6)), kept=3)
    assert [e[1] for e in view.newest("c:c")] == ["i0", "i1", "i2"]
    view.apply_records([("i0", record("i0", category="c", available=False, added_at=NOW)),
                        ("i1", record("i1", category="d", added_at=NOW - DAY))])
    # hidden and moved items leave the list; the cut list is refilled from the whole view
    assert [e[1] for e in view.newest("c:c")] == ["i2", "i3", "i4"]
    assert [e[1] for e in view.newest("c:d")] == ["i1"]
    view.apply_records([("i9", record("i9", category="c", added_at=NOW + 1)), ("i2", None)])
    assert [e[1] for e in view.newest("c:c")] == ["i9", "i3", "i4"]
    view.apply_records([("i9", record("i9", op="delete"))])
    assert "i9" not in {e[1] for e in view.newest("c:c")}
    assert view.features("i1") == {"c:d"} and view.features("nothing") == frozenset()
    # updated_at stands in for a missing added_at
    view.apply_records([("u", record("u", category="c", updated_at=NOW + 5))])
    assert view.newest("c:c")[0] == (-(NOW + 5), "u", frozenset({"c:c"}))


def test_the_blend_lets_an_item_with_no_clicks_in_only_with_a_weight() -> None:
    c = Candidates(recent=[("r", 1.0)], neighbours={"r": [("a", 3.0), ("b", 2.0), ("c", 1.0)]},
                   norms={"r": 4.0, "a": 4.0, "b": 4.0, "c": 4.0},
                   new_items=[("fresh", 0.4)], new_labels={"fresh": "shoes"})
    off = blend(c, 3, weights=BlendWeights())
    assert "fresh" not in [x.item for x in off]  # the default weight is 0
    on = blend(c, 3, weights=BlendWeights(new_items=0.5))
    # item-item normalised: a 1, b 2/3, c 1/3 (shrinkage 5); fresh: 1 x 0.5
    assert [x.item for x in on] == ["a", "b", "fresh"]
    fresh = next(x for x in on if x.item == "fresh")
    assert fresh.source == "new_items" and fresh.reason == "new in shoes"
    assert fresh.score == pytest.approx(0.5)  # its source's best, normalised to 1, times the weight


def ev(k: int, user: str, item: str, t: float) -> EventView:
    return EventView(user=user, item=item, type="view", t=t, category=None, offset=k, partition=0)


def test_the_live_recommender_shows_a_new_item_once_the_catalogue_lists_it() -> None:
    s = Settings(reader_new_item_half_life_s=10 * DAY, reader_new_item_max_age_s=30 * DAY)
    changes = catalogue_changes(
        [{"item_id": "old", "category": "shoes"}, {"item_id": "new", "category": "shoes"},
         {"item_id": "hat", "category": "hats"}],
        {"old": NOW - 100 * DAY, "new": NOW + 50, "hat": NOW})
    assert [c[1] for c in changes] == ["old", "hat", "new"]  # in time order
    live = LiveRecommender(s, BlendWeights(new_items=0.5), catalogue=changes)
    history = [ev(k, f"u{k % 3}", f"x{k % 4}", NOW - 100 + k) for k in range(12)] + [ev(12, "me", "old", NOW)]
    live.update(history)
    assert "new" not in live.recommend("me", 5, set(), NOW)  # not listed yet at NOW
    live.update([ev(13, "u1", "x1", NOW + 60)])
    got = live.recommend("me", 5, set(), NOW + 60)
    assert "new" in got and "hat" not in got  # shares the category of the shopper's click
    assert "new" not in LiveRecommender(s, BlendWeights(), state=live.state).recommend("me", 5, set(), NOW)


def test_evaluation_helpers() -> None:
    assert title_year("Toy Story (1995)") == 1995 and title_year("Babylon 5") is None
    assert title_year("Cosmos (1980)  ") == 1980 and title_year("Babylon 5 (1994-1998)") == 1994
    events = [ev(k, "u", item, float(k)) for k, item in enumerate(["a", "b", "a", "a", "c"])]
    import numpy as np

    assert prior_clicks(events, np.array([0, 2, 3, 4])).tolist() == [0, 1, 2, 0]
    ranks = {"base": np.array([1, 0, 0, 0]), "x": np.array([1, 2, 0, 0])}
    r = PrequentialResult(methods=["base", "x"], k=10, index=np.arange(4), times=np.array([0.0, 0, 3600, 7200]),
                          ranks=ranks)
    out = hit_intervals(r, 3600.0, "base", draws=200)
    assert out["x"]["hits"] == 2 and out["x"]["hr10"] == 0.5
    assert out["x"]["ndcg10"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    lo, hi = out["x"]["hr10_minus_base_ci95"]
    assert 0.0 <= lo <= 0.25 <= hi  # x never loses to base on a draw; it wins 1 of 4
    assert hit_intervals(r, 3600.0, "base", np.zeros(4, bool))["x"] == {"events": 0}
