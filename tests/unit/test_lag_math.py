"""Lag arithmetic: offsets -> lag in messages and seconds, totals, rates, quantiles, sparkline buffers."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftrec.oncall.lag import parse_assignment
from driftrec.oncall.lagmath import (
    PartitionLag,
    Series,
    group_totals,
    partition_lag,
    quantile,
    rate_per_s,
    time_lag_s,
)


def test_partition_lag_is_end_minus_committed() -> None:
    assert partition_lag(end_offset=120, committed=100) == 20
    assert partition_lag(end_offset=100, committed=100) == 0


def test_committed_past_the_end_is_zero_not_negative() -> None:
    # The end offset was read a moment before a newer commit landed.
    assert partition_lag(end_offset=100, committed=103) == 0


def test_no_commit_counts_the_whole_retained_log() -> None:
    assert partition_lag(end_offset=500, committed=None, start_offset=0) == 500
    assert partition_lag(end_offset=500, committed=None, start_offset=450) == 50


def test_commit_below_log_start_counts_only_what_is_still_readable() -> None:
    # Retention deleted offsets 0..299; the group will resume at 300, not at 10.
    assert partition_lag(end_offset=400, committed=10, start_offset=300) == 100


@given(end=st.integers(0, 10**12), committed=st.none() | st.integers(0, 10**12),
       start=st.integers(0, 10**12))
def test_lag_bounds(end: int, committed: int | None, start: int) -> None:
    start = min(start, end)
    lag = partition_lag(end, committed, start)
    assert 0 <= lag <= end - start


def test_time_lag_is_age_of_the_oldest_unconsumed_message() -> None:
    assert time_lag_s(now=1000.0, oldest_unconsumed_ts=940.0, lag=5) == pytest.approx(60.0)
    # Caught up: zero whatever the timestamp says.
    assert time_lag_s(now=1000.0, oldest_unconsumed_ts=1.0, lag=0) == 0.0
    # A producer clock ahead of ours never gives negative age.
    assert time_lag_s(now=1000.0, oldest_unconsumed_ts=1003.0, lag=1) == 0.0
    # Lagging but the message could not be read: unknown, not zero.
    assert time_lag_s(now=1000.0, oldest_unconsumed_ts=None, lag=3) is None


def _row(group: str, topic: str, p: int, lag: int, secs: float | None) -> PartitionLag:
    return PartitionLag(group, topic, p, end_offset=100 + lag, start_offset=0, committed=100,
                        lag=lag, lag_seconds=secs)


def test_group_totals_sum_lag_and_take_worst_time_lag() -> None:
    rows = [_row("g", "t", 0, 5, 2.0), _row("g", "t", 1, 7, 30.0), _row("g", "t", 2, 0, 0.0),
            _row("g", "u", 0, 1, None), _row("h", "t", 0, 3, 1.5)]
    totals = group_totals(rows)
    assert totals[("g", "t")] == (12, 30.0)
    assert totals[("g", "u")] == (1, 0.0)  # unknown age: lower bound 0
    assert totals[("h", "t")] == (3, 1.5)


def test_rate_of_a_steady_counter() -> None:
    samples = [(float(t), 100.0 + 50.0 * t) for t in range(11)]
    assert rate_per_s(samples) == pytest.approx(50.0)
    # The window keeps only the last 4 s (5 samples).
    bursty = [(float(t), 0.0) for t in range(6)] + [(6.0, 40.0), (7.0, 80.0), (8.0, 120.0), (9.0, 160.0), (10.0, 200.0)]
    assert rate_per_s(bursty, window_s=4.0) == pytest.approx(40.0)
    assert rate_per_s(bursty) == pytest.approx(20.0)


def test_rate_treats_a_decrease_as_a_reset_like_prometheus() -> None:
    # 0 -> 10 -> 20, then the counter restarts at 5: increase = 10 + 10 + 5 over 3 s.
    assert rate_per_s([(0.0, 0.0), (1.0, 10.0), (2.0, 20.0), (3.0, 5.0)]) == pytest.approx(25.0 / 3)


def test_rate_needs_two_samples_and_elapsed_time() -> None:
    assert rate_per_s([]) is None
    assert rate_per_s([(1.0, 5.0)]) is None
    assert rate_per_s([(1.0, 5.0), (1.0, 9.0)]) is None


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.9, 0.99, 1.0])
def test_quantile_matches_numpy_linear(q: float) -> None:
    rng = random.Random(7)
    values = [rng.expovariate(5.0) for _ in range(257)]
    assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)))


def test_quantile_edges() -> None:
    assert quantile([], 0.5) is None
    assert quantile([3.0], 0.99) == 3.0
    assert quantile([1.0, 2.0], 0.5) == 1.5
    with pytest.raises(ValueError):
        quantile([1.0], 1.5)


def test_series_forgets_points_past_the_horizon() -> None:
    s = Series(horizon_s=10.0)
    for t in range(30):
        s.add(float(t), float(t * t))
    pts = s.points()
    assert pts[0][0] == 19.0 and pts[-1] == (29.0, 841.0)
    assert len(s) == 11 and s.last() == 841.0


def _assignment(topics: dict[str, list[int]], userdata: bytes = b"") -> bytes:
    out = struct.pack(">hi", 0, len(topics))
    for name, parts in topics.items():
        raw = name.encode()
        out += struct.pack(">h", len(raw)) + raw + struct.pack(f">i{len(parts)}i", len(parts), *parts)
    return out + struct.pack(">i", len(userdata)) + userdata


def test_parse_assignment_reads_the_consumer_protocol() -> None:
    blob = _assignment({"clicks": [0, 2, 3], "leader": [0]}, userdata=b"x" * 40)
    assert parse_assignment(blob) == {"clicks": frozenset({0, 2, 3}), "leader": frozenset({0})}


def test_parse_assignment_tolerates_garbage() -> None:
    assert parse_assignment(b"") == {}
    assert parse_assignment(_assignment({"clicks": [0, 1]})[:-9]) == {}
