"""The reader's in-memory view of the catalogue, kept current by polling the worker's change feed.

Every answer is filtered against this view, so hiding an unavailable or deleted item costs a set
lookup per candidate and no Redis read on the request path. The view holds every catalogue
record the worker stored in ``P:{g}:items`` (``docs/redis-keys.md``, *Catalogue*) as
:class:`~driftrec.catalogue.ItemInfo`, and the ids to hide. It follows ``P:{g}:items:feed``: each
poll (every ``reader_catalogue_poll_s``) is one ``XRANGE`` after the last entry seen, which
returns nothing when nothing changed; changed ids are then read with one ``HMGET`` (their
current records, so entries may be read in any order or twice). Entries carry a running number
``v``; when the first new entry is not the next number (the feed was trimmed past this reader,
or the store was rebuilt) the whole catalogue is read again (``HSCAN``), after noting the feed's
last entry, so changes made during the scan are read again by the next poll.

When Redis is down the view keeps what it has (answers are degraded anyway); a reader that
never loaded it hides nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from driftrec.catalogue import ItemFilter, ItemInfo, stored_item_info
from driftrec.errors import InvalidEventError
from driftrec.keys import Keys
from driftrec.online.periodic import Periodic

__all__ = ["CatalogueView"]

logger = logging.getLogger(__name__)

_NO_POSITION = "0-0"


def _text(x: Any) -> str:
    return x.decode("utf-8", "surrogateescape") if isinstance(x, bytes) else str(x)


class CatalogueView(Periodic):
    """Item records and the ids to hide, as of the last poll.

    Parameters
    ----------
    client : redis.asyncio.Redis (or cluster client)
        Any client whose replies are text; used only by the poll task, never per request.
    keys : Keys
    interval_s : float
        Poll period.
    batch : int
        Most feed entries read per call (a backlog is read in several calls, back to back).
    """

    def __init__(self, client: Any, keys: Keys, *, interval_s: float = 0.1, batch: int = 5000) -> None:
        self.client = client
        self.keys = keys
        self.interval_s = interval_s
        self.batch = batch
        self.items: dict[str, ItemInfo] = {}
        self.hidden: set[str] = set()
        self.position: str | None = None  # last feed entry applied; None: load everything first
        self.version = 0
        self.loads = 0
        self.polled_at: float | None = None  # wall clock of the last good poll
        self.failures = 0
        self._running = False

    # --- what requests use (no I/O) -----------------------------------------------------------
    def hidden_among(self, ids: Iterable[str], rule: ItemFilter | None = None) -> set[str]:
        """Those of ``ids`` an answer must not show: hidden, or failing ``rule``."""
        hidden = self.hidden
        if rule is None or not rule.active:
            return {i for i in ids if i in hidden} if hidden else set()
        get = self.items.get
        return {i for i in ids if i in hidden or not rule.matches(get(i))}

    def overfetch(self, n: int, rule: ItemFilter | None = None) -> int:
        """Extra candidates a source fetches for a top-``n`` so that ``n`` remain once hidden
        and filtered items are dropped: ``n`` more while anything is hidden, ``3n`` more with a
        rule (a filtered list may still come out shorter than ``n``)."""
        extra = min(len(self.hidden), n)
        if rule is not None and rule.active:
            extra += 3 * n
        return extra

    def category(self, item: str) -> str | None:
        info = self.items.get(item)
        return info.category if info is not None else None

    def fields(self, item: str, names: Sequence[str]) -> dict[str, Any]:
        """``fields=`` of one answered item; None for each field of an item not in the catalogue."""
        info = self.items.get(item)
        if info is None:
            return dict.fromkeys(names)
        return info.fields(names)

    def get(self, item: str) -> ItemInfo | None:
        return self.items.get(item)

    # --- upkeep -------------------------------------------------------------------------------
    def _put(self, item: str, record: Any, items: dict[str, ItemInfo] | None = None,
             hidden: set[str] | None = None) -> None:
        items = self.items if items is None else items
        hidden = self.hidden if hidden is None else hidden
        if record is None:  # no record (removed by hand): nothing known of it
            items.pop(item, None)
            hidden.discard(item)
            return
        try:
            info = stored_item_info(record)
        except InvalidEventError as exc:
            logger.error("catalogue record of %r does not parse (%s); ignored", item, exc.reason)
            return
        items[item] = info
        if info.hidden:
            hidden.add(item)
        else:
            hidden.discard(item)

    async def load(self) -> None:
        """Read the whole catalogue (the feed's position first, then ``HSCAN``)."""
        k = self.keys
        last = await self.client.xrevrange(k.catalogue_feed, count=1)
        position, version = _NO_POSITION, 0
        if last:
            position, version = _text(last[0][0]), int(_text(last[0][1]["v"]))
        # Built aside and swapped in whole: requests never see a half-read catalogue.
        items: dict[str, ItemInfo] = {}
        hidden: set[str] = set()
        cursor: Any = 0
        while True:
            cursor, chunk = await self.client.hscan(k.catalogue, cursor, count=1000)
            for item, record in chunk.items():
                self._put(_text(item), record, items, hidden)
            await asyncio.sleep(0)  # ~1,000 records a step: requests run between them
            if not int(cursor):
                break
        self.items, self.hidden = items, hidden
        self.position, self.version = position, version
        self.polled_at = time.time()
        self.loads += 1
        logger.info("catalogue loaded: %d items, %d hidden, feed at %s", len(items), len(hidden), position)

    async def refresh(self) -> int:
        """Apply the feed's new entries (or load everything when they do not follow on);
        returns the entries applied."""
        if self.position is None:
            await self.load()
            return 0
        k = self.keys
        done = 0
        while True:
            entries = await self.client.xrange(k.catalogue_feed, min=f"({self.position}", count=self.batch)
            if not entries:
                break
            first = int(_text(entries[0][1]["v"]))
            if first != self.version + 1:
                logger.warning("catalogue feed jumped from change %d to %d; reloading", self.version, first)
                await self.load()
                return done
            ids = list(dict.fromkeys(_text(fields["i"]) for _, fields in entries))
            records = await self.client.hmget(k.catalogue, ids)
            for j, (item, record) in enumerate(zip(ids, records, strict=True)):
                self._put(item, record)
                if j % 1000 == 999:
                    await asyncio.sleep(0)  # a burst of changes (an import) must not hold requests
            self.position = _text(entries[-1][0])
            self.version = int(_text(entries[-1][1]["v"]))
            done += len(entries)
            if len(entries) < self.batch:
                break
        self.polled_at = time.time()
        return done


    @property
    def age_s(self) -> float | None:
        return None if self.polled_at is None else max(0.0, time.time() - self.polled_at)
