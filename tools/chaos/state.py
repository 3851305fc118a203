"""The final Redis state of a run against the in-process oracle fed the same records.

The oracle is :class:`driftrec.models.online.InMemoryState` fed every record the clicks topic holds, in
(partition, offset) order, in chunks; it applies exactly what the worker writes. Quantities no
bound ever cut are batch-independent and must match (floats to ``rel_tol``): popularity,
trending lists below ``trending_k``, category tastes, histories (newest ``history_len`` items by
latest time, a set that does not depend on batching), item categories, offsets, the applied
counter, user weights and neighbour lists that never reached their cap. A bounded list that
reached its cap (``P:{u}:w`` at ``history_len``, ``P:{i}:nbr`` at ``neighbours_kept``) can depend on
where batches were cut: a member pruned after one batch loses its mass, the same member kept
within a bigger batch keeps it. Those are compared by overlap of members.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition

from driftrec.errors import InvalidEventError
from driftrec.events import fast_validate
from driftrec.keys import Keys
from driftrec.models.online import EventView, InMemoryState
from driftrec.settings import Settings
from driftrec.userstate import decode_fields, unpack_vector

__all__ = ["TopicRecord", "read_topic", "views_of", "build_oracle", "RedisSnapshot", "read_redis",
           "compare", "Comparison", "snapshot_of", "last_offsets", "duplicate_ids"]

logger = logging.getLogger(__name__)

_CATS_KEPT = 32


@dataclass(frozen=True, slots=True)
class TopicRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


async def _read(bootstrap: str, topic: str, partitions: int, timeout_s: float) -> list[TopicRecord]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[TopicRecord] = []
        deadline = time.monotonic() + timeout_s
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} back in {timeout_s}s")
            for rows in (await consumer.getmany(timeout_ms=500, max_records=50_000)).values():
                out.extend(TopicRecord(r.partition, r.offset, r.key, r.value, tuple(r.headers)) for r in rows)
        return out
    finally:
        await consumer.stop()


def read_topic(settings: Settings, topic: str, partitions: int | None = None,
               timeout_s: float = 120.0) -> list[TopicRecord]:
    """Every record of ``topic`` (``partitions``, default the clicks topic's) up to its end now."""
    n = partitions if partitions is not None else settings.topic_partitions
    return asyncio.run(_read(settings.bootstrap, topic, n, timeout_s))


def views_of(records: Iterable[TopicRecord], event_types: frozenset[str]) -> tuple[list[EventView], list[str]]:
    """Valid events as views in (partition, offset) order, and their event ids (same order)."""
    views: list[EventView] = []
    ids: list[str] = []
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        try:
            e = fast_validate(rec.value, event_types)
        except InvalidEventError:
            continue
        views.append(EventView(e.user_id, e.item_id, e.type, e.timestamp, e.category, rec.offset, rec.partition))
        ids.append(e.event_id)
    return views, ids


def build_oracle(settings: Settings, views: list[EventView], landmark: float, chunk: int = 1000) -> InMemoryState:
    """The oracle after ``views`` (already in order), with the worker's bounds."""
    oracle = InMemoryState.from_settings(settings, user_items_k=settings.history_len,
                                         user_cats_k=_CATS_KEPT, landmark=landmark)
    for i in range(0, len(views), chunk):
        oracle.process(views[i: i + chunk])
    return oracle


@dataclass
class RedisSnapshot:
    """Every driftrec key under one prefix, parsed."""

    pop: dict[str, float] = field(default_factory=dict)
    trend: dict[str, dict[str, float]] = field(default_factory=dict)
    item_cat: dict[str, str] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    hist: dict[str, dict[str, float]] = field(default_factory=dict)
    user_items: dict[str, dict[str, float]] = field(default_factory=dict)
    user_cats: dict[str, dict[str, float]] = field(default_factory=dict)
    cooc: dict[str, dict[str, float]] = field(default_factory=dict)
    user_vec: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    item_vec: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    #: The session index: item -> user -> time of the user's latest click of it.
    sessions: dict[str, dict[str, float]] = field(default_factory=dict)
    #: user -> the bytes of their click log (``P:{u:U}:clk``).
    click_logs: dict[str, bytes] = field(default_factory=dict)
    other_keys: list[str] = field(default_factory=list)

    @property
    def applied(self) -> int:
        return int(self.meta.get("applied_events", 0))


def _zrows(raw: list[Any]) -> dict[str, float]:
    return {m.decode(): float(s) for m, s in raw}


def read_redis(client: redis.Redis, keys: Keys) -> RedisSnapshot:
    """Scan every key under the prefix and read it (pipelined, a thousand at a time)."""
    snap = RedisSnapshot()
    names = [k.decode() for k in client.scan_iter(match=keys.pattern(), count=2000)]
    prefix = keys.prefix + ":"
    for i in range(0, len(names), 1000):
        chunk = names[i: i + 1000]
        pipe = client.pipeline(transaction=False)
        for name in chunk:
            pipe.type(name)
        kinds = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for name, kind in zip(chunk, kinds, strict=True):
            if kind == b"zset":
                pipe.zrange(name, 0, -1, withscores=True)
            elif kind == b"hash":
                pipe.hgetall(name)
            elif kind == b"string" and name.endswith((":vec", ":clk")):
                pipe.get(name)
            else:
                pipe.type(name)
        for name, value in zip(chunk, pipe.execute(), strict=True):
            _file(snap, name[len(prefix):], value, keys)
    return snap


def _file(snap: RedisSnapshot, rest: str, value: Any, keys: Keys) -> None:
    # rest: "{u:U}:iw", "{i:I}:nbr", "{g}:pop", "{g}:trend:C", ...
    tag, _, suffix = rest[1:].partition("}:")
    if tag.startswith("u:"):
        user = tag[2:]
        if suffix == "iw":  # item -> (time, weight): driftrec/userstate.py
            times, weights = decode_fields(value)
            if times:
                snap.hist[user] = times
            if weights:
                snap.user_items[user] = weights
        elif suffix == "cats":
            snap.user_cats[user] = _zrows(value)
        elif suffix == "vec":
            vec, model = unpack_vector(value)
            snap.user_vec[user] = (vec or b"", model or "")
        elif suffix == "clk":
            snap.click_logs[user] = value
        return
    if tag.startswith("i:"):
        item = tag[2:]
        if suffix == "nbr":
            snap.cooc[item] = _zrows(value)
        elif suffix == "us":
            snap.sessions[item] = _zrows(value)
        elif suffix == "vec":
            vec, model = unpack_vector(value)
            snap.item_vec[item] = (vec or b"", model or "")
        return
    if tag == "g":
        if suffix == "pop":
            snap.pop = _zrows(value)
        elif suffix.startswith("trend:"):
            snap.trend[suffix[len("trend:"):]] = _zrows(value)
        elif suffix == "icat":
            snap.item_cat = {k.decode(): v.decode() for k, v in value.items()}
        elif suffix == "offsets":
            snap.offsets = {int(k.decode().rsplit(":", 1)[1]): int(v) for k, v in value.items()}
        elif suffix == "meta":
            snap.meta = {k.decode(): v.decode() for k, v in value.items()}
        else:
            snap.other_keys.append(rest)
        return
    snap.other_keys.append(rest)


@dataclass
class Comparison:
    """Outcome of :func:`compare`; ``equal`` covers every batch-independent quantity."""

    equal: bool
    mismatches: dict[str, int]
    examples: list[str]
    pruned: dict[str, Any]
    counts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"equal": self.equal, "mismatches": self.mismatches, "examples": self.examples[:10],
                "pruned_lists": self.pruned, "counts": self.counts}


