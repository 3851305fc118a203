"""Consumer-group lag collected from the broker (never from the worker, which may be dead)."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from driftrec.errors import DriftrecError
from driftrec.oncall.lagmath import PartitionLag, partition_lag, time_lag_s

__all__ = ["GroupInfo", "LagSnapshot", "LagCollector", "LagError", "parse_assignment", "render_table"]

logger = logging.getLogger(__name__)


class LagError(DriftrecError):
    """The broker could not be asked for offsets (down, or the request timed out)."""

    http_status = 503


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """What the group coordinator says about one consumer group."""

    group: str
    #: Stable, PreparingRebalance, CompletingRebalance, Empty or Dead.
    state: str
    members: int
    #: Topic -> partitions assigned to the group's members (empty when nobody is assigned).
    assigned: dict[str, frozenset[int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LagSnapshot:
    """One look at the broker: group states, per-partition lag and every watched log's bounds."""

    taken_at: float
    groups: dict[str, GroupInfo]
    partitions: list[PartitionLag]
    #: (topic, partition) -> (log-start offset, log-end offset), for lagged and extra topics.
    logs: dict[tuple[str, int], tuple[int, int]]


def parse_assignment(blob: bytes) -> dict[str, frozenset[int]]:
    """Decode a ``consumer`` protocol member assignment (the bytes DescribeGroups returns).

    Layout: int16 version, int32 topic count, then per topic an int16-length name and an int32
    count of int32 partitions; user data follows and is ignored. Malformed bytes give ``{}``
    rather than an error: a foreign client's assignment must not break the collector.
    """
    out: dict[str, frozenset[int]] = {}
    try:
        pos = 2
        (n_topics,) = struct.unpack_from(">i", blob, pos)
        pos += 4
        for _ in range(max(n_topics, 0)):
            (name_len,) = struct.unpack_from(">h", blob, pos)
            pos += 2
            name = blob[pos:pos + name_len].decode()
            pos += name_len
            (n_parts,) = struct.unpack_from(">i", blob, pos)
            pos += 4
            parts = struct.unpack_from(f">{n_parts}i", blob, pos)
            pos += 4 * n_parts
            out[name] = frozenset(parts)
    except (struct.error, UnicodeDecodeError, ValueError):
        return {}
    return out


