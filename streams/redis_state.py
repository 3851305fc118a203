"""Reads what a micro-batch needs from Redis and applies its aggregated delta in one atomic script.

Two round trips per batch, whatever its size: ``lua/load_batch.lua`` reads the applied offsets,
the decay landmark, the live model version, the recent history of every user in the batch and
the vectors (or fold-in weights) the batch needs; ``lua/apply_batch.lua`` applies every increment
and vector together with the new offsets (effectively once: the script refuses a batch whose
expected offsets are no longer the stored ones). Both payloads are msgpack: doubles travel bit
for bit and vectors as raw float32 bytes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from itertools import chain
from typing import Any

import msgpack
import redis.asyncio as aioredis

from driftrec.keys import Keys
from models.online import BatchDelta
from streams import metrics
from streams.vectors import VectorPlan

__all__ = [
    "RedisState", "BatchContext", "rescale", "APPLIED", "STALE_OFFSETS", "LANDMARK_MOVED",
    "USER_WEIGHTS", "USER_VECTORS", "NO_USER_EXTRA",
]

logger = logging.getLogger(__name__)

APPLIED, STALE_OFFSETS, LANDMARK_MOVED = 1, 0, -1
#: What the load reads per user beside the history: fold-in weights, ISGD vectors, or nothing.
USER_WEIGHTS, USER_VECTORS, NO_USER_EXTRA = "w", "v", ""
_LUA = resources.files("streams").joinpath("lua")
_APPLY_LUA = _LUA.joinpath("apply_batch.lua").read_text()
_LOAD_LUA = _LUA.joinpath("load_batch.lua").read_text()
_CATS_KEPT = 32
# Redis' Lua cmsgpack predates the msgpack str8/bin types: pack with the old raw types only.
_pack = msgpack.Packer(use_bin_type=False).pack
_flat = chain.from_iterable


def _num(x: float) -> str:
    return repr(float(x))


def _pairs(rows: list[bytes]) -> list[tuple[str, float]]:
    # ZRANGE ... WITHSCORES from Lua: [member, score, member, score, ...] as bytes.
    return [(rows[j].decode(), float(rows[j + 1])) for j in range(0, len(rows), 2)]


def _vec(row: Any) -> tuple[bytes | None, str | None]:
    vec, tag = row
    return (vec or None), (tag.decode() if tag else None)


@dataclass(frozen=True)
class BatchContext:
    """What Redis knew before the batch."""

    stored_offsets: dict[int, str]
    landmark: float | None
    histories: dict[str, list[tuple[str, float]]]
    landmark_raw: str | None = None
    model_version: str | None = None
    #: Forward-decayed ``P:{u}:w`` of each user (loaded for fold-in).
    user_weights: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    #: Stored ``(vec, model)`` of each user (loaded for ISGD).
    user_vecs: dict[str, tuple[bytes | None, str | None]] = field(default_factory=dict)
    #: Stored ``(vec, model)`` of the items asked for.
    item_vecs: dict[str, tuple[bytes | None, str | None]] = field(default_factory=dict)

    @property
    def applied_offsets(self) -> dict[int, int]:
        return {p: int(v) for p, v in self.stored_offsets.items()}


class RedisState:
    """The worker's view of Redis for one topic (the clicks topic)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, topic: str, *, window: int,
                 history_len: int, neighbours_k: int, trending_k: int) -> None:
        self.client = client
        self.keys = keys
        self.topic = topic
        self.window = window
        self.history_len = history_len
        self.neighbours_k = neighbours_k
        self.trending_k = trending_k
        self._apply = client.register_script(_APPLY_LUA)
        self._load = client.register_script(_LOAD_LUA)
        self.commands_sent = 0  # Redis commands issued, for the benchmark's per-event cost

    def _field(self, partition: int) -> str:
        return f"{self.topic}:{partition}"

    async def load(self, users: Iterable[str], partitions: Iterable[int], *,
                   user_extra: str = NO_USER_EXTRA, items: Iterable[str] = ()) -> BatchContext:
        """One script call: offsets, landmark, model version, histories and the vectors asked for."""
        k = self.keys
        users = list(dict.fromkeys(users))
        items = list(dict.fromkeys(items))
        parts = sorted(set(partitions))
        if user_extra == USER_WEIGHTS:
            user_keys = [k.user_items(u) for u in users]
        elif user_extra == USER_VECTORS:
            user_keys = [k.user_vec(u) for u in users]
        else:
            user_keys = []
        spec = {"f": [self._field(p) for p in parts], "w": self.window, "um": user_extra,
                "hk": [k.user_hist(u) for u in users], "uk": user_keys,
                "ik": [k.item_vec(i) for i in items]}
        raw = await self._load(keys=[k.offsets, k.meta, k.model_current], args=[_pack(spec)])
        self.commands_sent += 1
        offs, landmark, current, hists, extra, ivecs = msgpack.unpackb(raw, raw=True)
        stored = {p: (v.decode() if v else "-1") for p, v in zip(parts, offs, strict=True)}
        lm_raw = landmark.decode() if landmark else None
        ctx = BatchContext(
            stored_offsets=stored,
            landmark=float(lm_raw) if lm_raw is not None else None,
            landmark_raw=lm_raw,
            model_version=current.decode() if current else None,
            histories={u: _pairs(rows) for u, rows in zip(users, hists, strict=True)},
            user_weights=({u: _pairs(rows) for u, rows in zip(users, extra, strict=True)}
                          if user_extra == USER_WEIGHTS else {}),
            user_vecs=({u: _vec(row) for u, row in zip(users, extra, strict=True)}
                       if user_extra == USER_VECTORS else {}),
            item_vecs={i: _vec(row) for i, row in zip(items, ivecs, strict=True)},
        )
        return ctx

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
        k = self.keys
        keys: list[str] = []  # the keys the ops write, shipped inside the payload
        ops: list[list[Any]] = []
        add_key, add_op = keys.append, ops.append

        def op(key: str, kind: str, cap: int, flat: list[Any]) -> None:
            add_key(key)
            add_op([len(keys), kind, cap, flat])

        for user in sorted(delta.forgotten):
            for key in (k.user_hist(user), k.user_items(user), k.user_cats(user), k.user_vec(user)):
                op(key, "d", 0, [])
        if delta.pop:
            op(k.popularity, "z", 0, list(_flat(delta.pop.items())))
        for cat, items in delta.trend.items():
            op(k.trending(cat), "z", self.trending_k, list(_flat(items.items())))
        nbrs_k, hist_len = self.neighbours_k, self.history_len
        item_nbrs, user_items, user_cats, user_hist = k.item_nbrs, k.user_items, k.user_cats, k.user_hist
        for item, nbrs in delta.cooc.items():
            op(item_nbrs(item), "z", nbrs_k, list(_flat(nbrs.items())))
        for user, items in delta.user_items.items():
            op(user_items(user), "z", hist_len, list(_flat(items.items())))
        for user, cats in delta.user_cats.items():
            op(user_cats(user), "z", _CATS_KEPT, list(_flat(cats.items())))
        for user, hist in delta.hist.items():
            op(user_hist(user), "h", hist_len, [x for m, t in hist.items() for x in (t, m)])
        if delta.item_cat:
            op(k.item_category, "s", 0, list(_flat(delta.item_cat.items())))
        if vectors is not None:
            tag = vectors.model
            for user, vec in vectors.users.items():
                op(k.user_vec(user), "s", 0, ["vec", vec, "model", tag])
            for item, vec in vectors.items_set.items():
                op(k.item_vec(item), "s", 0, ["vec", vec, "model", tag])
            for item, (base, change) in vectors.items_add.items():
                op(k.item_vec(item), "v", len(base) // 4, [tag, base, change])
        if landmark is None:
            lm = ""
        elif ctx.landmark_raw is not None and ctx.landmark == landmark:
            lm = ctx.landmark_raw  # compare with exactly what is stored
        else:
            lm = _num(landmark)
        t = delta.last_event_time
        payload = {
            "g": {self._field(p): ctx.stored_offsets.get(p, "-1") for p in delta.offsets},
            "lm": lm,
            "off": {self._field(p): str(o) for p, o in delta.offsets.items()},
            "t": _num(t if math.isfinite(t) else 0.0),
            "n": delta.applied,
            "k": keys,
            "ops": ops,
        }
        started = time.perf_counter()
        result = await self._apply(keys=[k.offsets, k.meta], args=[_pack(payload)])
        metrics.REDIS_APPLY_SECONDS.observe(time.perf_counter() - started)
        self.commands_sent += 1
        return int(result[0])

    async def rescale(self, policy: Any, old_landmark: float, t: float) -> None:
        """Move the decay landmark up to event time ``t`` (see :func:`rescale`)."""
        new_landmark = float(math.floor(t))
        await rescale(self, policy.rescale_factor(old_landmark, new_landmark), new_landmark)

    async def init_landmark(self, landmark: float) -> float:
        """Set the decay landmark if none is stored yet; return the stored one."""
        await self.client.hsetnx(self.keys.meta, "landmark", _num(landmark))
        self.commands_sent += 2
        stored = await self.client.hget(self.keys.meta, "landmark")
        return float(stored if stored is not None else landmark)


async def _scan_decayed(client: aioredis.Redis, keys: Keys) -> list[str]:
    """Every forward-decayed sorted set under the prefix (histories hold times, not scores)."""
    found: list[str] = []
    async for raw in client.scan_iter(match=keys.pattern(), count=1000, _type="zset"):
        name = raw.decode() if isinstance(raw, bytes) else raw
        if not name.endswith(":hist"):
            found.append(name)
    return found


async def rescale(state: RedisState, factor: float, new_landmark: float) -> int:
    """Multiply every decayed score by ``factor`` and move the landmark (rare: see docs/redis-keys.md).

    Writers are fenced by the ``rescaling`` flag in the meta hash, which the apply script honours.
    Vectors are not decayed and stay as they are.
    """
    client, keys = state.client, state.keys
    await client.hset(keys.meta, "rescaling", "1")
    names = await _scan_decayed(client, keys)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.zunionstore(name, {name: factor})
        pipe.zremrangebyscore(name, "-inf", 1e-250)  # entries decayed to nothing
    await pipe.execute()
    await client.hset(keys.meta, mapping={"landmark": _num(new_landmark), "rescaling": "0"})
    logger.info("rescaled %d decayed keys by %.3g; landmark now %s", len(names), factor, new_landmark)
    return len(names)

