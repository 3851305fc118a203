"""Reads what a micro-batch needs from Redis and applies its aggregated delta in one atomic script.

Two round trips per batch, whatever its size: ``lua/load_batch.lua`` reads the applied offsets,
the decay landmark, the live model version, the item HASH (history and fold-in weights) of every
user in the batch and the vectors the batch needs; the apply writes every increment and vector
together with the new offsets, effectively once: in chunks of bounded Redis cost behind a
write-ahead copy (:mod:`driftrec.streams.chunked`, one pipeline), or with ``chunk_cost`` 0 in one script,
``lua/apply_batch.lua``, which refuses a batch whose expected offsets are no longer the stored
ones. A user's item HASH has one writer (its partition), so the worker merges the batch into what
it loaded and writes back only the changed entries (:func:`user_item_ops`). The payloads are
msgpack: doubles travel bit for bit and vectors as raw float32 bytes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from itertools import chain
from typing import Any

import msgpack
import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from driftrec.errors import StoreFormatError
from driftrec.keys import Keys
from driftrec.models.decay import SCORE_SCALE
from driftrec.models.online import BatchDelta, merge_user_items
from driftrec.streams import chunked, metrics
from driftrec.streams.session_index import click_log_ops, session_index_ops
from driftrec.streams.vectors import VectorPlan
from driftrec.userstate import (
    ENTRY_BYTES,
    pack_entry,
    pack_vector,
    split_state,
    unpack_vector,
)

__all__ = [
    "lua_source", "check_score_format",
    "loaded_context", "Carry", "PreparedApply",
    "RedisState", "BatchContext", "APPLIED", "STALE_OFFSETS", "LANDMARK_MOVED",
    "USER_WEIGHTS", "USER_VECTORS", "NO_USER_EXTRA", "user_item_ops",
]

logger = logging.getLogger(__name__)

APPLIED, STALE_OFFSETS, LANDMARK_MOVED = 1, 0, -1
#: What the load reads per user beside the item HASH (which holds the fold-in weights too):
#: ISGD vectors, or nothing (``USER_WEIGHTS`` reads nothing more).
USER_WEIGHTS, USER_VECTORS, NO_USER_EXTRA = "w", "v", ""
_LUA = resources.files("driftrec.streams").joinpath("lua")


def lua_source(name: str) -> str:
    """A script of streams/lua with each ``-- #include <file>`` line replaced by that file."""
    lines = _LUA.joinpath(name).read_text().splitlines(keepends=True)
    return "".join(lua_source(line.split()[-1]) if line.startswith("-- #include ") else line for line in lines)


_APPLY_LUA = lua_source("apply_batch.lua")
_LOAD_LUA = lua_source("load_batch.lua")
_BEGIN_LUA = lua_source(chunked.BEGIN)
_CHUNK_LUA = lua_source(chunked.APPLY_CHUNK)
_FINISH_LUA = lua_source(chunked.FINISH)
_CATS_KEPT = 32
_ENTRY_SIZES = {ENTRY_BYTES}
# Redis' Lua cmsgpack predates the msgpack str8/bin types: pack with the old raw types only.
_pack = msgpack.Packer(use_bin_type=False).pack
_flat = chain.from_iterable


def _num(x: float) -> str:
    return repr(float(x))


def _vec(raw: Any) -> tuple[bytes | None, str | None]:
    return unpack_vector(raw)


