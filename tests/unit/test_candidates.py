"""models.candidates: what a recommendation read, as the blend's inputs (hand-computed cases)."""

from __future__ import annotations

import pytest

from driftrec.models.candidates import (
    MAX_TRENDING_READ,
    assemble,
    similar_user_scores,
    trending_depth,
    user_recent,
)
from driftrec.models.decay import DecayPolicy

POLICY = DecayPolicy(100.0)


def test_stored_weights_are_decayed_and_the_newest_clicked_come_first() -> None:
    stored = [("a", 8.0), ("b", 4.0), ("z", 0.0)]  # strongest first; a zero weight is no signal
    history = [("b", 50.0), ("a", 10.0)]  # newest first
    decayed, recent = user_recent(stored, history, 0.5, 60.0, POLICY, k=1, order="time")
    assert decayed == [("a", 4.0), ("b", 2.0)]
    assert recent == [("b", 2.0)]
    assert user_recent(stored, history, 0.5, 60.0, POLICY, k=1, order="weight")[1] == [("a", 4.0)]


def test_recency_stands_in_when_no_weight_is_stored() -> None:
    decayed, recent = user_recent([], [("b", 100.0), ("a", 0.0)], 1.0, 100.0, POLICY, k=2, order="time")
    assert decayed == [("b", 1.0), ("a", pytest.approx(0.5))]  # one half-life older: half the weight
    assert [i for i, _ in recent] == ["b", "a"]


def test_session_context_counts_as_the_newest_and_strongest() -> None:
    decayed, recent = user_recent([("a", 3.0), ("c", 1.0)], [("a", 5.0), ("c", 1.0)], 1.0, 5.0, POLICY,
                                  k=2, order="time", context=["c", "x"])
    assert decayed == [("c", 3.0), ("x", 3.0), ("a", 3.0)]
    assert recent == [("c", 3.0), ("x", 3.0)]
    # An anonymous shopper: no state at all, only the session.
    assert user_recent([], [], 1.0, 0.0, POLICY, k=5, order="time", context=["x"]) == ([("x", 1.0)], [("x", 1.0)])


def test_similar_user_scores_weigh_each_users_items_by_their_strongest() -> None:
    theirs = {"v": [("i", 4.0), ("j", 2.0)], "w": [("j", 1.0), ("k", 0.0)], "empty": []}
    got = dict(similar_user_scores([("v", 0.5), ("w", 0.25), ("empty", 0.9), ("gone", 1.0)], theirs))
    assert got == {"i": 0.5, "j": 0.5 * 0.5 + 0.25 * 1.0}


def test_assemble_decays_rows_and_trending_and_asks_norms_of_what_item_item_needs() -> None:
    asked: list[set[str]] = []

    def norms_of(items: set[str]) -> dict[str, float]:
        asked.append(set(items))
        return {i: 1.0 for i in items}

    c = assemble([("r", 1.0)], {"r": [("n1", 10.0), ("n2", 6.0)]}, 0.5, norms_of, vector_scores=[("v", 1.0)],
                 tf_scores=[], similar=[], theirs={}, trending=[("t", 8.0)], trending_label="shoes")
    assert c.neighbours == {"r": [("n1", 5.0), ("n2", 3.0)]}
    assert c.trending == [("t", 4.0)] and c.trending_label == "shoes"
    assert asked == [{"r", "n1", "n2"}] and c.vector_scores == [("v", 1.0)]


def test_trending_depth_is_bounded() -> None:
    assert trending_depth(10, 5, 50) == 65
    assert trending_depth(10, 10**6, 50) == MAX_TRENDING_READ
    assert trending_depth(0, 0, 0) == 0


def test_session_weights_follow_the_order_of_the_last_clicks_and_the_latest_session() -> None:
    from driftrec.models.candidates import session_weights

    history = [("c", 1000.0), ("b", 990.0), ("a", 10.0)]  # newest first: c, b in the latest session
    recent = [("c", 1.0), ("b", 1.0), ("a", 1.0)]
    assert session_weights(recent, history, position_decay=0.0, session_gap_s=100.0,
                           outside_session=1.0) is recent  # the defaults change nothing
    got = session_weights(recent, history, position_decay=1.0, session_gap_s=100.0, outside_session=0.5)
    assert got == [("c", 1.0), ("b", pytest.approx(0.5)), ("a", pytest.approx(1 / 3 * 0.5))]
    # a context item is the newest click, and in the session; history items move one place back
    got = session_weights([("x", 2.0), ("c", 1.0)], history, ["x"], position_decay=1.0, session_gap_s=100.0,
                          outside_session=0.5)
    assert got == [("x", 2.0), ("c", pytest.approx(0.5))]
    # user_recent scales only the recent items, not the decayed weights (fold-in, TF inputs)
    decayed, rec = user_recent([("a", 1.0), ("c", 1.0)], [("c", 5.0), ("a", 1.0)], 1.0, 5.0, POLICY, k=2,
                               order="time", position_decay=1.0, session_gap_s=1.0, outside_session=0.5)
    assert decayed == [("a", 1.0), ("c", 1.0)]
    assert rec == [("c", 1.0), ("a", pytest.approx(0.25))]


def test_a_recent_item_out_of_the_trimmed_history_counts_as_the_oldest() -> None:
    from driftrec.models.candidates import session_weights

    history = [("c", 1000.0), ("b", 990.0)]
    got = session_weights([("c", 1.0), ("gone", 1.0)], history, position_decay=1.0, session_gap_s=100.0,
                          outside_session=0.5)
    assert got == [("c", 1.0), ("gone", pytest.approx(1 / 3 * 0.5))]
