"""Publishes click events to the clicks topic, keyed by ``user_id`` (the site's side of the contract)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

from driftrec.catalogue import ItemEvent, encode_item_event
from driftrec.errors import InvalidEventError
from driftrec.events import ClickEvent, encode_event, validate_event
from driftrec.settings import Settings

__all__ = ["Publisher", "publish_events", "PublishReport", "ItemPublisher"]

logger = logging.getLogger(__name__)


class PublishReport:
    def __init__(self) -> None:
        self.sent = 0
        self.rejected: list[tuple[int, str]] = []  # (position, reason)

    def __repr__(self) -> str:
        return f"PublishReport(sent={self.sent}, rejected={len(self.rejected)})"


class Publisher:
    """An idempotent Kafka producer for click events. Use as ``async with Publisher(settings)``."""

    def __init__(self, settings: Settings, *, validate: bool = True) -> None:
        self.settings = settings
        self.validate = validate
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True,
            linger_ms=5, max_batch_size=256 * 1024, request_timeout_ms=30000,
        )

    async def __aenter__(self) -> Publisher:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, event: ClickEvent | Mapping[str, Any]) -> None:
        """Validate (unless already a :class:`ClickEvent`) and send one event; does not wait for the ack."""
        if not isinstance(event, ClickEvent):
            event = validate_event(dict(event), self.settings.event_types)
        await self._producer.send(self.settings.clicks_topic, encode_event(event),
                                  key=event.user_id.encode())

    async def send_raw(self, value: bytes, key: bytes | None = None) -> None:
        """Send bytes as they are (for tests of the dead-letter path)."""
        await self._producer.send(self.settings.clicks_topic, value, key=key)

    async def flush(self) -> None:
        await self._producer.flush()

    async def publish(self, events: Iterable[ClickEvent | Mapping[str, Any]] | AsyncIterator[Any],
                      *, rate: float | None = None, progress: Any = None) -> PublishReport:
        """Send many events, at most ``rate`` per second; invalid ones are reported, not sent."""
        report = PublishReport()
        pace = SendPace(rate, progress)

        async def one(i: int, ev: Any) -> None:
            try:
                await self.send(ev)
                report.sent += 1
            except InvalidEventError as exc:
                report.rejected.append((i, exc.reason))
            await pace.step(report.sent)

        if hasattr(events, "__aiter__"):
            i = 0
            async for ev in events:
                await one(i, ev)
                i += 1
        else:
            for i, ev in enumerate(events):
                await one(i, ev)
        await self.flush()
        return report


class SendPace:
    """A loop of sends' progress bar and upper bound on its rate: :meth:`step` after each send."""

    def __init__(self, rate: float | None, progress: Any = None) -> None:
        self.rate = rate
        self.progress = progress
        self.started = time.monotonic()

    async def step(self, sent: int) -> None:
        """One row done, ``sent`` sent so far: tick the bar, and wait while ahead of the rate."""
        if self.progress is not None:
            self.progress.update(1)
        if self.rate:
            ahead = sent / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                await asyncio.sleep(ahead)


class ItemPublisher:
    """An idempotent Kafka producer for catalogue events (the items topic, keyed by item id, so
    one item's changes stay in order). Use as ``async with ItemPublisher(settings)``; send
    :class:`~driftrec.catalogue.ItemEvent` objects (validated by whoever built them)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True,
            linger_ms=5, max_batch_size=256 * 1024, request_timeout_ms=30000,
        )

    async def __aenter__(self) -> ItemPublisher:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, event: ItemEvent) -> None:
        """Send one event; does not wait for the ack (:meth:`flush` does)."""
        await self._producer.send(self.settings.items_topic, encode_item_event(event), key=event.item_id.encode())

    async def send_raw(self, value: bytes | None, key: bytes | None) -> None:
        """Send bytes as they are (tests of the dead-letter path)."""
        await self._producer.send(self.settings.items_topic, value, key=key)

    async def flush(self) -> None:
        await self._producer.flush()


def publish_events(settings: Settings, events: Iterable[ClickEvent | Mapping[str, Any]], *,
                   rate: float | None = None, progress: Any = None) -> PublishReport:
    """Blocking convenience wrapper: ``publish_events(settings, [{...}, ...])``."""

    async def run() -> PublishReport:
        async with Publisher(settings) as pub:
            return await pub.publish(events, rate=rate, progress=progress)

    return asyncio.run(run())
