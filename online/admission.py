"""Admission control for the ranking routes: a bound on requests in flight, the event loop's lag
and a deadline.

A reader offered more than it can rank must not queue without bound: every request would then
wait behind the ones before it, Redis reads would time out for all of them, and the answers
would arrive seconds late (issue 23 measured p50 9 s at twice the reader's capacity). Past
``limit`` ranking requests in flight, a request is answered at once from memory (the trending
snapshot, ``"degraded": true``); a request still ranking after ``deadline_s`` is answered the
same way. Both are counted in ``driftrec_reader_shed_answers_total``.

The in-flight bound alone does not bound the wait: requests also queue *before* they reach a
handler, as HTTP bytes not yet read and tasks not yet run, while the loop works through the
rankings it admitted. So the reader also watches how late its own timer fires (:meth:`watch_lag`,
every 10 ms): a loop that has been at least ``lag_limit_s`` late on every sample of the last
``LAG_WINDOW`` (50 ms) has that much work queued ahead of any new request, and new rankings are
shed until it catches up. The minimum over a window, as CoDel (Nichols & Jacobson 2012) takes it,
tells a standing queue from one late wake-up (a GC pause, the process descheduled for a moment),
which sheds nothing; Facebook's services shed on the same queue-delay signal ("Fail at Scale", 2015).
A shed answer costs a small fraction of a ranking, so the queue drains and the answers that are
ranked stay fast.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Admission", "LAG_WINDOW"]

#: Lag samples (one per 10 ms) whose minimum must pass the limit before rankings are shed.
LAG_WINDOW = 5


class Admission:
    """Counts the ranking requests in flight in one reader process (one event loop: no lock).

    Parameters
    ----------
    limit : int
        Most ranking requests worked on at once; the next one is shed.
    deadline_s : float
        Longest a ranking request may take before it is answered from memory instead.
    lag_limit_s : float
        Shed new rankings while every one of the loop's last ``LAG_WINDOW`` lag samples is above
        this (0: never for lag).
    """

    def __init__(self, limit: int, deadline_s: float, lag_limit_s: float = 0.0) -> None:
        if limit < 1 or not deadline_s > 0 or lag_limit_s < 0:
            raise ValueError("limit must be >= 1, deadline_s > 0 and lag_limit_s >= 0")
        self.limit = limit
        self.deadline_s = deadline_s
        self.lag_limit_s = lag_limit_s
        self.in_flight = 0
        self.peak = 0
        self._lags: deque[float] = deque([0.0], maxlen=LAG_WINDOW)

    def admit(self) -> str | None:
        """Take a slot and return None, or return why not (``"in_flight"``, ``"loop_lag"``) and
        take none."""
        if self.in_flight >= self.limit:
            return "in_flight"
        if self.lag_limit_s and self.lag_s > self.lag_limit_s:
            return "loop_lag"
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        return None

    def enter(self) -> bool:
        """Take a slot; False (and no slot) when it is refused (:meth:`admit`)."""
        return self.admit() is None

    def leave(self) -> None:
        self.in_flight -= 1

    @property
    def lag_s(self) -> float:
        """The standing lag: the smallest of the last ``LAG_WINDOW`` samples."""
        return min(self._lags)

    def note_lag(self, lag_s: float) -> None:
        self._lags.append(max(0.0, lag_s))

    async def watch_lag(self, interval_s: float = 0.01) -> None:
        """Sample the running loop's lag (how late a ``interval_s`` sleep wakes) until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            self.note_lag(loop.time() - due)
