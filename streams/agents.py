"""The clicks agent: micro-batches from the clicks topic into :class:`BatchProcessor`.

``concurrency=1`` on purpose: with more, a crash can lose a message (faust issue #606), and one
writer per partition is what makes a user's state safe to update without locks.

Batches: the app's consumer is a :class:`~driftrec.streams.batch_consumer.BatchConsumer`, which hands the
agent each fetch from aiokafka's ``getmany`` as lists of records (at most ``batch_max_events``),
instead of Faust's per-event stream (``take_events``). Faust's per-message path (a ``wait_first``
with two tasks per message in the fetcher, an ``Event`` and a queue hop per message, sensors and
an ack per event) capped an agent doing nothing but decode at ~4k events/s on a 2-core server, below
what the processor alone applies; whole batches lift that ceiling about tenfold
(``benchmarks/results/write_path_ceiling.json``). The app, consumer group, rebalances, flow control
and commit timer are still Faust's.

Offsets: the agent marks a batch applied (:meth:`Batch.applied`) only after
:meth:`BatchProcessor.process` returned, i.e. Redis accepted it (the processor never raises: data
problems become dead letters, outages are waited out); only applied batches' offsets are
committed. On a graceful stop or a rebalance the consumer's ``wait_empty`` waits for the batch in
flight, so a batch stuck on a Redis outage holds the stop rather than being committed unapplied;
fetched batches not yet started are dropped and re-read by the partition's next owner; a
``kill -9`` commits nothing, and the offsets Redis stores make the replay that follows skip what
was applied.

Redis rollbacks: the processor compares Redis' stored offsets with what it saw Redis accept and
reads back from Kafka what Redis lost, at every batch. Whole fetches make batches large (up to
``batch_max_events``), so the last batches of a burst may all be applied before Redis loses them;
the agent therefore also runs that check on an empty batch after ``IDLE_CHECK_S`` without records,
and once more on a graceful stop. The idle check (:meth:`BatchProcessor.heal`) reads back what
Redis lacks below Kafka's committed offsets too, so a worker restarted after Redis lost writes,
which never saw Redis accept them, heals without a next event as well.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, cast

import faust
from prometheus_client import start_http_server

from driftrec.blas import limit_blas_threads
from driftrec.keys import Keys
from driftrec.redis_conn import async_client, is_cluster_url
from driftrec.settings import Settings
from driftrec.streams import metrics
from driftrec.streams.batch_consumer import Batch, BatchConsumer
from driftrec.streams.catalogue import register_catalogue
from driftrec.streams.cluster_state import ClusterRedisState
from driftrec.streams.forget import Forgetter
from driftrec.streams.gapfill import KafkaGapFiller
from driftrec.streams.processor import BatchProcessor, DeadLetter
from driftrec.streams.published import FactorCache
from driftrec.streams.redis_state import RedisState

__all__ = ["build_worker", "REASON_HEADER", "SOURCE_HEADER"]

logger = logging.getLogger(__name__)

#: Seconds without records after which the agent checks Redis for lost writes (a rollback).
IDLE_CHECK_S = 1.0
#: At most this long, on a graceful stop, for that check.
SHUTDOWN_CHECK_S = 10.0

REASON_HEADER = "driftrec-reason"
SOURCE_HEADER = "driftrec-source"


def build_worker(app: faust.App, settings: Settings, *, metrics_port: int | None = None,
                 vectors: bool = True) -> BatchProcessor:
    """Register the clicks agent on ``app``; returns the processor it uses."""
    # numpy's and scipy's BLAS are loaded by now (streams.published imports models.foldin).
    limit_blas_threads(settings.blas_threads)
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
                       neighbours_k=settings.neighbours_cut, trending_k=settings.trending_k,
                       chunk_cost=settings.apply_chunk_cost)
    state.exit_after_chunk = settings.fault_exit_after_chunk
    state.session_index_k = settings.session_index_k
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
                               gaps=KafkaGapFiller(settings.bootstrap, settings.clicks_topic),
                               forgets=Forgetter(settings))
    # Catalogue events (the items topic): their own small agent, same app and Redis client.
    register_catalogue(app, settings, client, keys, reason_header=REASON_HEADER, source_header=SOURCE_HEADER)

    @app.agent(clicks, concurrency=1, name="driftrec.clicks")
    async def apply_clicks(stream: faust.StreamT) -> None:
        consumer = cast(BatchConsumer, app.consumer)
        overlap = settings.worker_overlap_batches

        unsettled: dict[int, Batch] = {}  # fed to the processor, not yet accepted by Redis

        def settle(done: list[tuple[object, Any]]) -> None:
            for token, outcome in done:
                b = cast(Batch, token)
                unsettled.pop(id(b), None)
                b.applied()
                b.release()
                logger.debug("batch of %d: applied %d, skipped %d, dead %d", len(b.records),
                             outcome.applied, outcome.skipped, len(outcome.dead))

        try:
            async for batch in consumer.batches(stream, settings.batch_max_events, idle_s=IDLE_CHECK_S,
                                                holding=lambda: processor.holding):
                if not batch.records:
                    # No batch fetched: apply the one held, then (when the topic is quiet) check
                    # Redis against what this process saw it accept and against Kafka's committed
                    # offsets, and read back from Kafka what it lost. In the agent's own task, so
                    # it never races a batch; flush() and heal() raise nothing.
                    try:
                        settle(await processor.flush())
                        if consumer.flow_active:
                            await processor.heal(consumer.committed(settings.clicks_topic))
                    finally:
                        batch.release()
                    continue
                # Overlapped: the batch is planned while Redis applies the one before it, and is
                # marked applied (and released) once Redis accepted it, by this call or a later one.
                unsettled[id(batch)] = batch
                try:
                    if overlap:
                        settle(await processor.feed(batch.records, batch, upcoming=consumer.upcoming()))
                    else:
                        settle([(batch, await processor.process(batch.records))])
                except asyncio.CancelledError:
                    raise
                except Exception:  # feed() and process() catch everything; the last line of defence
                    metrics.UNEXPECTED_ERRORS.inc()
                    logger.critical("batch processing raised; a later batch's commit will cover it",
                                    exc_info=True)
                    processor.drop_held()
                    for b in unsettled.values():
                        b.release()
                    unsettled.clear()
        finally:
            # Stopped with batches fed and not applied: they are not committed (the next owner of
            # their partitions reads them again), only released so a stop does not wait for them.
            processor.drop_held()
            for b in unsettled.values():
                b.release()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def last_check(sender: object, **kwargs: object) -> None:
        # After the last batch (wait_empty): make good what a Redis rollback lost before exiting;
        # bounded, so a Redis outage cannot hold the stop for ever (a restart checks again).
        if processor.seen and not processor.holding:  # holding: the agent is stopping mid-batch
            try:
                await asyncio.wait_for(processor.process([]), SHUTDOWN_CHECK_S)
            except TimeoutError:
                logger.warning("Redis check at shutdown did not finish in %.0fs", SHUTDOWN_CHECK_S)

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def on_rebalance(sender: object, **kwargs: object) -> None:
        metrics.REBALANCES.inc()

    if metrics_port:
        @app.task
        async def serve_metrics() -> None:
            start_http_server(metrics_port, addr=settings.worker_metrics_host)

    return processor
