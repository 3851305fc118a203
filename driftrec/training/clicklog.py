"""The click log as columns: every accepted event of the clicks topic (or a data file), validated once.

The trainer reads the clicks topic from its first retained offset to the end offsets it
captured when it started, with a plain consumer (no group, nothing committed), so a training
run never disturbs the worker and always sees a fixed, complete prefix of the log. Events are
validated by :mod:`driftrec.events` exactly as the worker validates them; a bad one is skipped
and counted by the field that failed. A ``forget_user`` tombstone drops every earlier event of
its user, as the worker deletes that user's keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from driftrec.errors import InvalidEventError, ModelError
from driftrec.events import TOMBSTONE_TYPE, EventFields, check_fields, fast_validate
from driftrec.settings import Settings

__all__ = ["ClickLog", "LogStats", "ClickLogBuilder", "read_topic", "read_file", "events_to_log"]

logger = logging.getLogger(__name__)

#: A fetch that returns nothing for this long while offsets are still missing is an error.
_STALL_S = 30.0


@dataclass
class LogStats:
    """What reading the log found."""

    source: str
    messages: int = 0
    accepted: int = 0
    tombstones: int = 0
    #: Accepted events later dropped by a ``forget_user`` of their user.
    forgotten: int = 0
    #: Skipped events by the field that failed validation (``message`` when none applies).
    bad: Counter[str] = field(default_factory=Counter)
    #: partition -> (first retained offset, end offset captured at start); empty for files.
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)
    read_seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return sum(self.bad.values())

    def summary(self) -> str:
        bad = ", ".join(f"{k}={v}" for k, v in self.bad.most_common()) or "none"
        return (f"{self.source}: {self.messages} messages, {self.accepted} accepted, "
                f"{self.skipped} skipped ({bad}), {self.tombstones} forget_user "
                f"({self.forgotten} events forgotten), read in {self.read_seconds:.1f}s")


@dataclass(frozen=True)
class ClickLog:
    """Accepted events in log order: ``(partition, offset)`` for a topic, line order for a file.

    ``users``/``items`` are codes into ``user_ids``/``item_ids`` (both sorted, so the codes do
    not depend on the order partitions were fetched in); ``weights`` is the event type's weight.
    """

    user_ids: list[str]
    item_ids: list[str]
    users: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float64]
    times: npt.NDArray[np.float64]
    stats: LogStats

    def __len__(self) -> int:
        return int(self.times.size)

    @property
    def last_event_time(self) -> float:
        if not len(self):
            raise ModelError("the click log holds no accepted events")
        return float(self.times.max())

    def select(self, mask: npt.NDArray[np.bool_]) -> ClickLog:
        """The events where ``mask`` is true (same id tables, same stats object)."""
        return ClickLog(self.user_ids, self.item_ids, self.users[mask], self.items[mask],
                        self.weights[mask], self.times[mask], self.stats)


class ClickLogBuilder:
    """Collects validated events into compact columns; :meth:`finish` gives the :class:`ClickLog`."""

    def __init__(self, event_weights: Mapping[str, float], source: str) -> None:
        self._weights = dict(event_weights)
        self._allowed = frozenset(self._weights)
        self.stats = LogStats(source=source)
        self._user_code: dict[str, int] = {}
        self._item_code: dict[str, int] = {}
        self._users = array("q")
        self._items = array("q")
        self._w = array("d")
        self._t = array("d")
        self._part = array("q")
        self._off = array("q")
        # user code -> (partition, offset) of that user's latest tombstone
        self._forget_pos: dict[int, tuple[int, int]] = {}

    def add_raw(self, raw: bytes | None, partition: int = 0, offset: int = 0) -> None:
        """One Kafka message value, validated like the worker does (:func:`fast_validate`)."""
        self.stats.messages += 1
        try:
            ev = fast_validate(raw, self._allowed)
        except InvalidEventError as exc:
            self.stats.bad[exc.field or "message"] += 1
            return
        self._add(ev, partition, offset)

    def add_dict(self, data: Any, partition: int = 0, offset: int = 0) -> None:
        """One decoded event (a data-set loader's dict)."""
        self.stats.messages += 1
        try:
            ev = check_fields(data, self._allowed)
        except InvalidEventError as exc:
            self.stats.bad[exc.field or "message"] += 1
            return
        self._add(ev, partition, offset)

    def _add(self, ev: EventFields, partition: int, offset: int) -> None:
        u = self._user_code.setdefault(ev.user_id, len(self._user_code))
        if ev.type == TOMBSTONE_TYPE:
            self.stats.tombstones += 1
            # A user's events share one partition (keyed by user_id), so "earlier" is offset
            # order within it; the cut is applied in finish(), after sorting by offset.
            prev = self._forget_pos.get(u)
            if prev is None or (partition, offset) > prev:
                self._forget_pos[u] = (partition, offset)
            return
        i = self._item_code.setdefault(ev.item_id, len(self._item_code))
        self._users.append(u)
        self._items.append(i)
        self._w.append(self._weights[ev.type])
        self._t.append(ev.timestamp)
        self._part.append(partition)
        self._off.append(offset)
        self.stats.accepted += 1

    def finish(self) -> ClickLog:
        """Sort by ``(partition, offset)``, apply tombstones and recode ids in sorted order."""
        part = np.frombuffer(self._part, dtype=np.int64)
        off = np.frombuffer(self._off, dtype=np.int64)
        order = np.lexsort((off, part))
        users = np.frombuffer(self._users, dtype=np.int64)[order]
        items = np.frombuffer(self._items, dtype=np.int64)[order]
        weights = np.frombuffer(self._w, dtype=np.float64)[order]
        times = np.frombuffer(self._t, dtype=np.float64)[order]
        if self._forget_pos:
            cut_p = np.full(len(self._user_code), -1, dtype=np.int64)
            cut_o = np.full(len(self._user_code), -1, dtype=np.int64)
            for u, (tp, to) in self._forget_pos.items():
                cut_p[u], cut_o[u] = tp, to
            p, o, cp, co = part[order], off[order], cut_p[users], cut_o[users]
            keep = ~((p < cp) | ((p == cp) & (o < co)))
            self.stats.forgotten = int((~keep).sum())
            users, items, weights, times = users[keep], items[keep], weights[keep], times[keep]
        user_ids, users = _recode(self._user_code, users)
        item_ids, items = _recode(self._item_code, items)
        return ClickLog(user_ids, item_ids, users, items, weights.copy(), times.copy(), self.stats)


def _recode(codes: dict[str, int], column: npt.NDArray[np.int64]) -> tuple[list[str], npt.NDArray[np.int64]]:
    """Ids still used by ``column``, sorted, and the column recoded to positions in that list."""
    by_code = np.empty(len(codes), dtype=object)
    for name, c in codes.items():
        by_code[c] = name
    used = np.unique(column)
    names = by_code[used]
    order = np.argsort(names.astype(str), kind="stable")
    new_code = np.empty(len(codes), dtype=np.int64)
    new_code[used[order]] = np.arange(used.size)
    return [str(x) for x in names[order]], new_code[column] if column.size else column


def read_file(path: str | Path, settings: Settings, *, progress: bool = False) -> ClickLog:
    """A data file (any layout :func:`driftrec.datasets.load_any` knows) as a click log."""
    from tqdm import tqdm

    from driftrec.datasets import load_any

    started = time.perf_counter()
    events = load_any(path)
    builder = ClickLogBuilder(settings.event_weights, source=f"file {path}")
    for line, ev in enumerate(tqdm(events, total=len(events), unit="ev", desc="reading",
                                   disable=not progress)):
        builder.add_dict(ev, 0, line)
    for reason, count in events.stats.dropped.items():  # rows the loader could not use
        builder.stats.bad[f"loader:{reason}"] += count
        builder.stats.messages += count
    log = builder.finish()
    log.stats.read_seconds = time.perf_counter() - started
    return log


def read_topic(settings: Settings, *, progress: bool = False, topic: str | None = None,
               timeout_s: float = 15.0) -> ClickLog:
    """Every retained event of the clicks topic up to the end offsets seen at start."""
    started = time.perf_counter()
    name = topic or settings.clicks_topic
    builder = ClickLogBuilder(settings.event_weights, source=f"topic {name}")
    asyncio.run(_read_topic(settings.bootstrap, name, builder, progress, timeout_s))
    log = builder.finish()
    log.stats.read_seconds = time.perf_counter() - started
    return log


async def _partitions(bootstrap: str, topic: str, timeout_s: float) -> list[int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        metas = await asyncio.wait_for(admin.describe_topics([topic]), timeout_s)
    except Exception as exc:
        raise ModelError(f"cannot describe topic {topic!r} at {bootstrap}: {exc!r}") from exc
    finally:
        await admin.close()
    found = [m for m in metas if m.get("topic") == topic and m.get("error_code", 0) == 0]
    if not found or not found[0].get("partitions"):
        raise ModelError(f"topic {topic!r} does not exist: nothing to train on")
    return sorted(int(p["partition"]) for p in found[0]["partitions"])


async def _read_topic(bootstrap: str, topic: str, builder: ClickLogBuilder, progress: bool,
                      timeout_s: float) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from tqdm import tqdm

    # No group: nothing is committed and the worker's group never sees this consumer.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", request_timeout_ms=int(timeout_s * 1000) + 5000,
                                fetch_max_bytes=32 << 20, max_partition_fetch_bytes=8 << 20)
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
    except Exception as exc:
        await consumer.stop()
        raise ModelError(f"cannot reach Kafka at {bootstrap}: {exc!r}") from exc
    try:
        parts = await _partitions(bootstrap, topic, timeout_s)
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        builder.stats.offsets = {tp.partition: (begin[tp], end[tp]) for tp in tps}
        if any(begin[tp] > 0 for tp in tps):
            logger.warning("retention has deleted the oldest events of %s (first offsets %s): "
                           "training sees only what is left", topic,
                           {tp.partition: begin[tp] for tp in tps if begin[tp] > 0})
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if end[tp] > begin[tp]}
        total = sum(end[tp] - begin[tp] for tp in tps)
        last_progress = time.monotonic()
        with tqdm(total=total, unit="ev", desc="reading log", disable=not progress) as bar:
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=20000)
                got = 0
                for tp, records in batch.items():
                    stop = end[tp]
                    for rec in records:
                        if rec.offset >= stop:  # arrived after we started: the next run's
                            break
                        builder.add_raw(rec.value, tp.partition, rec.offset)
                        got += 1
                bar.update(got)
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
                if got:
                    last_progress = time.monotonic()
                elif time.monotonic() - last_progress > _STALL_S:
                    raise ModelError(f"reading {topic} stalled with partitions {sorted(t.partition for t in remaining)} "
                                     "short of their end offsets")
    finally:
        await consumer.stop()


def events_to_log(events: Iterable[Mapping[str, Any]], settings: Settings, source: str = "events") -> ClickLog:
    """A click log from event dicts in order (tests, notebooks)."""
    builder = ClickLogBuilder(settings.event_weights, source=source)
    for n, ev in enumerate(events):
        builder.add_dict(dict(ev), 0, n)
    return builder.finish()

