"""The live recommender in-process: the worker's updates on an InMemoryState, the reader's reads, blend().

The evaluation must score exactly what production serves. So this module calls the worker's
maths (:meth:`driftrec.models.online.InMemoryState.plan` / ``apply`` — the reference of the Lua
script — and :func:`driftrec.streams.vectors.plan_fold_in` for user vectors), holds the published model
in the reader's own class (:class:`driftrec.online.model_cache.PublishedModel`), gathers
:class:`driftrec.models.blend.Candidates` the way ``online.recommender.Recommender._for_user`` reads
Redis, and ranks with :func:`driftrec.models.blend.blend`. Only the I/O is replaced by dict reads.
"""

from __future__ import annotations

import heapq
import io
import logging
from collections.abc import Sequence, Set
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from driftrec.keys import Keys
from driftrec.models.blend import BlendWeights, Candidates, blend
from driftrec.models.candidates import (
    MAX_TRENDING_READ,
    PER_SIMILAR_USER,
    assemble,
    new_item_scores,
    session_knn_scores,
    session_neighbours,
    session_query,
    trending_depth,
    user_recent,
)
from driftrec.models.online import EventView, InMemoryState
from driftrec.online.catalogue import CatalogueView, new_item_rule, newest_kept
from driftrec.settings import Settings
from driftrec.userstate import unpack_clicks

__all__ = ["LiveModel", "LiveRecommender", "LiveView", "publish_parts", "new_state"]

logger = logging.getLogger(__name__)

_CATS_KEPT = 32  # streams.redis_state keeps this many categories per user


def _npy(a: npt.ArrayLike) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def publish_parts(item_ids: Sequence[str], item_factors: npt.ArrayLike, *, alpha: float,
                  regularization: float, user_ids: Sequence[str] | None = None,
                  user_factors: npt.ArrayLike | None = None,
                  tf_weights: Sequence[np.ndarray] = (), tf_biases: Sequence[np.ndarray] = ()) -> dict[str, bytes]:
    """The ``P:{m}:v:<version>:<part>`` blobs of one model, as ``online/model_cache.py`` documents."""
    parts = {
        "item_ids": "\n".join(item_ids).encode(),
        "item_factors": _npy(np.asarray(item_factors, np.float32)),
        "alpha": _npy([float(alpha)]),
        "regularization": _npy([float(regularization)]),
    }
    if user_ids is not None and user_factors is not None:
        parts["user_ids"] = "\n".join(user_ids).encode()
        parts["user_factors"] = _npy(np.asarray(user_factors, np.float32))
    if tf_weights:
        parts["tf_n_layers"] = _npy([len(tf_weights)])
        for i, (w, b) in enumerate(zip(tf_weights, tf_biases, strict=True)):
            parts[f"tf_layer{i}_weight"] = _npy(np.asarray(w, np.float32))
            parts[f"tf_layer{i}_bias"] = _npy(np.asarray(b, np.float32))
    return parts


class LiveModel:
    """One published version, decoded by the worker's and by the reader's own loaders."""

    def __init__(self, version: str, parts: dict[str, bytes], settings: Settings) -> None:
        from driftrec.modelformat import MODEL_PARTS
        from driftrec.online.ann import ann_config
        from driftrec.online.model_cache import build_model
        from driftrec.streams.published import unpack_factors

        self.version = version
        self.parts = parts
        self.worker = unpack_factors(version, parts, settings.fold_in_regularization)
        head = {p: parts.get(p) for p in MODEL_PARTS}
        tf = {p: v for p, v in parts.items() if p.startswith("tf_layer")}
        self.reader = build_model(version, head, tf, default_reg=settings.fold_in_regularization,
                                  pool_size=settings.reader_similar_users_pool,
                                  scan_items=settings.reader_scan_items, ann=ann_config(settings))


def new_state(settings: Settings, **overrides: object) -> InMemoryState:
    """An InMemoryState bounded as the worker bounds Redis (``streams.redis_state``)."""
    kw: dict[str, object] = {"user_items_k": settings.history_len, "user_cats_k": _CATS_KEPT,
                             "session_index_k": settings.session_index_k}
    kw.update(overrides)
    return InMemoryState.from_settings(settings, **kw)


