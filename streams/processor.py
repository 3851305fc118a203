"""Turns one micro-batch of raw Kafka records into dead letters and one atomic Redis update.

The agent hands every record here; nothing in this module raises on bad data (a bad event becomes
a dead letter with its reason) and nothing gives up on Redis (it waits with back-off), because an
exception escaping a Faust agent acks the batch silently and would lose it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import redis.exceptions

from driftrec.errors import InvalidEventError
from driftrec.events import TOMBSTONE_TYPE, ClickEvent, parse_event
from driftrec.settings import Settings
from models.decay import DecayPolicy, EventWeights
from models.online import EventView, plan_batch
from streams import metrics
from streams.redis_state import APPLIED, LANDMARK_MOVED, RedisState

__all__ = ["RawRecord", "DeadLetter", "BatchProcessor", "BatchOutcome"]

logger = logging.getLogger(__name__)


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


DeadLetterSink = Callable[[Sequence[DeadLetter]], Awaitable[None]]


class BatchProcessor:
    """Parses, plans and applies micro-batches; shared by the Faust agent and the benchmarks."""

    def __init__(self, settings: Settings, state: RedisState, dead_letters: DeadLetterSink) -> None:
        self.settings = settings
        self.state = state
        self.dead_letters = dead_letters
        self.policy = DecayPolicy(settings.half_life_s)
        self.weights = EventWeights(settings.event_weights)
        self.allowed = settings.event_types
        self.stopping = False

    def parse(self, records: Sequence[RawRecord]) -> tuple[list[tuple[RawRecord, ClickEvent]], list[DeadLetter]]:
        good: list[tuple[RawRecord, ClickEvent]] = []
        dead: list[DeadLetter] = []
        for rec in records:
            try:
                event = parse_event(rec.value, self.allowed)  # type: ignore[arg-type]
                if event.type == TOMBSTONE_TYPE:
                    raise InvalidEventError("type: forget_user tombstones are not supported by this worker yet")
                good.append((rec, event))
            except InvalidEventError as exc:
                dead.append(DeadLetter(rec, exc.reason))
        return good, dead

    async def process(self, records: Sequence[RawRecord]) -> BatchOutcome:
        started = time.perf_counter()
        good, dead = self.parse(records)
        views = [
            EventView(user=e.user_id, item=e.item_id, type=e.type, t=e.timestamp, category=e.category,
                      offset=r.offset, partition=r.partition)
            for r, e in good
        ]
        outcome = BatchOutcome()
        delay = 0.05
        while True:
            outcome.attempts += 1
            try:
                applied, skipped, fresh_dead = await self._try_apply(views, dead)
                outcome.applied, outcome.skipped, outcome.dead = applied, skipped, fresh_dead
                break
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                if self.stopping:
                    raise
                metrics.REDIS_RETRIES.inc()
                logger.warning("Redis unavailable (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.redis_retry_max_s)
        elapsed = time.perf_counter() - started
        metrics.BATCH_SECONDS.observe(elapsed)
        metrics.BATCH_SIZE.observe(len(records))
        metrics.EVENTS_APPLIED.inc(outcome.applied)
        metrics.EVENTS_SKIPPED.inc(outcome.skipped)
        return outcome

    async def _try_apply(self, views: list[EventView], dead: list[DeadLetter]) -> tuple[int, int, list[DeadLetter]]:
        while True:
            ctx = await self.state.load(views) if views or dead else None
            applied_offsets = ctx.applied_offsets if ctx else {}
            # A record at or below the stored offset was handled before a crash: its dead letter
            # was already sent, so only newer ones go out again.
            fresh_dead = [d for d in dead if d.record.offset > applied_offsets.get(d.record.partition, -1)]
            if not views:
                if fresh_dead:
                    await self.dead_letters(fresh_dead)
                    metrics.DEAD_LETTERS.inc(len(fresh_dead))
                return 0, 0, fresh_dead
            assert ctx is not None
            landmark = ctx.landmark
            if landmark is None:
                landmark = await self.state.init_landmark(min(v.t for v in views))
            if self.policy.needs_rescale(max(v.t for v in views), landmark):
                await self.state.rescale(self.policy, landmark, max(v.t for v in views))
                continue
            delta = plan_batch(
                views, ctx.histories, applied_offsets, self.policy, self.weights, landmark,
                window=self.settings.cooc_window, window_s=self.settings.cooc_window_s,
                history_len=self.settings.history_len,
            )
            if fresh_dead:
                await self.dead_letters(fresh_dead)
                metrics.DEAD_LETTERS.inc(len(fresh_dead))
                dead = []  # sent; a retry of this loop must not send them again
            if delta.applied == 0 and not delta.offsets:
                return 0, len(views), fresh_dead
            result = await self.state.apply(delta, ctx, landmark)
            if result == APPLIED:
                if delta.last_event_time:
                    metrics.LAST_EVENT_TIME.set(delta.last_event_time)
                return delta.applied, len(views) - delta.applied, fresh_dead
            if result == LANDMARK_MOVED:
                await asyncio.sleep(0.05)
            logger.info("batch raced another writer or a rescale (result %d); re-planning", result)
