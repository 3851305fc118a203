"""What each answer served (``P:{r:R}``, docs/redis-keys.md), written off the request path for attribution.

A request only appends its record to a bounded in-memory queue; one background task drains the
queue and writes the records in pipelines (``HSET`` + ``EXPIRE`` per answer, many answers per
round trip). The answer never waits for, nor fails with, this write: a full queue or a Redis
that does not answer drops records, counted by ``driftrec_reader_served_records_total``, and
the clicks on those answers count as unattributed at the exporter.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from driftrec.keys import Keys
from driftrec.models.blend import Scored

__all__ = ["ServedRecorder", "STRATEGY_FIELD", "SERVED_TTL_S"]

logger = logging.getLogger(__name__)

#: Field holding the answer's strategy; ``#`` can never start an item id (the exporter's name too).
STRATEGY_FIELD = "#strategy"
#: Lifetime of one record: a click later than this is not attributed (docs/redis-keys.md).
SERVED_TTL_S = 3600
# Under load, wait this long after the first record of a batch so that the records of the
# requests in flight share its round trip; an idle reader writes a record within this delay.
_LINGER_S = 0.01
# After a failed write, a quiet pause: a Redis that is down is not hammered by the writer (the
# records meanwhile queue up to the bound, then are dropped and counted).
_BACKOFF_S = 0.5

#: request_id, strategy, (item, source) pairs, extra (field, value) pairs, more commands sent with the record.
Record = tuple[str, str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], tuple[tuple[Any, ...], ...]]
Runner = Callable[[list[list[Any]]], Awaitable[list[Any]]]


class ServedRecorder:
    """Bounded queue of answers to record, and the task that writes them.

    Parameters
    ----------
    run : callable
        Sends a list of commands as one pipeline (``ReaderStore._run``).
    keys : Keys
        The key layout (``Keys.served``).
    count : callable
        ``count(outcome, n)``: ``written``, ``dropped_full`` or ``dropped_error`` records.
    max_queue : int
        Records held while the writer is behind; beyond it new records are dropped.
    max_batch : int
        Records per pipeline.
    ttl_s : int
        ``EXPIRE`` of each record.
    """

    def __init__(self, run: Runner, keys: Keys, count: Callable[[str, int], None], *, max_queue: int = 10_000,
                 max_batch: int = 256, ttl_s: int = SERVED_TTL_S) -> None:
        self._run = run
        self._keys = keys
        self._count = count
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.ttl_s = ttl_s
        self._queue: deque[Record] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def __len__(self) -> int:
        return len(self._queue)

    def record(self, request_id: str, strategy: str, items: Sequence[Scored],
               fields: tuple[tuple[str, str], ...] = (), commands: tuple[tuple[Any, ...], ...] = ()) -> None:
        """Queue one answer's record (item → source); never raises, never waits.

        ``fields`` are more ``#``-named fields of the record (an experiment's name and variant);
        ``commands`` go in the same pipeline (an experiment's answer count and shopper set), so
        an answer and its counts are written together, or dropped together.
        """
        if not items:
            return
        if len(self._queue) >= self.max_queue:
            self._count("dropped_full", 1)
            return
        self._queue.append((request_id, strategy, tuple((x.item, x.source) for x in items), fields, commands))
        if not self._wake.is_set():
            self._wake.set()

    def start(self) -> None:
        """Start the writer on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._writer())

    async def stop(self, timeout: float = 2.0) -> None:
        """Write what is queued (bounded by ``timeout``), then stop the writer."""
        task, self._task = self._task, None
        if task is not None:
            # The flag ends the writer even if the cancellation is lost inside a library call
            # (seen once under load: the writer went back to waiting, and stop() with it).
            self._stopping = True
            self._wake.set()
            task.cancel()
            await asyncio.wait([task], timeout=timeout)
            if not task.done():
                logger.warning("served-records writer did not stop within %.1fs", timeout)
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except (TimeoutError, asyncio.CancelledError):
            pass
        if self._queue:
            self._count("dropped_error", len(self._queue))
            self._queue.clear()

    async def flush(self) -> None:
        """Write every queued record now (one pipeline per ``max_batch``)."""
        while self._queue:
            await self._write_batch()

    def _commands(self, batch: Sequence[Record]) -> list[list[Any]]:
        served, ttl = self._keys.served, self.ttl_s
        cmds: list[list[Any]] = []
        # The records' own commands (an experiment's counts), folded over the batch: one HINCRBY
        # per counter and one SADD per set instead of two more commands per answer, in the same
        # pipeline as the records (with an experiment running they doubled the commands sent).
        incr: dict[tuple[Any, Any], int] = {}
        sets: dict[Any, dict[Any, None]] = {}
        other: list[list[Any]] = []
        for request_id, strategy, pairs, fields, more in batch:
            key = served(request_id)
            hset: list[Any] = ["HSET", key, STRATEGY_FIELD, strategy]
            for item, source in pairs:
                hset.append(item)
                hset.append(source)
            for name, value in fields:
                hset.append(name)
                hset.append(value)
            cmds.append(hset)
            cmds.append(["EXPIRE", key, ttl])
            for c in more:
                if c[0] == "HINCRBY" and len(c) == 4:
                    incr[(c[1], c[2])] = incr.get((c[1], c[2]), 0) + int(c[3])
                elif c[0] == "SADD":
                    sets.setdefault(c[1], {}).update(dict.fromkeys(c[2:]))
                else:
                    other.append(list(c))
        cmds.extend(["HINCRBY", k, f, n] for (k, f), n in incr.items())
        cmds.extend(["SADD", k, *members] for k, members in sets.items())
        cmds.extend(other)
        return cmds

    async def _write_batch(self) -> bool:
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
        if not batch:
            return True
        try:
            await self._run(self._commands(batch))
        except asyncio.CancelledError:
            self._queue.extendleft(reversed(batch))  # stop() writes them
            raise
        except Exception as exc:  # Redis down or refusing: attribution of these answers is lost
            self._count("dropped_error", len(batch))
            logger.warning("could not record %d served answers (%s: %s)", len(batch), type(exc).__name__, exc)
            return False
        self._count("written", len(batch))
        return True

    async def _writer(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            if self._stopping:
                return
            if _LINGER_S:
                await asyncio.sleep(_LINGER_S)
            self._wake.clear()
            while self._queue:
                if not await self._write_batch():
                    await asyncio.sleep(_BACKOFF_S)
