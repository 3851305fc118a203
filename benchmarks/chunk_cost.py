"""Calibrates the chunk cost model of streams/chunked.py: each apply chunk's Redis time against
what it holds.

Usage: python benchmarks/chunk_cost.py [--events 40000] [--factors 128] [--chunk-cost 500] [--isgd]
                                       [--replays 3] [--out benchmarks/results/chunk_cost.json]

The batch processor alone (no Kafka) feeds live-shaped clicks (``ShopSimulator.live`` at 2,000/s:
interleaved shoppers, 50k users, 10k items; a random published model of ``--factors``, the
fold-in mode) in ``batch_max_events`` slices, overlapped as the worker does, to a private
``redis-server`` with every script call recorded. The calls are then replayed alone, one after another, on a flushed
Redis (``--replays`` times, the least time kept: the cost without the processor on the same cores).
Each chunk's server time (``apply_chunk.lua``, ``INFO commandstats`` before and after it) is matched with what its payload
holds: ops, sorted-set pairs, hash fields written and deleted, vector components, SETs, DELs.
A least-squares fit of time on those counts gives the µs of each; the result also has how the
model's estimate (:func:`driftrec.streams.chunked.op_cost`) compares with the measured time, and the
slowest chunk, begin, finish and load call. ``--chunk-cost 0`` records and replays one
``apply_batch.lua`` per batch instead (the apply before chunks): ``whole_batch_script_us``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import orjson
import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import processor_split  # noqa: E402
from apply_stall import SHOP  # noqa: E402
from write_path import publish_random_model  # noqa: E402

from driftrec.keys import Keys  # noqa: E402
from driftrec.simulator import ShopSimulator, wall_clock  # noqa: E402
from driftrec.streams import chunked  # noqa: E402
from driftrec.streams.processor import BatchProcessor, RawRecord  # noqa: E402
from driftrec.streams.published import FactorCache  # noqa: E402
from driftrec.streams.redis_state import RedisState  # noqa: E402
from tools import benchinfo  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FEATURES = ("ops", "z_pairs", "s_fields", "x_fields", "v_components", "t_ops", "d_ops", "z_cuts")


def features(payload: bytes) -> dict[str, float]:
    p = msgpack.unpackb(payload, raw=True)
    f = dict.fromkeys(FEATURES, 0.0)
    for _, kind, cap, flat in p[b"ops"]:
        kind = kind.decode()
        f["ops"] += 1
        if kind == "z":
            f["z_pairs"] += len(flat) // 2
            f["z_cuts"] += cap != 0
        elif kind == "s":
            f["s_fields"] += len(flat) // 2
        elif kind == "x":
            f["x_fields"] += len(flat)
        elif kind == "v":
            f["v_components"] += abs(cap)
        elif kind == "t":
            f["t_ops"] += 1
        else:
            f["d_ops"] += 1
    return f


def estimate(payload: bytes) -> float:
    p = msgpack.unpackb(payload, raw=True)
    return sum(chunked.op_cost(kind.decode(), cap, flat) for _, kind, cap, flat in p[b"ops"])


def evalsha_usec(sync: redis.Redis) -> int:
    return int(sync.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))


async def run(port: int, args: argparse.Namespace) -> dict[str, Any]:
    s = processor_split.split_settings(port, factors=args.factors)
    sync = redis.Redis(port=port)
    sync.flushall()
    keys = Keys(s.key_prefix)
    sim = ShopSimulator.live(rate=2000.0, shoppers=SHOP["shoppers"], n_users=SHOP["users"], n_items=SHOP["items"],
                             n_categories=SHOP["categories"], seed=SHOP["seed"])
    if not args.isgd:
        publish_random_model(sync, s, list(sim.item_ids))
    rows = [orjson.dumps(e) for e in wall_clock(sim.events(args.events))]
    raws = [RawRecord(s.clicks_topic, j % 4, j // 4, v) for j, v in enumerate(rows)]
    client = aioredis.Redis.from_url(s.redis)
    state = RedisState(client, keys, s.clicks_topic, window=s.cooc_window, history_len=s.history_len,
                       neighbours_k=s.neighbours_k, trending_k=s.trending_k, chunk_cost=args.chunk_cost)
    sent: dict[tuple[str, int], bytes] = {}
    recorded: list[tuple[Any, ...]] = []
    send = state._chunks.send

    async def keep(commands: list[tuple[Any, ...]]) -> Any:
        recorded.extend(commands)
        for c in commands:
            if c[1] == state._chunks.sha[chunked.APPLY_CHUNK]:
                sent[(c[4], int(c[5]))] = c[6]
        return await send(commands)
    state._chunks.send = keep  # type: ignore[method-assign]
    load = state._load
    load_sha = load.sha

    async def keep_load(keys: list[str], args: list[bytes]) -> Any:
        recorded.append(("EVALSHA", load_sha, len(keys), *keys, *args))
        return await load(keys=keys, args=args)
    state._load = keep_load  # type: ignore[assignment]
    send_apply = state.send_apply
    apply_sha = state._apply.sha

    async def keep_whole(prepared: Any) -> Any:  # --chunk-cost 0: one apply_batch.lua per batch
        if prepared.chunked is None:
            recorded.append(("EVALSHA", apply_sha, 2, keys.offsets, keys.meta, prepared.payload))
        return await send_apply(prepared)
    state.send_apply = keep_whole  # type: ignore[method-assign]

    async def sink(dead: Any) -> None:
        pass

    proc = BatchProcessor(s, state, sink, FactorCache(client, keys, s.fold_in_regularization))
    n = s.batch_max_events
    for k in range(0, len(raws), n):
        await proc.feed(raws[k:k + n], k)
    await proc.flush()
    await client.aclose()
    # Replayed alone, command after command, on a flushed Redis (each meets the state it met),
    # ``--replays`` times: the least time of each is its cost without the worker on the same cores.
    shas = {v: k for k, v in state._chunks.sha.items()} | {load_sha: "load_batch.lua", apply_sha: "apply_batch.lua"}
    whole: dict[int, int] = {}
    loads: list[tuple[dict[str, float], int]] = []
    timed: dict[tuple[str, int], int] = {}
    others: dict[str, int] = {}
    for _ in range(args.replays):
        sync.flushall()
        seen: dict[tuple[str, int], int] = {}
        worst: dict[str, int] = {}
        for j, c in enumerate(recorded):
            before = evalsha_usec(sync)
            sync.execute_command(*c)
            took = evalsha_usec(sync) - before  # the script and every command it ran
            name = shas.get(c[1], "other")
            if name == chunked.APPLY_CHUNK:
                seen[(c[4], int(c[5]))] = took
            elif name == "apply_batch.lua":
                whole[j] = min(took, whole.get(j, took))
            elif name == "load_batch.lua" and len(loads) < len(recorded):
                spec = msgpack.unpackb(c[-1], raw=True)
                loads.append(({"users": len(spec[b"hk"]), "user_vectors": len(spec[b"uk"]),
                               "items": len(spec[b"ik"])}, took))
                worst[name] = max(worst.get(name, 0), took)
            else:
                worst[name] = max(worst.get(name, 0), took)
        timed = {k: min(v, timed.get(k, v)) for k, v in seen.items()}
        others = {k: min(v, others.get(k, v)) for k, v in worst.items()}
    head = {"chunk_cost": args.chunk_cost, "factors": args.factors, "events": args.events,
            "vectors": "isgd" if args.isgd else "fold-in", "slowest_other_scripts_us": others,
            "loads": [{**f, "us": us} for f, us in loads[:len(loads) // args.replays]]}
    if whole:
        w = sorted(whole.values())
        return head | {"whole_batch_script_us": {"batches": len(w), "max": w[-1], "p50": w[len(w) // 2],
                                                 "per_event": round(sum(w) / args.events, 1)}}
    keys_ = [key for key in sent if key in timed]
    X = np.array([[features(sent[key])[f] for f in FEATURES] + [1.0] for key in keys_])
    y = np.array([timed[key] for key in keys_], dtype=float)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    est = np.array([estimate(sent[key]) for key in keys_])
    ratio = y / est
    return head | {
        "chunks": len(keys_),
        "chunk_us": {"max": int(y.max()), "p99": float(np.percentile(y, 99)), "p50": float(np.median(y)),
                     "mean": round(float(y.mean()), 1)},
        "fit_us_per": {f: round(float(c), 3) for f, c in zip((*FEATURES, "chunk"), coef, strict=True)},
        "fit_r2": round(float(1 - ((X @ coef - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()), 3),
        "measured_over_estimate": {"p50": round(float(np.median(ratio)), 3),
                                   "p99": round(float(np.percentile(ratio, 99)), 3),
                                   "max": round(float(ratio.max()), 3)},
        "mean_features_per_chunk": {f: round(float(X[:, j].mean()), 1) for j, f in enumerate(FEATURES)},
        "chunk_rows": {"columns": [*FEATURES, "us"],
                       "rows": [[*map(int, x[:-1]), int(t)] for x, t in zip(X, y, strict=True)]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--factors", type=int, default=128)
    ap.add_argument("--chunk-cost", type=float, default=float(chunked.CHUNK_COST))
    ap.add_argument("--replays", type=int, default=3)
    ap.add_argument("--isgd", action="store_true", help="no published model: ISGD vectors (item vector sums)")
    ap.add_argument("--out", type=Path, default=RESULTS / "chunk_cost.json")
    args = ap.parse_args()
    with processor_split.private_redis("driftrec-chunkcost-") as port:
        result = asyncio.run(run(port, args))
    result |= {"machine": benchinfo.machine(["redis"]), "commit": benchinfo.commit(),
               "command": "python benchmarks/chunk_cost.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("loads", "chunk_rows", "machine")}, indent=1))


if __name__ == "__main__":
    main()