@dataclass(frozen=True)
class BatchContext:
    """What Redis knew before the batch."""

    stored_offsets: dict[int, str]
    landmark: float | None
    #: Each user's whole stored history ``(item, time)``, in no particular order.
    histories: dict[str, list[tuple[str, float]]]
    landmark_raw: str | None = None
    model_version: str | None = None
    #: Each user's stored forward weights ``(item, weight)`` (fold-in input; the merge base).
    user_weights: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    #: Stored ``(vec, model)`` of each user (loaded for ISGD).
    user_vecs: dict[str, tuple[bytes | None, str | None]] = field(default_factory=dict)
    #: Stored ``(vec, model)`` of the items asked for.
    item_vecs: dict[str, tuple[bytes | None, str | None]] = field(default_factory=dict)
    #: Ids of batches left in flight (begun, not finished) on the partitions asked for.
    inflight: frozenset[str] = frozenset()

    @property
    def applied_offsets(self) -> dict[int, int]:
        return {p: int(v) for p, v in self.stored_offsets.items()}


@dataclass(frozen=True)
class Carry:
    """What one batch's apply leaves in the keys a load reads, known before Redis has run it.

    The worker plans the next batch while Redis applies this one: that batch's load runs before
    this apply, so for the keys this batch writes it reads them from here instead
    (:meth:`overlay`). A user's item HASH and vector have one writer (the user's partition); the
    offsets, the landmark and the vectors of items are what this apply stores when it applies.
    Users are kept as the apply built them and turned into the load's form only for the users
    the next batch loads: with many shoppers interleaved, few are in two batches running.
    """

    offsets: dict[int, str]
    landmark_raw: str | None
    #: Each batch user's item HASH after the apply: (item -> time, item -> forward weight).
    after: dict[str, tuple[dict[str, float], dict[str, float]]]
    #: Users whose keys the apply deletes before its own writes (those in ``after`` get theirs).
    forgotten: frozenset[str]
    #: Users' vectors the apply stores, of model ``vec_model``.
    user_vec_set: dict[str, bytes]
    vec_model: str | None
    item_vecs: dict[str, tuple[bytes | None, str | None]]

    def overlay(self, ctx: BatchContext) -> BatchContext:
        """``ctx`` (loaded before this batch's apply ran) as it reads once the apply ran."""
        after, forgotten, vecs, tag = self.after, self.forgotten, self.user_vec_set, self.vec_model
        gone: tuple[bytes | None, str | None] = (None, None)

        def entries(loaded: dict[str, list[tuple[str, float]]], side: int) -> dict[str, list[tuple[str, float]]]:
            return {u: (list(after[u][side].items()) if u in after else [] if u in forgotten else v)
                    for u, v in loaded.items()}

        def vec(u: str, v: tuple[bytes | None, str | None]) -> tuple[bytes | None, str | None]:
            if u in vecs:
                return vecs[u], tag
            return gone if u in forgotten else v

        items = self.item_vecs
        landmark_raw = self.landmark_raw if self.landmark_raw is not None else ctx.landmark_raw
        return BatchContext(
            stored_offsets={**ctx.stored_offsets, **self.offsets},
            landmark=float(landmark_raw) if landmark_raw is not None else None,
            histories=entries(ctx.histories, 0),
            landmark_raw=landmark_raw,
            model_version=ctx.model_version,
            user_weights=entries(ctx.user_weights, 1),
            user_vecs={u: vec(u, v) for u, v in ctx.user_vecs.items()},
            item_vecs={i: (items[i] if i in items else v) for i, v in ctx.item_vecs.items()},
        )


@dataclass(frozen=True)
class PreparedApply:
    """A batch's apply, built: ``apply_batch.lua``'s msgpack payload, or its chunks
    (:class:`driftrec.streams.chunked.ChunkedApply`, then ``payload`` is empty), and, when asked for,
    its :class:`Carry`."""

    payload: bytes
    carry: Carry | None = None
    chunked: chunked.ChunkedApply | None = None


