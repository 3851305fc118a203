"""Where POSTed events and forget-user tombstones go: the clicks topic, through driftrec's publisher."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

from driftrec.catalogue import ItemEvent
from driftrec.events import ClickEvent
from driftrec.online.errors import Unavailable
from driftrec.publisher import ItemPublisher, Publisher
from driftrec.settings import Settings

__all__ = ["EventSink", "KafkaSink", "ItemSink", "KafkaItemSink"]

logger = logging.getLogger(__name__)

E = TypeVar("E")


class EventSink(Protocol):
    async def send_all(self, events: Sequence[ClickEvent]) -> None:
        """Hand validated events over for delivery, in order; raise :class:`Unavailable` if not."""

    async def close(self) -> None: ...


class _LazySink(ABC, Generic[E]):
    """An idempotent Kafka producer started on first use, with a bound on each delivery.

    The reader serves reads without Kafka; only the write endpoints need it, so it connects
    lazily and a broker outage answers those with 503 (:class:`Unavailable`), never a 500.
    """

    #: What the producer writes to, for the 503's message.
    log = "event log"

    def __init__(self, settings: Settings, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._publisher: Any = None
        self._lock = asyncio.Lock()

    @abstractmethod
    def _new_publisher(self) -> Any:
        """The (not yet started) producer this sink delivers through."""

    async def _started(self) -> Any:
        if self._publisher is not None:
            return self._publisher
        async with self._lock:
            if self._publisher is None:
                pub = self._new_publisher()
                try:
                    await asyncio.wait_for(pub.__aenter__(), self.timeout_s)
                except Exception as exc:
                    try:
                        await pub.__aexit__(None, None, None)
                    except Exception:  # the producer never started; nothing to stop
                        pass
                    raise Unavailable(f"{self.log} unavailable: {type(exc).__name__}") from exc
                self._publisher = pub
        return self._publisher

    async def send_all(self, events: Sequence[E]) -> None:
        pub = await self._started()
        try:
            async with asyncio.timeout(self.timeout_s):
                for event in events:
                    await pub.send(event)
                # 202 means the broker has them: wait for the acks of this batch (acks=all).
                await pub.flush()
        except Exception as exc:
            raise Unavailable(f"{self.log} unavailable: {type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._publisher is not None:
            pub, self._publisher = self._publisher, None
            await pub.__aexit__(None, None, None)


class KafkaSink(_LazySink[ClickEvent]):
    """Click events and forget-user tombstones to the clicks topic, keyed by user (POST
    /v1/events, DELETE /v1/users)."""

    log = "event log"

    def _new_publisher(self) -> Publisher:
        return Publisher(self.settings, validate=False)


class ItemSink(Protocol):
    async def send_all(self, events: Sequence[ItemEvent]) -> None:
        """Hand validated catalogue events over for delivery, in order; raise :class:`Unavailable` if not."""

    async def close(self) -> None: ...


class KafkaItemSink(_LazySink[ItemEvent]):
    """Catalogue events to the items topic, keyed by item id: the catalogue endpoints write through
    the topic the worker applies, like every other source of catalogue changes (one write path,
    one order per item, a log Redis can be rebuilt from)."""

    log = "catalogue log"

    def _new_publisher(self) -> ItemPublisher:
        return ItemPublisher(self.settings)
