"""Gathers every source's candidates from Redis and the published model, then calls ``blend``.

The ranking itself is :func:`driftrec.models.blend.blend`, the function the evaluation runs too; this
module only reads, decays everything to one ``now`` and fills :class:`driftrec.models.blend.Candidates`.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import cast

import redis.exceptions

from driftrec.catalogue import ItemFilter
from driftrec.keys import Keys
from driftrec.models.blend import SOURCES, BlendWeights, Candidates, Scored, blend, blend_each
from driftrec.models.candidates import (
    PER_SIMILAR_USER,
    assemble,
    new_item_scores,
    session_knn_scores,
    session_neighbours,
    session_query,
    trending_depth,
    user_recent,
)
from driftrec.models.decay import DecayPolicy
from driftrec.online.catalogue import CatalogueView, new_item_rule
from driftrec.online.model_cache import ModelCache
from driftrec.online.rowcache import RowCache
from driftrec.online.snapshot import TrendingSnapshot
from driftrec.online.store import Pairs, ReaderStore
from driftrec.settings import Settings

__all__ = ["Answer", "Recommender", "STORE_DOWN"]

logger = logging.getLogger(__name__)

_first = operator.itemgetter(0)
#: Deepest a trending answer reads to find n items the catalogue lets it show.
_MAX_DEPTH = 4096
#: Errors that mean "Redis cannot answer now": the reader degrades instead of failing.
STORE_DOWN = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class Answer:
    items: list[Scored]
    model_version: str | None
    degraded: bool


class Recommender:
    """Reads, decays and blends; one instance per app."""

    def __init__(self, settings: Settings, store: ReaderStore, models: ModelCache,
                 snapshot: TrendingSnapshot, weights: BlendWeights, catalogue: CatalogueView | None = None) -> None:
        self.settings = settings
        # Items the catalogue hides (unavailable, deleted) never reach an answer; an empty view
        # (no catalogue, or never polled) hides nothing.
        self.catalogue = catalogue if catalogue is not None else CatalogueView(None, getattr(store, "keys", Keys()))
        self.store = store
        self.models = models
        self.snapshot = snapshot
        self.weights = weights
        self.new_rule = new_item_rule(settings)
        self.policy = DecayPolicy(settings.half_life_s)
        self.rate = self.policy.rate
        # Shared rows reused across requests for at most reader_cache_ttl_s (online/rowcache.py).
        self.nbr_rows = RowCache(settings.reader_cache_ttl_s, settings.reader_cache_rows)
        self.user_rows = RowCache(settings.reader_cache_ttl_s, settings.reader_cache_rows)
        self.session_rows = RowCache(settings.reader_cache_ttl_s, settings.reader_cache_rows)
        self.click_rows = RowCache(settings.reader_cache_ttl_s, settings.reader_cache_rows)
        self.clock = time.monotonic  # the row caches' clock (tests move it by hand)

    def _trend_key(self, category: str | None) -> str:
        keys = self.store.keys
        return keys.trending(category) if category else keys.popularity

    def degraded(self, n: int, category: str | None, exclude: set[str], rule: ItemFilter | None = None) -> Answer:
        """Trending from the in-memory snapshot, for when Redis is unreachable."""
        want = n + self.catalogue.overfetch(n, rule)
        while True:  # hidden items crowding the top: read deeper (in memory, O(what is read))
            got, label = self.snapshot.trending(category, want, exclude)
            top = self._visible(got, n, rule)
            if len(top) >= n or len(got) < want or want >= _MAX_DEPTH:
                break
            want *= 2
        reason = f"popular in {label}" if label else "popular now"
        items = [Scored(i, s, "trending", reason) for i, s in top]
        return Answer(items, self.models.version, True)

    def _visible(self, pairs: Pairs, n: int, rule: ItemFilter | None) -> Pairs:
        """The first ``n`` of ``pairs`` the catalogue lets an answer show."""
        hide = self.catalogue.hidden_among((i for i, _ in pairs), rule)
        return [p for p in pairs if p[0] not in hide][:n] if hide else pairs[:n]

    def _hide(self, c: Candidates, rule: ItemFilter | None) -> set[str]:
        """Candidates of ``c`` the catalogue hides or ``rule`` filters out.

        Without a rule it is set intersections over the candidate lists, whose loops run in C:
        420 candidates against 10,000 hidden items cost 28 us, where a Python pass over them cost
        178 us (same 2-core VM at load 6-12, timeit). A rule looks at each candidate's record in
        Python (236 us for a tag and a price bound there). Nothing hidden and no rule: nothing.
        """
        hidden = self.catalogue.hidden
        active = rule is not None and rule.active
        if not hidden and not active:
            return set()  # nothing hidden, no rule: no pass over the candidates at all
        lists = [*c.neighbours.values(), c.vector_scores, c.tf_scores, c.similar_users, c.trending, c.new_items,
                 c.session_knn]
        if not active:
            out: set[str] = set()
            for pairs in lists:
                out |= hidden.intersection(map(_first, pairs))
            return out
        ids: set[str] = set()
        for pairs in lists:
            ids.update(map(_first, pairs))
        return self.catalogue.hidden_among(ids, rule)

    # --- recommendations for a user ---------------------------------------------------------
    async def for_user(self, user: str, n: int, *, exclude: Sequence[str] = (), category: str | None = None,
                       weights: BlendWeights | None = None, context: Sequence[str] = (),
                       rule: ItemFilter | None = None) -> Answer:
        """Blended top-``n`` for ``user``; seen, excluded and ``context`` items never appear.

        ``context`` lists items of the current session the caller already knows of (an
        anonymous shopper whose clicks are still on their way): they count as the most recent.
        """
        return (await self.for_user_ranked(user, n, (weights or self.weights,), exclude=exclude, category=category,
                                           context=context, rule=rule))[0]

    async def for_user_ranked(self, user: str, n: int, weights: Sequence[BlendWeights], *, exclude: Sequence[str] = (),
                              category: str | None = None, context: Sequence[str] = (),
                              rule: ItemFilter | None = None) -> list[Answer]:
        """:meth:`for_user` once per entry of ``weights``, from one read of the user's state and the
        sources: an interleaving experiment ranks two variants for one answer at the cost of one
        read and two blends (a source with weight 0 adds nothing to a blend, so gathering the union
        of the sources the weights ask for ranks each exactly as its own call would)."""
        if category is not None:
            self.snapshot.note_category(category)
        excluded = set(exclude) | set(context)
        try:
            return await self._for_user(user, n, excluded, category, weights, list(context), rule)
        except STORE_DOWN as exc:
            logger.warning("Redis unavailable (%s): degraded answer for a user", type(exc).__name__)
            return [self.degraded(n, category, excluded, rule)] * len(weights)

    async def _for_user(self, user: str, n: int, excluded: set[str], category: str | None,
                        ws: Sequence[BlendWeights], context: list[str], rule: ItemFilter | None = None) -> list[Answer]:
        s = self.settings
        # The sources any of the rankings uses (one ranking: its own weights).
        w = ws[0] if len(ws) == 1 else BlendWeights(**{f: max(getattr(x, f) for x in ws) for f in SOURCES})
        # Every source fetches extra candidates for those the catalogue hides or the rule drops,
        # which are removed before the blend cuts to n.
        extra = self.catalogue.overfetch(n, rule)
        trend_n = trending_depth(n, len(excluded) + extra, s.history_len)
        # Trending comes from the in-memory snapshot (at most one refresh old) when it has the
        # list; otherwise it is read with the user's state.
        snap = self.snapshot.stored_top(category, trend_n)
        r = await self.store.read_user(user, None if snap is not None else self._trend_key(category), trend_n)
        if snap is not None:
            if snap[0] == r.meta.landmark:
                r.trending = snap[1]
            else:  # the landmark moved since the snapshot: read the list under the new one
                r.trending = (await self.store.trending(self._trend_key(category), trend_n))[1]
        model = self.models.observe(r.model_version)
        f = r.meta.factor(self.rate)
        excluded |= {i for i, _ in r.history}
        decayed, recent = user_recent(r.weights, r.history, f, r.meta.now, self.policy, k=s.reader_recent_items,
                                      order=s.reader_recent_order, context=context,
                                      position_decay=s.reader_recent_position_decay,
                                      session_gap_s=s.reader_session_gap_s,
                                      outside_session=s.reader_outside_session_weight)
        want = n + len(excluded) + extra

        vec_scores: Pairs = []
        tf_scores: Pairs = []
        similar: Pairs = []
        if model is not None and (decayed or r.vec is not None):
            vec_scores, tf_scores, similar = model.sources(
                r.vec, r.vec_version, user, decayed, want, s.reader_similar_users if w.similar_users > 0 else 0,
                vector=w.user_vector > 0, tf=w.tf > 0)

        nbr_items = [i for i, _ in recent] if w.item_item > 0 else []
        query = (session_query(r.history, context, k=s.reader_recent_items, session_gap_s=s.reader_session_gap_s)
                 if w.session_knn > 0 and s.reader_session_knn_users > 0 else [])
        nbrs, theirs, index_rows = await self._expansion(nbr_items, [v for v, _ in similar], r.meta.landmark, query)
        landmark = r.meta.landmark
        sess = await self._session_knn(user, query, index_rows, landmark) if query else []
        # New items sharing a category or tag with the recent ones: from the in-memory catalogue.
        new, labels = (new_item_scores(recent, self.catalogue, r.meta.now, self.new_rule)
                       if w.new_items > 0 else ([], {}))
        cands = assemble(recent, nbrs, f, lambda items: self.snapshot.norms(items, landmark, f),
                         vector_scores=vec_scores, tf_scores=tf_scores, similar=similar, theirs=theirs,
                         trending=r.trending, trending_label=category, new_items=new, new_labels=labels,
                         session_knn=sess)
        if category is not None:
            cands = await self._in_category(cands, category)
        hidden = excluded | self._hide(cands, rule)
        version = model.version if model else None
        # Two rankings (interleaving) share what does not depend on the weights.
        return [Answer(x, version, False) for x in blend_each(cands, n, ws, exclude=hidden,
                                                              shrinkage=s.similarity_shrinkage,
                                                              alpha=s.similarity_alpha)]

    async def _expansion(self, items: list[str], users: list[str], landmark: float,
                         session_items: Sequence[str] = ()) -> tuple[dict[str, Pairs], dict[str, Pairs], dict[str, Pairs]]:
        """Neighbour rows of ``items``, top items of ``users`` and session-index rows of
        ``session_items``: from the row caches when read less than ``reader_cache_ttl_s`` ago
        under the same landmark, else in one round trip."""
        now = self.clock()
        nbrs, want_items = self.nbr_rows.lookup(items, now, landmark)
        theirs, want_users = self.user_rows.lookup(users, now, landmark)
        index, want_index = self.session_rows.lookup(session_items, now, landmark)
        if want_items or want_users or want_index:
            got_nbrs, got_theirs, got_index = await self.store.read_expansion(
                want_items, self.settings.neighbours_read, want_users, PER_SIMILAR_USER,
                want_index, self.settings.reader_session_knn_sample)
            self.nbr_rows.store(got_nbrs, now, landmark)
            self.user_rows.store(got_theirs, now, landmark)
            self.session_rows.store(got_index, now, landmark)
            nbrs.update(got_nbrs)
            theirs.update(got_theirs)
            index.update(got_index)
        return nbrs, theirs, index

    async def _session_knn(self, user: str, query: list[str], index_rows: dict[str, Pairs],
                           landmark: float) -> Pairs:
        """The session_knn source: the neighbours the index rows name, their click logs (row cache,
        else one more round trip: :meth:`ReaderStore.click_logs`) and
        :func:`driftrec.models.candidates.session_knn_scores`."""
        s = self.settings
        neighbours = session_neighbours(index_rows, user, s.reader_session_knn_users, query)
        if not neighbours:
            return []
        now = self.clock()
        cached, want = self.click_rows.lookup([v for v, _ in neighbours], now, landmark)
        logs = cast(dict[str, tuple[tuple[float, ...], str]], cached)
        if want:
            got = await self.store.click_logs(want)
            # A neighbour with nothing stored (forgotten) is cached as empty, not read again.
            self.click_rows.store(cast(dict[str, Pairs], {v: got.get(v, ()) for v in want}), now, landmark)
            logs.update(got)
        return session_knn_scores(query, neighbours, logs, gap_s=s.reader_session_gap_s)

    async def _in_category(self, c: Candidates, category: str) -> Candidates:
        """Keep only candidates of ``category`` (trending is already that category's list)."""
        ids: set[str] = set()
        for rows in c.neighbours.values():
            ids.update(j for j, _ in rows)
        for pairs in (c.vector_scores, c.tf_scores, c.similar_users, c.new_items, c.session_knn):
            ids.update(i for i, _ in pairs)
        if not ids:
            return c
        # The catalogue's category where it has one (in memory); the clicks' category else.
        view = self.catalogue
        unknown = sorted(i for i in ids if view.category(i) is None)
        cats = await self.store.item_categories(unknown) if unknown else {}
        keep = {i for i in ids if (view.category(i) or cats.get(i)) == category}
        return replace(
            c,
            neighbours={r: [(j, v) for j, v in rows if j in keep] for r, rows in c.neighbours.items()},
            vector_scores=[p for p in c.vector_scores if p[0] in keep],
            tf_scores=[p for p in c.tf_scores if p[0] in keep],
            similar_users=[p for p in c.similar_users if p[0] in keep],
            new_items=[p for p in c.new_items if p[0] in keep],
            session_knn=[p for p in c.session_knn if p[0] in keep],
        )

    # --- similar items ----------------------------------------------------------------------
    async def similar(self, item: str, n: int, category: str | None = None, rule: ItemFilter | None = None) -> Answer:
        """Items like ``item``: co-occurrence neighbours and factor cosine; an unknown item gets
        trending in its category (or in ``category``)."""
        try:
            return await self._similar(item, n, category, rule)
        except STORE_DOWN as exc:
            logger.warning("Redis unavailable (%s): degraded similar items", type(exc).__name__)
            return self.degraded(n, category, {item}, rule)

    async def _similar(self, item: str, n: int, category: str | None, rule: ItemFilter | None = None) -> Answer:
        s = self.settings
        extra = self.catalogue.overfetch(n, rule)
        meta, version, nbrs, item_cat = await self.store.read_item(item, s.neighbours_k)
        model = self.models.observe(version)
        category = category or item_cat or self.catalogue.category(item)
        if category is not None:
            self.snapshot.note_category(category)
        norms_raw, trending = await self.store.scores_and_trending(
            [item, *(j for j, _ in nbrs)], self._trend_key(category), n + 1 + extra)
        f = meta.factor(self.rate)
        cands = Candidates(
            recent=[(item, 1.0)],
            neighbours={item: [(j, c * f) for j, c in nbrs]},
            norms={i: v * f for i, v in norms_raw.items()},
            vector_scores=model.item_neighbours(item, n + extra) if model is not None else (),
            trending=[(i, v * f) for i, v in trending], trending_label=category,
        )
        # Trending only back-fills here: similar means similar first.
        w = BlendWeights(item_item=1.0, user_vector=0.5, tf=0.0, similar_users=0.0, trending=0.0, session_knn=0.0)
        ranked = blend(cands, n, exclude={item} | self._hide(cands, rule), weights=w,
                       shrinkage=s.similarity_shrinkage)
        items = [replace(x, reason=_similar_reason(x, item)) for x in ranked]
        return Answer(items, model.version if model else None, False)

    # --- trending ---------------------------------------------------------------------------
    async def trending(self, n: int, category: str | None, exclude: Sequence[str] = (),
                       rule: ItemFilter | None = None) -> Answer:
        if category is not None:
            self.snapshot.note_category(category)
        excluded = set(exclude)
        want = n + len(excluded) + self.catalogue.overfetch(n, rule)
        try:
            while True:  # hidden items crowding the top: one more, deeper read
                meta, got = await self.store.trending(self._trend_key(category), want)
                top = self._visible([p for p in got if p[0] not in excluded], n, rule)
                if len(top) >= n or len(got) < want or want >= _MAX_DEPTH:
                    break
                want *= 2
        except STORE_DOWN as exc:
            logger.warning("Redis unavailable (%s): degraded trending", type(exc).__name__)
            return self.degraded(n, category, excluded, rule)
        f = meta.factor(self.rate)
        reason = f"popular in {category}" if category else "popular now"
        items = [Scored(i, v * f, "trending", reason) for i, v in top]
        return Answer(items, self.models.version, False)


def _similar_reason(x: Scored, item: str) -> str:
    if x.source == "item_item":
        return f"often viewed with {item}"
    if x.source == "user_vector":
        return f"liked by the same shoppers as {item}"
    return x.reason
