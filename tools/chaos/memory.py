"""Redis memory per user and per item: ``MEMORY USAGE`` of sampled keys, grouped by owner.

A user owns ``P:{u:U}:iw``, ``:cats`` and ``:vec``; an item owns ``P:{i:I}:nbr`` and
``:vec`` and a share of the global keys that hold one entry per item (``P:{g}:pop``, ``:icat``
and its trending list), counted as that key's usage divided by its entries. ``MEMORY USAGE ...
SAMPLES 0`` measures every element, key name and object overhead included (not the main
dictionary's slot, ~16-24 bytes a key, which ``keyspace_overhead_per_key`` estimates from
``MEMORY STATS``).
"""

from __future__ import annotations

import logging
import random
import statistics
from typing import Any

import redis

from driftrec.keys import Keys
from driftrec.userstate import decode_fields

__all__ = ["memory_per_owner", "memory_usage", "redis_memory_info", "encoding_what_if", "history_sizes"]

logger = logging.getLogger(__name__)

_USER_PARTS = ("iw", "cats", "vec")
_ITEM_PARTS = ("nbr", "vec")


def memory_usage(client: redis.Redis, names: list[str]) -> list[int]:
    """``MEMORY USAGE ... SAMPLES 0`` of each key (0 when missing), one pipeline."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.execute_command("MEMORY", "USAGE", name, "SAMPLES", "0")
    return [int(x or 0) for x in pipe.execute()]


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    return {"mean": round(statistics.fmean(v), 1), "p50": v[len(v) // 2], "p95": v[int(0.95 * (len(v) - 1))],
            "max": v[-1]}


def redis_memory_info(client: redis.Redis) -> dict[str, Any]:
    info = client.info("memory")
    stats = client.execute_command("MEMORY", "STATS")
    if not isinstance(stats, dict):  # redis-py parses it into a dict; a raw reply is a flat list
        stats = dict(zip(stats[::2], stats[1::2], strict=False))
    st = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in stats.items()}
    keys = int(st.get("keys.count", 0) or 0)
    db0 = st.get("db.0") or {}
    overhead = int(next((v for k, v in db0.items() if (k.decode() if isinstance(k, bytes) else k)
                         == "overhead.hashtable.main"), 0)) if isinstance(db0, dict) else 0
    return {"used_memory": int(info["used_memory"]), "used_memory_dataset": int(info["used_memory_dataset"]),
            "used_memory_rss": int(info["used_memory_rss"]), "keys": keys,
            "keyspace_overhead_per_key": round(overhead / keys, 1) if keys else None,
            "mem_fragmentation_ratio": info.get("mem_fragmentation_ratio")}


def history_sizes(client: redis.Redis, keys: Keys, users: list[str]) -> list[int]:
    """Entries in each user's history (the time halves of ``P:{u}:iw``)."""
    pipe = client.pipeline(transaction=False)
    for u in users:
        pipe.hgetall(keys.user_state(u))
    return [len(decode_fields(row)[0]) for row in pipe.execute()]


def memory_per_owner(client: redis.Redis, keys: Keys, users: list[str], items: list[str], *,
                     sample: int = 500, seed: int = 0, history_len: int = 50) -> dict[str, Any]:
    """Bytes per user and per item over a random sample of each (see the module docstring)."""
    rng = random.Random(seed)
    us = rng.sample(users, min(sample, len(users)))
    its = rng.sample(items, min(sample, len(items)))
    hist_len = history_sizes(client, keys, us)
    user_bytes: list[float] = []
    at_cap: list[float] = []
    per_part: dict[str, list[int]] = {p: [] for p in _USER_PARTS}
    for u, n in zip(us, hist_len, strict=True):
        names = [f"{keys.prefix}:{{u:{u}}}:{p}" for p in _USER_PARTS]
        sizes = memory_usage(client, names)
        for p, b in zip(_USER_PARTS, sizes, strict=True):
            per_part[p].append(b)
        total = sum(sizes)
        if total:
            user_bytes.append(total)
            if n >= history_len:
                at_cap.append(total)
    n_items = int(client.zcard(keys.popularity))
    shared = memory_usage(client, [keys.popularity, keys.item_category])
    trend_names = [k.decode() for k in client.scan_iter(match=keys.trending("*"), count=1000)]
    trend_bytes = sum(memory_usage(client, trend_names)) if trend_names else 0
    trend_entries = sum(int(client.zcard(t)) for t in trend_names)
    share = (shared[0] + shared[1]) / max(n_items, 1) + trend_bytes / max(trend_entries, 1)
    item_bytes: list[float] = []
    item_part: dict[str, list[int]] = {p: [] for p in _ITEM_PARTS}
    for i in its:
        sizes = memory_usage(client, [f"{keys.prefix}:{{i:{i}}}:{p}" for p in _ITEM_PARTS])
        for p, b in zip(_ITEM_PARTS, sizes, strict=True):
            item_part[p].append(b)
        if sum(sizes):
            item_bytes.append(sum(sizes) + share)
    return {
        "users_sampled": len(user_bytes), "bytes_per_user": _stats(user_bytes),
        "bytes_per_user_at_history_cap": _stats(at_cap), "users_at_cap_in_sample": len(at_cap),
        "bytes_per_user_key": {p: _stats([float(x) for x in v if x]) for p, v in per_part.items()},
        "items_sampled": len(item_bytes), "bytes_per_item": _stats(item_bytes),
        "bytes_per_item_key": {p: _stats([float(x) for x in v if x]) for p, v in item_part.items()},
        "global_share_per_item_bytes": round(share, 1), "items_in_popularity": n_items,
    }


def encoding_what_if(client: redis.Redis, keys: Keys, users: list[str], *, sample: int = 100,
                     seed: int = 1) -> dict[str, Any]:
    """Bytes of users' item HASH ``P:{u}:iw`` as stored against the layout it replaced, rebuilt
    from its real contents under a scratch name: two sorted sets, ``hist`` (item -> time) and
    ``w`` (item -> weight), scores written by Redis as ``%.17g`` text."""
    rng = random.Random(seed)
    us = rng.sample(users, min(sample, len(users)))
    scratch = f"{keys.prefix}:{{whatif}}:"
    totals: dict[str, list[int]] = {"as_stored_iw": [], "old_hist_plus_w_zsets": []}
    for u in us:
        times, weights = decode_fields(client.hgetall(keys.user_state(u)))
        if not times or not weights:
            continue
        size = 0
        for name, members in (("h", times), ("w", weights)):
            client.delete(scratch + name)
            client.zadd(scratch + name, dict(members))
            size += int(client.execute_command("MEMORY", "USAGE", scratch + name, "SAMPLES", "0"))
            client.delete(scratch + name)
        totals["old_hist_plus_w_zsets"].append(size)
        totals["as_stored_iw"].append(int(client.execute_command(
            "MEMORY", "USAGE", keys.user_state(u), "SAMPLES", "0")))
    return {"users": len(totals["as_stored_iw"]),
            "user_items_bytes_mean": {k: round(statistics.fmean(v), 1) for k, v in totals.items() if v}}
