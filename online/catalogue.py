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

For the new-item source (:func:`driftrec.models.candidates.new_item_scores`) the view also keeps,
per metadata feature (``c:<category>``, ``t:<tag>``), the ``newest_kept`` newest visible items by
``added_at`` (``updated_at`` when unset), updated with every change it applies: a request reads
them from memory. An item hidden or changed leaves its old lists; a list that was cut to
``newest_kept`` and loses items is rebuilt from the whole view after the poll that changed it.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from driftrec.catalogue import ItemFilter, ItemInfo, stored_item_info
from driftrec.errors import InvalidEventError
from driftrec.keys import Keys
from driftrec.models.candidates import NewItemRule
from driftrec.online.periodic import Periodic
from driftrec.settings import Settings

__all__ = ["CatalogueView", "item_features", "newest_kept", "new_item_rule"]

logger = logging.getLogger(__name__)

_NO_POSITION = "0-0"


def item_features(info: ItemInfo) -> frozenset[str]:
    """The metadata features the new-item source matches on: ``c:<category>`` and ``t:<tag>``."""
    out = {f"t:{t}" for t in info.tags}
    if info.category:
        out.add(f"c:{info.category}")
    return frozenset(out)


def newest_kept(settings: Settings) -> int:
    """Newest items a view keeps per category and tag: 5x what a request reads of each, so a
    few of them hidden or changed leave a full list (0 when the new-item source is off)."""
    return 5 * settings.reader_new_item_candidates


def new_item_rule(settings: Settings) -> NewItemRule:
    return NewItemRule(settings.reader_new_item_half_life_s, settings.reader_new_item_max_age_s,
                       settings.reader_new_item_candidates)


def _added(info: ItemInfo) -> float | None:
    return info.added_at if info.added_at is not None else info.updated_at


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
    newest_kept : int
        Newest items kept per feature for the new-item source (0: no index).
    """

    def __init__(self, client: Any, keys: Keys, *, interval_s: float = 0.1, batch: int = 5000,
                 newest_kept: int = 100) -> None:
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
        self.newest_kept = newest_kept
        # feature -> [(-added, item, features)] ascending (newest first): a request reads the
        # candidates' features from the list, not from their records
        self._newest: dict[str, list[tuple[float, str, frozenset[str]]]] = {}
        self._cut: set[str] = set()    # features whose list was cut to newest_kept
        self._short: set[str] = set()  # cut features that lost items since: rebuilt after the poll

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

    def features(self, item: str) -> frozenset[str]:
        """``c:<category>`` and ``t:<tag>`` of the item's record; empty when it has none."""
        info = self.items.get(item)
        return item_features(info) if info is not None else frozenset()

    def newest(self, feature: str) -> list[tuple[float, str, frozenset[str]]]:
        """``(-added, item, its features)`` of the newest visible items with ``feature``, newest first."""
        return self._newest.get(feature, [])

    # --- the new-item index (changed only by the poll task) -------------------------------------
    def _unindex(self, item: str, info: ItemInfo | None) -> None:
        """Take ``item`` out of the lists its old record ``info`` put it in."""
        if info is None or not self._newest:
            return
        added = _added(info)
        if added is None:
            return
        key = (-added, item)
        for f in item_features(info):
            row = self._newest.get(f)
            if row is None:
                continue
            k = bisect.bisect_left(row, key)  # (-added, item) sorts just before its entry
            if k < len(row) and row[k][:2] == key:
                del row[k]
                if f in self._cut:
                    self._short.add(f)
                if not row:
                    del self._newest[f]

    def _index(self, item: str, info: ItemInfo) -> None:
        added = _added(info)
        if self.newest_kept <= 0 or info.hidden or added is None:
            return
        feats = item_features(info)
        key = (-added, item, feats)
        for f in feats:
            row = self._newest.get(f)
            if row is None:
                self._newest[f] = [key]
                continue
            if len(row) >= self.newest_kept and key > row[-1]:
                self._cut.add(f)  # older than every kept item: not kept
                continue
            bisect.insort(row, key)
            if len(row) > self.newest_kept:
                row.pop()
                self._cut.add(f)

    def _rebuild_steps(self, only: set[str] | None = None) -> Iterator[None]:
        """Rebuild the newest lists of the features ``only`` (all when None) from the whole view,
        aside, then swap them in; yields every 1,000 items (the poll task lets requests run)."""
        if self.newest_kept <= 0:
            return
        rows: dict[str, list[tuple[float, str, frozenset[str]]]] = {}
        for k, (item, info) in enumerate(list(self.items.items())):
            added = _added(info)
            if not info.hidden and added is not None:
                feats = item_features(info)
                for f in feats if only is None else feats & only:
                    rows.setdefault(f, []).append((-added, item, feats))
            if k % 1000 == 999:
                yield
        kept = self.newest_kept
        newest = {} if only is None else dict(self._newest)
        cut = set() if only is None else self._cut - only
        for f in (rows if only is None else only):
            row = sorted(rows.get(f, ()))
            if len(row) > kept:
                cut.add(f)
                del row[kept:]
            if row:
                newest[f] = row
            else:
                newest.pop(f, None)
        self._newest, self._cut = newest, cut
        self._short = set() if only is None else self._short - only

    async def _rebuild_index(self, only: set[str] | None = None) -> None:
        for _ in self._rebuild_steps(only):
            await asyncio.sleep(0)

    def apply_records(self, records: Iterable[tuple[str, Any]]) -> None:
        """Apply ``(item, stored record or None)`` changes at once, without Redis (the
        prequential evaluation feeds the view this way; the reader's poll does the same)."""
        for item, record in records:
            self._put(item, record)
        if self._short:
            for _ in self._rebuild_steps(set(self._short)):
                pass

    # --- upkeep -------------------------------------------------------------------------------
    def _put(self, item: str, record: Any, items: dict[str, ItemInfo] | None = None,
             hidden: set[str] | None = None) -> None:
        live = items is None  # a change to the view requests read (else a load building aside)
        items = self.items if items is None else items
        hidden = self.hidden if hidden is None else hidden
        if record is None:  # no record (removed by hand): nothing known of it
            if live:
                self._unindex(item, items.get(item))
            items.pop(item, None)
            hidden.discard(item)
            return
        try:
            info = stored_item_info(record)
        except InvalidEventError as exc:
            logger.error("catalogue record of %r does not parse (%s); ignored", item, exc.reason)
            return
        if live:
            self._unindex(item, items.get(item))
        items[item] = info
        if info.hidden:
            hidden.add(item)
        else:
            hidden.discard(item)
        if live:
            self._index(item, info)

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
        await self._rebuild_index()
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
        if self._short:  # cut lists that lost items: refilled from the whole view
            await self._rebuild_index(set(self._short))
        self.polled_at = time.time()
        return done


    @property
    def age_s(self) -> float | None:
        return None if self.polled_at is None else max(0.0, time.time() - self.polled_at)