def _carry(delta: BatchDelta, ctx: BatchContext, lm: str, vectors: VectorPlan | None,
           item_vecs: dict[str, tuple[bytes | None, str | None]],
           after: dict[str, tuple[dict[str, float], dict[str, float]]]) -> Carry:
    """The :class:`Carry` of one prepared apply, computed as apply_ops.lua computes the values."""
    gone: tuple[bytes | None, str | None] = (None, None)
    items: dict[str, tuple[bytes | None, str | None]] = {}
    if vectors is not None:
        tag = vectors.model
        items.update((i, (v, tag)) for i, v in vectors.items_set.items())
        # "v": the stored vector when it is of this model and length, else base; plus the delta
        # in doubles, stored as float32 (Lua's struct.pack "f" rounds to nearest). All at once.
        by_len: dict[int, list[tuple[str, bytes, bytes]]] = {}
        for item, (base, change) in vectors.items_add.items():
            stored, stored_tag = items.get(item) or item_vecs.get(item) or gone
            start = stored if stored is not None and stored_tag == tag and len(stored) == len(base) else base
            by_len.setdefault(len(base), []).append((item, start, change))
        for size, rows in by_len.items():
            starts = np.frombuffer(b"".join(r[1] for r in rows), "<f4").astype(np.float64)
            changes = np.frombuffer(b"".join(r[2] for r in rows), "<f4").astype(np.float64)
            totals = (starts + changes).astype("<f4").tobytes()
            items.update((r[0], (totals[j * size:(j + 1) * size], tag)) for j, r in enumerate(rows))
    return Carry(
        offsets={p: str(o) for p, o in delta.offsets.items()},
        landmark_raw=lm or ctx.landmark_raw,
        after=after,
        forgotten=frozenset(delta.forgotten),
        user_vec_set=vectors.users if vectors is not None else {},
        vec_model=vectors.model if vectors is not None else None,
        item_vecs=items,
    )


def user_item_ops(keys: Keys, delta: BatchDelta, ctx: BatchContext, history_len: int,
                  after: dict[str, tuple[dict[str, float], dict[str, float]]] | None = None,
                  ) -> list[tuple[str, str, list[Any]]]:
    """``(key, op, flat args)``: the writes that turn each batch user's stored item HASH into
    its merge with ``delta`` (:func:`driftrec.models.online.merge_user_items`): ``"s"`` HSET of the
    changed entries, ``"x"`` HDEL of the entries both bounds dropped. A forgotten user's key is
    deleted first (by the caller's ``"d"``), so everything it has after the batch is written.
    ``after``, when given, receives each batch user's merged ``(times, weights)``: what the HASH
    holds once the writes are applied.
    """
    out: list[tuple[str, str, list[Any]]] = []
    hists, weights = ctx.histories, ctx.user_weights
    no_items: dict[str, float] = {}
    for user in sorted(delta.hist.keys() | delta.user_items.keys()):
        if user in delta.forgotten:
            old_t, old_w = {}, {}
        else:
            old_t, old_w = dict(hists.get(user, ())), dict(weights.get(user, ()))
        dropped: set[str] = set()
        new_t, new_w = merge_user_items(old_t, old_w, delta, user, history_len, history_len, dropped)
        if after is not None:
            after[user] = (new_t, new_w)
        # Only the batch's items get new values (or, for a weight taken to nothing, go); the
        # bounds only drop entries. So an entry can change only if the batch touched it or a
        # bound dropped one of its halves.
        maybe = delta.hist.get(user, no_items).keys() | delta.user_items.get(user, no_items).keys() | dropped
        changed: list[Any] = []
        gone: list[str] = []
        for item in sorted(maybe):
            t, w = new_t.get(item), new_w.get(item)
            if t is None and w is None:
                if item in old_t or item in old_w:
                    gone.append(item)
            elif item not in old_t and item not in old_w or old_t.get(item) != t or old_w.get(item) != w:
                changed += (item, pack_entry(t, w))
        key = keys.user_state(user)
        if changed:
            out.append((key, "s", changed))
        if gone:
            out.append((key, "x", gone))
    return out


