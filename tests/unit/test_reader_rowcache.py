"""The reader's near cache of shared rows and the snapshot's trending lists (no I/O)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.models.decay import DecayPolicy
from driftrec.online.rowcache import RowCache
from driftrec.online.snapshot import TrendingSnapshot
from driftrec.online.store import Meta

ROW = [("b", 2.0), ("c", 1.0)]


def test_a_row_is_reused_until_its_time_is_up() -> None:
    cache = RowCache(ttl_s=0.5, max_rows=10)
    found, missing = cache.lookup(["a"], now=100.0, landmark=7.0)
    assert (found, missing) == ({}, ["a"])
    cache.store({"a": ROW}, now=100.0, landmark=7.0)
    assert cache.lookup(["a", "x"], now=100.4, landmark=7.0) == ({"a": ROW}, ["x"])
    assert cache.lookup(["a"], now=100.5, landmark=7.0) == ({}, ["a"])  # exactly ttl_s old: read again
    assert (cache.hits, cache.misses) == (1, 3)


def test_a_row_read_under_another_landmark_is_a_miss() -> None:
    cache = RowCache(ttl_s=10.0, max_rows=10)
    cache.store({"a": ROW}, now=0.0, landmark=7.0)
    assert cache.lookup(["a"], now=1.0, landmark=8.0) == ({}, ["a"])


def test_ttl_zero_reads_every_time_and_keeps_nothing() -> None:
    cache = RowCache(ttl_s=0.0, max_rows=10)
    cache.store({"a": ROW}, now=0.0, landmark=0.0)
    assert cache.lookup(["a"], now=0.0, landmark=0.0) == ({}, ["a"])
    assert len(cache) == 0


def test_a_stored_row_replaces_the_old_one_and_restarts_its_time() -> None:
    cache = RowCache(ttl_s=1.0, max_rows=10)
    cache.store({"a": ROW}, now=0.0, landmark=0.0)
    cache.store({"a": [("z", 9.0)]}, now=0.8, landmark=0.0)
    assert cache.lookup(["a"], now=1.5, landmark=0.0) == ({"a": [("z", 9.0)]}, [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 5)), max_size=60),
       st.integers(1, 4), st.floats(0.1, 3.0))
def test_never_more_rows_than_the_bound_and_never_a_stale_one(ops: list[tuple[str, float]], bound: int,
                                                              ttl: float) -> None:
    cache = RowCache(ttl_s=ttl, max_rows=bound)
    now = 0.0
    stored_at: dict[str, float] = {}
    for key, step in ops:
        now += step
        found, missing = cache.lookup([key], now, 0.0)
        assert len(cache) <= bound
        if key in found:
            assert now - stored_at[key] < ttl  # a hit is always fresh
        else:
            cache.store({key: [(key, now)]}, now, 0.0)
            stored_at[key] = now
            assert len(cache) <= bound


def snapshot(**kw: Any) -> TrendingSnapshot:
    snap = TrendingSnapshot(store=None, policy=DecayPolicy(3600.0), n_items=kw.pop("n_items", 20000),  # type: ignore[arg-type]
                            per_category=kw.pop("per_category", 3))
    for k, v in kw.items():
        setattr(snap, k, v)
    return snap


def test_stored_top_gives_the_lists_with_their_landmark() -> None:
    pop = [("a", 5.0), ("b", 4.0), ("c", 3.0)]
    snap = snapshot(meta=Meta(10.0, 20.0), popular=pop, categories={"shoes": [("s1", 2.0), ("s2", 1.0)]})
    assert snap.stored_top(None, 2) == (10.0, pop[:2])
    # The whole catalogue is shorter than asked, and the snapshot holds all of it.
    assert snap.stored_top(None, 50) == (10.0, pop)
    assert snap.stored_top("shoes", 5) == (10.0, [("s1", 2.0), ("s2", 1.0)])


def test_stored_top_declines_what_it_cannot_give_whole() -> None:
    assert snapshot().stored_top(None, 5) is None  # no snapshot yet
    snap = snapshot(meta=Meta(0.0, 0.0), popular=[], categories={"shoes": [("s1", 3.0), ("s2", 2.0), ("s3", 1.0)]})
    assert snap.stored_top("bags", 2) is None  # a category not kept
    # The kept list is cut at per_category (3): Redis may hold more than the 4 asked.
    assert snap.stored_top("shoes", 4) is None
    assert snap.stored_top("shoes", 3) == (0.0, [("s1", 3.0), ("s2", 2.0), ("s3", 1.0)])
