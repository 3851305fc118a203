"""The worker's Redis state on Redis Cluster: each micro-batch split per hash slot, once per slot.

A batch's keys span thousands of slots, and a Lua script may only touch keys of one slot, so
the single-node pair of scripts (``load_batch.lua``, ``apply_batch.lua``) becomes:

1. **load**: one cluster pipeline (the client sends each node its commands in parallel) reads the
   offsets, the in-flight marks, the landmark, the live model version, the batch users'
   histories and the vectors or weights the batch needs. A batch of these partitions left in
   flight by a crash is finished first (step 5 from its write-ahead copy).
2. **plan**: as on one node (:class:`driftrec.streams.processor.BatchProcessor`, unchanged).
3. **begin**: the batch's write-ahead copy (every slot group's payload) by a plain ``SET`` with an
   expiry, then ``begin_batch.lua`` (slot of ``{g}``): the offsets still those the load saw, no
   other batch of these partitions in flight, the landmark unchanged; then the copy is made
   permanent and the partitions marked in flight.
4. **groups** (``apply_slot.lua``): one script call per slot, all pipelined; each checks and
   moves a guard hash ``P:{<slot tag>}:applied`` stored under a tag of that slot, so replaying
   the copy applies each group at most once. A slot whose ops cost more than
   ``apply_chunk_cost`` is applied in several parts, each with guard fields of its own.
5. **finish** (``finish_batch.lua``, slot of ``{g}``): offsets, event counter, drop the copy.

Because the copy holds the plan made from the state before the batch, a crash anywhere ends at
exactly the state of one clean pass; a crash between 3 and 5 is finished by the next load (of
any worker). Cluster-wide errors (a node down, slots moving) surface as ``ConnectionError``,
which the processor waits out.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterable
from functools import lru_cache
from itertools import chain
from typing import Any

import msgpack
import redis.exceptions
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from driftrec.keys import Keys
from driftrec.models.online import BatchDelta
from driftrec.streams import chunked
from driftrec.streams.chunked import inflight_key, wal_key
from driftrec.streams.redis_state import (
    APPLIED,
    LANDMARK_MOVED,
    NO_USER_EXTRA,
    STALE_OFFSETS,
    USER_VECTORS,
    BatchContext,
    RedisState,
    _vec,
    loaded_context,
    lua_source,
    user_item_ops,
)
from driftrec.streams.session_index import click_log_ops, session_index_ops
from driftrec.streams.vectors import VectorPlan
from driftrec.userstate import pack_vector

__all__ = ["ClusterRedisState", "slot_tag", "guard_key", "inflight_key", "wal_key"]

logger = logging.getLogger(__name__)

_SLOT_LUA = lua_source("apply_slot.lua")
_BEGIN_LUA = lua_source(chunked.BEGIN)
_FINISH_LUA = lua_source(chunked.FINISH)
_CATS_KEPT = 32
_pack = msgpack.Packer(use_bin_type=False).pack  # Redis' cmsgpack knows the old raw types only
_flat = chain.from_iterable


@lru_cache(maxsize=1)
def _slot_tags() -> tuple[str, ...]:
    """For every slot, the first short tag ``s<n>`` that hashes to it (found once, ~0.2 s)."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing, n = REDIS_CLUSTER_HASH_SLOTS, 0
    while missing:
        tag = f"s{n}"
        slot = key_slot(tag.encode())
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


def slot_tag(slot: int) -> str:
    return _slot_tags()[slot]


def guard_key(keys: Keys, slot: int) -> str:
    """HASH ``<topic>:<partition>`` -> end offset of the last batch applied to this slot."""
    return f"{keys.prefix}:{{{slot_tag(slot)}}}:applied"


def _num(x: float) -> str:
    return repr(float(x))


def _cluster_errors(exc: BaseException) -> BaseException:
    # A node down or slots without an owner is an outage the processor must wait out, not a bad
    # record; anything else (a bug such as a cross-slot call) stays what it is.
    if isinstance(exc, redis.exceptions.ClusterError | redis.exceptions.SlotNotCoveredError):
        return redis.exceptions.ConnectionError(f"Redis Cluster unavailable: {exc}")
    return exc


