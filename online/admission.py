"""Admission control for the ranking routes: a bound on requests in flight and a deadline.

A reader offered more than it can rank must not queue without bound: every request would then
wait behind the ones before it, Redis reads would time out for all of them, and the answers
would arrive seconds late (issue 23 measured p50 9 s at twice the reader's capacity). Past
``limit`` ranking requests in flight, a request is answered at once from memory (the trending
snapshot, ``"degraded": true``); a request still ranking after ``deadline_s`` is answered the
same way. Both are counted in ``driftrec_reader_shed_answers_total``.
"""

from __future__ import annotations

__all__ = ["Admission"]


class Admission:
    """Counts the ranking requests in flight in one reader process (one event loop: no lock).

    Parameters
    ----------
    limit : int
        Most ranking requests worked on at once; the next one is shed.
    deadline_s : float
        Longest a ranking request may take before it is answered from memory instead.
    """

    def __init__(self, limit: int, deadline_s: float) -> None:
        if limit < 1 or not deadline_s > 0:
            raise ValueError("limit must be >= 1 and deadline_s > 0")
        self.limit = limit
        self.deadline_s = deadline_s
        self.in_flight = 0
        self.peak = 0

    def enter(self) -> bool:
        """Take a slot; False (and no slot) when ``limit`` requests are in flight."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        return True

    def leave(self) -> None:
        self.in_flight -= 1
