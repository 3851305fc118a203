"""Co-occurrence increments, shrunk similarity and top-k."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.models.cooccurrence import (
    cooccurrence_increments,
    similarity,
    similarity_array,
    top_k,
    window_partners,
)
from driftrec.models.decay import SCORE_SCALE, DecayPolicy

HIST = [("a", 100.0), ("b", 200.0), ("c", 300.0), ("d", 400.0)]


def test_window_takes_most_recent_entries_first() -> None:
    assert window_partners(HIST, "x", 450.0, window=2, window_s=1e9) == ["d", "c"]
    assert window_partners(HIST, "x", 450.0, window=10, window_s=1e9) == ["d", "c", "b", "a"]


def test_window_skips_the_same_item_without_reaching_deeper() -> None:
    # "c" is inside the last 2 entries: it is skipped, and "b" does not take its place.
    assert window_partners(HIST, "c", 450.0, window=2, window_s=1e9) == ["d"]


def test_window_respects_time_gap_both_ways() -> None:
    assert window_partners(HIST, "x", 450.0, window=10, window_s=150.0) == ["d", "c"]
    # A late event (t before some history entries) pairs only with entries within window_s.
    assert window_partners(HIST, "x", 250.0, window=10, window_s=60.0) == ["c", "b"]
    assert window_partners(HIST, "x", 250.0, window=10, window_s=40.0) == []
    assert window_partners([], "x", 1.0, window=5, window_s=10.0) == []


def test_increments_are_symmetric_and_forward_decayed() -> None:
    p = DecayPolicy(100.0)
    landmark = 300.0
    incs = cooccurrence_increments(
        HIST, "x", 400.0, 3.0, p, landmark, window=2, window_s=1e9
    )
    # 3 · 2^(100/100) = 6 weight units at the landmark, stored as 6 · SCORE_SCALE whole units
    expected = 6.0 * SCORE_SCALE
    assert 3.0 * math.exp(p.rate * 100.0) == pytest.approx(6.0)
    assert sorted(incs) == sorted(
        [("x", "d", expected), ("d", "x", expected), ("x", "c", expected), ("c", "x", expected)]
    )


def test_similarity_hand_computed() -> None:
    assert similarity(6.0, 4.0, 9.0, 0.0) == pytest.approx(1.0)
    assert similarity(6.0, 4.0, 9.0, 6.0) == pytest.approx(0.5)
    assert similarity(0.0, 0.0, 0.0, 0.0) == 0.0


def test_shrinkage_ranks_rare_co_clicks_below_solid_evidence() -> None:
    rare = (1.0, 1.0, 1.0)  # two items seen once each, clicked together once
    solid = (40.0, 100.0, 100.0)  # seen 100 times each, together 40 times
    # Without shrinkage the rare pair looks like a perfect match and wins ...
    assert similarity(*rare, 0.0) > similarity(*solid, 0.0)
    # ... with the default shrinkage the well-supported pair ranks first.
    assert similarity(*rare, 5.0) < similarity(*solid, 5.0)
    scores = {"rare": similarity(*rare, 5.0), "solid": similarity(*solid, 5.0)}
    assert [k for k, _ in top_k(scores, 2)] == ["solid", "rare"]


def test_similarity_does_not_overflow_on_large_stored_scores() -> None:
    big = math.exp(400.0)
    assert similarity(big, big, big, 5.0) == pytest.approx(1.0)
    assert similarity_array([big], [big], [big], 5.0)[0] == pytest.approx(1.0)


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0, 1e6)), min_size=1, max_size=20
    ),
    shrink=st.floats(0, 100),
)
def test_similarity_array_matches_scalar(rows: list[tuple[float, float, float]], shrink: float) -> None:
    c, a, b = (np.array(col) for col in zip(*rows, strict=True))
    got = similarity_array(c, a, b, shrink)
    want = [similarity(ci, ai, bi, shrink) for ci, ai, bi in rows]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_similarity_array_broadcasts_one_item_against_many() -> None:
    got = similarity_array([6.0, 2.0], 4.0, [9.0, 1.0], 0.0)
    np.testing.assert_allclose(got, [1.0, 1.0])


def test_top_k_orders_and_breaks_ties_like_zrevrange() -> None:
    scores = {"a": 1.0, "b": 3.0, "c": 3.0, "d": 2.0}
    assert top_k(scores, 3) == [("c", 3.0), ("b", 3.0), ("d", 2.0)]
    assert top_k(scores, 0) == []
    assert top_k({}, 5) == []
    assert len(top_k(scores, 10)) == 4
