"""A Faust consumer that hands an agent whole fetched batches, skipping the per-event stream path.

Faust's stream delivers one message at a time: the fetcher awaits ``wait_first`` (two tasks) per
message, the conductor builds an ``Event`` and queues it, the stream runs sensors and processors
on it, and ``take_events`` re-buffers events one by one and acks each. On a 2-core server that caps
an agent that only decodes at a few thousand events/s, while aiokafka's ``getmany`` returns
thousands of records per call. :class:`BatchConsumer` keeps everything else Faust does (the
consumer group, rebalances, flow control, the commit timer, ``wait_empty`` on stop and revoke)
but, for the topics registered with :meth:`BatchConsumer.batches`, passes each ``getmany`` result
to the agent as lists of :class:`~driftrec.streams.processor.RawRecord` (the gap users report in
robinhood/faust#563: Faust reads ~10x slower than a plain ``AIOKafkaConsumer``). The agent calls
:meth:`Batch.applied` once Redis accepted a batch; only then can its offsets be committed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from driftrec.streams.processor import RawRecord

__all__ = ["Batch", "BatchConsumer", "BatchTransport", "BatchApp", "split_fetch"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Batch:
    """Records of one fetch (at most ``max_events``), in offset order within each partition."""

    records: list[RawRecord]
    #: Highest offset per partition in this batch.
    last: dict[TP, int]
    #: Consumer generation the records were fetched in; stale after a rebalance.
    generation: int
    consumer: BatchConsumer = field(repr=False)
    done: bool = False

    def applied(self) -> None:
        """Mark the batch as accepted by Redis: its offsets may now be committed."""
        if not self.done:
            self.done = True
            self.consumer._batch_applied(self)

    def release(self) -> None:
        """The agent is finished with this batch, applied or not (unblocks ``wait_empty``)."""
        self.consumer._batch_released(self)


class _Handoff(asyncio.Queue[Batch]):
    """The fetch loop's queue of batches for the agent, which may look at the next one."""

    _queue: collections.deque[Batch]  # asyncio.Queue's storage, for subclasses (as LifoQueue uses it)

    def peek(self) -> Batch | None:
        return self._queue[0] if self._queue else None


