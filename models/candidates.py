"""What one recommendation reads, turned into :class:`driftrec.models.blend.Candidates`: the reader and the evaluation share it.

The reader (``online/recommender.py``) gathers its inputs from Redis and the published model; the
prequential evaluation (``driftrec/live_eval.py``) from :class:`driftrec.models.online.InMemoryState`.
Both hand them to these functions, so the choice of recent items, the decay of every stored
score to one ``now``, the similar-users scores and the depth of each read are one piece of code.
"""

from __future__ import annotations

import heapq
import logging
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from driftrec.models.blend import Candidates, recent_items
from driftrec.models.decay import DecayPolicy

__all__ = ["PER_SIMILAR_USER", "MAX_TRENDING_READ", "trending_depth", "user_recent", "session_weights",
           "similar_user_scores", "session_query", "session_neighbours", "session_around", "session_span",
           "session_knn_scores", "assemble", "NewItemIndex", "NewItemRule", "NewItemLabels", "new_item_scores"]

logger = logging.getLogger(__name__)

Pairs = list[tuple[str, float]]
#: An item id as text, or as the UTF-8 bytes of a raw Redis reply.
Item = TypeVar("Item", str, bytes, str | bytes)

#: Strongest items read per similar user.
PER_SIMILAR_USER = 10
#: Most items read from a trending list for one recommendation.
MAX_TRENDING_READ = 1000


def trending_depth(n: int, n_excluded: int, history_len: int) -> int:
    """Trending items read for a top-``n``: enough that ``n`` remain after the excluded and seen."""
    return min(n + n_excluded + history_len, MAX_TRENDING_READ)


def session_weights(recent: Pairs, history: Sequence[tuple[str, float]], context: Sequence[str] = (), *,
                    position_decay: float, session_gap_s: float, outside_session: float) -> Pairs:
    """The recent items' weights, scaled for where they sit in the shopper's click sequence.

    The ``p``-th item clicked before the last one (``p = 0`` for the last; items by their last
    click) is scaled by ``1 / (1 + position_decay · p)`` — V-SKNN's weighting of a session's
    clicks (Ludewig & Jannach 2018), so the next click follows the last clicks more than the
    first ones — and an item not clicked in the shopper's latest session (the run of clicks
    with gaps of at most ``session_gap_s`` ending with the last one) by ``outside_session``.
    Context items count as the latest clicks. The defaults (0, any, 1) change nothing.
    """
    if position_decay <= 0 and outside_session == 1.0:
        return recent
    rank: dict[str, int] = {}
    for p, item in enumerate(context):  # newest first, as ``newest`` lists them
        rank.setdefault(item, p)
    placed: dict[str, float] = {}  # recent item -> its last click, for those not in the context
    wanted = {i for i, _ in recent if i not in rank}
    for p, (item, t) in enumerate(history):
        if len(placed) == len(wanted):
            break
        if item in wanted and item not in placed:
            rank[item] = len(context) + p
            placed[item] = t
    start = -math.inf  # the latest session's first click
    if outside_session != 1.0 and history:
        start = prev = history[0][1]
        for _, t in history[1:]:
            if prev - t > session_gap_s:
                break
            start = prev = t
    oldest = len(context) + len(history)  # an item with a weight but out of the trimmed history
    out = []
    for item, w in recent:
        p = rank.get(item, oldest)
        m = 1.0 / (1.0 + position_decay * p) if position_decay > 0 else 1.0
        if p >= len(context) and placed.get(item, -math.inf) < start:
            m *= outside_session
        out.append((item, w * m))
    return out


def user_recent(stored: Iterable[tuple[str, float]], history: Sequence[tuple[str, float]], factor: float,
                now: float, policy: DecayPolicy, *, k: int, order: str,
                context: Sequence[str] = (), position_decay: float = 0.0, session_gap_s: float = 1800.0,
                outside_session: float = 1.0) -> tuple[Pairs, Pairs]:
    """The user's decayed weights and the ``k`` recent items whose neighbours are read.

    Parameters
    ----------
    stored : iterable of (item, stored forward weight), strongest first
    history : (item, last event time), newest first
    factor : float
        ``exp(−λ (now − L))``: turns a stored forward weight into its value at ``now``.
    now : float
        The stream's event time of the read.
    policy : DecayPolicy
    k, order : int, str
        ``reader_recent_items`` and ``reader_recent_order`` (:func:`driftrec.models.blend.recent_items`).
    context : sequence of str
        Session items the caller knows of and the stream does not yet: the most recent of all,
        weighted as the strongest stored item.
    position_decay, session_gap_s, outside_session : float
        How the recent items weigh by their place in the click sequence
        (:func:`session_weights`; ``reader_recent_position_decay``, ``reader_session_gap_s``,
        ``reader_outside_session_weight``). Only ``recent`` is scaled, not ``decayed``.

    Returns
    -------
    decayed : (item, weight at ``now``), strongest first (the fold-in and TF inputs)
    recent : the items whose neighbours feed the item-item source
    """
    decayed = [(i, v * factor) for i, v in stored if v > 0]
    if not decayed and history:  # weights pruned or not yet written: recency stands in
        decayed = [(i, policy.decayed_weight(1.0, t, now)) for i, t in history]
    if context:
        top = decayed[0][1] if decayed else 1.0
        ctx = set(context)
        decayed = [(i, top) for i in context] + [p for p in decayed if p[0] not in ctx]
    newest = [*context, *(i for i, _ in history)]
    recent = recent_items(decayed, newest, k, order)
    return decayed, session_weights(recent, history, context, position_decay=position_decay,
                                    session_gap_s=session_gap_s, outside_session=outside_session)


