"""Blends the online sources into one ranked list with reasons: the reader and the evaluation share it.

Every source gives candidate scores on its own scale; each is divided by its own maximum so a
weight means the same thing whatever the source's units, then weighted and summed. The source
that contributed most to an item gives its ``reason``. Inputs are plain data gathered by the
caller (the reader from Redis, the prequential evaluation from :class:`InMemoryState`), read at
the same ``now``, so both run exactly this code.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["BlendWeights", "Candidates", "Scored", "blend", "blend_each", "recent_items", "SOURCES"]

logger = logging.getLogger(__name__)

_INF = math.inf

#: Source names, as used in weights, metrics and the ``source`` of each answer.
SOURCES = ("item_item", "user_vector", "tf", "similar_users", "trending", "new_items", "session_knn")


@dataclass(frozen=True)
class BlendWeights:
    """Weight of each source in the blend (0 turns a source off).

    The defaults were chosen for their worst case over the shared data sets' warm-up halves,
    with the TF model published (``python benchmarks/robust_defaults.py --weights``): against
    0.6 / 0.4 / 0.3 / 0.15 for the other sources, HR@10 the same on MovieLens, +11 % on Online
    Retail, +1.5 % on the simulator; the item-item source carries session-based clicks, and the
    weaker sources at higher weights only diluted it.
    """

    item_item: float = 1.0
    user_vector: float = 0.3
    tf: float = 0.1
    similar_users: float = 0.1
    trending: float = 0.05
    #: Items added to the catalogue recently that share a category or tag with the shopper's
    #: recent items (:func:`driftrec.models.candidates.new_item_scores`): how an item with no
    #: clicks yet enters recommendations. 0 by default: on MovieLens (benchmarks/cold_start.py,
    #: docs/experiments.md) it hits unrated and little-rated movies only at weights (>= 0.4)
    #: that lose more hits on the rest (HR@10 -14 to -33 %); at <= 0.2 it changes nothing.
    new_items: float = 0.0
    #: V-SKNN over the sessions of the shoppers who clicked the items of the shopper's latest
    #: session last (:func:`driftrec.models.candidates.session_knn_scores`; the worker's session
    #: index): items a session shares with recent sessions that the neighbour rows do not reach.
    #: At 1.0, on the warm-up halves (``python benchmarks/robust_defaults.py --session``, TF
    #: published) HR@10 +6.9 % on the simulator, +2.4 % on Online Retail, MovieLens unchanged
    #: (0.25 / 0.5 gained less, 2.0 lost 14 % on MovieLens); on the scored halves +7 % on the
    #: simulator (``live_without_session_knn`` in evaluation.json). 0 by default, an opt-in
    #: (``weights=session_knn:1``, ``DRIFTREC_READER_BLEND_WEIGHTS``, ``driftrec tune``): with the
    #: neighbours' click logs (``P:{u:U}:clk``, one MGET) it still adds ~0.43 ms of reader CPU per
    #: uncached ranked request with the blend's share (0.35 ms the source,
    #: ``benchmarks/session_knn_source.py``; 0.86 ms when it decoded whole item hashes), about a
    #: fifth of a ranked answer over HTTP, and the worker's index and logs +10-15 % of Redis' CPU
    #: per click (``benchmarks/processor_ab.py --reference-index 0``; docs/experiments.md). The
    #: worker keeps them only with ``session_index_k`` > 0: turning the source on takes both
    #: settings, and the index fills from the clicks after it.
    session_knn: float = 0.0

    def with_overrides(self, overrides: Mapping[str, float]) -> BlendWeights:
        unknown = set(overrides) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown blend sources: {', '.join(sorted(unknown))}")
        for name, w in overrides.items():
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"blend weight {name} must be a finite number >= 0")
        return BlendWeights(**{**self.__dict__, **overrides})


@dataclass
class Candidates:
    """Everything one recommendation needs, already read at one ``now``.

    recent : (item, weight) of the user's recent items, decayed to ``now`` (strongest first).
    neighbours : item -> [(neighbour, decayed co-occurrence)] for the recent items.
    norms : item -> decayed popularity, for every item in ``recent`` and ``neighbours``.
    vector_scores, tf_scores, similar_users : (item, score) from those sources.
    trending : (item, decayed popularity), overall or in the asked category.
    new_items : (item, score) of items new in the catalogue that share a category or tag with the
        recent items; ``new_labels`` names, per item, the category or tag it shares (its reason).
    session_knn : (item, score) from the sessions of shoppers who clicked the same items lately.
    """

    recent: Sequence[tuple[str, float]] = ()
    neighbours: Mapping[str, Sequence[tuple[str, float]]] = field(default_factory=dict)
    norms: Mapping[str, float] = field(default_factory=dict)
    vector_scores: Sequence[tuple[str, float]] = ()
    tf_scores: Sequence[tuple[str, float]] = ()
    similar_users: Sequence[tuple[str, float]] = ()
    trending: Sequence[tuple[str, float]] = ()
    trending_label: str | None = None
    new_items: Sequence[tuple[str, float]] = ()
    new_labels: Mapping[str, str] = field(default_factory=dict)
    session_knn: Sequence[tuple[str, float]] = ()


@dataclass(frozen=True, slots=True)
class Scored:
    item: str
    score: float
    source: str
    reason: str


def recent_items(decayed: Sequence[tuple[str, float]], newest_first: Sequence[str], k: int,
                 order: str = "time") -> list[tuple[str, float]]:
    """The ``k`` recent items whose neighbours feed the item-item source, with their weights.

    Parameters
    ----------
    decayed : (item, decayed weight) of the user's items, strongest first.
    newest_first : the user's items by their last click, newest first (the history).
    k : how many to keep.
    order : ``"time"`` keeps the ``k`` items clicked last (topped up with the strongest of the
        rest when fewer have a weight); ``"weight"`` keeps the ``k`` strongest.

    Notes
    -----
    Each item keeps its decayed weight either way; only the choice of items differs. With a
    long half-life, a session's burst of clicks seconds apart decays to nearly equal weights,
    so "strongest" cannot tell the item clicked last from the first one, while "last clicked"
    follows where the shopper is now (tuned on the warm-up half, benchmarks/tune_live.py).
    """
    if order == "weight":
        return list(decayed[:k])
    if order != "time":
        raise ValueError(f"unknown recent-items order {order!r}: use 'time' or 'weight'")
    weight = dict(decayed)
    out: list[tuple[str, float]] = []
    taken: set[str] = set()
    for item in newest_first:
        if len(out) == k:
            return out
        w = weight.get(item)
        if w is not None and item not in taken:
            out.append((item, w))
            taken.add(item)
    for item, w in decayed:
        if len(out) == k:
            break
        if item not in taken:
            out.append((item, w))
            taken.add(item)
    return out


def item_item_scores(c: Candidates, shrinkage: float, alpha: float = 0.5) -> tuple[dict[str, float], dict[str, str]]:
    """Σ over recent items r of weight(r) · sim(r, j), and the recent item that gave most to j.

    ``sim`` is :func:`driftrec.models.cooccurrence.similarity`, inlined with each item's square-root norm
    computed once (the same floating-point operations, so the same values): this loop runs
    ``recent × neighbours`` times per request. With ``alpha`` other than 0.5 it is the asymmetric
    cosine ``co(r, j) / (pop(r)^alpha · pop(j)^(1 - alpha) + shrinkage)`` (Aiolli 2013): ``alpha``
    towards 1 divides less by the candidate's own popularity (1: the conditional probability
    of j given r), as session-based neighbours do.
    """
    scores = _item_item_totals(c, shrinkage, alpha)
    return scores, _strongest_recent(c, shrinkage, scores.keys(), alpha)


def _powers(alpha: float) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """The norm of a recent item and of a candidate: both square roots for the plain cosine."""
    if alpha == 0.5:
        return math.sqrt, math.sqrt
    beta = 1.0 - alpha
    return (lambda x: x ** alpha), (lambda x: x ** beta)


def _item_item_totals(c: Candidates, shrinkage: float, alpha: float = 0.5) -> dict[str, float]:
    """The scores of :func:`item_item_scores` (the sums, in the same order of terms)."""
    scores: dict[str, float] = {}
    top_weight = max((w for _, w in c.recent), default=0.0)
    if top_weight <= 0:
        return scores
    norms = c.norms
    root_of_r, root_of_j = _powers(alpha)
    roots: dict[str, float] = {}
    for r, w in c.recent:
        root_r = root_of_r(norms.get(r, 0.0))
        rel = w / top_weight
        for j, co in c.neighbours.get(r, ()):
            root_j = roots.get(j)
            if root_j is None:
                root_j = roots[j] = root_of_j(norms.get(j, 0.0))
            den = root_r * root_j + shrinkage
            s = rel * (co / den) if den > 0 else 0.0
            if s <= 0:
                continue
            prev = scores.get(j)
            scores[j] = s if prev is None else prev + s
    return scores


def _strongest_recent(c: Candidates, shrinkage: float, items: Iterable[str], alpha: float = 0.5) -> dict[str, str]:
    """For each of ``items``, the recent item whose term of :func:`_item_item_totals` is largest
    (the first one on ties). Asked for the few items an answer shows, not for every candidate."""
    wanted = set(items)
    best: dict[str, tuple[float, str]] = {}
    top_weight = max((w for _, w in c.recent), default=0.0)
    if top_weight <= 0 or not wanted:
        return {}
    norms = c.norms
    root_of_r, root_of_j = _powers(alpha)
    for r, w in c.recent:
        root_r = root_of_r(norms.get(r, 0.0))
        rel = w / top_weight
        for j, co in c.neighbours.get(r, ()):
            if j not in wanted:
                continue
            den = root_r * root_of_j(norms.get(j, 0.0)) + shrinkage
            s = rel * (co / den) if den > 0 else 0.0
            if s > 0 and (j not in best or s > best[j][0]):
                best[j] = (s, r)
    return {j: r for j, (_, r) in best.items()}


def _normalised(pairs: Mapping[str, float] | Sequence[tuple[str, float]]) -> dict[str, float]:
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    d = {i: s for i, s in items if 0.0 < s < _INF}  # positive and finite (NaN fails both)
    top = max(d.values(), default=0.0)
    return {i: s / top for i, s in d.items()} if top > 0 else {}


def _top_n(total: dict[str, float], n: int) -> list[tuple[str, float]]:
    """``sorted(total.items(), key=(-score, item))[:n]``, sorting only the items that can make it.

    Every item of the first ``n`` scores at least the ``n``-th largest score, so sorting the
    items at or above it (ties included) gives the same first ``n``: a request's few hundred
    candidates are filtered at C speed instead of each going through the sort key.
    """
    if len(total) > n > 0:
        floor = heapq.nlargest(n, total.values())[-1]
        pool = [kv for kv in total.items() if kv[1] >= floor]
    else:
        pool = list(total.items())
    return sorted(pool, key=_rank_key)[:n]


def _rank_key(kv: tuple[str, float]) -> tuple[float, str]:
    return -kv[1], kv[0]


def blend(c: Candidates, n: int, *, exclude: set[str] | frozenset[str] = frozenset(),
          weights: BlendWeights = BlendWeights(), shrinkage: float = 5.0, alpha: float = 0.5) -> list[Scored]:
    """Rank the union of all sources' candidates; items in ``exclude`` never appear.

    Trending also fills the list when the other sources have fewer than ``n`` candidates, so a
    cold user still gets ``n`` items.
    """
    return blend_each(c, n, (weights,), exclude=exclude, shrinkage=shrinkage, alpha=alpha)[0]


def blend_each(c: Candidates, n: int, weights: Sequence[BlendWeights], *,
               exclude: set[str] | frozenset[str] = frozenset(), shrinkage: float = 5.0,
               alpha: float = 0.5) -> list[list[Scored]]:
    """:func:`blend` once per entry of ``weights``, each answer exactly :func:`blend`'s.

    What does not depend on the weights (the item-item totals, each source's normalised scores)
    is computed once: an interleaving experiment ranks two variants for one answer, and the
    second ranking then costs only its weighted sum (``benchmarks/experiments.py``).
    """
    # A source with weight 0 adds nothing, so it is not computed (trending still back-fills).
    ii = _item_item_totals(c, shrinkage, alpha) if any(w.item_item > 0 for w in weights) else {}
    raw: dict[str, Mapping[str, float] | Sequence[tuple[str, float]]] = {
        "item_item": ii, "user_vector": c.vector_scores, "tf": c.tf_scores,
        "similar_users": c.similar_users, "trending": c.trending, "new_items": c.new_items,
        "session_knn": c.session_knn}
    normalised: dict[str, dict[str, float]] = {}

    def scores_of(name: str) -> dict[str, float]:
        got = normalised.get(name)
        if got is None:
            got = normalised[name] = _normalised(raw[name])
        return got

    out = []
    for ws in weights:
        # (source, weight, item -> normalised score) of the sources that count, in SOURCES order.
        weighted = [(name, w, scores_of(name)) for name in raw if (w := getattr(ws, name)) > 0]
        total: dict[str, float] = {}
        for _, w, scores in weighted:
            # Sum of w · s over the sources, added in SOURCES order.
            for item, s in scores.items():
                if item in exclude:
                    continue
                if item in total:
                    total[item] += w * s
                else:
                    total[item] = w * s
        if ws.trending <= 0:  # still back-fill a short list from trending, with a tiny score
            for item, s in scores_of("trending").items():
                if item not in exclude and item not in total:
                    total[item] = 1e-9 * s
        ranked = _top_n(total, n)
        # The source that gave an item its largest part (the first on ties) names its reason; it
        # is worked out for the n items shown only. An item no weighted source has is a back-fill.
        shown = []
        for item, score in ranked:
            best, source = -1.0, "trending"
            for name, w, scores in weighted:
                got = scores.get(item)
                if got is not None and w * got > best:
                    best, source = w * got, name
            shown.append((item, score, source))
        because = _strongest_recent(c, shrinkage, (i for i, _, src in shown if src == "item_item"), alpha)
        out.append([Scored(item, score, source, _reason(source, item, because, c.trending_label, c.new_labels))
                    for item, score, source in shown])
    return out


def _reason(source: str, item: str, because: Mapping[str, str], label: str | None,
            new_labels: Mapping[str, str] | None = None) -> str:
    if source == "new_items":
        shared = (new_labels or {}).get(item)
        return f"new in {shared}" if shared else "new in the catalogue"
    if source == "item_item" and item in because:
        return f"because you viewed {because[item]}"
    if source == "user_vector":
        return "matches your taste"
    if source == "tf":
        return "often next after items like yours"
    if source == "similar_users":
        return "shoppers like you bought this"
    if source == "session_knn":
        return "in sessions like yours"
    return f"popular in {label}" if label else "popular now"
