"""Moving the decay landmark: every decayed key multiplied (and rounded) exactly once, even across crashes.

A landmark move (every ~14 half-lives of event time, ``models/decay.py``) rewrites every decayed key:
each sorted set of decayed scores and each user item HASH. Writers are fenced by the ``rescaling``
flag in the meta hash, which the apply scripts honour (``landmark_guard.lua``).

Crash safety. The plan (the new landmark and the factor) is written to the meta hash together with
the fence, before any key changes. Keys are rescaled one atomic script each
(``streams/lua/rescale_key.lua``), in (hash slot, name) order, and each script also moves its slot's
progress marker (a key in the same slot) to ``<plan>\\n<key name>``, but only if the marker still holds
what this rescaler last saw there: two rescalers can never both multiply a key. One worker at a time
holds a lease (``P:{g}:rescale_lease``, renewed after every chunk); a worker that dies part-way leaves
fence, plan and markers, its lease expires, and the next worker that meets the fence (its batch is
refused, or its own retry after a Redis error) takes the lease and finishes the same plan, skipping
every key up to its slot's marker. The landmark moves and the fence lifts in one atomic step at the
end; markers of a finished plan are then deleted (a marker of another plan is never trusted).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from redis.crc import key_slot

from driftrec.keys import Keys
from driftrec.streams.redis_state import _num, lua_source

__all__ = ["LEASE_S", "progress_key", "lease_key", "run_rescale"]

logger = logging.getLogger(__name__)

#: How long a rescaler's lease lasts without renewal; it renews after every chunk of keys.
LEASE_S = 60.0
_CHUNK = 200
_KEY_LUA = lua_source("rescale_key.lua")
_ACQUIRE = """local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# Moves the landmark and lifts the fence in one step, only for the plan it was given.
_FINISH = """if redis.call('HGET', KEYS[1], 'rescale_to') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'landmark', ARGV[1], 'rescaling', '0')
redis.call('HDEL', KEYS[1], 'rescale_to', 'rescale_factor')
return 1"""


def progress_key(keys: Keys, slot: int) -> str:
    """STRING ``<plan>\\n<key>``: the last key of this hash slot a rescale finished (in name order)."""
    # A local import: cluster_state imports this module's neighbours.
    from driftrec.streams.cluster_state import slot_tag

    return f"{keys.prefix}:{{{slot_tag(slot)}}}:rescaled"


def lease_key(keys: Keys) -> str:
    """STRING: id of the worker rescaling now (expires after :data:`LEASE_S` without renewal)."""
    return f"{keys.prefix}:{{g}}:rescale_lease"


class LostLease(Exception):
    """Another rescaler took over (this one stalled past its lease): stop, it finishes the plan."""


def _text(raw: Any) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


async def _scan(client: Any, match: str, kind: str) -> list[str]:
    found: list[str] = []
    async for raw in client.scan_iter(match=match, count=1000, _type=kind):
        found.append(_text(raw) or "")
    return found


async def _acquire(client: Any, keys: Keys, owner: str) -> bool:
    return bool(await client.eval(_ACQUIRE, 1, lease_key(keys), owner, int(LEASE_S * 1000)))