def _split_raw(rows: Any) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """:func:`~driftrec.userstate.split_state` of a flat ``HGETALL`` reply of bytes (the load
    script's msgpack), in one pass of C-level calls; anything else, or a value of the wrong
    size, goes through ``split_state`` itself (which logs and skips the malformed entries)."""
    if not rows or type(rows) is not list or type(rows[0]) is not bytes:
        return split_state(rows)
    values = rows[1::2]
    if set(map(len, values)) != _ENTRY_SIZES:
        return split_state(rows)
    try:
        items = [f.decode("utf-8", "surrogateescape") for f in rows[0::2]]
        vals = struct.unpack(f"<{len(values) * 2}d", b"".join(values))
    except (AttributeError, TypeError):
        return split_state(rows)
    # NaN marks a missing half; a sum without NaN (times and weights are finite) skips the filter.
    ts, ws = vals[0::2], vals[1::2]
    st, sw = sum(ts), sum(ws)
    return (list(zip(items, ts, strict=True)) if st == st else [(i, t) for i, t in zip(items, ts, strict=True) if t == t],
            list(zip(items, ws, strict=True)) if sw == sw else [(i, w) for i, w in zip(items, ws, strict=True) if w == w])


def loaded_context(parts: list[int], users: list[str], items: list[str], user_extra: str,
                   offs: Sequence[bytes | None], landmark: bytes | None, current: bytes | None,
                   hists: Sequence[Any], extra: Sequence[Any], ivecs: Sequence[Any],
                   busy: Sequence[bytes | None] = ()) -> BatchContext:
    """The :class:`BatchContext` of what a load read, in the order it asked (single node and
    Cluster); ``busy``: the in-flight marks of the partitions."""
    lm_raw = landmark.decode() if landmark else None
    states = [_split_raw(rows) for rows in hists]
    return BatchContext(
        stored_offsets={p: (v.decode() if v else "-1") for p, v in zip(parts, offs, strict=True)},
        landmark=float(lm_raw) if lm_raw is not None else None,
        landmark_raw=lm_raw,
        model_version=current.decode() if current else None,
        histories={u: st[0] for u, st in zip(users, states, strict=True)},
        user_weights={u: st[1] for u, st in zip(users, states, strict=True)},
        user_vecs=({u: _vec(row) for u, row in zip(users, extra, strict=True)}
                   if user_extra == USER_VECTORS else {}),
        item_vecs={i: _vec(row) for i, row in zip(items, ivecs, strict=True)},
        inflight=frozenset(b.decode() for b in busy if b),
    )


def check_score_format(client: Any, keys: Keys, *, retry_s: float = 2.0) -> None:
    """Refuse a store whose decayed scores are in another unit than :data:`SCORE_SCALE`.

    Sorted-set scores are whole units of ``1 / SCORE_SCALE`` (``models/decay.py``); a store
    written before that (meta has a ``landmark`` but no ``score_scale``) or with another scale
    would be read wrongly by a factor, silently. A fresh store gets ``score_scale`` here. Waits
    for an unreachable Redis (a worker may start before it), as the worker waits for Kafka.

    Raises
    ------
    StoreFormatError
        The store holds state in another format: rebuild it (empty the key prefix and replay).
    """
    import redis as redis_sync

    while True:
        try:
            landmark, scale = client.hmget(keys.meta, "landmark", "score_scale")
            if scale is None and landmark is None:
                client.hsetnx(keys.meta, "score_scale", _num(SCORE_SCALE))
                landmark, scale = client.hmget(keys.meta, "landmark", "score_scale")
            break
        except (redis_sync.ConnectionError, redis_sync.TimeoutError) as exc:
            logger.warning("Redis unreachable for the store format check (%s); retrying in %.0fs", exc, retry_s)
            time.sleep(retry_s)
    if scale is None or float(scale) != SCORE_SCALE:
        found = "no score_scale (written before fixed-point scores)" if scale is None else f"score_scale {scale!r}"
        raise StoreFormatError(
            f"{keys.meta} has {found}; this version stores decayed scores in units of 1/{SCORE_SCALE:g}. "
            f"Rebuild the state: delete the keys of prefix {keys.prefix!r} and replay the clicks topic "
            "from the beginning (docs/runbook.md, 'Rebuilding Redis from Kafka').")


