"""Where POSTed events and forget-user tombstones go: the clicks topic, through driftrec's publisher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from driftrec.events import ClickEvent
from driftrec.online.errors import Unavailable
from driftrec.publisher import Publisher
from driftrec.settings import Settings

__all__ = ["EventSink", "KafkaSink"]

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
