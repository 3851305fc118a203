"""The clicks agent: micro-batches from the clicks topic into :class:`BatchProcessor`.

``concurrency=1`` on purpose: with more, a crash can lose a message (faust issue #606), and one
writer per partition is what makes a user's state safe to update without locks.

Offsets: ``take_events`` acks a batch's events when the body asks for the next batch (the
``finally`` after its ``yield``), so Kafka commits only cover batches whose body returned, i.e.
that Redis accepted. It acks them on an exception too, which is why the body must never raise:
the processor turns data problems into dead letters and waits out outages itself. On a graceful
stop or a rebalance Faust waits for the unacked batch to be acked (``Consumer.wait_empty``), so a
batch stuck on a Redis outage holds the stop rather than being committed unapplied; a ``kill -9``
commits nothing, and the offsets Redis stores make the replay that follows skip what was applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import faust
from prometheus_client import start_http_server

from driftrec.keys import Keys
from driftrec.redis_conn import async_client, is_cluster_url
from driftrec.settings import Settings
from streams import metrics
from streams.cluster_state import ClusterRedisState
from streams.gapfill import KafkaGapFiller
from streams.processor import BatchProcessor, DeadLetter, RawRecord
from streams.published import FactorCache
from streams.redis_state import RedisState

__all__ = ["build_worker", "REASON_HEADER", "SOURCE_HEADER"]

logger = logging.getLogger(__name__)

REASON_HEADER = "driftrec-reason"
SOURCE_HEADER = "driftrec-source"


def build_worker(app: faust.App, settings: Settings, *, metrics_port: int | None = None,
                 vectors: bool = True) -> BatchProcessor:
    """Register the clicks agent on ``app``; returns the processor it uses."""
    clicks = app.topic(settings.clicks_topic, value_type=bytes, value_serializer="raw",
                       key_type=bytes, key_serializer="raw", partitions=settings.topic_partitions)
    dlq = app.topic(settings.dead_letter_topic, value_type=bytes, value_serializer="raw",
                    key_type=bytes, key_serializer="raw", partitions=1)
    client = async_client(settings.redis, socket_timeout=10, socket_connect_timeout=5,
                          health_check_interval=30)
    keys = Keys(settings.key_prefix)
    # On Redis Cluster each batch is applied per hash slot (streams/cluster_state.py).
    state_type = ClusterRedisState if is_cluster_url(settings.redis) else RedisState
    state = state_type(client, keys, settings.clicks_topic,
                       window=settings.cooc_window, history_len=settings.history_len,
                       neighbours_k=settings.neighbours_k, trending_k=settings.trending_k)
    factors = FactorCache(client, keys, settings.fold_in_regularization) if vectors else None

    async def send_dead_letters(dead: Sequence[DeadLetter]) -> None:
        # force=True: send now, not attached to the current event (Faust would hold attached
        # messages until the ack), and wait for the broker's ack before Redis moves the offset.
        pending = []
        for d in dead:
            rec = d.record
            pending.append(await dlq.send(
                key=None,
                value=rec.value or b"",
                headers={
                    REASON_HEADER: d.reason.encode(),
                    SOURCE_HEADER: f"{rec.topic}:{rec.partition}:{rec.offset}".encode(),
                },
                force=True,
            ))
        await asyncio.gather(*pending)

    processor = BatchProcessor(settings, state, send_dead_letters, factors,
                               gaps=KafkaGapFiller(settings.bootstrap, settings.clicks_topic))

    @app.agent(clicks, concurrency=1, name="driftrec.clicks")
    async def apply_clicks(stream: faust.StreamT) -> None:
        async for events in stream.take_events(  # type: ignore[attr-defined]
                settings.batch_max_events, within=settings.batch_max_wait_s):
            records = [
                RawRecord(e.message.topic, e.message.partition, e.message.offset, e.message.value)
                for e in events
            ]
            try:
                outcome = await processor.process(records)
            except asyncio.CancelledError:
                raise
            except Exception:  # process() catches everything; this is the last line of defence
                metrics.UNEXPECTED_ERRORS.inc()
                logger.critical("batch processing raised; its offsets will be committed", exc_info=True)
                continue
            logger.debug("batch of %d: applied %d, skipped %d, dead %d", len(records),
                         outcome.applied, outcome.skipped, len(outcome.dead))

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def on_rebalance(sender: object, **kwargs: object) -> None:
        metrics.REBALANCES.inc()

    if metrics_port:
        @app.task
        async def serve_metrics() -> None:
            start_http_server(metrics_port, addr=settings.worker_metrics_host)

    return processor
