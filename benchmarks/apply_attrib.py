"""Where the apply script's Redis time goes, by subtraction: recorded payloads replayed on variants.

Usage: python benchmarks/apply_attrib.py [--events 100000] [--rounds 3] [--model]
                                         [--out benchmarks/results/apply_attrib.json]

One round of the batch processor alone (overlapped batches, as the worker feeds them; the
write-path benchmark's shop: 5,000 users, 10,000 items, seed 7) records every apply payload it
sends. Then, per round and per variant, Redis is flushed and the payloads are replayed in order
with ``EVALSHA`` (so each variant meets the state the real run met, and every offset guard
passes), and the server's time for the script (``INFO commandstats``: the Lua and every command
it runs) is taken per event. The variants differ from ``streams/lua/apply_batch.lua`` only where
named:

- ``full``: the script itself;
- ``no_vectors``: ``v`` ops (float32 item-vector sums) skipped;
- ``no_neighbour_rows``: ``z`` ops on neighbour rows (``cap`` = ``neighbours_k``) skipped;
- ``neighbour_rows_plain_zadd``: neighbour rows get one plain variadic ``ZADD`` of the increments
  (then the same pruning), i.e. no ``ZMSCORE``, no Lua arithmetic: what a native "ZADD INCR
  many" would cost (the stored scores differ, the row sizes do not);
- ``decode_and_guards``: no op at all: decoding the payload, the guards, the offsets.

The differences give the neighbour rows' share, the cost of reading scores back for the
increment, and the floor of the rest.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import processor_split  # noqa: E402
from write_path import publish_random_model  # noqa: E402

import driftrec.streams.redis_state as redis_state  # noqa: E402
from tools import benchinfo  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
#: How apply_ops.lua writes a sorted-set op; the variants here and in redis_floor.py replace it.
Z_OP = "if #kv > 0 and zincr(key, kv) > 0 then bounded(key, cap) end"


def apply_script() -> str:
    """``apply_batch.lua`` as the worker loads it, checked to still hold the text the variants replace."""
    full = redis_state.lua_source("apply_batch.lua")
    if Z_OP not in full or "elseif kind == 'v' then" not in full:
        raise SystemExit("apply_ops.lua changed: update the variants of benchmarks/apply_attrib.py and redis_floor.py")
    return full


def variants(neighbours_k: int) -> dict[str, str]:
    full = apply_script()
    rows = f"cap == {neighbours_k}"
    plain = ("if #kv > 0 then local s = {} for x = 1, #kv, 2 do s[x] = kv[x + 1]; s[x + 1] = kv[x] end "
             "redis.call('ZADD', key, unpack(s)) bounded(key, cap) end")
    return {
        "full": full,
        "no_vectors": full.replace("elseif kind == 'v' then", "elseif kind == 'v' and false then"),
        "no_neighbour_rows": full.replace(Z_OP, f"if not ({rows}) and #kv > 0 and zincr(key, kv) > 0 then "
                                                 "bounded(key, cap) end"),
        "neighbour_rows_plain_zadd": full.replace(Z_OP, f"if {rows} then {plain} else {Z_OP} end"),
        "decode_and_guards": full.replace("for _, op in ipairs(p.ops) do", "for _, op in ipairs({}) do"),
    }


def main() -> None:
    args, rows, items, settings, keys = processor_split.replay_setup(__doc__)
    n = args.events
    payloads: list[bytes] = []
    script_us: dict[str, list[float]] = {}
    by_command: dict[str, dict[str, float]] = {}
    with processor_split.private_redis("driftrec-attrib-") as port:
        real = asyncio.run(processor_split.one_round(port, rows, items, args.model, record=payloads))
        sync = redis.Redis(port=port)
        scripts = variants(settings.neighbours_k)
        for r in range(args.rounds):
            for name, source in (scripts.items() if r % 2 == 0 else reversed(scripts.items())):
                sync.flushall()
                if args.model:
                    publish_random_model(sync, settings, items)
                sha = sync.script_load(source)
                sync.config_resetstat()
                for raw in payloads:
                    if sync.evalsha(sha, 2, keys.offsets, keys.meta, raw)[0] != 1:
                        raise SystemExit(f"{name}: a replayed batch was not applied")
                stats = sync.info("commandstats")
                script_us.setdefault(name, []).append(round(stats["cmdstat_evalsha"]["usec"] / n, 2))
                if r == 0:
                    by_command[name] = {k.removeprefix("cmdstat_"): round(v["usec"] / n, 2) for k, v in stats.items()
                                        if k != "cmdstat_evalsha" and v["usec"] / n >= 0.05}
                print(f"round {r} {name}: {script_us[name][-1]} µs per event", flush=True)
    med = {k: statistics.median(v) for k, v in script_us.items()}
    result = {
        **processor_split.replay_head(args, payloads, real),
        "script_us_per_event": script_us, "median_script_us_per_event": med,
        "commands_us_per_event_round_0": by_command,
        "derived_us_per_event": {
            "neighbour_rows": round(med["full"] - med["no_neighbour_rows"], 2),
            "neighbour_rows_read_back_and_lua_arithmetic": round(med["full"] - med["neighbour_rows_plain_zadd"], 2),
            "vectors": round(med["full"] - med["no_vectors"], 2),
            "other_ops": round(med["no_neighbour_rows"] - med["decode_and_guards"], 2),
            "decode_and_guards": med["decode_and_guards"],
        },
        "simulator": processor_split.SHOP,
        "machine": benchinfo.machine(["redis", "orjson"]), "commit": benchinfo.commit(),
        "command": "python benchmarks/apply_attrib.py " + " ".join(sys.argv[1:]),
    }
    out = args.out or RESULTS / ("apply_attrib_foldin.json" if args.model else "apply_attrib.json")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["derived_us_per_event"], indent=1))


if __name__ == "__main__":
    main()
