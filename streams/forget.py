"""Subtracts a forgotten user's share of shared state, read back from the clicks topic.

A ``forget_user`` tombstone is keyed by the user like their clicks, so it lands in their
partition after every click they sent before it. When a batch applies tombstones, the worker
reads each victim's partition from the log start up to the tombstone, keeps the records whose
message key is the victim's (compared as bytes: nothing else is parsed), parses them as the
batch's records are parsed, and adds the negated share (:mod:`driftrec.models.forget`) to the batch's
delta. The subtraction therefore rides on the batch's own atomic apply and offset guard: a replay
after a crash skips the tombstone by offset and never subtracts twice.

Cost: one partition read from its start per batch with tombstones (forgets are rare; the key
filter keeps memory to the victims' records). Bounds: records retention has already deleted
cannot be subtracted. When the log start is above 0 and no earlier tombstone of the user is left
in the log, part of the share may be gone: logged, and counted in
``driftrec_worker_forgets_incomplete_total``. Events must be keyed by ``user_id`` (every
producer in driftrec does); a click keyed otherwise is not found.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

from driftrec.events import TOMBSTONE_TYPE
from driftrec.models.decay import DecayPolicy, EventWeights
from driftrec.models.forget import events_to_forget, forget_share, subtract_share
from driftrec.models.online import BatchDelta, EventView
from driftrec.settings import Settings
from driftrec.streams import metrics
from driftrec.streams.gapfill import read_log

__all__ = ["Forgetter", "LogReader"]

logger = logging.getLogger(__name__)

Rows = list[tuple[int, int, bytes | None]]
#: Reads ``{partition: (start or None for the log start, end)}`` filtered by ``keys``; returns
#: the rows and each partition's log start offset (:func:`driftrec.streams.gapfill.read_log`).
LogReader = Callable[[Mapping[int, tuple[int | None, int]], Mapping[int, Collection[bytes]]],
                     Awaitable[tuple[Rows, dict[int, int]]]]
#: The processor's parser: raw (partition, offset, value) rows to event views.
Parser = Callable[[Rows], list[EventView]]


class Forgetter:
    """Adds the negated share of every user a batch forgets to that batch's delta.

    Parameters
    ----------
    settings : Settings
        Decay, weights and co-occurrence window, as the batch is planned with.
    reader : LogReader or None
        Reads the clicks topic; default :func:`driftrec.streams.gapfill.read_log` on ``settings``.
    """

    def __init__(self, settings: Settings, reader: LogReader | None = None) -> None:
        self.settings = settings
        self.policy = DecayPolicy(settings.half_life_s)
        self.weights = EventWeights(settings.event_weights)
        self.reader: LogReader = reader or (
            lambda ranges, keys: read_log(settings.bootstrap, settings.clicks_topic, ranges, keys=keys))
        # The last read, reused while the batch is re-planned (a race or a rescale): the records
        # up to a tombstone never change.
        self._cache: tuple[object, Rows, dict[int, int]] | None = None

    async def _read(self, wanted: Mapping[int, tuple[int, set[str]]]) -> tuple[Rows, dict[int, int]]:
        key = sorted((p, end, sorted(users)) for p, (end, users) in wanted.items())
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        rows, starts = await self.reader({p: (None, end + 1) for p, (end, _) in wanted.items()},
                                         {p: {u.encode() for u in users} for p, (_, users) in wanted.items()})
        metrics.FORGET_RECORDS_READ.inc(len(rows))
        self._cache = (key, rows, starts)
        return rows, starts

    async def subtract(self, views: Sequence[EventView], delta: BatchDelta,
                       applied_offsets: Mapping[int, int], parse: Parser) -> None:
        """Subtract the share of the users whose tombstones ``delta`` applies (in place).

        ``views`` are the batch's events and ``applied_offsets`` the offsets it was planned
        against (a tombstone at or below them was applied, and subtracted, before).
        """
        fresh = {(v.partition, v.offset): v.user for v in views
                 if v.type == TOMBSTONE_TYPE and v.offset > applied_offsets.get(v.partition, -1)}
        if not fresh:
            return
        wanted: dict[int, tuple[int, set[str]]] = {}
        for (p, o), user in fresh.items():
            end, users = wanted.get(p, (-1, set()))
            wanted[p] = (max(end, o), users | {user})
        rows, starts = await self._read(wanted)
        victims = {(p, u) for p, (_, users) in wanted.items() for u in users}
        # The batch's own records of the victims too: the read-back has them, but a record the
        # log lost (retention racing the batch) must still close its segment.
        log = [v for v in (*parse(rows), *views) if (v.partition, v.user) in victims]
        events, from_start = events_to_forget(log, fresh)
        s = self.settings
        share = forget_share(events, self.policy, self.weights, delta.landmark,
                             window=s.cooc_window, window_s=s.cooc_window_s, history_len=s.history_len)
        subtract_share(delta, share)
        metrics.FORGETS.inc(len(fresh))
        parts = {u: p for p, u in victims}
        for user in sorted(from_start):
            if starts.get(parts[user], 0) > 0:
                metrics.FORGETS_INCOMPLETE.inc()
                logger.error("forgetting user %r: partition %d starts at offset %d (retention); "
                             "their clicks before it cannot be subtracted", user, parts[user],
                             starts[parts[user]])
        logger.info("forgot %d user(s): subtracted the share of %d events read back from %d records",
                    len({u for u in fresh.values()}), len(events), len(rows))

