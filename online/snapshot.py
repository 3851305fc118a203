"""An in-memory copy of popularity and trending, refreshed periodically: degraded answers and norms.

When Redis cannot be reached the reader answers from this snapshot (``degraded: true``). While
Redis is up the snapshot's popularity gives the similarity norms of the item-item source, so a
recommendation needs no third round trip for them; they are at most one refresh old.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

from driftrec.models.decay import DecayPolicy
from driftrec.online.periodic import Periodic
from driftrec.online.store import Meta, Pairs, ReaderStore

__all__ = ["TrendingSnapshot"]

logger = logging.getLogger(__name__)

#: Popular items kept in list form (trending answers and the trending source read from it).
_POPULAR_KEPT = 1000


class TrendingSnapshot(Periodic):
    """Top popular items overall and per recently asked category, as stored forward scores.

    Parameters
    ----------
    store : ReaderStore
        Where to read from.
    policy : DecayPolicy
        The decay in use (to move scores between landmarks).
    n_items : int
        Most popular items kept (also the items that have a norm; the rest get the smallest kept
        popularity, an upper bound of theirs).
    per_category : int
        Items kept per category list.
    max_categories : int
        Categories tracked (the most recently asked ones).
    interval_s : float
        Refresh period.
    """

    def __init__(self, store: ReaderStore, policy: DecayPolicy, *, n_items: int, per_category: int = 200,
                 max_categories: int = 64, interval_s: float = 2.0) -> None:
        self.store = store
        self.policy = policy
        self.n_items = n_items
        self.per_category = per_category
        self.max_categories = max_categories
        self.interval_s = interval_s
        self.meta: Meta | None = None
        self.popular: Pairs = []
        self.pop: dict[str, float] = {}
        self.floor = 0.0
        self.categories: dict[str, Pairs] = {}
        self._asked: OrderedDict[str, None] = OrderedDict()
        self.refreshed_at: float | None = None  # wall clock of the last good refresh
        self.failures = 0
        self._running = False

    # --- upkeep ------------------------------------------------------------------------------
    def note_category(self, category: str) -> None:
        """Remember a category a request asked for, so the next refresh keeps its list."""
        asked = self._asked
        if category in asked:
            asked.move_to_end(category)
            return
        asked[category] = None
        if len(asked) > self.max_categories:
            asked.popitem(last=False)

    async def refresh(self) -> None:
        """Read a new snapshot; on failure the old one stays (raises the Redis error)."""
        cats = list(self._asked)
        meta, pop, lists = await self.store.snapshot(self.n_items, cats, self.per_category)
        self.meta = meta
        self.popular = pop[:_POPULAR_KEPT]
        self.pop = dict(pop)
        self.floor = pop[-1][1] if len(pop) >= self.n_items else 0.0
        self.categories = {c: v for c, v in lists.items() if v}
        self.refreshed_at = time.time()


    @property
    def age_s(self) -> float | None:
        return None if self.refreshed_at is None else max(0.0, time.time() - self.refreshed_at)

    # --- reading -----------------------------------------------------------------------------
    def _shift(self, landmark: float) -> float:
        # Stored scores are relative to the snapshot's landmark; a request may already see a
        # moved one (after a rescale), so scale into the request's.
        if self.meta is None or self.meta.landmark == landmark:
            return 1.0
        return self.policy.rescale_factor(self.meta.landmark, landmark)

    def norms(self, items: Iterable[str], landmark: float, scale: float = 1.0) -> dict[str, float]:
        """Stored popularity of ``items`` relative to ``landmark`` (missing: the kept floor),
        times ``scale`` (a request's decay factor: one pass instead of two)."""
        f = self._shift(landmark)
        get, floor = self.pop.get, self.floor
        if f == 1.0:  # x * 1.0 == x: the same values without the multiplication
            return {i: get(i, floor) * scale for i in items}
        return {i: get(i, floor) * f * scale for i in items}

    def stored_top(self, category: str | None, n: int) -> tuple[float, Pairs] | None:
        """The top ``n`` of the popularity list (``category`` None) or of ``category``'s trending
        list as stored forward scores, with the landmark they are relative to; None when this
        snapshot cannot give all ``n`` (no snapshot yet, a category not kept, a list cut shorter
        than ``n`` here but maybe longer in Redis)."""
        if self.meta is None:
            return None
        if category is None:
            source, kept = self.popular, min(self.n_items, _POPULAR_KEPT)
        elif category in self.categories:
            source, kept = self.categories[category], self.per_category
        else:
            return None
        if n > len(source) and len(source) >= kept:
            return None
        return self.meta.landmark, source[:n]

    def trending(self, category: str | None, n: int, exclude: set[str] | frozenset[str]) -> tuple[Pairs, str | None]:
        """Top ``n`` items (values at the snapshot's ``now``), in ``category`` when it is kept.

        Returns the items and the label they are popular in (None: overall).
        """
        label: str | None = None
        source = self.popular
        if category is not None and category in self.categories:
            source, label = self.categories[category], category
        factor = 1.0
        if self.meta is not None:
            factor = self.policy.read_factor(self.meta.landmark, self.meta.now)
        # Stops after n kept items: a shed or degraded answer must cost O(n), not the snapshot.
        kept = (pair for pair in source if pair[0] not in exclude)
        return [(i, s * factor) for i, s in itertools.islice(kept, n)], label