def _same(a: Mapping[str, float], b: Mapping[str, float], rel: float) -> bool:
    if a.keys() != b.keys():
        return False
    return all(math.isclose(v, b[k], rel_tol=rel, abs_tol=1e-300) for k, v in a.items())


def _overlap(rows_a: dict[str, dict[str, float]], rows_b: dict[str, dict[str, float]], keys: Iterable[str],
             cap: int) -> dict[str, Any]:
    """Members shared by capped lists (top ``cap`` of each), and how close their scores are."""
    shares: list[float] = []
    rel_diffs: list[float] = []
    for k in keys:
        a, b = rows_a.get(k, {}), rows_b.get(k, {})
        top_a = set(sorted(a, key=a.__getitem__, reverse=True)[:cap])
        top_b = set(sorted(b, key=b.__getitem__, reverse=True)[:cap])
        shares.append(len(top_a & top_b) / max(len(top_a | top_b), 1))
        for m in top_a & top_b:
            rel_diffs.append(abs(a[m] - b[m]) / max(abs(b[m]), 1e-300))
    shares.sort()
    rel_diffs.sort()
    return {"lists": len(shares), "mean_jaccard": round(sum(shares) / len(shares), 4) if shares else None,
            "min_jaccard": round(shares[0], 4) if shares else None,
            "median_score_rel_diff_of_shared": rel_diffs[len(rel_diffs) // 2] if rel_diffs else None,
            "share_of_shared_scores_equal": round(sum(d < 1e-9 for d in rel_diffs) / len(rel_diffs), 4)
            if rel_diffs else None}


def snapshot_of(oracle: InMemoryState) -> RedisSnapshot:
    """What Redis would hold if the oracle were the store (same shapes as :func:`read_redis`)."""
    return RedisSnapshot(pop=dict(oracle.pop), trend={k: dict(v) for k, v in oracle.trend.items()},
                         item_cat=dict(oracle.item_cat), offsets=dict(oracle.offsets),
                         meta={"applied_events": str(oracle.applied)},
                         hist={k: dict(v) for k, v in oracle.hist.items()},
                         user_items={k: dict(v) for k, v in oracle.user_items.items()},
                         user_cats={k: dict(v) for k, v in oracle.user_cats.items()},
                         cooc={k: dict(v) for k, v in oracle.cooc.items()},
                         sessions={k: dict(v) for k, v in oracle.sessions.items()},
                         click_logs=dict(oracle.click_logs))


def compare(snap: RedisSnapshot, oracle: InMemoryState | RedisSnapshot, settings: Settings, *,
            rel_tol: float = 1e-9, last_offsets: Mapping[int, int] | None = None,
            session_index: bool = False) -> Comparison:
    """Compare a Redis snapshot with the oracle, or with another run's snapshot (see the module
    docstring for what is exact).

    ``last_offsets`` (partition -> offset of the topic's last record) is what the stored offsets
    must equal when the topic also holds dead letters, whose offsets the oracle never sees.
    ``session_index``: also compare the session index (event times, exact; cut by
    ``(time, user)``, so exact at the cap too) and the shoppers' click logs (bytes, exact), for
    stores whose worker keeps them.
    """
    ref = oracle if isinstance(oracle, RedisSnapshot) else snapshot_of(oracle)
    mism: Counter[str] = Counter()
    ex: list[str] = []

    def bad(what: str, key: str) -> None:
        mism[what] += 1
        if len(ex) < 50:
            ex.append(f"{what}:{key}")

    if snap.applied != ref.applied:
        bad("applied_events", f"{snap.applied}!={ref.applied}")
    want_offsets = dict(last_offsets) if last_offsets is not None else ref.offsets
    if snap.offsets != want_offsets:
        bad("offsets", f"{snap.offsets}!={want_offsets}")
    for item in snap.pop.keys() | ref.pop.keys():
        if item not in snap.pop or item not in ref.pop or not math.isclose(
                snap.pop[item], ref.pop[item], rel_tol=rel_tol):
            bad("pop", item)
    if snap.item_cat != ref.item_cat:
        bad("item_cat", "table")
    pruned_trend = []
    for cat in snap.trend.keys() | ref.trend.keys():
        a, b = snap.trend.get(cat, {}), ref.trend.get(cat, {})
        if len(a) >= settings.trending_k or len(b) >= settings.trending_k:
            pruned_trend.append(cat)
        elif not _same(a, b, rel_tol):
            bad("trend", cat)
    for user in snap.hist.keys() | ref.hist.keys():
        if snap.hist.get(user) != ref.hist.get(user):  # event times: exact
            bad("hist", user)
    for user in snap.user_cats.keys() | ref.user_cats.keys():
        if not _same(snap.user_cats.get(user, {}), ref.user_cats.get(user, {}), rel_tol):
            bad("user_cats", user)
    capped_users, capped_items = [], []
    for user in snap.user_items.keys() | ref.user_items.keys():
        a, b = snap.user_items.get(user, {}), ref.user_items.get(user, {})
        if len(a) >= settings.history_len or len(b) >= settings.history_len:
            capped_users.append(user)
        elif not _same(a, b, rel_tol):
            bad("user_weights", user)
    for item in snap.cooc.keys() | ref.cooc.keys():
        a, b = snap.cooc.get(item, {}), ref.cooc.get(item, {})
        if len(a) >= settings.neighbours_cut or len(b) >= settings.neighbours_cut:
            capped_items.append(item)
        elif not _same(a, b, rel_tol):
            bad("neighbours", item)
    if session_index:
        for item in snap.sessions.keys() | ref.sessions.keys():
            if snap.sessions.get(item) != ref.sessions.get(item):
                bad("session_index", item)
        for user in snap.click_logs.keys() | ref.click_logs.keys():
            if snap.click_logs.get(user) != ref.click_logs.get(user):
                bad("click_logs", user)
    pruned = {
        "user_weights_at_cap": _overlap(snap.user_items, ref.user_items, capped_users, settings.history_len),
        "neighbours_at_cap": _overlap(snap.cooc, ref.cooc, capped_items, settings.neighbours_k),
        "trending_at_cap": _overlap(snap.trend, ref.trend, pruned_trend, settings.trending_k),
    }
    counts = {"users": len(ref.hist), "items": len(ref.pop), "categories": len(ref.trend),
              "users_weights_exact": len(ref.user_items) - len(capped_users),
              "users_weights_at_cap": len(capped_users),
              "neighbour_lists_exact": len(ref.cooc) - len(capped_items),
              "neighbour_lists_at_cap": len(capped_items)}
    return Comparison(not mism, dict(mism), ex, pruned, counts)


def last_offsets(records: Iterable[TopicRecord]) -> dict[int, int]:
    """Partition -> offset of its last record."""
    out: dict[int, int] = {}
    for r in records:
        out[r.partition] = max(out.get(r.partition, -1), r.offset)
    return out


def duplicate_ids(ids: Iterable[str]) -> int:
    """How many event ids occur more than once (extra copies counted)."""
    c = Counter(ids)
    return sum(n - 1 for n in c.values() if n > 1)


def decode_json(raw: bytes | None) -> Any:
    try:
        return orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        return None
