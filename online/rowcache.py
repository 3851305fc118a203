"""A near cache of shared rows the reader reads for many requests, kept for a bounded time.

A recommendation reads the neighbour rows of the user's recent items and the strongest items of
similar users. These rows are shared: popular items and the users of the nearest-user pool come
back in request after request, and re-reading them dominated the reader's Redis time (a
``ZREVRANGE … WITHSCORES`` of 20 members costs Redis 7.0 about 18 µs, mostly formatting the
scores). A row read for one request is reused by later ones for at most ``ttl_s`` seconds, so the
item-item and similar-users sources see other shoppers' clicks at most that late. The shopper's
own state (history, weights, vector) is never cached: their own click shows in the next answer.

Rows hold stored forward-decayed scores, which are relative to the decay landmark; a row read
under another landmark than the request's is a miss (a landmark moves rarely: see
:meth:`driftrec.models.decay.DecayPolicy.needs_rescale`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["RowCache"]

logger = logging.getLogger(__name__)

Pairs = list[tuple[str, float]]


class RowCache:
    """Rows by key, each dropped ``ttl_s`` after it was read from Redis; at most ``max_rows`` kept.

    Parameters
    ----------
    ttl_s : float
        Longest a row is reused; 0 turns the cache off (every row is read every time).
    max_rows : int
        Rows kept; past it the oldest are dropped first.
    """

    def __init__(self, ttl_s: float, max_rows: int) -> None:
        self.ttl_s = ttl_s
        self.max_rows = max_rows
        # key -> (read at, landmark, row), oldest read first. An OrderedDict, not a dict: a dict
        # whose first keys are deleted over and over makes every next(iter(...)) walk the holes.
        self._rows: OrderedDict[str, tuple[float, float, Pairs]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_rows > 0

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, keys: Iterable[str], now: float, landmark: float) -> tuple[dict[str, Pairs], list[str]]:
        """The fresh rows of ``keys`` read under ``landmark``, and the keys to read (in order)."""
        if not self.enabled:
            missing = list(keys)
            self.misses += len(missing)
            return {}, missing
        rows, get, ttl = self._rows, self._rows.get, self.ttl_s
        found: dict[str, Pairs] = {}
        missing = []
        for key in keys:
            entry = get(key)
            if entry is not None and now - entry[0] < ttl and entry[1] == landmark:
                found[key] = entry[2]
            else:
                missing.append(key)
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            self._expire(rows, now, ttl)
        return found, missing

    def store(self, rows: dict[str, Pairs], now: float, landmark: float) -> None:
        """Keep ``rows``, read from Redis at ``now`` under ``landmark``."""
        if not self.enabled or not rows:
            return
        kept = self._rows
        for key, row in rows.items():
            kept[key] = (now, landmark, row)
            kept.move_to_end(key)  # the order stays the read order
        while len(kept) > self.max_rows:
            kept.popitem(last=False)

    @staticmethod
    def _expire(rows: OrderedDict[str, tuple[float, float, Pairs]], now: float, ttl: float) -> None:
        # Drop rows past their time from the front (the oldest): bounded work per call, and
        # memory stays what the last ttl_s of traffic read.
        for _ in range(64):
            if not rows:
                return
            key, entry = next(iter(rows.items()))
            if now - entry[0] < ttl:
                return
            del rows[key]
