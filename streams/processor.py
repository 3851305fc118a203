"""Turns one micro-batch of raw Kafka records into dead letters and one atomic Redis update.

The agent hands every record here and :meth:`BatchProcessor.process` never raises (only
cancellation gets through): the batch consumer (streams/batch_consumer.py) commits a batch's
offsets once the agent marks it applied, and a batch that escaped with an exception would still be
covered by the next batch's commit although Redis never saw it. So bad data becomes a dead letter
with its reason, Redis and Kafka outages are waited out with back-off, and anything else (a bug
one event trips) is isolated by retrying the batch one record at a time and dead-lettering the
record that still fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, TypeVar, cast

import redis.exceptions
from aiokafka.errors import KafkaError

from driftrec.errors import InvalidEventError
from driftrec.events import TOMBSTONE_TYPE, fast_validate
from driftrec.models.decay import DecayPolicy, EventWeights
from driftrec.models.online import BatchDelta, EventView, plan_batch
from driftrec.settings import Settings
from driftrec.streams import metrics
from driftrec.streams.forget import Forgetter
from driftrec.streams.gapfill import KafkaGapFiller, find_gaps
from driftrec.streams.published import FactorCache, PublishedFactors
from driftrec.streams.redis_state import (
    APPLIED,
    LANDMARK_MOVED,
    NO_USER_EXTRA,
    USER_VECTORS,
    USER_WEIGHTS,
    BatchContext,
    RedisState,
)
from driftrec.streams.vectors import (
    VectorPlan,
    applied_events,
    isgd_partners_to_load,
    plan_fold_in,
    plan_isgd,
)

__all__ = ["RawRecord", "DeadLetter", "BatchProcessor", "BatchOutcome", "Backoff", "is_retryable"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# Redis answers that mean "not now" rather than "never": wait and try again.
_RETRY_REPLIES = ("OOM", "READONLY", "BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


def is_retryable(exc: BaseException) -> bool:
    """True for outages of Redis or Kafka (wait and retry), False for anything else."""
    if isinstance(exc, redis.exceptions.ResponseError):
        return str(exc).startswith(_RETRY_REPLIES)
    return isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
                      | OSError | KafkaError | asyncio.TimeoutError)


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off between retries: ``initial``, doubling, at most ``maximum`` seconds."""

    initial: float = 0.05
    maximum: float = 5.0

    def delays(self) -> Callable[[], float]:
        state = [self.initial / 2]

        def next_delay() -> float:
            state[0] = min(state[0] * 2, self.maximum)
            return state[0]

        return next_delay


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: RawRecord
    reason: str


@dataclass
class BatchOutcome:
    applied: int = 0
    skipped: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    attempts: int = 0

    def merge(self, other: BatchOutcome) -> None:
        self.applied += other.applied
        self.skipped += other.skipped
        self.dead.extend(other.dead)
        self.attempts += other.attempts


@dataclass(eq=False)
class _Job:
    """One batch, parsed; ``sent``: its dead letters already sent (never sent twice by a retry)."""

    token: object
    records: Sequence[RawRecord]
    views: list[EventView]
    by_pos: dict[tuple[int, int], RawRecord]
    dead: list[DeadLetter]
    sent: set[tuple[int, int]] = field(default_factory=set)


@dataclass(eq=False)
class _Planned:
    """A planned batch: what to apply, and the stored item vectors its plan started from."""

    delta: BatchDelta
    landmark: float | None
    vectors: VectorPlan | None
    fresh: list[DeadLetter]
    item_vecs: dict[str, tuple[bytes | None, str | None]]


DeadLetterSink = Callable[[Sequence[DeadLetter]], Awaitable[None]]


