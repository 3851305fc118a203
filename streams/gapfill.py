"""Records Redis lost, read back from Kafka: effectively once across a Redis rollback.

Redis acknowledges a batch before its AOF reaches the disk (``appendfsync everysec``), and the
worker commits Kafka offsets once Redis acknowledged. An OS crash can therefore take the last
second of batches *and* their stored offsets, while Kafka's committed offsets and the worker's
position are already past them: nobody would ever read those records again. The worker notices
the hole — a batch whose first record of a partition lies beyond the stored offset + 1 — and
reads the missing records from the topic with a consumer of its own (no group, no commits), so
the batch applies them first. The offsets Redis stores still decide what is skipped.

Not filled: a partition Redis has never stored an offset for (the consumer's start is where its
state starts), and a hole of more than ``max_records`` (logged: a rollback loses about a second,
not a backlog). A hole the log itself has (transaction markers, retention) reads back nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["KafkaGapFiller", "find_gaps", "read_log"]

logger = logging.getLogger(__name__)


def find_gaps(positions: Iterable[tuple[int, int]], stored: Mapping[int, int],
              max_records: int) -> dict[int, tuple[int, int]]:
    """Partition -> [start, end) of the offsets between Redis' stored offset and the batch.

    ``positions`` are the batch's (partition, offset) pairs.
    """
    first: dict[int, int] = {}
    for p, o in positions:
        if o < first.get(p, o + 1):
            first[p] = o
    out: dict[int, tuple[int, int]] = {}
    for p, o in first.items():
        done = stored.get(p, -1)
        if done < 0 or o <= done + 1:
            continue
        if o - done - 1 > max_records:
            logger.error("partition %d: Redis stops at offset %d but the batch starts at %d; a hole "
                         "that large is not read back", p, done, o)
            continue
        out[p] = (done + 1, o)
    return out


async def read_log(
    bootstrap: str,
    topic: str,
    ranges: Mapping[int, tuple[int | None, int]],
    *,
    timeout_s: float = 30.0,
    keys: Mapping[int, Collection[bytes]] | None = None,
) -> tuple[list[tuple[int, int, bytes | None]], dict[int, int]]:
    """(partition, offset, value) of the records in ``[start, end)`` of each partition, in order.

    A plain consumer of its own: no group, no commits. ``start`` None (or below the log start)
    means the log start. With ``keys``, only records whose message key is one of the partition's
    keys come back (compared as bytes, before any parsing). Also returns each partition's log
    start offset: above 0, retention has deleted the records before it.
    """
    if not ranges:
        return [], {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, request_timeout_ms=int(timeout_s * 1000))
    await consumer.start()
    out: list[tuple[int, int, bytes | None]] = []
    try:
        tps = {p: TopicPartition(topic, p) for p in ranges}
        consumer.assign(list(tps.values()))
        firsts = await consumer.beginning_offsets(list(tps.values()))
        # The log may hold less than asked (markers, retention): stop at the log end too.
        ends = await consumer.end_offsets(list(tps.values()))
        starts = {p: firsts[tps[p]] for p in ranges}
        want: dict[int, int] = {}
        for p, (start, end) in ranges.items():
            first = starts[p] if start is None else max(start, starts[p])
            consumer.seek(tps[p], first)
            want[p] = min(end, ends[tps[p]])
        wanted = {p: set(keys.get(p, ())) for p in ranges} if keys is not None else None
        while any([await consumer.position(tps[p]) < want[p] for p in want]):
            got = await consumer.getmany(timeout_ms=int(timeout_s * 1000))
            if not got:
                raise TimeoutError(f"no records from {topic} in {timeout_s}s while reading {dict(ranges)}")
            for tp, rows in got.items():
                p, stop = tp.partition, want[tp.partition]
                if wanted is None:
                    out.extend((p, r.offset, r.value) for r in rows if r.offset < stop)
                else:
                    ks = wanted[p]
                    out.extend((p, r.offset, r.value) for r in rows if r.offset < stop and r.key in ks)
    finally:
        await consumer.stop()
    return out, starts


class KafkaGapFiller:
    """Reads ``[start, end)`` of a partition of ``topic`` (the raw records, in offset order)."""

    def __init__(self, bootstrap: str, topic: str, *, max_records: int = 200_000,
                 timeout_s: float = 30.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.max_records = max_records
        self.timeout_s = timeout_s
        self.filled = 0  # records read back so far

    async def fetch(self, gaps: Mapping[int, tuple[int, int]]) -> list[tuple[int, int, bytes | None]]:
        """(partition, offset, value) of every record in the gaps."""
        if not gaps:
            return []
        out, _ = await read_log(self.bootstrap, self.topic, gaps, timeout_s=self.timeout_s)
        self.filled += len(out)
        logger.warning("Redis was behind Kafka (a Redis restart lost acknowledged writes?): read "
                       "back %d records of %s", len(out), {p: g for p, g in gaps.items()})
        return out