class ClusterRedisState(RedisState):
    """:class:`RedisState` for a :class:`redis.asyncio.RedisCluster` client (same interface)."""

    #: A batch's apply here is a fence, per-slot scripts and a finish: not one script that a
    #: next batch's load can be sent ahead of, so batches are applied one after another.
    overlaps = False

    def __init__(self, client: Any, keys: Keys, topic: str, *, window: int, history_len: int,
                 neighbours_k: int, trending_k: int, chunk_cost: float = chunked.CHUNK_COST) -> None:
        super().__init__(client, keys, topic, window=window, history_len=history_len,
                         neighbours_k=neighbours_k, trending_k=trending_k, chunk_cost=chunk_cost)
        self._slot = client.register_script(_SLOT_LUA)
        self._begin = client.register_script(_BEGIN_LUA)
        self._finish = client.register_script(_FINISH_LUA)
        self._gkeys = [keys.offsets, keys.meta, inflight_key(keys)]

    async def _run(self, fn: Any) -> Any:
        try:
            return await fn()
        except Exception as exc:
            raise _cluster_errors(exc) from exc

    async def _scripts(self, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run one script many times in a cluster pipeline (loading it where a node lacks it)."""
        async def go() -> list[Any]:
            for attempt in (1, 2):
                pipe = self.client.pipeline(transaction=False)
                for keys, args in calls:  # ClusterPipeline.evalsha is blocked; the raw command is routed
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                res = await pipe.execute(raise_on_error=False)
                if attempt == 1 and any(isinstance(r, redis.exceptions.NoScriptError) for r in res):
                    await self.client.script_load(script.script)  # every primary: a node restarted
                    continue
                for r in res:
                    if isinstance(r, Exception):
                        raise r
                return list(res)
            raise AssertionError("unreachable")
        self.commands_sent += len(calls)
        return await self._run(go)

    # --- load -----------------------------------------------------------------------------
    async def load(self, users: Iterable[str], partitions: Iterable[int], *,
                   user_extra: str = NO_USER_EXTRA, items: Iterable[str] = ()) -> BatchContext:
        k = self.keys
        users = list(dict.fromkeys(users))
        items = list(dict.fromkeys(items))
        parts = sorted(set(partitions))
        fields = [self._field(p) for p in parts]
        while True:
            pipe = self.client.pipeline(transaction=False)
            if fields:
                pipe.execute_command("HMGET", k.offsets, *fields)
                pipe.execute_command("HMGET", inflight_key(k), *fields)
            pipe.execute_command("HGET", k.meta, "landmark")
            pipe.execute_command("GET", k.model_current)
            for u in users:
                pipe.execute_command("HGETALL", k.user_state(u))
            if user_extra == USER_VECTORS:
                for u in users:
                    pipe.execute_command("GET", k.user_vec(u))
            for i in items:
                pipe.execute_command("GET", k.item_vec(i))
            res = await self._run(pipe.execute)
            self.commands_sent += len(res)
            offs, busy = (res[0], res[1]) if fields else ([], [])
            rest = res[2:] if fields else res
            pending = {b.decode() for b in busy if b}
            if not pending:
                break
            for batch_id in sorted(pending):
                await self._recover(batch_id)
        landmark, current = rest[0], rest[1]
        rows = rest[2:]
        hists, rows = rows[: len(users)], rows[len(users):]
        extra: list[Any] = []
        if user_extra == USER_VECTORS:
            extra, rows = rows[: len(users)], rows[len(users):]
        return loaded_context(parts, users, items, user_extra, offs, landmark, current, hists, extra, rows)

    # --- apply ----------------------------------------------------------------------------
    def _ops(self, delta: BatchDelta, ctx: BatchContext,
             vectors: VectorPlan | None) -> list[tuple[str, str, int, list[Any]]]:
        """(key, op, cap, flat args) of every write, as ``RedisState.apply`` builds them."""
        k = self.keys
        out: list[tuple[str, str, int, list[Any]]] = []
        add = out.append
        for user in sorted(delta.forgotten):
            for key in k.user_keys(user):
                add((key, "d", 0, []))
        if delta.pop:
            add((k.popularity, "z", 0, list(_flat(delta.pop.items()))))
        for cat, row in delta.trend.items():
            add((k.trending(cat), "z", self.trending_k, list(_flat(row.items()))))
        for item, nbrs in delta.cooc.items():
            add((k.item_nbrs(item), "z", self.neighbours_k, list(_flat(nbrs.items()))))
        for user, cats in delta.user_cats.items():
            add((k.user_cats(user), "z", _CATS_KEPT, list(_flat(cats.items()))))
        after: dict[str, tuple[dict[str, float], dict[str, float]]] | None = {} if self.session_index_k > 0 else None
        for key, kind, flat in user_item_ops(k, delta, ctx, self.history_len, after):
            add((key, kind, 0, flat))
        if delta.item_cat:
            add((k.item_category, "s", 0, list(_flat(delta.item_cat.items()))))
        out.extend(session_index_ops(k, delta, self.session_index_k))
        if after is not None:
            out.extend(click_log_ops(k, delta, after))
        if vectors is not None:
            tag = vectors.model
            for user, vec in vectors.users.items():
                add((k.user_vec(user), "t", 0, [pack_vector(vec, tag)]))
            for item, vec in vectors.items_set.items():
                add((k.item_vec(item), "t", 0, [pack_vector(vec, tag)]))
            for item, (base, change) in vectors.items_add.items():
                add((k.item_vec(item), "v", len(base) // 4, [tag, base, change]))
        return out

    def _groups(self, ops: list[tuple[str, str, int, list[Any]]], ends: dict[str, str]) -> list[tuple[str, bytes]]:
        """(guard key, payload) of each slot's ops, in order; a slot whose ops cost more than the
        chunk budget (the ``{g}`` slot: popularity, trending, categories) in several parts of
        bounded cost (:func:`driftrec.streams.chunked.cut_ops`), in order. Part ``j`` > 0 is guarded by
        the fields ``<topic>:<partition>#<j>`` of the slot's guard hash, so each part is applied
        once on its own."""
        by_slot: dict[int, tuple[list[str], list[list[Any]]]] = {}
        for key, kind, cap, flat in ops:
            slot = key_slot(key.encode())
            names, rows = by_slot.setdefault(slot, ([], []))
            names.append(key)
            rows.append([len(names), kind, cap, flat])
        out: list[tuple[str, bytes]] = []
        for slot, (names, rows) in sorted(by_slot.items()):
            parts = chunked.cut_ops(names, rows, self.chunk_cost) if self.chunk_cost > 0 else [(0, names, rows)]
            for j, (o, part_keys, part_ops) in enumerate(parts):
                guards = ends if j == 0 else {f"{f}#{j}": off for f, off in ends.items()}
                out.append((guard_key(self.keys, slot), _pack({"e": guards, "o": o, "k": part_keys,
                                                                "ops": part_ops})))
        return out

    async def apply(self, delta: BatchDelta, ctx: BatchContext, landmark: float | None,
                    vectors: VectorPlan | None = None) -> int:
        """Begin (write-ahead copy), every slot group, finish; returns APPLIED or why not."""
        if landmark is None:
            lm = ""
        elif ctx.landmark_raw is not None and ctx.landmark == landmark:
            lm = ctx.landmark_raw
        else:
            lm = _num(landmark)
        ends = {self._field(p): str(o) for p, o in delta.offsets.items()}
        t = delta.last_event_time
        batch_id = uuid.uuid4().hex
        finish = {"id": batch_id, "off": ends, "t": _num(t if math.isfinite(t) else 0.0), "n": delta.applied}
        groups = self._groups(self._ops(delta, ctx, vectors), ends)
        copy = _pack({"groups": groups, "finish": finish})
        expected = {self._field(p): ctx.stored_offsets.get(p, "-1") for p in delta.offsets}
        wal = wal_key(self.keys, batch_id)
        # The copy first, by a plain SET (as on one node: a script storing it held its node ms).
        await self._run(lambda: self.client.set(wal, copy, px=chunked.COPY_TTL_MS))
        self.commands_sent += 1
        (res,) = await self._scripts(self._begin, [(
            [*self._gkeys, wal], [_pack({"g": expected, "lm": lm, "id": batch_id})])])
        code = int(res[0])
        if code != 1:
            await self._run(lambda: self.client.delete(wal))
        if code == -1:
            return LANDMARK_MOVED
        if code != 1:
            return STALE_OFFSETS  # moved, or another batch in flight: the next load finishes it
        await self._complete(batch_id, groups, finish)
        return APPLIED

    async def _complete(self, batch_id: str, groups: list[tuple[str, bytes]], finish: dict[str, Any]) -> None:
        if groups:
            await self._scripts(self._slot, [([g], [payload]) for g, payload in groups])
        await self._scripts(self._finish, [([*self._gkeys, wal_key(self.keys, batch_id)], [_pack(finish)])])

    async def _recover(self, batch_id: str) -> None:
        """Finish a batch a crash left in flight, from its write-ahead copy."""
        raw = await self._run(lambda: self.client.get(wal_key(self.keys, batch_id)))
        if raw is None:  # finished meanwhile, or a copy lost with its node: nothing to replay
            logger.warning("batch %s is in flight but has no write-ahead copy", batch_id)
            return
        copy = msgpack.unpackb(raw, raw=True)  # payloads are binary: keep every string as bytes
        groups = [(g.decode(), payload) for g, payload in copy[b"groups"]]
        await self._complete(batch_id, groups, copy[b"finish"])
        self.recovered += 1
        logger.info("finished batch %s from its write-ahead copy (%d slot groups)", batch_id, len(groups))

    async def load_item_vecs(self, items: Iterable[str]) -> dict[str, tuple[bytes | None, str | None]]:
        items = list(dict.fromkeys(items))
        if not items:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for i in items:
            pipe.execute_command("GET", self.keys.item_vec(i))
        res = await self._run(pipe.execute)
        self.commands_sent += len(items)
        return {i: _vec(r) for i, r in zip(items, res, strict=True)}

    async def _run_rescale(self, **kwargs: Any) -> bool:
        """:meth:`RedisState._run_rescale`: fence new batches, finish those in flight, then
        rescale every node's decayed keys; cluster errors are outages the processor waits out."""
        try:
            return await super()._run_rescale(**kwargs)
        except Exception as exc:
            raise _cluster_errors(exc) from exc

    async def _before_rescale_keys(self) -> None:
        busy = await self._run(lambda: self.client.hgetall(inflight_key(self.keys)))
        for batch_id in sorted({v.decode() for v in busy.values()}):
            await self._recover(batch_id)
