"""The clicks agent: micro-batches from the clicks topic into :class:`BatchProcessor`.

``concurrency=1`` on purpose: with more, a crash can lose a message (faust issue #606), and one
writer per partition is what makes a user's state safe to update without locks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import faust
import redis.asyncio as aioredis
from prometheus_client import start_http_server

from driftrec.keys import Keys
from driftrec.settings import Settings
from streams import metrics
from streams.processor import BatchProcessor, DeadLetter, RawRecord
from streams.redis_state import RedisState

__all__ = ["build_worker"]

logger = logging.getLogger(__name__)


def build_worker(app: faust.App, settings: Settings, *, metrics_port: int | None = None) -> BatchProcessor:
    """Register the clicks agent on ``app``; returns the processor it uses."""
    clicks = app.topic(settings.clicks_topic, value_type=bytes, value_serializer="raw",
                       key_type=bytes, key_serializer="raw", partitions=settings.topic_partitions)
    dlq = app.topic(settings.dead_letter_topic, value_type=bytes, value_serializer="raw",
                    key_type=bytes, key_serializer="raw", partitions=1)
    client = aioredis.Redis.from_url(settings.redis, socket_timeout=10, socket_connect_timeout=5,
                                     health_check_interval=30)
    state = RedisState(client, Keys(settings.key_prefix), settings.clicks_topic,
                       window=settings.cooc_window, history_len=settings.history_len,
                       neighbours_k=settings.neighbours_k, trending_k=settings.trending_k)

    async def send_dead_letters(dead: Sequence[DeadLetter]) -> None:
        for d in dead:
            rec = d.record
            await dlq.send(
                key=None,
                value=rec.value or b"",
                headers={
                    "driftrec-reason": d.reason.encode(),
                    "driftrec-source": f"{rec.topic}:{rec.partition}:{rec.offset}".encode(),
                },
            )

    processor = BatchProcessor(settings, state, send_dead_letters)

    @app.agent(clicks, concurrency=1, name="driftrec.clicks")
    async def apply_clicks(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_max_events, within=settings.batch_max_wait_s):
            records = [
                RawRecord(e.message.topic, e.message.partition, e.message.offset, e.message.value)
                for e in events
            ]
            outcome = await processor.process(records)
            logger.debug("batch of %d: applied %d, skipped %d, dead %d", len(records),
                         outcome.applied, outcome.skipped, len(outcome.dead))

    @app.on_rebalance_complete.connect
    async def on_rebalance(sender: object, **kwargs: object) -> None:
        metrics.REBALANCES.inc()

    if metrics_port:
        @app.task
        async def serve_metrics() -> None:
            start_http_server(metrics_port, addr="127.0.0.1")

    return processor