class LagCollector:
    """Asks the broker for group offsets, log-end offsets and the timestamps behind time lag.

    Parameters
    ----------
    bootstrap : str
        Kafka bootstrap servers.
    groups : sequence of str or None
        Consumer groups to watch; ``None`` watches every group the broker lists.
    topics : sequence of str
        Topics every watched group is expected to read, so their partitions show up (as full
        lag) even before the group's first commit.
    extra_topics : sequence of str
        Topics whose log bounds are wanted without a group (the dead-letter topic).
    """

    def __init__(self, bootstrap: str, *, groups: Sequence[str] | None = None,
                 topics: Sequence[str] = (), extra_topics: Sequence[str] = (),
                 timeout_s: float = 5.0) -> None:
        self.bootstrap = bootstrap
        self.groups = list(groups) if groups is not None else None
        self.topics = list(topics)
        self.extra_topics = list(extra_topics)
        self.timeout_s = timeout_s
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        # (topic, partition) -> (offset, timestamp): the message at a committed offset never
        # changes, so its timestamp is read once per committed position, not once per scrape.
        self._ts_cache: dict[TopicPartition, tuple[int, float]] = {}

    async def __aenter__(self) -> LagCollector:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        ms = int(self.timeout_s * 1000)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=ms)
        # No group: this consumer only reads offsets and single messages; it never commits.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            request_timeout_ms=max(ms, 6000), max_partition_fetch_bytes=64 * 1024,
            fetch_max_bytes=1024 * 1024, fetch_max_wait_ms=100,
        )
        try:
            await asyncio.wait_for(self._admin.start(), self.timeout_s)
            await asyncio.wait_for(self._consumer.start(), self.timeout_s)
        except Exception as exc:
            await self.close()
            raise LagError(f"cannot reach Kafka at {self.bootstrap}: {exc!r}") from exc

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    # --- one collection -------------------------------------------------------------------
    async def collect(self) -> LagSnapshot:
        """One consistent-enough look: offsets first, then log ends, so lag is never negative."""
        if self._admin is None or self._consumer is None:
            raise LagError("collector not started")
        try:
            return await asyncio.wait_for(self._collect(), self.timeout_s * 3)
        except LagError:
            raise
        except Exception as exc:  # aiokafka raises many types; the caller only needs "down"
            raise LagError(f"lag collection failed: {exc!r}") from exc

    async def _collect(self) -> LagSnapshot:
        assert self._admin is not None and self._consumer is not None
        groups = self.groups
        if groups is None:
            groups = sorted({g[0] for g in await self._admin.list_consumer_groups()})
        infos = await self._describe(groups)
        committed_by_group = dict(zip(groups, await asyncio.gather(
            *(self._admin.list_consumer_group_offsets(g) for g in groups)), strict=True))

        wanted: dict[str, set[str]] = {g: set(self.topics) for g in groups}
        for g in groups:
            wanted[g].update(tp.topic for tp in committed_by_group[g])
            wanted[g].update(infos[g].assigned)
        all_topics = sorted(set().union(*wanted.values(), self.extra_topics)) if groups else sorted(
            self.extra_topics)
        partitions = await self._partitions(all_topics)
        tps = [TopicPartition(t, p) for t in all_topics for p in partitions.get(t, ())]
        ends = await self._consumer.end_offsets(tps) if tps else {}
        starts = await self._consumer.beginning_offsets(tps) if tps else {}
        now = time.time()

        rows: list[tuple[str, TopicPartition, int | None, int]] = []
        for g in groups:
            offsets = committed_by_group[g]
            for topic in sorted(wanted[g]):
                for p in partitions.get(topic, ()):
                    tp = TopicPartition(topic, p)
                    meta = offsets.get(tp)
                    committed = meta.offset if meta is not None and meta.offset >= 0 else None
                    rows.append((g, tp, committed, partition_lag(ends[tp], committed, starts[tp])))
        positions = {tp: max(c if c is not None else 0, starts[tp])
                     for _, tp, c, lag in rows if lag > 0}
        stamps = await self._timestamps(positions)
        out = [
            PartitionLag(g, tp.topic, tp.partition, ends[tp], starts[tp], committed, lag,
                         time_lag_s(now, stamps.get(tp), lag))
            for g, tp, committed, lag in rows
        ]
        logs = {(tp.topic, tp.partition): (starts[tp], ends[tp]) for tp in tps}
        return LagSnapshot(now, infos, out, logs)

    async def _describe(self, groups: Iterable[str]) -> dict[str, GroupInfo]:
        assert self._admin is not None
        groups = list(groups)
        infos = {g: GroupInfo(g, "Dead", 0) for g in groups}
        if not groups:
            return infos
        # One group per request: aiokafka 0.14 decodes a DescribeGroups v3 answer with the v2
        # schema (no authorized_operations), which only holds while the answer has one group.
        responses = await asyncio.gather(*(self._admin.describe_consumer_groups([g]) for g in groups))
        for response in (r for rs in responses for r in rs):
            for desc in response.to_object()["groups"]:
                if desc["error_code"]:
                    continue
                assigned: dict[str, set[int]] = {}
                if desc["protocol_type"] == "consumer":
                    for member in desc["members"]:
                        for topic, parts in parse_assignment(member["member_assignment"]).items():
                            assigned.setdefault(topic, set()).update(parts)
                infos[desc["group"]] = GroupInfo(
                    desc["group"], desc["state"], len(desc["members"]),
                    {t: frozenset(p) for t, p in assigned.items()})
        return infos

    async def _partitions(self, topics: Sequence[str]) -> dict[str, list[int]]:
        assert self._admin is not None
        if not topics:
            return {}
        out: dict[str, list[int]] = {}
        for meta in await self._admin.describe_topics(list(topics)):
            if meta.get("error_code", 0) == 0:
                out[meta["topic"]] = sorted(p["partition"] for p in meta.get("partitions", []))
        return out

    async def _timestamps(self, positions: dict[TopicPartition, int]) -> dict[TopicPartition, float]:
        """Kafka timestamp (s) of the first message at or after each position."""
        found: dict[TopicPartition, float] = {}
        for tp, pos in positions.items():
            hit = self._ts_cache.get(tp)
            if hit is not None and hit[0] == pos:
                found[tp] = hit[1]
        pending = {tp: pos for tp, pos in positions.items() if tp not in found}
        if not pending:
            return found
        consumer = self._consumer
        assert consumer is not None
        consumer.assign(list(pending))
        for tp, pos in pending.items():
            consumer.seek(tp, pos)
        deadline = time.monotonic() + self.timeout_s
        try:
            while pending and time.monotonic() < deadline:
                batch = await consumer.getmany(*pending, timeout_ms=200, max_records=len(pending) * 50)
                for tp, records in batch.items():
                    if tp in pending and records:
                        first = records[0]
                        found[tp] = first.timestamp / 1000.0
                        self._ts_cache[tp] = (pending.pop(tp), found[tp])
                        consumer.pause(tp)
        finally:
            consumer.unsubscribe()
        if pending:
            logger.warning("no message found at the committed offset of %d partition(s)", len(pending))
        return found


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def render_table(snapshot: LagSnapshot) -> Any:
    """A ``rich`` table of the snapshot, one row per group, topic and partition."""
    from rich.table import Table

    table = Table(title=f"consumer lag at {time.strftime('%H:%M:%S', time.localtime(snapshot.taken_at))}")
    for name, justify in (("group", "left"), ("topic", "left"), ("partition", "right"),
                          ("committed", "right"), ("end", "right"), ("lag", "right"),
                          ("time lag", "right"), ("state", "left"), ("members", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in sorted(snapshot.partitions, key=lambda r: (r.group, r.topic, r.partition)):
        info = snapshot.groups.get(row.group)
        style = "red" if (row.lag_seconds or 0) > 60 else ("yellow" if row.lag else None)
        table.add_row(row.group, row.topic, str(row.partition),
                      "-" if row.committed is None else str(row.committed), str(row.end_offset),
                      str(row.lag), _fmt_age(row.lag_seconds), info.state if info else "?",
                      str(info.members) if info else "?", style=style)
    return table