def _zrevrange(row: dict[str, float], n: int) -> list[tuple[str, float]]:
    """ZREVRANGE 0 n-1 WITHSCORES: score descending, ties by member descending."""
    if n >= len(row):
        return sorted(row.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    return heapq.nlargest(n, row.items(), key=lambda kv: (kv[1], kv[0]))


class _TopCache:
    """Top ``size`` entries of a growing score map, kept up to date from the keys each batch touched.

    Exact because applying a batch only raises the stored scores of the keys it touches (forward
    decay adds positive increments); a landmark move rescales every score alike but is treated
    as a full recomputation anyway, as is any read deeper than ``size``.
    """

    def __init__(self, scores: dict[str, float], size: int) -> None:
        self.scores, self.size = scores, size
        self.top: list[tuple[str, float]] | None = None

    def touched(self, keys: Set[str] | Sequence[str]) -> None:
        if self.top is None:
            return
        merged = dict(self.top)
        for k in keys:
            if k in self.scores:
                merged[k] = self.scores[k]
        self.top = heapq.nlargest(self.size, merged.items(), key=lambda kv: (kv[1], kv[0]))

    def reset(self) -> None:
        self.top = None

    def read(self, n: int) -> list[tuple[str, float]]:
        if n > self.size:
            return _zrevrange(self.scores, n)
        if self.top is None:
            self.top = _zrevrange(self.scores, self.size)
        return self.top[:n]


@dataclass
class _Reads:
    """What one request read, decayed to ``now`` (the reader's ``UserReads`` plus expansions)."""

    candidates: Candidates
    excluded: set[str]


class LiveRecommender:
    """The production recommender on in-memory state, fed and read as the worker and reader do.

    Parameters
    ----------
    settings : Settings
        Decay, bounds and the reader's read sizes (``reader_recent_items``, ...).
    weights : BlendWeights
        The blend weights (``view`` gives other weights on the same state).
    model : LiveModel, optional
        The published model; without one the vector, TF and similar-user sources are empty
        (the worker would be running ISGD, whose vectors the reader does not score).
    publish_offset : int
        Stream offset from which the model counts as published: the worker folds users in
        only from then on (before, it ran ISGD, whose vectors the reader ignores, so a user
        not seen since is served the model's own training vector).
    catalogue : sequence of (event time, item id, stored record), optional
        Catalogue changes in time order (records as ``driftrec.catalogue.encode_item_event``
        writes them). Each is applied to the reader's own :class:`CatalogueView` with the
        first click batch at or after its time, after that batch's events were scored; the
        new-item source (``new_items`` weight) reads the view as the reader does.
    """

    def __init__(self, settings: Settings, weights: BlendWeights | None = None,
                 model: LiveModel | None = None, state: InMemoryState | None = None,
                 publish_offset: int = 0, catalogue: Sequence[tuple[float, str, bytes]] = ()) -> None:
        self.settings = settings
        self.publish_offset = publish_offset
        self.weights = weights or BlendWeights().with_overrides(settings.reader_blend_weights)
        self.model = model
        self.state = state or new_state(settings)
        self.vectors: dict[str, bytes] = {}
        self.vector_versions: dict[str, str] = {}
        self._top = _TopCache(self.state.pop, MAX_TRENDING_READ)
        self._cache: tuple[tuple[str, int, int], _Reads] | None = None
        self.catalogue_events = list(catalogue)
        self.catalogue: CatalogueView | None = (
            CatalogueView(None, Keys(), newest_kept=newest_kept(settings)) if catalogue else None)
        self._next_change = 0
        self.new_rule = new_item_rule(settings)

    def _feed_catalogue(self, events: Sequence[EventView]) -> None:
        """The catalogue changes up to the batch's last event time (a time-ordered stream beside
        the clicks: what the shop's catalogue said by then)."""
        if self.catalogue is None or not events:
            return
        until = max(e.t for e in events)
        todo = self.catalogue_events
        k = self._next_change
        while k < len(todo) and todo[k][0] <= until:
            k += 1
        if k > self._next_change:
            self.catalogue.apply_records((item, record) for _, item, record in todo[self._next_change:k])
            self._next_change = k

    # --- the write path ------------------------------------------------------------------------
    def update(self, events: Sequence[EventView]) -> None:
        """Apply one micro-batch as the worker does: plan, fold users in, apply."""
        st = self.state
        if not events:
            return
        self._feed_catalogue(events)
        landmark = st.policy.next_landmark(max(e.t for e in events), st.landmark)
        if landmark != st.landmark:  # the worker rescales before it plans (streams/processor.py)
            st.rescale(landmark)
            self._top.reset()
        delta = st.plan(events)
        if self.model is not None and delta.hist and events[-1].offset >= self.publish_offset:
            from driftrec.streams.vectors import plan_fold_in

            users = delta.hist.keys()
            stored = {u: list(st.user_items.get(u, {}).items()) for u in users}
            hists = {u: list(st.hist.get(u, {}).items()) for u in users}
            plan = plan_fold_in(self.model.worker, delta, stored, hists, {}, st.policy,
                                history_len=st.history_len)
            for u, vec in plan.users.items():
                self.vectors[u], self.vector_versions[u] = vec, plan.model
        st.apply(delta)
        self._top.touched(delta.pop.keys())

    # --- the read path -------------------------------------------------------------------------
    def view(self, weights: BlendWeights) -> LiveView:
        return LiveView(self, weights)

    def reader(self, settings: Settings, weights: BlendWeights | None = None,
               catalogue: Sequence[tuple[float, str, bytes]] = ()) -> LiveRecommender:
        """Another reader of this recommender's state (other read settings; no writes of its own;
        a catalogue of its own, fed as the clicks pass).

        Only read-side settings may differ (``reader_*``, ``similarity_shrinkage``, ``similarity_alpha``); the state,
        the user vectors and the trending cache stay this recommender's.
        """
        other = _Reader(settings, weights or self.weights, self.model, self.state, self.publish_offset, catalogue)
        other.vectors, other.vector_versions, other._top = self.vectors, self.vector_versions, self._top
        return other

    def recommend(self, user: str, n: int, exclude: Set[str], now: float) -> list[str]:
        return self.rank(user, n, exclude, self.weights)

    def rank(self, user: str, n: int, exclude: Set[str], weights: BlendWeights) -> list[str]:
        r = self.read(user, n, exclude)
        return [s.item for s in blend(r.candidates, n, exclude=r.excluded, weights=weights,
                                      shrinkage=self.settings.similarity_shrinkage,
                                      alpha=self.settings.similarity_alpha)]

    def read(self, user: str, n: int, exclude: Set[str]) -> _Reads:
        """Every source's candidates, as ``online.recommender`` reads them with all sources on.

        A source whose weight is 0 contributes nothing to :func:`blend` (trending only
        back-fills), so the candidates read once serve every view of this state.
        """
        key = (user, self.state.applied, len(exclude))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        s, st = self.settings, self.state
        f = st.policy.read_factor(st.landmark, st.last_event_time)
        excluded = set(exclude)
        trend_n = trending_depth(n, len(excluded), s.history_len)
        hist = st.hist.get(user, {})
        excluded |= set(hist)
        newest = sorted(hist.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)  # as ZREVRANGE
        decayed, recent = user_recent(_zrevrange(st.user_items.get(user, {}), s.history_len), newest, f,
                                      st.last_event_time, st.policy, k=s.reader_recent_items,
                                      order=s.reader_recent_order,
                                      position_decay=s.reader_recent_position_decay,
                                      session_gap_s=s.reader_session_gap_s,
                                      outside_session=s.reader_outside_session_weight)
        want = n + len(excluded)
        vec_scores: list[tuple[str, float]] = []
        tf_scores: list[tuple[str, float]] = []
        similar: list[tuple[str, float]] = []
        model = self.model.reader if self.model is not None else None
        if model is not None and (decayed or user in self.vectors):
            vec_scores, tf_scores, similar = model.sources(
                self.vectors.get(user), self.vector_versions.get(user), user, decayed, want, s.reader_similar_users)
        k_nbrs = s.neighbours_read
        rows = {i: _zrevrange(st.cooc.get(i, {}), k_nbrs) for i, _ in recent}
        theirs = {v: _zrevrange(st.user_items.get(v, {}), PER_SIMILAR_USER) for v, _ in similar}
        new, labels = (new_item_scores(recent, self.catalogue, st.last_event_time, self.new_rule)
                       if self.catalogue is not None else ([], {}))
        sess = self._session_knn(user, newest) if st.session_index_k > 0 else []
        cands = assemble(recent, rows, f, lambda items: {i: st.pop.get(i, 0.0) * f for i in items},
                         vector_scores=vec_scores, tf_scores=tf_scores, similar=similar, theirs=theirs,
                         trending=self._top.read(trend_n), trending_label=None, new_items=new, new_labels=labels,
                         session_knn=sess)
        reads = _Reads(cands, excluded)
        self._cache = (key, reads)
        return reads


    def _session_knn(self, user: str, newest: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """The session_knn source as the reader reads it: the session index's rows of the latest
        session's items (``ZREVRANGE``), then the neighbours' click logs (``GET`` of the values
        the worker writes, decoded as the reader decodes them)."""
        s, st = self.settings, self.state
        if s.reader_session_knn_users <= 0:
            return []
        query = session_query(newest, k=s.reader_recent_items, session_gap_s=s.reader_session_gap_s)
        rows = {i: st.session_users(i, s.reader_session_knn_sample) for i in query}
        nbrs = session_neighbours(rows, user, s.reader_session_knn_users, query)
        logs = st.click_logs
        theirs = {v: unpack_clicks(logs[v]) for v, _ in nbrs if v in logs}
        return session_knn_scores(query, nbrs, theirs, gap_s=s.reader_session_gap_s)


class _Reader(LiveRecommender):
    def update(self, events: Sequence[EventView]) -> None:
        self._feed_catalogue(events)  # its own catalogue; the state is fed by the recommender it reads


class LiveView:
    """The live recommender under other blend weights (e.g. one source alone); no state of its own."""

    def __init__(self, live: LiveRecommender, weights: BlendWeights) -> None:
        self.live = live
        self.weights = weights

    def update(self, events: Sequence[EventView]) -> None:
        return None  # the LiveRecommender it views is fed by the loop

    def recommend(self, user: str, n: int, exclude: Set[str], now: float) -> list[str]:
        return self.live.rank(user, n, exclude, self.weights)
