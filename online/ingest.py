"""Where POSTed events and forget-user tombstones go: the clicks topic, through driftrec's publisher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from driftrec.catalogue import ItemEvent
from driftrec.events import ClickEvent
from driftrec.online.errors import Unavailable
from driftrec.publisher import ItemPublisher, Publisher
from driftrec.settings import Settings

__all__ = ["EventSink", "KafkaSink", "ItemSink", "KafkaItemSink"]

logger = logging.getLogger(__name__)


class EventSink(Protocol):
    async def send_all(self, events: Sequence[ClickEvent]) -> None:
        """Hand validated events over for delivery, in order; raise :class:`Unavailable` if not."""

    async def close(self) -> None: ...


class KafkaSink:
    """An idempotent producer to the clicks topic, keyed by user, started on first use.

    The reader serves reads without Kafka; only POST /v1/events and DELETE /v1/users need it,
    so it connects lazily and a broker outage answers those two with 503.
    """

    def __init__(self, settings: Settings, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._publisher: Publisher | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> Publisher:
        if self._publisher is not None:
            return self._publisher
        async with self._lock:
            if self._publisher is None:
                pub = Publisher(self.settings, validate=False)
                try:
                    await asyncio.wait_for(pub.__aenter__(), self.timeout_s)
                except Exception as exc:
                    try:
                        await pub.__aexit__(None, None, None)
                    except Exception:  # the producer never started; nothing to stop
                        pass
                    raise Unavailable(f"event log unavailable: {type(exc).__name__}") from exc
                self._publisher = pub
        return self._publisher

    async def send_all(self, events: Sequence[ClickEvent]) -> None:
        pub = await self._started()
        try:
            async with asyncio.timeout(self.timeout_s):
                for event in events:
                    await pub.send(event)
                # 202 means the broker has them: wait for the acks of this batch (acks=all).
                await pub.flush()
        except Exception as exc:
            raise Unavailable(f"event log unavailable: {type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._publisher is not None:
            pub, self._publisher = self._publisher, None
            await pub.__aexit__(None, None, None)


class ItemSink(Protocol):
    async def send_all(self, events: Sequence[ItemEvent]) -> None:
        """Hand validated catalogue events over for delivery, in order; raise :class:`Unavailable` if not."""

    async def close(self) -> None: ...


class KafkaItemSink:
    """An idempotent producer to the items topic, keyed by item id, started on first use: the
    catalogue endpoints write through the topic the worker applies, like every other source of
    catalogue changes (one write path, one order per item, a log Redis can be rebuilt from)."""

    def __init__(self, settings: Settings, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._publisher: ItemPublisher | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> ItemPublisher:
        if self._publisher is not None:
            return self._publisher
        async with self._lock:
            if self._publisher is None:
                pub = ItemPublisher(self.settings)
                try:
                    await asyncio.wait_for(pub.__aenter__(), self.timeout_s)
                except Exception as exc:
                    try:
                        await pub.__aexit__(None, None, None)
                    except Exception:  # the producer never started; nothing to stop
                        pass
                    raise Unavailable(f"catalogue log unavailable: {type(exc).__name__}") from exc
                self._publisher = pub
        return self._publisher

    async def send_all(self, events: Sequence[ItemEvent]) -> None:
        pub = await self._started()
        try:
            async with asyncio.timeout(self.timeout_s):
                for event in events:
                    await pub.send(event)
                await pub.flush()  # 202 means the broker has them (acks=all)
        except Exception as exc:
            raise Unavailable(f"catalogue log unavailable: {type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._publisher is not None:
            pub, self._publisher = self._publisher, None
            await pub.__aexit__(None, None, None)
