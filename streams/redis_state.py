"""Reads what a micro-batch needs from Redis and applies its aggregated delta in one atomic script.

Two round trips per batch, whatever its size: one pipeline reads the applied offsets, the decay
landmark and the recent history of every user in the batch; one ``EVALSHA`` of
``lua/apply_batch.lua`` applies every increment together with the new offsets (effectively once:
the script refuses a batch whose expected offsets are no longer the stored ones).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis

from driftrec.keys import Keys
from models.online import BatchDelta, EventView

__all__ = ["RedisState", "BatchContext", "rescale", "APPLIED", "STALE_OFFSETS", "LANDMARK_MOVED"]

logger = logging.getLogger(__name__)

APPLIED, STALE_OFFSETS, LANDMARK_MOVED = 1, 0, -1
_APPLY_LUA = resources.files("streams").joinpath("lua/apply_batch.lua").read_text()
_CATS_KEPT = 32


def _num(x: float) -> str:
    return repr(float(x))


@dataclass(frozen=True)
class BatchContext:
    """What Redis knew before the batch: offsets (as stored strings), landmark, histories."""

    stored_offsets: dict[int, str]
    landmark: float | None
    histories: dict[str, list[tuple[str, float]]]

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
        self.commands_sent = 0  # Redis commands issued, for the benchmark's per-event cost

    def _field(self, partition: int) -> str:
        return f"{self.topic}:{partition}"

    async def load(self, events: list[EventView]) -> BatchContext:
        users = list(dict.fromkeys(e.user for e in events))
        partitions = sorted({e.partition for e in events})
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.keys.offsets, [self._field(p) for p in partitions])
        pipe.hget(self.keys.meta, "landmark")
        for user in users:
            pipe.zrange(self.keys.user_hist(user), -self.window, -1, withscores=True)
        res = await pipe.execute()
        self.commands_sent += len(res)
        stored = {p: (v.decode() if v is not None else "-1") for p, v in zip(partitions, res[0], strict=True)}
        landmark = float(res[1]) if res[1] is not None else None
        histories = {
            user: [(m.decode(), float(s)) for m, s in rows] for user, rows in zip(users, res[2:], strict=True)
        }
        return BatchContext(stored, landmark, histories)

    async def apply(self, delta: BatchDelta, ctx: BatchContext, landmark: float) -> int:
        """Apply ``delta`` if the offsets are still those ``ctx`` saw; returns APPLIED or why not."""
        k = self.keys
        keys: list[str] = [k.offsets, k.meta]
        ops: list[list[Any]] = []

        def op(key: str, kind: str, cap: int, pairs: dict[str, Any]) -> None:
            keys.append(key)
            flat: list[str] = []
            for member, value in pairs.items():
                flat.append(member)
                flat.append(_num(value) if kind != "s" else str(value))
            ops.append([len(keys), kind, cap, flat])

        for user in sorted(delta.forgotten):
            for key in (k.user_hist(user), k.user_items(user), k.user_cats(user), k.user_vec(user)):
                op(key, "d", 0, {})
        if delta.pop:
            op(k.popularity, "z", 0, delta.pop)
        for cat, items in delta.trend.items():
            op(k.trending(cat), "z", self.trending_k, items)
        for item, nbrs in delta.cooc.items():
            op(k.item_nbrs(item), "z", self.neighbours_k, nbrs)
        for user, items in delta.user_items.items():
            op(k.user_items(user), "z", self.history_len, items)
        for user, cats in delta.user_cats.items():
            op(k.user_cats(user), "z", _CATS_KEPT, cats)
        for user, hist in delta.hist.items():
            op(k.user_hist(user), "h", self.history_len, hist)
        if delta.item_cat:
            op(k.item_category, "s", 0, delta.item_cat)
        payload = {
            "g": {self._field(p): ctx.stored_offsets.get(p, "-1") for p in delta.offsets},
            "lm": _num(landmark),
            "off": {self._field(p): str(o) for p, o in delta.offsets.items()},
            "t": _num(delta.last_event_time if math.isfinite(delta.last_event_time) else 0.0),
            "n": delta.applied,
            "ops": ops or [[2, "s", 0, []]],  # cjson would encode an empty table as {} not []
        }
        result = await self._apply(keys=keys, args=[orjson.dumps(payload)])
        self.commands_sent += 1
        return int(result[0])

    async def rescale(self, policy: Any, old_landmark: float, t: float) -> None:
        """Move the decay landmark up to event time ``t`` (see :func:`rescale`)."""
        new_landmark = float(math.floor(t))
        await rescale(self, policy.rescale_factor(old_landmark, new_landmark), new_landmark)

    async def init_landmark(self, landmark: float) -> float:
        """Set the decay landmark if none is stored yet; return the stored one."""
        await self.client.hsetnx(self.keys.meta, "landmark", _num(landmark))
        return float(await self.client.hget(self.keys.meta, "landmark"))


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