def session_query(history: Sequence[tuple[str, float]], context: Sequence[str] = (), *, k: int,
                  session_gap_s: float) -> list[str]:
    """The items of the shopper's latest session, at most ``k``, oldest first (the query of the
    session_knn source): ``context`` items (newest first) count as the latest clicks, then the
    history's items (newest first) back to the first gap longer than ``session_gap_s``."""
    out: list[str] = []
    for item in context:
        if len(out) == k:
            break
        if item not in out:
            out.append(item)
    prev = None
    for item, t in history:
        if len(out) >= k or (prev is not None and prev - t > session_gap_s):
            break
        prev = t
        if item not in out:
            out.append(item)
    out.reverse()
    return out


def session_neighbours(rows: Mapping[str, Sequence[tuple[str, float]]], user: str, m: int,
                       query: Sequence[str] = ()) -> list[tuple[str, float]]:
    """The ``m`` shoppers (not ``user``) of the session-index ``rows`` (item -> (shopper, time of
    their last click of it), latest first) to compare, with the time of their latest shared click.

    With ``query`` (the latest session, oldest first) they are ranked as V-SKNN ranks neighbour
    sessions (:func:`driftrec.models.sknn.vsknn_scores`): by the sum of the position weights
    ``p / L`` of the query items they share, which the index rows already tell, so only the ``m``
    most similar shoppers' histories are read; ties, and without ``query`` all, by the latest
    shared click, then shopper id (descending, as the rows order them). Returned in that order.
    """
    latest: dict[str, float] = {}
    if query:
        # Dict and set operations in C; Python only for the shoppers in more than one row. sim
        # and latest get the same keys in the same order, so their values zip up.
        sim: dict[str, int] = {}
        for p, item in enumerate(query, start=1):
            row = rows.get(item)
            if not row:
                continue
            fresh = dict(row)  # a ZSET row lists each shopper once
            for v in fresh.keys() & latest.keys():
                sim[v] += p
                t = fresh.pop(v)
                if t > latest[v]:
                    latest[v] = t
            latest.update(fresh)
            sim.update(dict.fromkeys(fresh, p))
        if user in sim:
            del sim[user], latest[user]
        ranked = sorted(zip(sim.values(), latest.values(), sim, strict=True), reverse=True)[:m]  # C sort: < nlargest
        return [(v, t) for _, t, v in ranked]
    for row in rows.values():
        for v, t in row:
            if v != user and t > latest.get(v, -math.inf):
                latest[v] = t
    if len(latest) <= m:
        return sorted(latest.items(), key=_time_then_id, reverse=True)
    return heapq.nlargest(m, latest.items(), key=_time_then_id)


def _time_then_id(kv: tuple[str, float]) -> tuple[float, str]:
    return kv[1], kv[0]


def session_around(times: Sequence[tuple[Item, float]], t: float, gap_s: float) -> set[Item]:
    """The items of the session holding a click at ``t``: the run of ``times`` ((item, time), any
    order; a NaN time is no click) with gaps of at most ``gap_s`` between consecutive clicks that
    contains ``t``."""
    clicks = sorted([x for _, x in times if x == x])  # floats sort in C, several times faster than pairs
    at = bisect_left(clicks, t)
    if at < len(clicks) and clicks[at] - t <= gap_s:
        lo = at  # the run of the first click at or after t ...
    elif at > 0 and t - clicks[at - 1] <= gap_s:
        lo = at - 1  # ... or of the one before (t's own click left the bounded history)
    else:
        return set()
    hi = lo
    while lo > 0 and clicks[lo] - clicks[lo - 1] <= gap_s:
        lo -= 1
    while hi + 1 < len(clicks) and clicks[hi + 1] - clicks[hi] <= gap_s:
        hi += 1
    first, last = clicks[lo], clicks[hi]
    return {i for i, x in times if first <= x <= last}


