"""SKNN and V-SKNN on hand-computed small cases, and their prequential wrapper's sessions."""

from __future__ import annotations

import math

import pytest

from driftrec.models.online import EventView
from driftrec.models.sknn import SessionKNNRecommender, sknn_scores, vsknn_scores


def ev(user: str, item: str, t: float) -> EventView:
    return EventView(user=user, item=item, type="view", t=t, category=None, offset=0, partition=0)


def test_sknn_scores_are_sums_of_binary_cosines() -> None:
    # current {a, b}; n1 = {a, b, c}: 2 / sqrt(2 * 3); n2 = {b, d}: 1 / sqrt(2 * 2) = 0.5; n3 shares nothing.
    n1, n2, n3 = {"a", "b", "c"}, {"b", "d"}, {"x", "y"}
    got = sknn_scores(["a", "b", "a"], [n1, n2, n3], k=10)
    s1 = 2 / math.sqrt(6)
    assert got == pytest.approx({"a": s1, "b": s1 + 0.5, "c": s1, "d": 0.5})
    # k = 1 keeps the most similar session only
    assert sknn_scores(["a", "b"], [n2, n1], k=1) == pytest.approx({"a": s1, "b": s1, "c": s1})


def test_vsknn_weighs_the_last_clicks_most() -> None:
    # current clicks a, b, c: weights 1/3, 2/3, 1; c is 1 from the end, b 2, a 3.
    n1 = {"a", "x"}  # sim (1/3) / 3 = 1/9, nearest shared item a: 3 back -> x scores 1/27
    n2 = {"c", "y"}  # sim 1 / 3, nearest c: 1 back -> y scores 1/3
    n3 = {"a", "b", "z"}  # sim (1/3 + 2/3) / 3 = 1/3, nearest b: 2 back -> z scores 1/6
    got = vsknn_scores(["a", "b", "c"], [n1, n2, n3], k=10)
    assert got["x"] == pytest.approx(1 / 27)
    assert got["y"] == pytest.approx(1 / 3)
    assert got["z"] == pytest.approx(1 / 6)
    assert got["a"] == pytest.approx(1 / 27 + 1 / 6)
    # a repeated click counts at its last position: clicks a, b, a -> a weighs 1 (1 back), b 2/3.
    assert vsknn_scores(["a", "b", "a"], [{"a", "q"}], k=10)["q"] == pytest.approx(1 / 2)


def test_vsknn_keeps_the_k_most_similar_ties_to_the_more_recent() -> None:
    older, newer = {"a", "o"}, {"a", "w"}
    got = vsknn_scores(["a"], [newer, older], k=1)  # most recent first
    assert "w" in got and "o" not in got


def test_sessions_are_cut_by_the_gap_and_the_asker_is_served_from_the_last_one() -> None:
    rec = SessionKNNRecommender(sequential=False, k=10, sample_size=10, session_gap_s=100.0, last_n=None)
    rec.update([ev("v", "a", 0), ev("v", "b", 10),  # v's session {a, b}
                ev("w", "a", 20), ev("w", "c", 30),  # w's session {a, c}
                ev("u", "z", 40), ev("u", "a", 500)])  # u: {z}, then after the gap {a}
    assert len(rec.sessions) == 4
    assert rec.sessions[rec.current["u"]].items == {"a"}
    # u's query {a}: v and w are 1/sqrt(2) each; u's older session {z} shares nothing.
    got = rec.scores("u")
    assert got == pytest.approx({"a": 2 / math.sqrt(2), "b": 1 / math.sqrt(2), "c": 1 / math.sqrt(2)})
    # the session's own items and the excluded are never recommended; ties by item name, descending
    assert rec.recommend("u", 2, {"c"}, 600.0) == ["b", "z"]


def test_cold_users_and_short_lists_get_the_most_clicked_items() -> None:
    rec = SessionKNNRecommender(k=10, sample_size=10)
    rec.update([ev("v", "a", 0), ev("w", "a", 1), ev("w", "b", 2), ev("x", "c", 3)])
    assert rec.recommend("nobody", 2, frozenset(), 10.0) == ["a", "c"]
    # x's session {c} shares no item: all back-fill, own item excluded
    assert rec.recommend("x", 2, frozenset(), 10.0) == ["a", "b"]


def test_only_the_most_recent_sample_size_sessions_are_compared() -> None:
    rec = SessionKNNRecommender(sequential=False, k=10, sample_size=1, session_gap_s=1e9)
    rec.update([ev("old", "a", 0), ev("old", "o", 1), ev("new", "a", 2), ev("new", "n", 3), ev("u", "a", 4)])
    assert set(rec.scores("u")) == {"a", "n"}


def test_equal_timestamps_of_one_user_are_set_apart_in_log_order() -> None:
    from driftrec.evaluate import separate_ties

    rows = [{"user_id": "u", "item_id": "b", "timestamp": 5.0}, {"user_id": "v", "item_id": "x", "timestamp": 5.0},
            {"user_id": "u", "item_id": "a", "timestamp": 5.0}, {"user_id": "u", "item_id": "c", "timestamp": 6.0}]
    got = separate_ties(rows, step_s=0.001)
    assert [(e["user_id"], e["item_id"], e["timestamp"]) for e in got] == [
        ("u", "b", 5.0), ("v", "x", 5.0), ("u", "a", 5.001), ("u", "c", 6.0)]
    assert separate_ties(rows[1:2]) == rows[1:2]