class RedisState:
    """The worker's view of Redis for one topic (the clicks topic)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, topic: str, *, window: int,
                 history_len: int, neighbours_k: int, trending_k: int,
                 chunk_cost: float = chunked.CHUNK_COST) -> None:
        self.client = client
        self.keys = keys
        self.topic = topic
        self.window = window
        self.history_len = history_len
        self.neighbours_k = neighbours_k
        self.trending_k = trending_k
        #: Budget of one apply chunk (:mod:`driftrec.streams.chunked`); 0: each batch in one script.
        self.chunk_cost = chunk_cost
        self._apply = client.register_script(_APPLY_LUA)
        self._load = client.register_script(_LOAD_LUA)
        self._chunks = chunked.Scripts(client, keys, {chunked.BEGIN: _BEGIN_LUA, chunked.APPLY_CHUNK: _CHUNK_LUA,
                                                      chunked.FINISH: _FINISH_LUA})
        #: The chunked apply sent last, until its replies are read: reads wait for it.
        self._applying: asyncio.Future[int] | None = None
        #: Testing only (setting ``fault_exit_after_chunk``): the process kills itself (SIGKILL)
        #: once this many chunks of a batch with more chunks are applied.
        self.exit_after_chunk = 0
        #: Users kept per item in the session index (setting ``session_index_k``); 0: no index.
        self.session_index_k = 0
        self.commands_sent = 0  # Redis commands issued, for the benchmark's per-event cost
        self.recovered = 0  # batches finished from a write-ahead copy
        self.rescaler_id = uuid.uuid4().hex  # names this worker in the landmark-move lease

    def _field(self, partition: int) -> str:
        return f"{self.topic}:{partition}"

    async def load(self, users: Iterable[str], partitions: Iterable[int], *,
                   user_extra: str = NO_USER_EXTRA, items: Iterable[str] = ()) -> BatchContext:
        """One script call: offsets, landmark, model version, histories and the vectors asked for.
        A batch left in flight on these partitions (its worker died mid-apply) is finished from
        its write-ahead copy first, and the load repeated."""
        users, items = list(users), list(items)
        while True:
            ctx = (await self._load_reply(users, partitions, user_extra, items))()
            if not ctx.inflight:
                return ctx
            if not await self.finish_inflight(ctx.inflight):
                await asyncio.sleep(1.0)  # a copy is gone (evicted, deleted by hand): see the log

    async def finish_inflight(self, batch_ids: Iterable[str]) -> bool:
        """Finish batches a crash left in flight, from their write-ahead copies; False when one
        is still in flight without its copy (lost: its partitions stay blocked)."""
        found = True
        for batch_id in sorted(batch_ids):
            done = await self._chunks.finish_copy(batch_id)
            if done:
                self.recovered += 1
                logger.warning("finished batch %s, left in flight, from its write-ahead copy", batch_id)
            elif done is False:
                found = False
                logger.error("batch %s is in flight but has no write-ahead copy (evicted? Redis must run "
                             "with maxmemory-policy noeviction)", batch_id)
        return found

    async def load_then_apply(self, prepared: PreparedApply, users: Iterable[str], partitions: Iterable[int], *,
                              user_extra: str = NO_USER_EXTRA, items: Iterable[str] = (),
                              ) -> tuple[BatchContext, asyncio.Future[int]]:
        """:meth:`load`, then :meth:`send_apply` of ``prepared`` as soon as the load's reply is
        in and before it is decoded: Redis runs the apply while this process decodes what the
        load read (the state before that apply). Returns the context and the apply's future."""
        decode = await self._load_reply(users, partitions, user_extra, items)
        pending = await self.send_apply(prepared)
        try:
            return decode(), pending
        except BaseException:
            await asyncio.gather(pending, return_exceptions=True)  # sent: whatever became of it, offsets say
            raise

    async def _load_reply(self, users: Iterable[str], partitions: Iterable[int], user_extra: str,
                          items: Iterable[str]) -> Callable[[], BatchContext]:
        """Run the load script; a function that decodes its reply into the :class:`BatchContext`.

        With a chunk budget, a batch's users and items are read by several calls of bounded cost
        (:func:`driftrec.streams.chunked.load_parts`), one after another so that other clients' commands
        run between them. Only the first reads the offsets (and the in-flight marks, the landmark,
        the model version): a batch applied to these partitions after it moves them, and the
        apply's offset guard refuses a batch planned on what was read before that."""
        k = self.keys
        users = list(dict.fromkeys(users))
        items = list(dict.fromkeys(items))
        parts = sorted(set(partitions))
        hk = [k.user_state(u) for u in users]
        uk = [k.user_vec(u) for u in users] if user_extra == USER_VECTORS else []
        ik = [k.item_vec(i) for i in items]
        applying = self._applying
        if applying is not None and not applying.done():
            # Its chunks take turns with other commands: a read sent now could land between two.
            await asyncio.wait([applying])
        script_keys = [k.offsets, k.meta, k.model_current, chunked.inflight_key(k)]
        raws = []
        for j, (us, its) in enumerate(chunked.load_parts(len(users), len(items), bool(uk), self.chunk_cost)):
            part_uk = uk[us.start:us.stop]
            spec = {"f": [self._field(p) for p in parts] if j == 0 else [], "um": user_extra if part_uk else "",
                    "hk": hk[us.start:us.stop], "uk": part_uk, "ik": ik[its.start:its.stop]}
            raws.append(await self._load(keys=script_keys, args=[_pack(spec)]))
        self.commands_sent += len(raws)

        def decode() -> BatchContext:
            offs, landmark, current, hists, extra, ivecs, busy = msgpack.unpackb(raws[0], raw=True)
            for raw in raws[1:]:
                more = msgpack.unpackb(raw, raw=True)
                hists, extra, ivecs = [*hists, *more[3]], [*extra, *more[4]], [*ivecs, *more[5]]
            return loaded_context(parts, users, items, user_extra, offs, landmark, current, hists, extra, ivecs,
                                  busy)
        return decode

    async def load_item_vecs(self, items: Iterable[str]) -> dict[str, tuple[bytes | None, str | None]]:
        """Stored ``(vec, model)`` of more items (new items' co-clicked partners), one script call."""
        ctx = await self.load((), (), items=items)
        return ctx.item_vecs

    async def apply(self, delta: BatchDelta, ctx: BatchContext, landmark: float | None,
                    vectors: VectorPlan | None = None) -> int:
        """Apply ``delta`` if the offsets are still those ``ctx`` saw; returns APPLIED or why not.

        ``landmark`` None means the batch carries no decayed scores (dead letters only): the
        script then neither checks nor sets the landmark.
        """
        prepared = self.prepare_apply(delta, ctx, landmark, vectors)
        if prepared.chunked is not None:
            return await (await self.send_apply(prepared))
        started = time.perf_counter()
        result = await self._apply(keys=[self.keys.offsets, self.keys.meta], args=[prepared.payload])
        metrics.REDIS_APPLY_SECONDS.observe(time.perf_counter() - started)
        self.commands_sent += 1
        return int(result[0])

    def prepare_apply(self, delta: BatchDelta, ctx: BatchContext, landmark: float | None,
                      vectors: VectorPlan | None = None, *,
                      item_vecs: dict[str, tuple[bytes | None, str | None]] | None = None) -> PreparedApply:
        """The apply script's payload for ``delta`` (see :meth:`apply`) and, with ``item_vecs``
        (the stored vectors the plan started from), the :class:`Carry` of what the script leaves
        in the keys a next batch's load reads."""
        k = self.keys
        keys: list[str] = []  # the keys the ops write, shipped inside the payload
        ops: list[list[Any]] = []
        add_key, add_op = keys.append, ops.append

        def op(key: str, kind: str, cap: int, flat: list[Any]) -> None:
            add_key(key)
            add_op([len(keys), kind, cap, flat])

        for user in sorted(delta.forgotten):
            for key in k.user_keys(user):
                op(key, "d", 0, [])
        if delta.pop:
            op(k.popularity, "z", 0, list(_flat(delta.pop.items())))
        for cat, items in delta.trend.items():
            op(k.trending(cat), "z", self.trending_k, list(_flat(items.items())))
        nbrs_k, item_nbrs, user_cats = self.neighbours_k, k.item_nbrs, k.user_cats
        first = len(keys) + 1  # the most ops of a batch: built in bulk rather than through op()
        keys.extend(map(item_nbrs, delta.cooc))
        ops.extend([j, "z", nbrs_k, list(_flat(nbrs.items()))] for j, nbrs in enumerate(delta.cooc.values(), first))
        for user, cats in delta.user_cats.items():
            op(user_cats(user), "z", _CATS_KEPT, list(_flat(cats.items())))
        indexed = self.session_index_k > 0
        after: dict[str, tuple[dict[str, float], dict[str, float]]] | None = (
            {} if item_vecs is not None or indexed else None)
        for key, kind, flat in user_item_ops(k, delta, ctx, self.history_len, after):
            op(key, kind, 0, flat)
        if delta.item_cat:
            op(k.item_category, "s", 0, list(_flat(delta.item_cat.items())))
        for key, kind, cap, flat in session_index_ops(k, delta, self.session_index_k):
            op(key, kind, cap, flat)
        if indexed and after is not None:
            for key, kind, cap, flat in click_log_ops(k, delta, after):
                op(key, kind, cap, flat)
        if vectors is not None:
            tag = vectors.model
            for user, vec in vectors.users.items():
                op(k.user_vec(user), "t", 0, [pack_vector(vec, tag)])
            for item, vec in vectors.items_set.items():
                op(k.item_vec(item), "t", 0, [pack_vector(vec, tag)])
            for item, (base, change) in vectors.items_add.items():
                op(k.item_vec(item), "v", len(base) // 4, [tag, base, change])
        if landmark is None:
            lm = ""
        elif ctx.landmark_raw is not None and ctx.landmark == landmark:
            lm = ctx.landmark_raw  # compare with exactly what is stored
        else:
            lm = _num(landmark)
        t = delta.last_event_time
        guards = {self._field(p): ctx.stored_offsets.get(p, "-1") for p in delta.offsets}
        offsets = {self._field(p): str(o) for p, o in delta.offsets.items()}
        last = _num(t if math.isfinite(t) else 0.0)
        carry = _carry(delta, ctx, lm, vectors, item_vecs, after) if item_vecs is not None and after is not None else None
        if self.chunk_cost > 0:
            return PreparedApply(b"", carry, chunked.build(
                keys, ops, self.chunk_cost, guards=guards, landmark=lm, offsets=offsets, last_time=last,
                applied=delta.applied))
        payload = {"g": guards, "lm": lm, "off": offsets, "t": last, "n": delta.applied, "k": keys, "ops": ops}
        return PreparedApply(_pack(payload), carry)

    #: Whether :meth:`send_apply` may overlap a batch's apply with the next one's plan.
    overlaps = True

    async def send_apply(self, prepared: PreparedApply) -> asyncio.Future[int]:
        """Send the apply script for ``prepared`` now; the returned future reads its reply.

        On a connection of its own, so the worker can load and plan the next batch while Redis
        runs this one (streams/processor.py, :meth:`~driftrec.streams.processor.BatchProcessor.feed`). The
        script is sent before this returns: anything sent to Redis afterwards runs after it
        (chunked: after its first chunk; this state's own loads wait for the last).
        """
        if prepared.chunked is not None:
            self._applying = await self._send_chunked(prepared.chunked)
            return self._applying
        k = self.keys
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        args = (2, k.offsets, k.meta, prepared.payload)
        try:
            await conn.send_command("EVALSHA", self._apply.sha, *args)
        except BaseException:
            await conn.disconnect()
            await pool.release(conn)
            raise
        self.commands_sent += 1
        started = time.perf_counter()

        async def reply() -> int:
            try:
                try:
                    result = await conn.read_response()
                except NoScriptError:  # a restarted or flushed Redis: send the script itself
                    await conn.send_command("EVAL", _APPLY_LUA, *args)
                    result = await conn.read_response()
            except BaseException:
                await conn.disconnect()
                raise
            finally:
                await pool.release(conn)
            metrics.REDIS_APPLY_SECONDS.observe(time.perf_counter() - started)
            return int(result[0])

        return asyncio.ensure_future(reply())

    async def _send_chunked(self, c: chunked.ChunkedApply) -> asyncio.Future[int]:
        crash = 0 < self.exit_after_chunk < len(c.chunks)
        commands = self._chunks.commands(c, upto=self.exit_after_chunk if crash else None)
        replies = await self._chunks.send(commands)
        self.commands_sent += len(commands)
        started = time.perf_counter()

        async def reply() -> int:
            got = await replies()
            if crash:  # the fault a test asks for: a kill -9 between two chunks of a batch
                logger.warning("fault_exit_after_chunk: dying after chunk %d of %d", self.exit_after_chunk,
                               len(c.chunks))
                os.kill(os.getpid(), signal.SIGKILL)
            metrics.REDIS_APPLY_SECONDS.observe(time.perf_counter() - started)
            result = chunked.outcome(got)
            if result in (0, -1):  # not begun: its copy would only expire
                await self.client.delete(chunked.wal_key(self.keys, c.batch_id))
            return APPLIED if result == 1 else LANDMARK_MOVED if result == -1 else STALE_OFFSETS

        return asyncio.ensure_future(reply())

    async def rescale(self, policy: Any, old_landmark: float, t: float) -> bool:
        """Move the decay landmark up to event time ``t``, or finish a move another worker began
        (:func:`driftrec.streams.rescale.run_rescale`); False when another worker is at it."""
        new_landmark = policy.next_landmark(t, old_landmark)
        return await self._run_rescale(plan=(new_landmark, policy.rescale_factor(old_landmark, new_landmark)),
                                       expect_landmark=old_landmark)

    async def resume_rescale(self) -> bool:
        """Finish a landmark move a worker left half done (its lease expired); False when there is
        none or its owner is still at it."""
        return await self._run_rescale(plan=None)

    async def _run_rescale(self, **kwargs: Any) -> bool:
        from driftrec.streams.rescale import run_rescale  # it builds on this module

        return await run_rescale(self, self.rescaler_id, before_keys=self._before_rescale_keys, **kwargs)

    async def _before_rescale_keys(self) -> None:
        """Runs once the rescale fence is up, before any key changes: finishes the batches in
        flight (begun before the fence, so planned at the old landmark)."""
        busy = await self.client.hgetall(chunked.inflight_key(self.keys))
        await self.finish_inflight({v.decode() if isinstance(v, bytes) else v for v in busy.values()})

    async def init_landmark(self, landmark: float) -> float:
        """Set the decay landmark if none is stored yet; return the stored one."""
        await self.client.hsetnx(self.keys.meta, "landmark", _num(landmark))
        self.commands_sent += 2
        stored = await self.client.hget(self.keys.meta, "landmark")
        return float(stored if stored is not None else landmark)