def session_span(times: Sequence[float], t: float, gap_s: float) -> tuple[int, int] | None:
    """:func:`session_around` on ascending ``times`` (a click log): the index range ``lo, hi``
    (inclusive) of the session holding a click at ``t``, or None."""
    n = len(times)
    at = bisect_left(times, t)
    if at < n and times[at] - t <= gap_s:
        lo = at
    elif at > 0 and t - times[at - 1] <= gap_s:
        lo = at - 1
    else:
        return None
    hi = lo
    while lo > 0 and times[lo] - times[lo - 1] <= gap_s:
        lo -= 1
    while hi + 1 < n and times[hi + 1] - times[hi] <= gap_s:
        hi += 1
    return lo, hi


def session_knn_scores(query: Sequence[str], neighbours: Sequence[tuple[str, float]],
                       clicks: Mapping[str, tuple[Sequence[float], str]], *, gap_s: float) -> Pairs:
    """The session_knn source: V-SKNN (:func:`driftrec.models.sknn.vsknn_scores`, every
    neighbour kept) over the sessions of the shoppers who clicked the query's items last.

    The same scores as ``vsknn_scores(query, their sessions in neighbour order, len(them))`` up
    to rounding (the similarity is summed in whole positions and divided once), in one pass over
    each session's few items instead of one membership test per query item.

    Parameters
    ----------
    query : the shopper's latest session, oldest first (:func:`session_query`).
    neighbours : (shopper, time of their latest click of a query item), latest first
        (:func:`session_neighbours`); each one's session is the run of their clicks around that
        click (:func:`session_span`), and every one is a scored neighbour.
    clicks : shopper -> their click log ``(times ascending, ids NUL-joined in that order)`` (the
        worker's ``P:{u:U}:clk``, :func:`driftrec.userstate.unpack_clicks`); a shopper without
        one (forgotten, or nothing stored) adds nothing.
    gap_s : a gap longer than this ends a session.
    """
    length = len(query)
    if not length or not neighbours:
        return []
    position: dict[str, int] = {}
    for p, item in enumerate(query, start=1):
        position[item] = p  # a repeated item weighs by its last click
    norm = len(position) * length  # sim = sum of p / L over shared items, / |distinct query items|
    at = position.__getitem__
    keys = position.keys()
    sims = []
    for rank, (v, t) in enumerate(neighbours):
        log = clicks.get(v)
        if not log:
            continue
        times, ids = log
        span = session_span(times, t, gap_s)
        if span is None:
            continue
        lo, hi = span
        k = len(times) - lo  # split off only the ids from the session's first on
        sess = ids.rsplit("\0", k)[-k:][:hi - lo + 1]
        shared = keys & sess
        if shared:
            # div_score: divided by the distance from the end of the query of the latest shared item
            sims.append((sum(map(at, shared)) / norm, -rank, length - max(map(at, shared)) + 1, sess))
    sims.sort(reverse=True)  # as vsknn_scores ranks them: similarity, then neighbour order
    scores: dict[str, float] = {}
    acc = scores.get
    for sim, _, nearest, sess in sims:
        x = sim / nearest
        for item in sess:
            scores[item] = acc(item, 0.0) + x
    return list(scores.items())


def similar_user_scores(similar: Sequence[tuple[str, float]], theirs: Mapping[str, Sequence[tuple[str, float]]]) -> Pairs:
    """Σ over similar users v of cos(u, v) · (v's weight of the item / v's largest weight)."""
    scores: dict[str, float] = {}
    for v, sim in similar:
        rows = theirs.get(v) or []
        top = rows[0][1] if rows else 0.0
        if top <= 0:
            continue
        for item, wv in rows:
            if wv > 0:
                scores[item] = scores.get(item, 0.0) + sim * wv / top
    return list(scores.items())


def assemble(recent: Pairs, rows: Mapping[str, Sequence[tuple[str, float]]], factor: float,
             norms_of: Callable[[set[str]], dict[str, float]], *, vector_scores: Pairs, tf_scores: Pairs,
             similar: Sequence[tuple[str, float]], theirs: Mapping[str, Sequence[tuple[str, float]]],
             trending: Iterable[tuple[str, float]], trending_label: str | None,
             new_items: Pairs | None = None, new_labels: Mapping[str, str] | None = None,
             session_knn: Pairs | None = None) -> Candidates:
    """The blend's inputs from what was read.

    ``rows`` (item -> stored neighbour row, strongest first) and ``trending`` hold stored forward
    scores, multiplied here by ``factor``; ``norms_of`` gives the decayed popularity of a set of
    items (the recent items and their neighbours).
    """
    neighbours = {i: [(j, c * factor) for j, c in row] for i, row in rows.items()}
    wanted = {i for i, _ in recent}
    for row in neighbours.values():
        wanted.update(j for j, _ in row)
    return Candidates(
        recent=recent, neighbours=neighbours, norms=norms_of(wanted), vector_scores=vector_scores,
        tf_scores=tf_scores, similar_users=similar_user_scores(similar, theirs),
        trending=[(i, v * factor) for i, v in trending], trending_label=trending_label,
        new_items=new_items or (), new_labels=new_labels or {}, session_knn=session_knn or (),
    )


