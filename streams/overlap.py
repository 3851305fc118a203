"""Overlapped micro-batches: the next batch is planned while Redis applies the one before it.

:class:`~driftrec.streams.processor.BatchProcessor` applies a batch *in turn*: load, plan, apply,
and Redis idles while the worker plans. :class:`Overlap` pipelines two batches on the one
connection: batch n+1's load goes to Redis ahead of batch n's apply (so it never waits behind
it), and for the keys that apply writes the plan reads the values the apply leaves
(:class:`driftrec.streams.redis_state.Carry`, exact for one worker: a user's keys have one
writer). Batch n+1 is then *held*, planned and built but not sent, until the next
:meth:`Overlap.feed` sends it ahead of planning batch n+2, or :meth:`Overlap.flush` sends it.
Anything unusual (the held batch not applied, a tombstone, a landmark move, a gap, a Redis
rollback, a new model version, an error) sends both batches through the in-turn path, one after
the other, which sorts out what Redis has. docs/write-path.md has the design and its measurements.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import chain

from driftrec.events import TOMBSTONE_TYPE
from driftrec.models.online import EventView
from driftrec.streams import metrics

# The processor imports this module when it builds its Overlap, never at import time.
from driftrec.streams.processor import (
    BatchOutcome,
    BatchProcessor,
    RawRecord,
    _Job,
    _Planned,
    is_retryable,
)
from driftrec.streams.published import PublishedFactors
from driftrec.streams.redis_state import APPLIED, BatchContext, PreparedApply
from driftrec.streams.vectors import ISGD_MODEL

__all__ = ["Overlap", "Held"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Held:
    """A planned batch whose apply is built and not yet sent (see :meth:`Overlap.feed`)."""

    job: _Job
    planned: _Planned
    ctx: BatchContext
    prepared: PreparedApply
    started: float
    #: Planned while Redis applied the batch before (else with nothing in flight: the first
    #: batch after a pause or a fallback).
    overlapped: bool


class Overlap:
    """The held batch of one :class:`~driftrec.streams.processor.BatchProcessor` and the
    feed/flush protocol around it; the processor's ``feed``, ``flush``, ``holding`` and
    ``drop_held`` are these."""

    def __init__(self, proc: BatchProcessor) -> None:
        self.proc = proc
        self.held: Held | None = None  # planned, not yet sent

    async def feed(self, records: Sequence[RawRecord], token: object,
                   upcoming: Sequence[RawRecord] | None = None) -> list[tuple[object, BatchOutcome]]:
        """Take the next batch; returns ``(token, outcome)`` of the batches Redis accepted since
        the last call, in the order they were fed. Raises nothing but cancellation.

        A batch is planned while Redis still applies the one before it: its load goes to Redis
        ahead of that apply (so it cannot wait behind it), and for the keys that apply writes it
        reads the values the apply leaves (:class:`driftrec.streams.redis_state.Carry`, exact for one
        worker: a user's keys have one writer). The new batch is then *held*, planned but not
        sent, until the next ``feed`` sends it ahead of planning the batch after, or
        :meth:`flush` sends it. Anything unusual — the held batch not applied, a tombstone, a
        landmark move, a gap, a Redis rollback, a new model version, an error — and both go
        through :meth:`BatchProcessor.process`'s path one after the other, which sorts out what Redis has.

        ``upcoming``: the records the caller will feed next, when it has them already. They are
        parsed while Redis applies the held batch, where this process would otherwise wait,
        instead of at the start of the next call, while Redis waits for the next load.
        """
        job = self.proc._job(records, token)
        if not self.proc.state.overlaps or not self._plannable(job):
            return [*await self.flush(), (token, await self.proc._serial(job))]
        held, self.held = self.held, None
        if held is None:
            return await self._start(job)
        return await self._overlap(held, job, upcoming)

    async def flush(self) -> list[tuple[object, BatchOutcome]]:
        """Apply the held batch, if any (see :meth:`feed`); raises nothing but cancellation."""
        held, self.held = self.held, None
        return await self._flush(held) if held is not None else []

    @property
    def holding(self) -> bool:
        """A batch is planned and not yet sent: :meth:`flush` before waiting for more records."""
        return self.held is not None

    def drop(self) -> None:
        """Forget the held batch without applying it (the worker stops)."""
        self.held = None

    def _plannable(self, job: _Job) -> bool:
        # Tombstones read shared rows while planning (streams/forget.py): the serial path.
        return bool(job.views) and all(v.type != TOMBSTONE_TYPE for v in job.views)

    async def _start(self, job: _Job) -> list[tuple[object, BatchOutcome]]:
        """Nothing held: load and plan ``job`` and hold it."""
        started = time.perf_counter()
        try:
            ctx, model = await self.proc._load(job.views, job.dead)
            planned = None
            if self._in_step(ctx, ctx, job):
                planned = await self.proc._plan(job.views, job.by_pos, job.dead, job.sent, ctx, model, overlapped=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
            planned = None
        if isinstance(planned, BatchOutcome):  # nothing to apply
            self.proc._count(planned, job, started)
            return [(job.token, planned)]
        if isinstance(planned, _Planned):
            self._hold(job, ctx, planned, started, overlapped=False)
            return []
        return [(job.token, await self.proc._serial(job))]

    def _hold(self, job: _Job, ctx: BatchContext, planned: _Planned, started: float, *, overlapped: bool) -> None:
        """Build ``planned``'s apply (and its carry) and hold it until the next feed or flush."""
        prepared = self.proc.state.prepare_apply(planned.delta, ctx, planned.landmark, planned.vectors,
                                            item_vecs=planned.item_vecs)
        self.held = Held(job, planned, ctx, prepared, started, overlapped)

    async def _overlap(self, held: Held, job: _Job,
                       upcoming: Sequence[RawRecord] | None) -> list[tuple[object, BatchOutcome]]:
        """Send ``held``'s apply and plan ``job`` (and build its apply) while Redis runs it."""
        started = time.perf_counter()
        pending: asyncio.Future[int] | None = None
        planned: _Planned | BatchOutcome | None = None
        try:
            # The load goes ahead of held's apply. Without ISGD vectors the plan reads nothing
            # more before it, so the apply is sent as soon as the load's reply is in and Redis
            # runs it while the reply is decoded; a new model version then sends the job the
            # serial way, which loads the model (as _load would have before planning).
            fresh_model = True
            if not self.proc._isgd(self.proc._mode()):
                model, users, parts, extra, items = self.proc._load_args(job.views, job.dead)
                loaded, pending = await self.proc.state.load_then_apply(held.prepared, users, parts,
                                                                   user_extra=extra, items=items)
                fresh_model = self.proc._model_current(loaded)
            else:
                loaded, model = await self.proc._load(job.views, job.dead)
            carry = held.prepared.carry
            ctx: BatchContext | None = None
            # A batch left in flight (a dead worker's) is finished by the serial path's load.
            if (fresh_model and carry is not None and not loaded.inflight
                    and loaded.model_version == held.ctx.model_version
                    and loaded.landmark_raw in (None, held.ctx.landmark_raw)):
                ctx = carry.overlay(loaded)
                if not self._in_step(loaded, ctx, job):
                    ctx = None
                elif partners := self._isgd_partners(job.views, ctx, model):
                    # Read now, ahead of held's apply, what the plan would read after it.
                    more = await self.proc.state.load_item_vecs(partners)
                    ctx = carry.overlay(replace(loaded, item_vecs={**loaded.item_vecs, **more}))
            if pending is None:
                pending = await self.proc.state.send_apply(held.prepared)
            if ctx is not None:
                planned = await self.proc._plan(job.views, job.by_pos, job.dead, job.sent, ctx, model,
                                           overlapped=True)
                if isinstance(planned, _Planned):
                    self._hold(job, ctx, planned, started, overlapped=True)
            self.proc._parse_ahead(upcoming)  # while Redis still runs held's apply
            result = await pending
        except asyncio.CancelledError:
            if pending is not None:
                pending.cancel()
            raise
        except Exception as exc:
            self._failed(exc)
            if pending is not None:  # whatever became of it, Redis' offsets say
                await asyncio.gather(pending, return_exceptions=True)
            result = None
        if result != APPLIED:
            if result is not None:
                logger.info("held batch not applied (result %d); applying it and the next one in turn", result)
            self.held = None  # planned on what that apply would have left
            return [(held.job.token, await self.proc._serial(held.job)), (job.token, await self.proc._serial(job))]
        done = [(held.job.token, self._accepted_held(held))]
        if isinstance(planned, BatchOutcome):  # nothing to apply
            self.proc._count(planned, job, started)
            done.append((job.token, planned))
        elif not isinstance(planned, _Planned):
            done.append((job.token, await self.proc._serial(job)))
        return done

    async def _flush(self, held: Held) -> list[tuple[object, BatchOutcome]]:
        try:
            result = await (await self.proc.state.send_apply(held.prepared))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
            result = None
        if result == APPLIED:
            return [(held.job.token, self._accepted_held(held))]
        return [(held.job.token, await self.proc._serial(held.job))]

    def _accepted_held(self, held: Held) -> BatchOutcome:
        outcome = self.proc._accepted(held.planned, held.job.views)
        outcome.attempts = 1
        self.proc._count(outcome, held.job, held.started, "overlapped" if held.overlapped else "alone")
        return outcome

    def _failed(self, exc: BaseException) -> None:
        if not is_retryable(exc):
            metrics.UNEXPECTED_ERRORS.inc()
            logger.error("overlapped batch failed (%s: %s); applying in turn", type(exc).__name__, exc,
                         exc_info=exc)
        else:
            metrics.REDIS_RETRIES.inc()
            logger.warning("outage during an overlapped batch (%s: %s); applying in turn", type(exc).__name__, exc)

    def _isgd_partners(self, views: list[EventView], ctx: BatchContext,
                       model: PublishedFactors | None) -> set[str]:
        """Items whose ISGD vectors the plan may borrow for a new item (see
        :func:`~driftrec.streams.vectors.isgd_partners_to_load`) that ``ctx`` lacks: a new item's
        co-clicked items are in the histories and the batch of the users who clicked it."""
        if not self.proc._isgd(model):
            return set()
        vecs, none = ctx.item_vecs, (None, None)
        users = set()
        for v in views:
            vec, tag = vecs.get(v.item, none)
            if vec is None or tag != ISGD_MODEL:
                users.add(v.user)
        if not users:
            return set()
        need = {v.item for v in views if v.user in users}
        for u in users:
            need.update(i for i, _ in ctx.histories.get(u, ()))
        return need - vecs.keys()

    def _in_step(self, loaded: BatchContext, after: BatchContext, job: _Job) -> bool:
        """What :meth:`BatchProcessor._fill_gaps` would find nothing to read back for: Redis (``loaded``) still
        stores every offset this process saw it accept, and no record is missing between the
        offsets it will have once the batch in flight applied (``after``) and the job's first
        ones. Always true without gap filling, as on the serial path."""
        if self.proc.gaps is None:
            return True
        stored = loaded.applied_offsets
        if any(stored.get(p, -1) < o for p, o in self.proc.seen.items() if p in stored):
            return False  # a rollback: the serial path heals it
        applied = after.applied_offsets
        first: dict[int, int] = {}
        for p, o in chain(job.by_pos, ((d.record.partition, d.record.offset) for d in job.dead)):
            if o < first.get(p, o + 1):
                first[p] = o
        return all(o <= applied.get(p, -1) + 1 for p, o in first.items())
