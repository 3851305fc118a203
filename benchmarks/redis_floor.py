"""Redis' CPU per event for the write path's updates, with and without the apply script.

Usage: python benchmarks/redis_floor.py [--events 100000] [--rounds 3] [--model]
                                        [--out benchmarks/results/redis_floor.json]

Redis runs commands on one thread, so one Redis process can take at most ``1e6 / c`` events per
second when it spends ``c`` µs of CPU per event. This benchmark measures ``c`` for the updates
the write path must make, written to stock Redis in several ways, on the same recorded batches:

- ``lua_load_and_apply``: what the worker asks of Redis per batch: the load script
  (``load_batch.lua``: offsets, landmark, histories, the vectors the plan needs) and the apply
  script, one ``EVALSHA`` each, as the real run sent them;
- ``lua_apply``: the apply script (``streams/lua/apply_batch.lua``) alone;
- ``lua_zincrby``: the apply script with each sorted-set op written as one ``ZINCRBY`` per
  member (and the key cut after every op) instead of ``ZMSCORE`` + one variadic ``ZADD``;
- ``pipeline_zincrby``: no Lua. One ``MULTI``/``EXEC`` pipeline per batch in which every increment
  is its own ``ZINCRBY``, each bounded key is cut with ``ZREMRANGEBYRANK key 0 -(cap+1)``, hash
  ops are ``HSET``/``HDEL``, vectors a ``SET`` (of the delta: a lower bound, since adding it to
  the stored vector needs a read and arithmetic) and the offsets an ``HSET``. What the apply
  costs Redis with "pipelines" instead of a script (with no offset or landmark guard);
- ``pipeline_plain_zadd``: the same, but each sorted-set op is one variadic ``ZADD`` of the
  increments, as if Redis had a many-member ``ZADD INCR``. The scores it stores are wrong; the
  listpack work per member is what any update of a sorted-set member costs, so this is the floor
  of sorted-set rows on stock Redis (the hash and string writes are the same as above).

One round of the batch processor alone (the write-path benchmark's shop: 5,000 users, 10,000
items, seed 7; overlapped batches) records every load and apply it sends. Then, per round and variant,
Redis is flushed and the payloads are replayed in order; Redis' own CPU (``INFO cpu``: command
parsing, networking and execution) is read before and after, per event. Only
``lua_load_and_apply`` replays the load script; it comes on top of every other variant.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import apply_attrib  # noqa: E402
import processor_split  # noqa: E402
from write_path import publish_random_model  # noqa: E402

import driftrec.streams.redis_state as redis_state  # noqa: E402
from driftrec.keys import Keys  # noqa: E402
from tools import benchinfo  # noqa: E402
from tools.chaos.scale import redis_cpu_s  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _zincrby(pipe: Any, key: bytes, kv: list[Any]) -> None:
    for x in range(0, len(kv), 2):
        pipe.execute_command("ZINCRBY", key, kv[x + 1], kv[x])


def _zadd(pipe: Any, key: bytes, kv: list[Any]) -> None:
    args: list[Any] = []
    for x in range(0, len(kv), 2):
        args += (kv[x + 1], kv[x])
    pipe.execute_command("ZADD", key, *args)


def replay_pipeline(client: redis.Redis, payload: bytes, keys: Keys, zset: Callable[[Any, bytes, list[Any]], None]) -> None:
    """One batch's writes as a MULTI/EXEC pipeline, ``zset`` writing each sorted-set op."""
    p = msgpack.unpackb(payload, raw=True, strict_map_key=False)
    names = p[b"k"]
    pipe = client.pipeline(transaction=True)
    for idx, kind, cap, kv in p[b"ops"]:
        key = names[idx - 1]  # Lua's 1-based index
        if kind == b"z":
            if kv:
                zset(pipe, key, kv)
                if cap > 0:
                    pipe.execute_command("ZREMRANGEBYRANK", key, 0, -(cap + 1))
        elif kind == b"s":
            if kv:
                pipe.execute_command("HSET", key, *kv)
        elif kind == b"x":
            if kv:
                pipe.execute_command("HDEL", key, *kv)
        elif kind == b"t":
            pipe.execute_command("SET", key, kv[0])
        elif kind == b"v":
            pipe.execute_command("SET", key, kv[0] + b"\0" + kv[2])
        elif kind == b"d":
            pipe.execute_command("DEL", key)
        else:
            raise SystemExit(f"unknown op {kind!r}: update benchmarks/redis_floor.py")
    offsets = [v for kv in p[b"off"].items() for v in kv]
    if offsets:
        pipe.execute_command("HSET", keys.offsets, *offsets)
    pipe.execute()


