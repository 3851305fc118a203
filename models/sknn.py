"""Session-based kNN (SKNN) and its sequence-aware variant (V-SKNN), run prequentially.

Ludewig & Jannach, "Evaluation of session-based recommendation algorithms" (User Modeling and
User-Adapted Interaction 28, 2018), find these nearest-neighbour methods hard to beat on
e-commerce clicks. The current session is compared with past sessions that share an item with
it; the items of the ``k`` most similar sessions are scored by those similarities.

* **SKNN**: binary cosine, ``sim(s, n) = |s ∩ n| / sqrt(|s| · |n|)``; ``score(i) = Σ_n sim(s, n)
  · 1[i ∈ n]``.
* **V-SKNN**: the current session's items weigh by position (``"div"``: the ``p``-th of ``L``
  clicks weighs ``p / L``, so the last click weighs 1), ``sim(s, n) = Σ_{i ∈ s ∩ n} w(i) / L``;
  a neighbour's items score ``sim(s, n) / d``, ``d`` the position from the end of the current
  session of the most recent item the neighbour shares (``"div_score"``). These are the
  defaults of the authors' ``session-rec`` framework (``VMContextKNN``).

Sessions are cut from each user's clicks: a gap longer than ``session_gap_s`` starts a new one.
A user asking after such a gap is served from their last session (a session-only method has
nothing else to go on); a user without any click gets the most clicked items, which also fill
a short list. Neighbour candidates are the ``sample_size`` most recently active sessions that
share an item with the current one (``sampling="recent"``). No I/O; every event counts once,
whatever its type (the methods are defined on clicks).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Sequence, Set
from dataclasses import dataclass, field

from driftrec.models.online import EventView

__all__ = ["SessionKNNRecommender", "sknn_scores", "vsknn_scores"]

logger = logging.getLogger(__name__)


def sknn_scores(current: Sequence[str], neighbours: Sequence[Set[str]], k: int) -> dict[str, float]:
    """SKNN scores of every item of the ``k`` sessions most similar to ``current`` (binary cosine).

    Parameters
    ----------
    current : Sequence[str]
        The current session's items (order ignored, repeats count once).
    neighbours : Sequence[Set[str]]
        Candidate past sessions, most recent first (ties in similarity keep that order).
    k : int
        Neighbours kept.
    """
    s = set(current)
    if not s:
        return {}
    sims = []
    for pos, n in enumerate(neighbours):
        common = len(s & n) if len(s) < len(n) else sum(1 for i in n if i in s)
        if common:
            sims.append((common / math.sqrt(len(s) * len(n)), -pos, n))
    scores: dict[str, float] = {}
    for sim, _, n in heapq.nlargest(k, sims, key=lambda x: (x[0], x[1])):
        for i in n:
            scores[i] = scores.get(i, 0.0) + sim
    return scores


def vsknn_scores(current: Sequence[str], neighbours: Sequence[Set[str]], k: int) -> dict[str, float]:
    """V-SKNN scores: position-weighted similarity (``div``) and recency of the match (``div_score``).

    Parameters
    ----------
    current : Sequence[str]
        The current session's clicks, oldest first (repeats allowed: an item weighs by its last click).
    neighbours : Sequence[Set[str]]
        Candidate past sessions, most recent first (ties in similarity keep that order).
    k : int
        Neighbours kept.
    """
    length = len(current)
    if not length:
        return {}
    weight: dict[str, float] = {}
    back: dict[str, int] = {}  # 1 for the last click's item, 2 for the one before, ...
    for p, item in enumerate(current, start=1):
        weight[item] = p / length
        back[item] = length - p + 1
    sims = []
    for pos, n in enumerate(neighbours):
        total, nearest = 0.0, 0
        for item, w in weight.items():
            if item in n:
                total += w
                d = back[item]
                nearest = d if nearest == 0 or d < nearest else nearest
        if total > 0:
            sims.append((total / len(weight), -pos, n, nearest))
    scores: dict[str, float] = {}
    for sim, _, n, nearest in heapq.nlargest(k, sims, key=lambda x: (x[0], x[1])):
        s = sim / nearest
        for i in n:
            scores[i] = scores.get(i, 0.0) + s
    return scores


@dataclass
class _Session:
    clicks: list[str] = field(default_factory=list)
    items: set[str] = field(default_factory=set)
    last_t: float = -math.inf


class SessionKNNRecommender:
    """SKNN or V-SKNN over the sessions of a growing click log (the prequential loop's protocol).

    Parameters
    ----------
    sequential : bool
        ``False``: SKNN; ``True``: V-SKNN.
    k : int
        Neighbour sessions whose items are scored.
    sample_size : int
        Most recently active sessions sharing an item with the current one that are compared.
    session_gap_s : float
        A user's click more than this after their previous one starts a new session.
    last_n : int or None
        Only the last ``last_n`` clicks of the current session form the query (bounds the cost
        on logs where a "session" is a burst of hundreds of ratings); ``None``: all.
    """

    def __init__(self, *, sequential: bool = True, k: int = 100, sample_size: int = 500,
                 session_gap_s: float = 1800.0, last_n: int | None = 50) -> None:
        self.sequential, self.k, self.sample_size = sequential, k, sample_size
        self.session_gap_s, self.last_n = session_gap_s, last_n
        self.sessions: list[_Session] = []
        self.current: dict[str, int] = {}  # user -> their latest session
        self.by_item: dict[str, list[int]] = {}  # item -> sessions holding it, in order of first click
        self.counts: dict[str, int] = {}

    def update(self, events: Sequence[EventView]) -> None:
        for e in events:
            sid = self.current.get(e.user)
            if sid is None or e.t - self.sessions[sid].last_t > self.session_gap_s:
                sid = self.current[e.user] = len(self.sessions)
                self.sessions.append(_Session())
            s = self.sessions[sid]
            s.clicks.append(e.item)
            s.last_t = max(s.last_t, e.t)
            if e.item not in s.items:
                s.items.add(e.item)
                self.by_item.setdefault(e.item, []).append(sid)
            self.counts[e.item] = self.counts.get(e.item, 0) + 1

    def _candidates(self, own: int, query: Sequence[str]) -> list[set[str]]:
        """The ``sample_size`` most recently active sessions (not ``own``) sharing an item with ``query``."""
        ids: set[int] = set()
        for item in set(query):
            ids.update(self.by_item.get(item, ())[-self.sample_size - 1:])  # one more: own may be among them
        ids.discard(own)
        sessions = self.sessions
        recent = heapq.nlargest(self.sample_size, ids, key=lambda i: (sessions[i].last_t, i))
        return [sessions[i].items for i in recent]

    def scores(self, user: str) -> dict[str, float]:
        """Item scores for ``user``'s latest session (empty for a user never seen)."""
        sid = self.current.get(user)
        if sid is None:
            return {}
        query = self.sessions[sid].clicks
        if self.last_n is not None:
            query = query[-self.last_n:]
        neighbours = self._candidates(sid, query)
        fn = vsknn_scores if self.sequential else sknn_scores
        return fn(query, neighbours, self.k)

    def recommend(self, user: str, n: int, exclude: Set[str], now: float) -> list[str]:
        scores = self.scores(user)
        own = self.sessions[self.current[user]].items if user in self.current else set()
        ranked = heapq.nlargest(n + len(own) + len(exclude), scores.items(), key=lambda kv: (kv[1], kv[0]))
        out = [i for i, _ in ranked if i not in exclude and i not in own][:n]
        if len(out) < n:  # back-fill with the most clicked items
            taken = set(out) | set(exclude) | own
            for i, _ in heapq.nlargest(n + len(taken), self.counts.items(), key=lambda kv: (kv[1], kv[0])):
                if i not in taken:
                    out.append(i)
                    if len(out) == n:
                        break
        return out
