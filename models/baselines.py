"""The methods the prequential evaluation compares: baselines, each online source, and the live blend."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence, Set
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from driftrec.models.batch.base import BatchModel
from driftrec.models.cooccurrence import top_k
from driftrec.models.decay import DecayPolicy, EventWeights
from driftrec.models.factors import init_vector, isgd_update
from driftrec.models.online import EventView, InMemoryState

__all__ = [
    "Interactions",
    "PopularityRecommender",
    "StaticModelRecommender",
    "HourlyBatchRecommender",
    "RawCooccurrenceRecommender",
    "ISGDRecommender",
    "top_unseen",
]

logger = logging.getLogger(__name__)


def top_unseen(scores: npt.NDArray[np.floating], names: Sequence[str], n: int,
               exclude: Set[str], index: dict[str, int]) -> list[str]:
    """The ``n`` best-scored names not in ``exclude``; ties go to the lower index.

    Scores of ``-inf`` are never returned. ``index`` maps a name to its position in ``scores``.
    """
    s = np.array(scores, dtype=np.float64, copy=True)
    for item in exclude:
        pos = index.get(item)
        if pos is not None and pos < s.size:
            s[pos] = -np.inf
    m = min(n, s.size)
    if m <= 0:
        return []
    cand = np.argpartition(-s, m - 1)[:m] if m < s.size else np.arange(s.size)
    order = cand[np.lexsort((cand, -s[cand]))]
    return [names[i] for i in order if np.isfinite(s[i])]


class Interactions:
    """Every applied event as integer ids and weights, growing; builds users x items matrices."""

    def __init__(self, weights: EventWeights) -> None:
        self.weights = dict(weights.weights)
        self.users: dict[str, int] = {}
        self.items: dict[str, int] = {}
        self.item_names: list[str] = []
        self._u: list[int] = []
        self._i: list[int] = []
        self._w: list[float] = []
        self.times: list[float] = []

    def add(self, events: Sequence[EventView]) -> None:
        for e in events:
            w = self.weights.get(e.type)
            if w is None:
                continue
            self._u.append(self.users.setdefault(e.user, len(self.users)))
            i = self.items.get(e.item)
            if i is None:
                i = self.items[e.item] = len(self.item_names)
                self.item_names.append(e.item)
            self._i.append(i)
            self._w.append(w)
            self.times.append(e.t)

    def __len__(self) -> int:
        return len(self._w)

    def matrix(self, upto: int | None = None) -> sp.csr_matrix:
        """Users x items summed weights of the first ``upto`` events (all by default).

        The shape covers every user and item met so far, so row and column numbers stay those
        of ``users`` / ``items``; rows and columns first met later are simply empty.
        """
        p = len(self._w) if upto is None else upto
        m = sp.csr_matrix(
            (np.asarray(self._w[:p], np.float32), (np.asarray(self._u[:p]), np.asarray(self._i[:p]))),
            shape=(len(self.users), len(self.item_names)),
        )
        m.sum_duplicates()
        return m


class PopularityRecommender:
    """Most popular items so far (event-weighted counts, no decay), updated with every batch."""

    def __init__(self, weights: EventWeights) -> None:
        self.weights = dict(weights.weights)
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self.counts = np.zeros(1024, np.float64)

    def update(self, events: Sequence[EventView]) -> None:
        for e in events:
            w = self.weights.get(e.type)
            if w is None:
                continue
            i = self.index.get(e.item)
            if i is None:
                i = self.index[e.item] = len(self.names)
                self.names.append(e.item)
                if i >= self.counts.size:
                    self.counts = np.concatenate([self.counts, np.zeros(self.counts.size)])
            self.counts[i] += w

    def recommend(self, user: str, n: int, exclude: Set[str], now: float) -> list[str]:
        return top_unseen(self.counts[: len(self.names)], self.names, n, exclude, self.index)


class StaticModelRecommender:
    """A batch model trained once and never updated: a user's list comes from their training row.

    Users the model never saw get the training data's most popular items, as a batch engine
    serves unknown visitors. Items first seen after training cannot be recommended.
    """

    def __init__(self, model: BatchModel, data: Interactions, upto: int | None = None) -> None:
        self.model = model
        self.x = data.matrix(upto)
        self.users = dict(data.users)
        self.names = list(data.item_names)
        self.index = dict(data.items)
        self.popular = np.bincount(self.x.indices, minlength=self.x.shape[1]).astype(np.float64)

    def update(self, events: Sequence[EventView]) -> None:
        return None

    def recommend(self, user: str, n: int, exclude: Set[str], now: float) -> list[str]:
        row = self.users.get(user)
        if row is None or self.x.indptr[row] == self.x.indptr[row + 1]:
            return top_unseen(self.popular, self.names, n, exclude, self.index)
        extra = sum(1 for i in exclude if self.index.get(i, -1) >= 0)
        idx, scores = self.model.recommend(np.array([row]), n + extra, exclude=self.x[[row]])
        picked = [self.names[i] for i, s in zip(idx[0], scores[0], strict=True) if i >= 0 and np.isfinite(s)]
        return [i for i in picked if i not in exclude][:n]


class HourlyBatchRecommender:
    """A batch model refitted every ``period_s`` of event time; lists fixed between refits.

    At a request at event time ``now`` the model is the one fitted at ``H = floor(now / period)
    · period`` on every event before ``H``; the user's list is what that model gave the user's
    row at ``H`` (items in the row removed), served with the items the user met since ``H``
    removed too — an hourly-scheduled engine with cached lists. A user with no event before
    ``H`` gets the most popular items at ``H`` (users per item). Models are fitted lazily, only
    for hours in which a known user asks, which gives the answers fitting every hour would.

    For ``itemknn`` the whole item-item table is not needed: a user's scores use only the rows
    of their own items, and :func:`driftrec.models.batch.knn.topk_cosine` — the call
    :class:`~driftrec.models.batch.knn.ItemKNNModel` makes — computes each row independently, so the
    rows of the asking users' items give the fitted model's numbers. ``schedule`` (hour start →
    users who will ask in that hour; who asks, never what they click) lets one call cover every
    asking user of the hour; without it each user costs one call. Other kinds are fitted whole.
    """

    def __init__(self, make_model: Callable[[], BatchModel], weights: EventWeights,
                 period_s: float = 3600.0, seed: int = 0,
                 schedule: dict[float, set[str]] | None = None) -> None:
        self.make_model = make_model
        self.period_s = period_s
        self.seed = seed
        self.schedule = schedule or {}
        self.data = Interactions(weights)
        self.fits = 0
        self.kind = make_model().name
        self._at: float | None = None
        self._x: sp.csr_matrix | None = None
        self._popular: npt.NDArray[np.float64] | None = None
        self._model: BatchModel | None = None
        self._absent = np.zeros(0, dtype=bool)
        self._scores: dict[str, npt.NDArray[np.float64]] = {}

    def update(self, events: Sequence[EventView]) -> None:
        self.data.add(events)

    def _move_to(self, boundary: float) -> None:
        import bisect

        upto = bisect.bisect_left(self.data.times, boundary)  # events strictly before H
        self._at, self._model, self._scores = boundary, None, {}
        self._x = self.data.matrix(upto)
        counts = np.bincount(self._x.indices, minlength=self._x.shape[1]).astype(np.float64)
        # Items first met after H do not exist for a model fitted at H.
        self._absent = counts == 0
        self._popular = np.where(self._absent, -np.inf, counts)

    def _known(self, user: str) -> int | None:
        x = self._x
        row = self.data.users.get(user)
        if x is None or row is None or row >= x.shape[0] or x.indptr[row] == x.indptr[row + 1]:
            return None
        return row

    def _score_users(self, users: list[str]) -> None:
        x = self._x
        assert x is not None
        rows = [r for r in (self._known(u) for u in users) if r is not None]
        known = [u for u in users if self._known(u) is not None]
        template = self.make_model()
        if self.kind == "itemknn":
            from driftrec.models.batch.knn import topk_cosine
            from driftrec.models.batch.weighting import Weighting

            items_t = Weighting.fit(getattr(template, "weighting_kind", "none"), x).apply(x).T.tocsr()
            sub = x[rows]
            own = np.unique(sub.indices)
            sims = topk_cosine(items_t[own], items_t, template.neighbours,  # type: ignore[attr-defined]
                               shrink=template.shrink, self_rows=own)  # type: ignore[attr-defined]
            block = np.asarray((sub[:, own] @ sims).todense(), dtype=np.float64)
        else:
            if self._model is None:
                self._model = template.fit(x, seed=self.seed)
                self.fits += 1
            block = np.asarray(self._model._score_users(np.asarray(rows)), dtype=np.float64)
        for u, r, scores in zip(known, rows, block, strict=True):
            scores = scores.copy()
            scores[x.indices[x.indptr[r]:x.indptr[r + 1]]] = -np.inf  # the row at H is seen
            scores[self._absent] = -np.inf
            scores[~np.isfinite(scores)] = -np.inf
            self._scores[u] = scores

    def recommend(self, user: str, n: int, exclude: Set[str], now: float) -> list[str]:
        boundary = math.floor(now / self.period_s) * self.period_s
        if boundary != self._at:
            self._move_to(boundary)
        names, index = self.data.item_names, self.data.items
        assert self._popular is not None
        if self._known(user) is None:
            return top_unseen(self._popular, names, n, exclude, index)
        if user not in self._scores:
            asking = self.schedule.get(boundary, set()) | {user}
            self._score_users(sorted(u for u in asking if u not in self._scores))
        return top_unseen(self._scores[user], names, n, exclude, index)


class RawCooccurrenceRecommender:
    """Plain live item-kNN: ``score(j) = Σ_r count(r, j)`` over the user's recent items ``r``.

    Counts are unweighted and undecayed (every event weighs 1, half-life effectively infinite)
    and nothing is normalised; co-occurrence uses the same window and the same top-K pruning as
    the live store, so it is the live path with decay, event weights and normalisation removed.
    Users without history get the most clicked items.
    """

    def __init__(self, state: InMemoryState) -> None:
        self.state = state

    @classmethod
    def create(cls, event_types: Sequence[str], **store: Any) -> RawCooccurrenceRecommender:
        policy = DecayPolicy(1e18)  # λ ≈ 7e-19 /s: exp(λ·Δt) = 1 to 1e-9 over any real log
        weights = EventWeights({t: 1.0 for t in event_types})
        return cls(InMemoryState(policy, weights, **store))

    def update(self, events: Sequence[EventView]) -> None:
        self.state.process(events)

    def recommend(self, user: str, n: int, exclude: Set[str], now: float) -> list[str]:
        st = self.state
        scores: dict[str, float] = {}
        for r in st.hist.get(user, {}):
            for j, c in st.cooc.get(r, {}).items():
                scores[j] = scores.get(j, 0.0) + c
        out = [j for j, _ in top_k({j: s for j, s in scores.items() if j not in exclude}, n)]
        if len(out) < n:
            taken = set(out) | set(exclude)
            for j, _ in top_k(st.pop, n + len(taken)):
                if j not in taken:
                    out.append(j)
                    if len(out) == n:
                        break
        return out


class ISGDRecommender:
    """Incremental SGD matrix factorisation for positive-only feedback (Vinagre et al., 2014).

    One :func:`driftrec.models.factors.isgd_update` per event; new users and items start from
    :func:`driftrec.models.factors.init_vector`; a user is scored against every item met so far.
    """

    def __init__(self, factors: int = 32, lr: float = 0.05, reg: float = 0.01, seed: int = 0,
                 epochs_per_event: int = 1) -> None:
        self.k, self.lr, self.reg, self.seed = factors, lr, reg, seed
        self.epochs = epochs_per_event
        self.user_vecs: dict[str, npt.NDArray[np.float64]] = {}
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self.item_vecs = np.zeros((1024, factors), np.float64)

    def _item(self, item: str) -> int:
        i = self.index.get(item)
        if i is None:
            i = self.index[item] = len(self.names)
            self.names.append(item)
            if i >= self.item_vecs.shape[0]:
                self.item_vecs = np.vstack([self.item_vecs, np.zeros_like(self.item_vecs)])
            self.item_vecs[i] = init_vector(f"i:{item}", self.k, self.seed)
        return i

    def update(self, events: Sequence[EventView]) -> None:
        for e in events:
            stored = self.user_vecs.get(e.user)
            u: npt.NDArray[np.floating] = init_vector(f"u:{e.user}", self.k, self.seed) if stored is None else stored
            i = self._item(e.item)
            v: npt.NDArray[np.floating] = self.item_vecs[i]
            for _ in range(self.epochs):
                u, v = isgd_update(u, v, self.lr, self.reg)
            self.user_vecs[e.user], self.item_vecs[i] = np.asarray(u, np.float64), v

    def recommend(self, user: str, n: int, exclude: Set[str], now: float) -> list[str]:
        u = self.user_vecs.get(user)
        if u is None:
            u = init_vector(f"u:{user}", self.k, self.seed)
        scores = self.item_vecs[: len(self.names)] @ u
        return top_unseen(scores, self.names, n, exclude, self.index)
