"""Which recent items feed the item-item source: by last click or by decayed weight."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftrec.models.blend import recent_items

DECAYED = [("a", 5.0), ("b", 4.0), ("c", 3.0), ("d", 2.0)]  # strongest first


def test_time_order_keeps_the_last_clicked_with_their_weights() -> None:
    assert recent_items(DECAYED, ["d", "c", "a", "b"], 2, "time") == [("d", 2.0), ("c", 3.0)]


def test_weight_order_keeps_the_strongest() -> None:
    assert recent_items(DECAYED, ["d", "c", "a", "b"], 2, "weight") == [("a", 5.0), ("b", 4.0)]


def test_items_without_weight_are_skipped_and_the_strongest_top_up() -> None:
    # "x" was clicked last but its weight was pruned; "b" is not in the (trimmed) history.
    assert recent_items(DECAYED, ["x", "d", "d", "c"], 4, "time") == [
        ("d", 2.0), ("c", 3.0), ("a", 5.0), ("b", 4.0)]


def test_unknown_order_is_an_error() -> None:
    with pytest.raises(ValueError, match="recent-items order"):
        recent_items(DECAYED, [], 2, "newest")


@given(st.lists(st.sampled_from("abcdefgh"), unique=True),
       st.lists(st.sampled_from("abcdefghij")), st.integers(0, 10), st.sampled_from(["time", "weight"]))
def test_bounded_unique_and_weights_unchanged(items: list[str], newest: list[str], k: int, order: str) -> None:
    decayed = [(i, float(len(items) - n)) for n, i in enumerate(items)]
    out = recent_items(decayed, newest, k, order)
    assert len(out) == min(k, len(decayed))
    assert len({i for i, _ in out}) == len(out)
    assert all(dict(decayed)[i] == w for i, w in out)


def test_asymmetric_cosine_divides_less_by_the_candidates_popularity() -> None:
    from driftrec.models.blend import Candidates, blend, item_item_scores

    c = Candidates(recent=[("r", 1.0)], neighbours={"r": [("rare", 2.0), ("hit", 8.0)]},
                   norms={"r": 4.0, "rare": 4.0, "hit": 64.0})
    cosine, _ = item_item_scores(c, 0.0)
    assert cosine == pytest.approx({"rare": 2.0 / 4.0, "hit": 8.0 / 16.0})
    assert item_item_scores(c, 0.0, 0.5)[0] == cosine  # 0.5 is the cosine, bit for bit
    conditional, because = item_item_scores(c, 1.0, 1.0)  # co / (pop(r) + shrinkage)
    assert conditional == pytest.approx({"rare": 2.0 / 5.0, "hit": 8.0 / 5.0})
    assert because == {"rare": "r", "hit": "r"}
    assert [s.item for s in blend(c, 2, alpha=1.0, shrinkage=1.0)] == ["hit", "rare"]