class NewItemIndex(Protocol):
    """What :func:`new_item_scores` reads: the reader's in-memory catalogue
    (:class:`driftrec.online.catalogue.CatalogueView`), no I/O."""

    def features(self, item: str) -> frozenset[str]:
        """The item's metadata features (``c:<category>``, ``t:<tag>``); empty when unknown."""
        ...

    def newest(self, feature: str) -> Sequence[tuple[float, str, frozenset[str]]]:
        """``(-added_at, item, its features)`` of the newest visible items with ``feature``,
        newest first."""
        ...


@dataclass(frozen=True, slots=True)
class NewItemRule:
    """The new-item boost's settings (``reader_new_item_*``)."""

    half_life_s: float
    max_age_s: float
    per_feature: int


def new_item_scores(recent: Sequence[tuple[str, float]], index: NewItemIndex, now: float,
                    rule: NewItemRule) -> tuple[Pairs, Mapping[str, str]]:
    """Items new in the catalogue that share metadata with the shopper's recent items.

    For each recent item ``r`` (weight ``w_r``), the ``rule.per_feature`` newest items of each of
    its features (its category, each tag) not older than ``rule.max_age_s`` are candidates ``j``::

        score(j) = 2 ** (-age(j) / half_life) * sum_r (w_r / max w) * |F(r) & F(j)| / |F(r) | F(j)|

    (Jaccard overlap of the feature sets, so a candidate sharing a category and two tags with the
    item just clicked beats one sharing a tag with an item clicked earlier), with ``age(j) = now -
    added_at(j)``, at least 0 (an item the catalogue already lists is listed now). The clicks
    play no part: an item nobody clicked yet gets a score. Cost: one pass over at most
    ``len(recent) x features x per_feature`` index entries, all in memory.

    Returns
    -------
    scores : (item, score), the recent items themselves left out
    labels : item -> the category or tag its strongest term shares (its reason: "new in ...")
    """
    top = max((w for _, w in recent), default=0.0)
    if top <= 0 or rule.per_feature <= 0:
        return [], {}
    oldest = now - rule.max_age_s
    recent_ids = {i for i, _ in recent}
    totals: dict[str, float] = {}
    best: dict[str, tuple[float, frozenset[str], frozenset[str]]] = {}  # strongest term: F(r), F(j)
    added: dict[str, float] = {}
    per = rule.per_feature
    for r, w in recent:
        fr = index.features(r)
        if not fr or w <= 0:
            continue
        rel = w / top
        n_r = len(fr)
        seen: set[str] = set()
        for f in fr:
            for neg_added, j, fj in index.newest(f)[:per]:
                if -neg_added < oldest:
                    break
                if j in seen or j in recent_ids:
                    continue
                seen.add(j)
                shared = len(fr & fj)
                s = rel * shared / (n_r + len(fj) - shared)  # Jaccard: |F(r) & F(j)| / |F(r) | F(j)|
                prev = totals.get(j)
                if prev is None:
                    totals[j] = s
                    added[j] = -neg_added
                    best[j] = (s, fr, fj)
                else:
                    totals[j] = prev + s
                    if s > best[j][0]:
                        best[j] = (s, fr, fj)
    h = rule.half_life_s
    scores = [(j, t * 2.0 ** (-max(0.0, now - added[j]) / h)) for j, t in totals.items()]
    return scores, NewItemLabels(best)


class NewItemLabels(Mapping[str, str]):
    """item -> the category (else the first tag) its strongest term shares with a recent item:
    worked out only for the few items an answer shows (``blend`` asks for their reasons)."""

    def __init__(self, best: Mapping[str, tuple[float, frozenset[str], frozenset[str]]]) -> None:
        self._best = best

    def __getitem__(self, item: str) -> str:
        _, fr, fj = self._best[item]
        shared = fr & fj  # never empty: the item was found under one of F(r)'s features
        cat = next((x for x in shared if x.startswith("c:")), None)
        return (cat or min(shared))[2:]

    def __iter__(self) -> Iterator[str]:
        return iter(self._best)

    def __len__(self) -> int:
        return len(self._best)
