"""What the session_knn source costs in Redis reads: the reader's own store against a private Redis.

Starts ``redis-server`` on a free port (no persistence), writes 2,000 shoppers' item hashes (50
entries each, the worker's 16-byte values), their click logs (``P:{u:U}:clk``, the same history
packed, as the worker writes it) and 500 items' session indexes (50
shoppers each), then times, through ``online/app.py``'s ``create_store`` (the raw RESP pool the
reader uses), the expansion round trip with and without the session rows of 8 items, and the
extra round trip of ``reader_session_knn_users`` neighbours two ways: ``histories`` (before: their
whole item HASHes, ``HGETALL``, decoded) and ``click_logs`` (now: ``GET`` of their click logs,
decoded): wall time and this process's CPU per request, and Redis' own time per command
(``INFO commandstats``). Alternating rounds; medians.

    python benchmarks/session_knn_reads.py [--users 30] [--sample 20] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis
from reader import private_redis
from session_knn_cost import history_times

from common import RESULTS, alternating_rounds, commit, free_port, machine

from driftrec.keys import Keys
from driftrec.online.app import create_store
from driftrec.settings import Settings
from driftrec.userstate import pack_clicks


def _fill(r: redis.Redis, keys: Keys, rng: random.Random) -> None:
    now = 1_700_000_000.0
    pipe = r.pipeline(transaction=False)
    for u in range(2000):
        # sessions of 3-10 clicks a minute apart, hours apart (benchmarks/session_knn_cost.py)
        times: dict[str, float] = {}
        t = now - rng.random() * 3600
        while len(times) < 50:
            for _ in range(rng.randint(3, 10)):
                times[f"sku-{rng.randrange(5000)}"] = t
                t -= 60.0
            t -= rng.uniform(2 * 3600, 48 * 3600)
        pipe.hset(keys.user_state(f"user-{u}"), mapping={
            i: struct.pack("<dd", x, rng.random()) for i, x in times.items()})
        pipe.set(keys.user_clicks(f"user-{u}"), pack_clicks(times))
    for i in range(500):
        pipe.zadd(keys.item_sessions(f"sku-{i}"), {f"user-{rng.randrange(2000)}": now - rng.random() * 86400
                                                   for _ in range(50)})
        pipe.zadd(keys.item_nbrs(f"sku-{i}"), {f"sku-{rng.randrange(5000)}": rng.random() * 1e6 for _ in range(50)})
    pipe.execute()


async def _measure(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    store = create_store(settings)
    keys = Keys(settings.key_prefix)
    rng = random.Random(1)
    reqs = [([f"sku-{rng.randrange(500)}" for _ in range(8)], [f"user-{rng.randrange(2000)}" for _ in range(args.users)])
            for _ in range(args.requests)]

    async def expansion(with_sessions: bool) -> None:
        for items, _ in reqs:
            await store.read_expansion(items, 20, [], 10, items if with_sessions else [], args.sample)

    async def histories() -> None:  # the reader's read before the session values (0e4a223)
        for _, users in reqs:
            res = await store._run([["HGETALL", keys.user_state(u)] for u in users], frozenset(range(len(users))))
            [history_times(r) for r in res]

    async def click_logs() -> None:
        for _, users in reqs:
            await store.click_logs(users)

    variants = {"expansion_without": lambda: expansion(False), "expansion_with": lambda: expansion(True),
                "histories": histories, "click_logs": click_logs}
    out = await alternating_rounds(variants, args.rounds, len(reqs))
    await store.aclose()
    return {k: {m: statistics.median(v) for m, v in d.items()} | {"rounds": d} for k, d in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=30)
    ap.add_argument("--sample", type=int, default=20)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = private_redis(port, Path(tmp))
        try:
            r = redis.Redis(port=port)
            keys = Keys("bench")
            _fill(r, keys, random.Random(0))
            r.config_resetstat()
            settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", key_prefix="bench")
            got = asyncio.run(_measure(settings, args))
            stats = r.info("commandstats")
            redis_us = {k: v["usec_per_call"] for k, v in stats.items() if k in ("cmdstat_hgetall", "cmdstat_zrevrange", "cmdstat_get")}
        finally:
            proc.terminate()
            proc.wait()
    out = {"commit": commit(), "machine": machine(),
           "command": "python benchmarks/session_knn_reads.py " + " ".join(sys.argv[1:]),
           "per_request": got, "redis_usec_per_call": redis_us}
    (RESULTS / "session_knn_reads.json").write_text(json.dumps(out, indent=1))
    for k, v in got.items():
        print(f"{k:18s} wall {v['wall_us']:.0f} us, reader CPU {v['cpu_us']:.0f} us per request")
    print("Redis usec per call:", redis_us)


if __name__ == "__main__":
    main()