class BatchConsumer(faust_aiokafka.Consumer):
    """aiokafka-driven Faust consumer with a batch hand-off for selected topics."""

    #: Batches fetched but not yet taken by the agent (bounded: back-pressure on the fetcher).
    handoff_size = 2
    #: While the batch topics are paused, how long one fetch of the other topics may wait (s):
    #: how late the batch topics resume once the agent has taken the waiting batches.
    held_poll_s = 0.05

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_topics: dict[str, int] = {}  # topic -> max events per batch
        self._handoff = _Handoff(self.handoff_size)
        # Batches fetched while the hand-off was full. While there are any, the fetch loop pauses
        # the batch topics' partitions and keeps serving the others (the items topic), so a
        # catalogue record never waits behind the click backlog; the agent's side moves them on.
        self._waiting: collections.deque[Batch] = collections.deque()
        self._held: set[TP] = set()  # batch-topic partitions this class paused
        self._moved = asyncio.Event()  # set when the agent's side took batches from _waiting
        self._applied: dict[TP, int] = {}  # next offset to commit, per partition
        self._n_applied = 0
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # --- the agent's side ------------------------------------------------------------------------
    async def batches(self, stream: faust.StreamT, max_events: int, idle_s: float | None = None,
                      holding: Callable[[], bool] | None = None) -> AsyncIterator[Batch]:
        """Batches of the stream's topic, for an agent with ``concurrency=1``.

        Iterating the topic's channel once registers it with Faust's conductor, which is what
        subscribes the consumer to it; its records then come here instead of to the stream.
        With ``idle_s``, an empty batch comes after each ``idle_s`` without records, so the
        agent can look after Redis while the topic is quiet. While ``holding()`` (the agent has
        a batch planned but not yet applied: :meth:`BatchProcessor.feed`), the next batch comes
        only if one is already fetched, else an empty batch at once: the agent never waits for
        records, a stop or a rebalance with a batch it has not applied.
        """
        channel = stream.channel
        self.batch_topics.update({t: max_events for t in channel.topics})  # type: ignore[attr-defined]
        aiter(channel)  # noqa: B018 -- subscribes (faust.Topic.__aiter__ adds it to app.topics)
        # One getter awaited across idle timeouts: cancelling a Queue.get on a timeout could
        # drop a batch that arrived at that moment.
        getter: asyncio.Future[Batch] | None = None
        try:
            while True:
                if (holding is not None and holding() and self._handoff.empty()
                        and (getter is None or not getter.done())):
                    batch = Batch([], {}, self.app.consumer_generation_id, self)  # apply the held one now
                else:
                    if getter is None:
                        getter = asyncio.ensure_future(self._handoff.get())
                    done, _ = await asyncio.wait({getter}, timeout=idle_s)
                    if done:
                        batch, getter = getter.result(), None
                        self._refill()
                        if batch.generation != self.app.consumer_generation_id or not self.flow_active:
                            continue  # fetched before a rebalance: the new assignment re-reads it
                    elif self.flow_active:
                        batch = Batch([], {}, self.app.consumer_generation_id, self)
                    else:
                        continue
                self._in_flight += 1
                self._idle.clear()
                # Faust's livelock check reads when a stream last took an event from each partition.
                now = time.monotonic()
                inbound = self.app.monitor.stream_inbound_time
                for tp in batch.last:
                    inbound[tp] = now
                yield batch
        finally:
            if getter is not None:
                getter.cancel()

    def upcoming(self) -> list[RawRecord] | None:
        """The records of the batch :meth:`batches` yields next, if one is fetched already and
        still current (for :meth:`~driftrec.streams.processor.BatchProcessor.feed` to parse ahead)."""
        batch = self._handoff.peek()
        if batch is None or batch.generation != self.app.consumer_generation_id:
            return None
        return batch.records

    def committed(self, topic: str) -> dict[int, int]:
        """Partition -> offset committed to Kafka (the next to read), for the assigned partitions
        of ``topic`` that have one. Commits follow applies, so every record below it was applied
        once: Redis storing less lost it. Fetched batches not yet applied are not below it."""
        return {tp.partition: offset for tp, offset in list(self._committed_offset.items())
                if tp.topic == topic and offset is not None}

    def _batch_applied(self, batch: Batch) -> None:
        for tp, offset in batch.last.items():
            committed = self._committed_offset[tp]
            if committed is None or offset + 1 > committed:
                self._applied[tp] = max(self._applied.get(tp, 0), offset + 1)
        self._n_applied += len(batch.records)

    def _batch_released(self, batch: Batch) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()

    # --- committing ------------------------------------------------------------------------------
    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        seen = set()
        for tp in [*self._applied, *super()._filter_tps_with_pending_acks(topics)]:
            if tp not in seen and (topics is None or tp in topics or tp.topic in topics):
                seen.add(tp)
                yield tp

    def _new_offset(self, tp: TP) -> int | None:
        if tp.topic in self.batch_topics:
            return self._applied.pop(tp, None)
        return super()._new_offset(tp)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)
        for tp in revoked:
            self._applied.pop(tp, None)
        self._held -= revoked

    async def wait_empty(self) -> None:
        """Wait for the batch the agent is applying (a Redis outage holds a stop here), then commit."""
        while self._in_flight and not self.should_stop:
            logger.info("waiting for the batch in flight before committing")
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=5)
            except TimeoutError:
                continue
        await super().wait_empty()

    def stop_flow(self) -> None:
        super().stop_flow()
        while not self._handoff.empty():  # not started: the next owner of the partition reads them
            self._handoff.get_nowait()
        self._waiting.clear()
        self._release_held()

    # --- the hand-off's overflow -----------------------------------------------------------------
    def _refill(self) -> None:
        """Move waiting batches into the hand-off while it has room; once none wait, fetch the
        batch topics again."""
        moved = False
        while self._waiting and not self._handoff.full():
            self._handoff.put_nowait(self._waiting.popleft())
            moved = True
        if not self._waiting:
            self._release_held()
        if moved:
            self._moved.set()

    def _hold(self) -> bool:
        """Pause the assigned batch-topic partitions; True if others are left to fetch."""
        held = {tp for tp in self._get_active_partitions() if tp.topic in self.batch_topics}
        if held:
            self.pause_partitions(held)
            self._held |= held
        return bool(self._get_active_partitions())

    def _release_held(self) -> None:
        if self._held:
            held, self._held = self._held, set()
            self._paused_partitions.difference_update(held)
            assigned = self.assignment()
            self._get_active_partitions().update(tp for tp in held if tp in assigned)

    # --- the fetcher's side ----------------------------------------------------------------------
    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        """Faust's fetch loop, with whole batches for batch topics and per-message delivery else."""
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        callback = self.callback
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self._refill()
                if self._waiting:
                    # The agent has a full hand-off: fetch only the other topics, briefly, and
                    # look again; with nothing else to fetch, wait until the agent takes a batch.
                    if not self._hold():
                        self._moved.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._moved.wait(), timeout=1.0)
                        continue
                    timeout = self.held_poll_s
                else:
                    timeout = 1.0
                records, active = await self._wait_next_records(timeout)
                if not records or self.should_stop or not self.flow_active:
                    await asyncio.sleep(0)
                    continue
                generation = self.app.consumer_generation_id
                pending: list[tuple[TP, list[Any]]] = []
                for tp, rows in records.items():
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    r_offset = read_offset[tp]
                    if r_offset is not None:  # Faust drops what it read already (after a seek)
                        rows = [r for r in rows if r.offset >= r_offset]
                    if not rows:
                        continue
                    read_offset[tp] = rows[-1].offset
                    if tp.topic in self.batch_topics:
                        pending.append((tp, rows))
                    else:
                        for row in rows:
                            await self.wait_first(callback(self._to_message(tp, row)),
                                                  self.suspend_flow.wait())
                self._waiting.extend(self._split(pending, generation))
                self._refill()
                if self._commit_every is not None and self._n_applied >= self._commit_every:
                    self._n_applied = 0
                    await self.commit()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                logger.info("broker stopped the consumer; shutting down")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    def _split(self, pending: list[tuple[TP, list[Any]]], generation: int) -> Iterator[Batch]:
        if pending:
            limit = min(self.batch_topics[tp.topic] for tp, _ in pending)
            for records, last in split_fetch(pending, limit):
                yield Batch(records, last, generation, self)