async def run_rescale(state: Any, owner: str, *, plan: tuple[float, float] | None,
                      expect_landmark: float | None = None,
                      before_keys: Callable[[], Awaitable[None]] | None = None) -> bool:
    """Rescale every decayed key of ``state`` (a :class:`~driftrec.streams.redis_state.RedisState`) and move
    the landmark; True when this call finished a rescale. ``owner`` names the worker in the lease
    (the same across its own retries, so a retry takes its lease back).

    ``plan`` is ``(new landmark, factor)`` to start one; ``None`` only finishes a recorded plan
    (what a worker does when the fence refuses its batch). A recorded plan always wins over
    ``plan``. Returns False without touching anything when the lease is held by another worker,
    when there is nothing to finish, or when the stored landmark is no longer ``expect_landmark``
    (someone else moved it). ``before_keys`` runs once the fence is up (Redis Cluster: finish the
    batches in flight).
    """
    client, keys = state.client, state.keys
    if plan is None and _text(await client.hget(keys.meta, "rescaling")) != "1":
        return False  # the common case, without touching the lease
    if not await _acquire(client, keys, owner):
        return False
    try:
        flag, to, factor_raw, landmark = (_text(x) for x in await client.hmget(
            keys.meta, "rescaling", "rescale_to", "rescale_factor", "landmark"))
        if flag == "1":
            if to is None or factor_raw is None:
                logger.error("the meta hash says a rescale runs but holds no plan (written by an older "
                             "version, or by hand): rebuild the state from Kafka (docs/runbook.md)")
                return False
            new_landmark, factor = float(to), float(factor_raw)
            logger.warning("finishing a rescale another worker started: landmark -> %s", to)
        elif plan is None:
            return False
        elif expect_landmark is not None and landmark is not None and float(landmark) != expect_landmark:
            return False  # moved already, by another worker
        else:
            new_landmark, factor = plan
            to = _num(new_landmark)
            await client.hset(keys.meta, mapping={"rescaling": "1", "rescale_to": to,
                                                  "rescale_factor": _num(factor)})
        if before_keys is not None:
            await before_keys()
        done = await _rescale_keys(state, owner, to, factor)
        if not await client.eval(_FINISH, 1, keys.meta, to):
            raise LostLease("the plan changed under this rescaler")
        logger.info("rescaled %d decayed keys by %.3g; landmark now %s", done, factor, to)
        return True
    finally:
        try:
            await client.eval(_RELEASE, 1, lease_key(keys), owner)
        except Exception:  # Redis down: the lease expires by itself
            logger.debug("could not release the rescale lease", exc_info=True)


async def _rescale_keys(state: Any, owner: str, plan_id: str, factor: float) -> int:
    """Every decayed key not yet done under ``plan_id``, in (slot, name) order; returns how many."""
    client, keys = state.client, state.keys
    # Every ZSET is decayed but the session index, whose scores are event times.
    kinds = {name: "z" for name in await _scan(client, keys.pattern(), "zset") if not keys.is_item_sessions(name)}
    kinds.update({name: "h" for name in await _scan(client, keys.user_state("*"), "hash")})
    by_slot: dict[int, list[str]] = defaultdict(list)
    for name in kinds:
        by_slot[key_slot(name.encode())].append(name)
    slots = sorted(by_slot)
    pipe = client.pipeline(transaction=False)
    for slot in slots:
        pipe.get(progress_key(keys, slot))
    markers = dict(zip(slots, (_text(m) or "" for m in await pipe.execute()), strict=True))
    todo: list[tuple[str, str, str, str]] = []  # (key, kind, marker expected, marker after)
    for slot in slots:
        mark = markers[slot]
        plan, _, last = mark.partition("\n")
        names = sorted(by_slot[slot])
        if plan == plan_id:
            names = [n for n in names if n > last]
        for name in names:
            after = f"{plan_id}\n{name}"
            todo.append((name, kinds[name], mark, after))
            mark = after
    arg = _num(factor)
    for start in range(0, len(todo), _CHUNK):
        pipe = client.pipeline(transaction=False)
        for name, kind, expected, after in todo[start:start + _CHUNK]:
            pipe.eval(_KEY_LUA, 2, name, progress_key(keys, key_slot(name.encode())), arg, kind, expected, after)
        results = await pipe.execute()
        if any(r == -1 for r in results):
            raise LostLease("another rescaler moved a progress marker")
        if not await _acquire(client, keys, owner):
            raise LostLease("the rescale lease expired and another worker holds it")
    pipe = client.pipeline(transaction=False)
    for slot in slots:
        pipe.delete(progress_key(keys, slot))
    await pipe.execute()
    return len(todo)