def main() -> None:
    args, rows, items, settings, keys = processor_split.replay_setup(__doc__)
    n = args.events
    payloads: list[bytes] = []
    loads: list[tuple[int, list[str], list[bytes]]] = []
    cpu_us: dict[str, list[float]] = {}
    commands: dict[str, float] = {}
    with processor_split.private_redis("driftrec-floor-") as port:
        real = asyncio.run(processor_split.one_round(port, rows, items, args.model, record=payloads,
                                                     record_loads=loads))
        sync = redis.Redis(port=port)
        apply_src = apply_attrib.apply_script()
        sources = {"apply": apply_src, "load": redis_state.lua_source("load_batch.lua"),
                   "zincrby": apply_src.replace(apply_attrib.Z_OP, "for x = 1, #kv, 2 do redis.call('ZINCRBY', "
                                                "key, kv[x + 1], kv[x]) end bounded(key, cap)")}
        shas: dict[str, str] = {}
        loads_before: dict[int, list[tuple[list[str], list[bytes]]]] = {}
        for before, lkeys, largs in loads:
            loads_before.setdefault(before, []).append((lkeys, largs))

        def script(name: str) -> Callable[[int], None]:
            def apply(i: int) -> None:
                if sync.evalsha(shas[name], 2, keys.offsets, keys.meta, payloads[i])[0] != 1:
                    raise SystemExit(f"{name}: a replayed batch was not applied")
            return apply

        apply_lua = script("apply")

        def load_then_apply(i: int) -> None:
            for lkeys, largs in loads_before.get(i, ()):
                sync.evalsha(shas["load"], len(lkeys), *lkeys, *largs)
            apply_lua(i)

        ways: dict[str, Callable[[int], None]] = {
            "lua_load_and_apply": load_then_apply,
            "lua_apply": apply_lua,
            "lua_zincrby": script("zincrby"),
            "pipeline_zincrby": lambda i: replay_pipeline(sync, payloads[i], keys, _zincrby),
            "pipeline_plain_zadd": lambda i: replay_pipeline(sync, payloads[i], keys, _zadd),
        }
        for r in range(args.rounds):
            for name, way in (ways.items() if r % 2 == 0 else reversed(ways.items())):
                sync.flushall()
                if args.model:
                    publish_random_model(sync, settings, items)
                shas.update({name: sync.script_load(src) for name, src in sources.items()})
                sync.config_resetstat()
                before = redis_cpu_s(sync)
                for i in range(len(payloads)):
                    way(i)
                spent = redis_cpu_s(sync) - before
                cpu_us.setdefault(name, []).append(round(spent * 1e6 / n, 2))
                if r == 0:
                    stats = sync.info("commandstats")
                    commands[name] = round(sum(v["calls"] for k, v in stats.items()
                                               if k not in ("cmdstat_info", "cmdstat_config")) / n, 2)
                print(f"round {r} {name}: {cpu_us[name][-1]} µs of Redis CPU per event", flush=True)
    med = {k: statistics.median(v) for k, v in cpu_us.items()}
    result = {
        **processor_split.replay_head(args, payloads, real),
        "redis_cpu_us_per_event": cpu_us, "median_redis_cpu_us_per_event": med,
        "max_events_per_s_of_one_redis": {k: round(1e6 / v) for k, v in med.items()},
        "redis_commands_per_event": commands,
        "simulator": processor_split.SHOP,
        "machine": benchinfo.machine(["redis", "orjson", "msgpack"]), "commit": benchinfo.commit(),
        "command": "python benchmarks/redis_floor.py " + " ".join(sys.argv[1:]),
    }
    out = args.out or RESULTS / ("redis_floor_foldin.json" if args.model else "redis_floor.json")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median": med, "max_events_per_s_of_one_redis": result["max_events_per_s_of_one_redis"],
                      "real_run": result["real_run"]}, indent=1))


if __name__ == "__main__":
    main()