class BatchProcessor:
    """Parses, plans and applies micro-batches; shared by the Faust agent and the benchmarks.

    Parameters
    ----------
    settings : Settings
        Decay, weights, windows, bounds and vector hyper-parameters.
    state : RedisState
        Load and apply against Redis.
    dead_letters : callable
        Sends dead letters and returns once the broker has them.
    factors : FactorCache or None
        The published model cache; None disables user/item vectors altogether.
    backoff : Backoff or None
        Retry policy for outages; default from ``settings.redis_retry_max_s``.
    gaps : KafkaGapFiller or None
        Reads back records a Redis rollback lost; None: no gap filling.
    forgets : Forgetter or None
        Subtracts a forgotten user's share of shared state (``streams/forget.py``); None: a
        ``forget_user`` deletes only the user's own keys.
    """

    def __init__(self, settings: Settings, state: RedisState, dead_letters: DeadLetterSink,
                 factors: FactorCache | None = None, *, backoff: Backoff | None = None,
                 gaps: KafkaGapFiller | None = None, forgets: Forgetter | None = None) -> None:
        self.settings = settings
        self.forgets = forgets
        self.gaps = gaps  # reads back records a Redis rollback lost (streams/gapfill.py)
        #: Partition -> last offset this process saw Redis accept; Redis storing less later means
        #: it lost acknowledged writes (checked at every batch, whatever its partitions).
        self.seen: dict[int, int] = {}
        self.state = state
        self.dead_letters = dead_letters
        self.factors = factors
        self.backoff = backoff or Backoff(maximum=settings.redis_retry_max_s)
        self.policy = DecayPolicy(settings.half_life_s)
        self.weights = EventWeights(settings.event_weights)
        self.allowed = settings.event_types
        self.applied_total = 0
        #: Attempts before a record that fails for no known reason is dead-lettered (the
        #: second while nothing has been applied since start: see :meth:`_failed_alone`).
        self.poison_after, self.poison_after_cold = 3, 10
        # Imported here: streams/overlap.py builds on this module.
        from driftrec.streams.overlap import Overlap

        self.overlap = Overlap(self)  # the batch planned and not yet sent (feed / flush)
        #: ``(records, parse(records))`` of an upcoming batch parsed ahead.
        self._parsed: tuple[Sequence[RawRecord], tuple[list[EventView], dict[tuple[int, int], RawRecord],
                                                       list[DeadLetter]]] | None = None

    # --- parsing ------------------------------------------------------------------------------
    def parse(self, records: Sequence[RawRecord]) -> tuple[list[EventView], dict[tuple[int, int], RawRecord], list[DeadLetter]]:
        """Valid events as views (and their records by (partition, offset)), and dead letters."""
        views: list[EventView] = []
        by_pos: dict[tuple[int, int], RawRecord] = {}
        dead: list[DeadLetter] = []
        allowed = self.allowed
        skew = self.settings.max_future_skew_s
        latest = time.time() + skew
        for rec in records:
            try:
                e = fast_validate(rec.value, allowed)
            except InvalidEventError as exc:
                dead.append(DeadLetter(rec, exc.reason))
                continue
            if e.timestamp > latest and e.type != TOMBSTONE_TYPE:
                # Event time drives the decay landmark: one click dated next year would move it
                # there and round every real score to nothing (models/decay.py).
                dead.append(DeadLetter(rec, f"timestamp: {e.timestamp!r} is more than {skew:g} s past the worker's "
                                            "clock (max_future_skew_s)"))
                continue
            views.append(EventView(e.user_id, e.item_id, e.type, e.timestamp, e.category,
                                   rec.offset, rec.partition))
            by_pos[(rec.partition, rec.offset)] = rec
        return views, by_pos, dead

    # --- the batch ------------------------------------------------------------------------------
    async def process(self, records: Sequence[RawRecord]) -> BatchOutcome:
        """Apply one batch; returns what happened. Raises nothing but cancellation."""
        self._check_nothing_held()
        return await self._serial(self._job(records))

    def _job(self, records: Sequence[RawRecord], token: object = None) -> _Job:
        early, self._parsed = self._parsed, None
        if early is not None and early[0] is records:  # parsed ahead (feed's upcoming)
            views, by_pos, dead = early[1]
        else:
            views, by_pos, dead = self.parse(records)
        return _Job(token, records, views, by_pos, dead)

    def _parse_ahead(self, upcoming: Sequence[RawRecord] | None) -> None:
        """Parse the records the caller said come next (see :meth:`feed`), now."""
        if upcoming:
            try:
                self._parsed = (upcoming, self.parse(upcoming))
            except Exception:  # parsing raises nothing known; if it does, the next call parses again
                logger.debug("parsing the upcoming batch ahead failed", exc_info=True)

    async def _serial(self, job: _Job) -> BatchOutcome:
        """Load, plan and apply ``job`` on its own, waiting out outages; raises nothing but cancellation."""
        started = time.perf_counter()
        try:
            outcome = await self._retrying(lambda: self._attempt(job.views, job.by_pos, job.dead, job.sent))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not an outage: find the record that trips it
            metrics.UNEXPECTED_ERRORS.inc()
            records = job.records
            if len(records) == 1:
                return await self._failed_alone(records[0], exc)
            logger.error("unexpected %s on a batch of %d records; splitting it: %s",
                         type(exc).__name__, len(records), exc)
            half = len(records) // 2  # in order: a record's offset is stored after those before it
            outcome = await self._serial(self._job(records[:half]))
            outcome.merge(await self._serial(self._job(records[half:])))
            return outcome
        self._count(outcome, job, started)
        return outcome

    def _count(self, outcome: BatchOutcome, job: _Job, started: float, path: str = "in_turn") -> None:
        metrics.BATCHES.labels(path).inc()
        self.applied_total += outcome.applied
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(job.records))
        metrics.EVENTS_APPLIED.inc(outcome.applied)
        metrics.EVENTS_SKIPPED.inc(outcome.skipped)

    # --- overlapped batches (streams/overlap.py) ---------------------------------------------------
    async def feed(self, records: Sequence[RawRecord], token: object,
                   upcoming: Sequence[RawRecord] | None = None) -> list[tuple[object, BatchOutcome]]:
        """Take the next batch, planned while Redis applies the one before it; returns
        ``(token, outcome)`` of the batches Redis accepted since the last call, in the order they
        were fed (:meth:`driftrec.streams.overlap.Overlap.feed`). Raises nothing but cancellation."""
        return await self.overlap.feed(records, token, upcoming)

    async def flush(self) -> list[tuple[object, BatchOutcome]]:
        """Apply the held batch, if any (see :meth:`feed`); raises nothing but cancellation."""
        return await self.overlap.flush()

    @property
    def holding(self) -> bool:
        """A batch is planned and not yet sent: :meth:`flush` before waiting for more records."""
        return self.overlap.holding

    def drop_held(self) -> None:
        """Forget the held batch without applying it (the worker stops)."""
        self.overlap.drop()

    def _check_nothing_held(self) -> None:
        if self.overlap.holding:
            raise RuntimeError("a batch is held: flush() before process() or heal()")

    async def heal(self, positions: Mapping[int, int]) -> BatchOutcome:
        """Read back from Kafka what Redis lost below ``positions`` (partition -> Kafka's committed
        offset, the next to read). Redis storing less than the offset before it (or less than
        this process saw it accept) lost acknowledged writes; a batch notices that only when it
        arrives, and at the end of a stream none does. The agent calls this between batches: the
        same load, gap fill and guarded apply as a batch (effectively once). Raises nothing but
        cancellation; outages are waited out.
        """
        self._check_nothing_held()
        if self.gaps is None or not (positions or self.seen):
            return BatchOutcome()
        upto = dict(positions)
        try:
            outcome = await self._retrying(lambda: self._attempt([], {}, [], set(), upto))
        except asyncio.CancelledError:
            raise
        except Exception:  # a record read back trips a bug: the next batch's split isolates it
            metrics.UNEXPECTED_ERRORS.inc()
            logger.error("reading back what Redis lost failed", exc_info=True)
            return BatchOutcome()
        if outcome.applied or outcome.dead:
            self.applied_total += outcome.applied
            metrics.EVENTS_APPLIED.inc(outcome.applied)
            logger.warning("healed Redis without a new batch: applied %d records it had lost "
                           "(%d dead letters)", outcome.applied, len(outcome.dead))
        return outcome

    async def _failed_alone(self, rec: RawRecord, exc: BaseException) -> BatchOutcome:
        """One record keeps failing: retry a little, then dead-letter it as a poison record.

        While the worker has applied nothing since it started, the failure may be systematic
        (a bug or a broken deployment hits every record), so it retries longer before giving
        the record up: a stalled worker loses nothing, a dead-lettering one loses state.
        """
        next_delay = self.backoff.delays()
        failures = 1
        while True:
            limit = self.poison_after if self.applied_total else self.poison_after_cold
            if failures >= limit:
                logger.error("record %s:%d:%d failed %d times (%s); dead-lettering it",
                             rec.topic, rec.partition, rec.offset, failures, exc, exc_info=exc)
                return await self._quarantine(rec, exc)
            await asyncio.sleep(next_delay())
            try:
                outcome = await self._process_retrying([rec])
            except asyncio.CancelledError:
                raise
            except Exception as again:
                exc, failures = again, failures + 1
                metrics.UNEXPECTED_ERRORS.inc()
                continue
            self.applied_total += outcome.applied
            return outcome

    async def _retrying(self, attempt: Callable[[], Awaitable[BatchOutcome]]) -> BatchOutcome:
        next_delay = self.backoff.delays()
        attempts = 0
        while True:
            attempts += 1
            try:
                outcome = await attempt()
                outcome.attempts = attempts
                return outcome
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                delay = next_delay()
                (metrics.KAFKA_RETRIES if isinstance(exc, KafkaError) else metrics.REDIS_RETRIES).inc()
                logger.warning("outage (%s: %s); retrying in %.2fs", type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)

    async def _process_retrying(self, records: Sequence[RawRecord]) -> BatchOutcome:
        views, by_pos, dead = self.parse(records)
        sent: set[tuple[int, int]] = set()  # dead letters already sent by an earlier attempt
        return await self._retrying(lambda: self._attempt(views, by_pos, dead, sent))

    async def _quarantine(self, rec: RawRecord, exc: BaseException) -> BatchOutcome:
        reason = f"internal: {type(exc).__name__}: {str(exc)[:300]}"
        dead = [DeadLetter(rec, reason)]
        try:
            return await self._retrying(lambda: self._attempt([], {}, dead, set()))
        except Exception:  # even storing its offset fails: leave it for a replay
            logger.exception("could not quarantine record %s:%d:%d", rec.topic, rec.partition, rec.offset)
            return BatchOutcome(dead=dead)

    def _mode(self) -> PublishedFactors | None:
        return self.factors.model if self.factors is not None else None

    def _isgd(self, model: PublishedFactors | None) -> bool:
        """Vectors on and no published model to fold in against: ISGD vectors."""
        return self.factors is not None and model is None

    def _model_current(self, ctx: BatchContext) -> bool:
        """The model version ``ctx`` read is the one loaded here (or vectors are off)."""
        return self.factors is None or ctx.model_version == self.factors.version

    def _load_args(self, views: list[EventView], dead: list[DeadLetter], upto: Mapping[int, int] | None = None,
                   ) -> tuple[PublishedFactors | None, list[str], set[int], str, list[str]]:
        """The model the plan will use, and what to load for it: users, partitions, the extra
        user state (weights for a fold-in, vectors for ISGD) and the items whose vectors to read."""
        model = self._mode()
        items = [v.item for v in views if v.type != TOMBSTONE_TYPE]
        if self.factors is None:
            extra, items = NO_USER_EXTRA, []
        elif model is not None:
            index = model.index
            extra, items = USER_WEIGHTS, [i for i in items if i not in index]
        else:
            extra = USER_VECTORS
        parts = {v.partition for v in views} | {d.record.partition for d in dead}
        if self.gaps is not None:
            parts |= set(self.seen) | set(upto or ())
        return model, [v.user for v in views], parts, extra, items

    async def _load(self, views: list[EventView], dead: list[DeadLetter],
                    upto: Mapping[int, int] | None = None) -> tuple[BatchContext, PublishedFactors | None]:
        while True:
            model, users, parts, extra, items = self._load_args(views, dead, upto)
            ctx = await self.state.load(users, parts, user_extra=extra, items=items)
            if self._model_current(ctx):
                return ctx, model
            await cast(FactorCache, self.factors).refresh(ctx.model_version)  # not current: vectors on
            if self._mode() is model:
                return ctx, model  # the new version could not be used; go on with what we have
            metrics.MODEL_RELOADS.inc()

    async def _attempt(self, views: list[EventView], by_pos: dict[tuple[int, int], RawRecord],
                       dead: list[DeadLetter], sent: set[tuple[int, int]],
                       upto: Mapping[int, int] | None = None) -> BatchOutcome:
        """``upto``: partition -> an offset whose records before it must be in Redis (a heal)."""
        while True:
            ctx, model = await self._load(views, dead, upto)
            planned = await self._plan(views, by_pos, dead, sent, ctx, model, upto)
            if planned is None:
                continue  # records Redis lost were read back, or the landmark moved: load again
            if isinstance(planned, BatchOutcome):
                return planned
            result = await self.state.apply(planned.delta, ctx, planned.landmark, planned.vectors)
            if result == APPLIED:
                return self._accepted(planned, views)
            if result == LANDMARK_MOVED:
                # The fence is up: a rescale runs, or its worker died and left it to whoever comes.
                if not await self.state.resume_rescale():
                    await asyncio.sleep(0.05)
            logger.info("batch raced another writer or a rescale (result %d); re-planning", result)

    def _accepted(self, planned: _Planned, views: list[EventView]) -> BatchOutcome:
        delta = planned.delta
        for p, o in delta.offsets.items():
            self.seen[p] = max(self.seen.get(p, -1), o)
        if delta.last_event_time:
            metrics.LAST_EVENT_TIME.set(delta.last_event_time)
        return BatchOutcome(delta.applied, len(views) - delta.applied - len(delta.rejected), planned.fresh)

    async def _plan(self, views: list[EventView], by_pos: dict[tuple[int, int], RawRecord],
                    dead: list[DeadLetter], sent: set[tuple[int, int]], ctx: BatchContext,
                    model: PublishedFactors | None, upto: Mapping[int, int] | None = None, *,
                    overlapped: bool = False) -> _Planned | BatchOutcome | None:
        """Plan one batch on ``ctx`` and send its dead letters: what to apply, or the outcome when
        there is nothing to apply, or None to load again (gaps were filled or the landmark
        moved; ``overlapped``: the batch needs the serial path, nothing was done)."""
        applied_offsets = ctx.applied_offsets
        if not overlapped and self.gaps is not None and await self._fill_gaps(views, by_pos, dead, applied_offsets, upto):
            return None  # records Redis lost were read back from Kafka: load and plan them too
        # A record at or below the stored offset was handled before a crash or by a replay:
        # its dead letter went out then.
        fresh = [d for d in dead
                 if d.record.offset > applied_offsets.get(d.record.partition, -1)]
        landmark: float | None = None
        vectors: VectorPlan | None = None
        item_vecs = ctx.item_vecs
        if views:
            # A tombstone carries no decayed weight and its time is the reader's clock, not the
            # stream's: only clicks place and move the landmark. A batch of tombstones alone on
            # a store with no landmark yet stores none (nothing decayed exists to subtract from).
            clicks = [v.t for v in views if v.type != TOMBSTONE_TYPE]
            landmark = ctx.landmark if ctx.landmark is not None else (min(clicks) if clicks else None)
            newest = max(clicks, default=None)
            if newest is not None and landmark is not None and self.policy.needs_rescale(newest, landmark):
                if overlapped:
                    return None
                if not await self.state.rescale(self.policy, landmark, newest):
                    await asyncio.sleep(0.2)  # another worker moves it: wait, then load again
                return None
            s = self.settings
            delta = await self._off_loop(
                len(views), plan_batch, views, ctx.histories, applied_offsets, self.policy, self.weights,
                landmark if landmark is not None else 0.0, window=s.cooc_window,
                window_s=s.cooc_window_s, history_len=s.history_len)
            fresh += [DeadLetter(by_pos[(e.partition, e.offset)], reason) for e, reason in delta.rejected]
            if delta.applied and self.factors is not None:
                vectors, item_vecs = await self._vectors(views, delta, ctx, model, applied_offsets)
            if delta.forgotten and self.forgets is not None:
                # After the vectors: they read this batch's own clicks from pop and cooc.
                await self.forgets.subtract(views, delta, applied_offsets, self._parse_rows)
        else:
            delta = BatchDelta()
        # Dead letters move the offsets too, so a replay does not send them again.
        for d in fresh:
            p, o = d.record.partition, d.record.offset
            delta.base_offsets.setdefault(p, applied_offsets.get(p, -1))
            delta.offsets[p] = max(delta.offsets.get(p, -1), o)
        unsent = [d for d in fresh if (d.record.partition, d.record.offset) not in sent]
        if unsent:
            await self.dead_letters(unsent)
            sent.update((d.record.partition, d.record.offset) for d in unsent)
            metrics.DEAD_LETTERS.inc(len(unsent))
        if not delta.offsets:
            return BatchOutcome(0, len(views), fresh)
        return _Planned(delta, landmark if delta.applied else None, vectors, fresh, item_vecs)

    #: Batches of at least this many events are planned on a thread: the event loop stays free
    #: for the catalogue agent and the fetches meanwhile (a 2,000-click plan holds it 0.1-0.5 s).
    off_loop_events = 500

    async def _off_loop(self, size: int, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)``: pure CPU work on this batch's data, which nothing else
        touches while the agent awaits it; on a thread when the batch is large."""
        if size < self.off_loop_events:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _parse_rows(self, rows: Sequence[tuple[int, int, bytes | None]]) -> list[EventView]:
        return self.parse([RawRecord(self.settings.clicks_topic, p, o, v) for p, o, v in rows])[0]

    async def _fill_gaps(self, views: list[EventView], by_pos: dict[tuple[int, int], RawRecord],
                         dead: list[DeadLetter], applied: dict[int, int],
                         upto: Mapping[int, int] | None = None) -> bool:
        """Add the records between Redis' offsets and the batch's first ones; True if any."""
        assert self.gaps is not None
        holes = find_gaps(chain(by_pos, ((d.record.partition, d.record.offset) for d in dead),
                                ((p, o + 1) for p, o in self.seen.items()), (upto or {}).items()),
                          applied, self.gaps.max_records)
        rows = await self.gaps.fetch(holes)
        more_views, more_pos, more_dead = self.parse(
            [RawRecord(self.settings.clicks_topic, p, o, v) for p, o, v in rows])
        views.extend(more_views)
        by_pos.update(more_pos)
        dead.extend(more_dead)
        return bool(rows)

    async def _vectors(self, views: list[EventView], delta: BatchDelta, ctx: BatchContext,
                       model: PublishedFactors | None, applied_offsets: dict[int, int],
                       ) -> tuple[VectorPlan, dict[str, tuple[bytes | None, str | None]]]:
        """The batch's vector writes, and the stored item vectors they were planned from."""
        s = self.settings
        item_vecs = ctx.item_vecs
        if model is not None:
            tags = {i: tag for i, (_, tag) in item_vecs.items()}
            return await self._off_loop(len(views), plan_fold_in, model, delta, ctx.user_weights, ctx.histories,
                                        tags, self.policy, history_len=s.history_len), item_vecs
        need = isgd_partners_to_load(delta, item_vecs)
        if need:
            # Sent after a batch in flight (see feed): it reads what that batch's apply left.
            item_vecs = {**item_vecs, **await self.state.load_item_vecs(need)}
        events = applied_events(views, applied_offsets, self.weights)
        return plan_isgd(events, delta, ctx.user_vecs, item_vecs, k=s.factors,
                         lr=s.isgd_learning_rate, reg=s.isgd_regularization), item_vecs