def split_fetch(pending: list[tuple[TP, list[Any]]], limit: int) -> Iterator[tuple[list[RawRecord], dict[TP, int]]]:
    """Cut one fetch (partition -> records in offset order) into batches of at most ``limit``.

    Each batch takes a fair share of every partition that still has records, so one partition's
    backlog does not delay the others; within a partition the order is kept. Yields the records
    and the highest offset per partition.
    """
    cursors = [0] * len(pending)
    while True:
        records: list[RawRecord] = []
        last: dict[TP, int] = {}
        while len(records) < limit:
            live = [i for i, (_, rows) in enumerate(pending) if cursors[i] < len(rows)]
            if not live:
                break
            share = max(1, (limit - len(records)) // len(live))
            for i in live:
                room = limit - len(records)
                if not room:
                    break
                tp, rows = pending[i]
                chunk = rows[cursors[i]: cursors[i] + min(share, room)]
                cursors[i] += len(chunk)
                records.extend(RawRecord(tp.topic, tp.partition, r.offset, r.value) for r in chunk)
                last[tp] = chunk[-1].offset
        if not records:
            return
        yield records, last


class _BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with the app's fetch batching (:class:`BatchApp`)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust passes no fetch_min_bytes, so aiokafka's broker answers a fetch as soon as one
        # record is there: while clicks trickle in, the broker and the worker turn around a
        # fetch per few records. Waiting up to fetch_max_wait_ms for fetch_min_bytes gathers
        # them into fewer, larger fetches (set before start(): aiokafka's fetcher reads these
        # when the consumer starts; aiokafka is pinned to 0.14.*).
        app = self.app
        consumer._fetch_min_bytes = getattr(app, "fetch_min_bytes", consumer._fetch_min_bytes)
        consumer._fetch_max_wait_ms = getattr(app, "fetch_max_wait_ms", consumer._fetch_max_wait_ms)
        return consumer


class BatchTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`BatchConsumer`."""

    Consumer = BatchConsumer


class BatchApp(faust.App):
    """A Faust app whose consumer is a :class:`BatchConsumer`; ``fetch_min_bytes`` and
    ``fetch_max_wait_ms``, when set, configure its Kafka fetches."""

    fetch_min_bytes: int
    fetch_max_wait_ms: int

    def _new_transport(self) -> BatchTransport:
        return BatchTransport(self.conf.broker_consumer, self)
