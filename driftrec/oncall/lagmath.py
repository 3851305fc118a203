"""Consumer-lag arithmetic with no I/O: offsets in, lag in messages and seconds out.

Kafka's own definitions are used so the numbers match ``kafka-consumer-groups --describe``:
the *log-end offset* is the offset the next produced message will get, the *committed offset*
is the next message the group will read, and the lag is their difference. The *time lag* is
the age of the oldest unconsumed message, i.e. of the message at the committed offset.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "PartitionLag",
    "partition_lag",
    "time_lag_s",
    "group_totals",
    "rate_per_s",
    "quantile",
    "Series",
]


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One consumer group's position on one partition, as the broker reports it."""

    group: str
    topic: str
    partition: int
    #: Next offset the broker will assign (Kafka's LOG-END-OFFSET).
    end_offset: int
    #: First offset still in the log (retention may have deleted older ones).
    start_offset: int
    #: Next offset the group will read; ``None`` when the group never committed here.
    committed: int | None
    #: Messages between the committed offset and the log end.
    lag: int
    #: Age in seconds of the oldest unconsumed message; 0 when caught up, ``None`` if unknown.
    lag_seconds: float | None


def partition_lag(end_offset: int, committed: int | None, start_offset: int = 0) -> int:
    """Messages the group has still to read on one partition.

    Parameters
    ----------
    end_offset : int
        Log-end offset (the offset of the *next* message to be produced).
    committed : int or None
        The group's committed offset (the next message it will read). ``None`` means the group
        has no commit on this partition; driftrec's consumers reset to *earliest*, so everything
        still in the log counts as lag.
    start_offset : int
        Log-start offset; offsets below it were deleted and cannot be read any more.

    Returns
    -------
    int
        ``end_offset - max(committed, start_offset)``, never negative. A committed offset above
        the end offset happens when the end offset was read a moment before the commit landed;
        that is 0 lag, not negative lag.
    """
    position = start_offset if committed is None else max(committed, start_offset)
    return max(0, end_offset - position)


def time_lag_s(now: float, oldest_unconsumed_ts: float | None, lag: int) -> float | None:
    """Age of the oldest unconsumed message, in seconds.

    Parameters
    ----------
    now : float
        Current wall-clock time, Unix seconds.
    oldest_unconsumed_ts : float or None
        Kafka timestamp (Unix seconds) of the message at the committed offset; ``None`` when it
        could not be read.
    lag : int
        Lag in messages; with no lag the group is caught up and its time lag is 0 by definition.

    Returns
    -------
    float or None
        ``max(0, now - ts)``; clamped at 0 because producer clocks may run ahead of ours.
        ``None`` when there is lag but its age is unknown.
    """
    if lag <= 0:
        return 0.0
    if oldest_unconsumed_ts is None:
        return None
    return max(0.0, now - oldest_unconsumed_ts)


def group_totals(rows: Iterable[PartitionLag]) -> dict[tuple[str, str], tuple[int, float]]:
    """Sum of message lag and maximum time lag per (group, topic).

    The maximum, not the mean, is the on-call number: one stuck partition makes every user on
    it stale even when the others are caught up. Partitions whose time lag is unknown are left
    out of the maximum, so it is a lower bound when some timestamp could not be read.
    """
    out: dict[tuple[str, str], tuple[int, float]] = {}
    for row in rows:
        key = (row.group, row.topic)
        lag, secs = out.get(key, (0, 0.0))
        if row.lag_seconds is not None:
            secs = max(secs, row.lag_seconds)
        out[key] = (lag + row.lag, secs)
    return out


def rate_per_s(samples: Sequence[tuple[float, float]], window_s: float | None = None) -> float | None:
    """Per-second increase of a monotonic counter (such as an offset) from (time, value) samples.

    Parameters
    ----------
    samples : sequence of (float, float)
        Time-ordered samples; only those in the last ``window_s`` seconds are used.
    window_s : float or None
        Look-back window; ``None`` uses every sample.

    Returns
    -------
    float or None
        Increase divided by elapsed time. A decrease (a topic recreated, a counter restarted)
        is treated like Prometheus' ``rate()`` treats a reset: the new value counts from zero.
        ``None`` with fewer than two samples or no elapsed time.
    """
    if window_s is not None and samples:
        horizon = samples[-1][0] - window_s
        samples = [s for s in samples if s[0] >= horizon]
    if len(samples) < 2:
        return None
    elapsed = samples[-1][0] - samples[0][0]
    if elapsed <= 0:
        return None
    increase = 0.0
    for (_, prev), (_, cur) in zip(samples, samples[1:], strict=False):
        increase += cur - prev if cur >= prev else cur
    return increase / elapsed


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between order statistics.

    Same definition as ``numpy.quantile(..., method="linear")``; ``None`` for no values.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within [0, 1]")
    data = sorted(v for v in values if not math.isnan(v))
    if not data:
        return None
    pos = q * (len(data) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


class Series:
    """A time series kept for the last ``horizon_s`` seconds (the dashboard's sparklines)."""

    def __init__(self, horizon_s: float = 600.0) -> None:
        self.horizon_s = horizon_s
        self._points: deque[tuple[float, float]] = deque()

    def add(self, t: float, value: float) -> None:
        self._points.append((t, value))
        while self._points and self._points[0][0] < t - self.horizon_s:
            self._points.popleft()

    def points(self) -> list[tuple[float, float]]:
        return list(self._points)

    def last(self) -> float | None:
        return self._points[-1][1] if self._points else None

    def __len__(self) -> int:
        return len(self._points)
