"""The catalogue agent: catalogue events from the items topic into Redis, effectively once.

The items topic (``driftrec.items``, log-compacted, keyed by item id) carries upserts and deletes
(:mod:`driftrec.catalogue`). Each micro-batch is validated here, its bad records sent to the
catalogue's dead-letter topic with their reason (acknowledged by Kafka before Redis moves the
offset), and the rest applied by one script (``lua/apply_catalogue.lua``) that, like the clicks'
scripts, skips every record at or below the offset its partition stored and stores the new offset
in the same script: a replay after a crash (Kafka offsets are committed only after the script)
changes nothing. Every change also goes to the change feed the readers poll
(``docs/redis-keys.md``, *Catalogue*).

Catalogue changes are few, so the agent takes Faust's per-message stream in small batches
(``take_events``, which acknowledges events only after the agent has handled them) rather than
the clicks' batch consumer; the two share one consumer group and process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
import redis.asyncio as aioredis
from prometheus_client import Counter

from driftrec.catalogue import encode_item_event, parse_item_event
from driftrec.errors import InvalidEventError
from driftrec.keys import Keys
from driftrec.settings import Settings
from driftrec.streams.processor import Backoff, is_retryable
from driftrec.streams.redis_state import lua_source

__all__ = ["CatalogueRecord", "CatalogueApplier", "CatalogueOutcome", "register_catalogue", "CATALOGUE_EVENTS"]

logger = logging.getLogger(__name__)

CATALOGUE_EVENTS = Counter("driftrec_worker_catalogue_events", "Catalogue events by outcome",
                           ["outcome"])  # applied | skipped (replayed) | dead
_APPLY_LUA = lua_source("apply_catalogue.lua")


@dataclass(frozen=True, slots=True)
class CatalogueRecord:
    """One message of the items topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class CatalogueOutcome:
    applied: int
    skipped: int
    dead: list[tuple[CatalogueRecord, str]]


DeadLetterSender = Callable[[Sequence[tuple[CatalogueRecord, str]]], Awaitable[None]]


class CatalogueApplier:
    """Validates and applies micro-batches of catalogue records (one topic).

    Parameters
    ----------
    client : redis.asyncio.Redis
        The worker's Redis client (single node or cluster: every key is in the ``{g}`` slot).
    keys : Keys
    topic : str
        The items topic (the offsets' field names).
    send_dead_letters : callable
        Sends ``(record, reason)`` pairs and returns once Kafka acknowledged them.
    feed_len : int
        Approximate length the change feed is trimmed to.
    backoff : Backoff, optional
        Waits between retries while Redis or Kafka is down (never gives up: the batch is not
        acknowledged, so not committed, until it is applied).
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, topic: str, send_dead_letters: DeadLetterSender,
                 *, feed_len: int = 100_000, backoff: Backoff | None = None) -> None:
        self.keys = keys
        self.topic = topic
        self.send_dead_letters = send_dead_letters
        self.feed_len = feed_len
        self.backoff = backoff or Backoff()
        self._script = client.register_script(_APPLY_LUA)

    @staticmethod
    def plan(records: Sequence[CatalogueRecord]) -> tuple[list[Any], list[tuple[CatalogueRecord, str]]]:
        """The script's groups (partition, offset, item, record) and the dead letters."""
        args: list[Any] = []
        dead: list[tuple[CatalogueRecord, str]] = []
        for rec in records:
            try:
                event = parse_item_event(rec.value, rec.key)
            except InvalidEventError as exc:
                dead.append((rec, exc.reason))
                args += [rec.partition, rec.offset, "", ""]
                continue
            # Stored as re-encoded (validated, defaults dropped), so every reader parses one form.
            args += [rec.partition, rec.offset, event.item_id, encode_item_event(event)]
        return args, dead

    async def apply(self, records: Sequence[CatalogueRecord]) -> CatalogueOutcome:
        """Apply one batch; Redis and Kafka outages are waited out, never raised."""
        if not records:
            return CatalogueOutcome(0, 0, [])
        args, dead = self.plan(records)
        k = self.keys
        next_delay = self.backoff.delays()
        sent = False
        while True:
            try:
                if dead and not sent:
                    await self.send_dead_letters(dead)
                    sent = True  # a retry of the script does not send them again
                applied, skipped = await self._script(
                    keys=[k.catalogue, k.catalogue_feed, k.catalogue_offsets],
                    args=[self.topic, self.feed_len, *args])
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = next_delay()
                if is_retryable(exc):
                    logger.warning("catalogue: outage (%s: %s); retrying in %.2fs", type(exc).__name__, exc, delay)
                else:
                    # A bug, not bad data (that is dead-lettered above): the batch is neither
                    # dropped nor committed, the clicks agent goes on, and the log says why.
                    logger.critical("catalogue batch failed; retrying in %.2fs", delay, exc_info=True)
                await asyncio.sleep(delay)
        CATALOGUE_EVENTS.labels("applied").inc(int(applied))
        CATALOGUE_EVENTS.labels("skipped").inc(int(skipped))
        CATALOGUE_EVENTS.labels("dead").inc(len(dead))
        for rec, reason in dead:
            logger.info("catalogue record %s:%d:%d dead-lettered: %s", rec.topic, rec.partition, rec.offset, reason)
        return CatalogueOutcome(int(applied), int(skipped), dead)


def register_catalogue(app: faust.App, settings: Settings, client: aioredis.Redis, keys: Keys, *,
                       reason_header: str, source_header: str) -> CatalogueApplier:
    """Add the catalogue agent to the worker's Faust app; returns the applier it uses."""
    items = app.topic(settings.items_topic, value_type=bytes, value_serializer="raw",
                      key_type=bytes, key_serializer="raw", partitions=settings.items_partitions)
    dlq = app.topic(settings.items_dead_letter_topic, value_type=bytes, value_serializer="raw",
                    key_type=bytes, key_serializer="raw", partitions=1)

    async def send_dead_letters(dead: Sequence[tuple[CatalogueRecord, str]]) -> None:
        pending = []
        for rec, reason in dead:
            pending.append(await dlq.send(
                key=rec.key, value=rec.value or b"",
                headers={reason_header: reason.encode(), source_header: f"{rec.topic}:{rec.partition}:{rec.offset}".encode()},
                force=True))
        await asyncio.gather(*pending)

    applier = CatalogueApplier(client, keys, settings.items_topic, send_dead_letters,
                               feed_len=settings.catalogue_feed_len,
                               backoff=Backoff(maximum=settings.redis_retry_max_s))

    @app.agent(items, concurrency=1, name="driftrec.items")
    async def apply_items(stream: faust.StreamT) -> None:
        # take_events acknowledges a batch's events only after this body has handled them.
        async for events in cast(faust.Stream, stream).take_events(settings.catalogue_batch_max, within=0.01):
            records = [CatalogueRecord(e.message.topic, e.message.partition, e.message.offset,
                                       e.message.key, e.message.value) for e in events]
            await applier.apply(records)  # never raises: outages and bugs are retried

    return applier
