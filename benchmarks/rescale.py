"""What one landmark move costs: every decayed key rewritten, per key and in all.

Usage: python benchmarks/rescale.py [--events 100000] [--out benchmarks/results/rescale.json]

No Kafka and no Faust: simulator records go straight to :class:`driftrec.streams.processor.BatchProcessor`
against a private ``redis-server`` (AOF everysec, as the local stack runs it), which builds a state
of ``--events`` clicks (2,000 users, 5,000 items). Then one landmark move
(:func:`driftrec.streams.rescale.run_rescale`, what the worker runs every ~14 half-lives of event time) is
timed: wall seconds, Redis CPU, keys rewritten by kind, and the same per key, which is what scales
to a production keyspace (docs/capacity.md). The state is checked against the oracle moved the same
way, bit for bit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import orjson

from common import RESULTS, commit, machine

from driftrec.keys import Keys
from driftrec.models.decay import DecayPolicy
from driftrec.redis_conn import async_client, cluster_nodes, is_cluster_url, sync_client
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from tools.chaos.stack import PrivateRedis
from tools.chaos.state import TopicRecord, build_oracle, compare, read_redis, views_of


def _records(n: int, partitions: int = 4) -> list[TopicRecord]:
    """``n`` simulator clicks as topic records, keyed by user over ``partitions`` partitions."""
    sim = ShopSimulator(n_users=2000, n_items=5000, n_categories=20, seed=7)
    out, offsets = [], [0] * partitions
    for e in sim.events(n):
        p = zlib.crc32(e["user_id"].encode()) % partitions
        out.append(TopicRecord(p, offsets[p], e["user_id"].encode(), orjson.dumps(e)))
        offsets[p] += 1
    return out


def _redis_cpu(url: str) -> float:
    """Redis' user + system CPU seconds so far, summed over a cluster's nodes."""
    import redis

    urls = ([f"redis://{h}:{p}/0" for h, p in cluster_nodes(url)[0]] if is_cluster_url(url) else [url])
    total = 0.0
    for u in urls:
        c = redis.Redis.from_url(u)
        info = c.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        c.close()
    return total


def run(url: str, events: int, batch: int) -> dict[str, Any]:
    from driftrec.streams.processor import BatchProcessor, RawRecord
    from driftrec.streams.published import FactorCache
    from driftrec.streams.redis_state import RedisState
    from driftrec.streams.rescale import run_rescale

    records = _records(events)
    s = Settings(redis_url=url, kafka_bootstrap_servers="unused:1", key_prefix="rescale", clicks_topic="clicks")
    keys = Keys(s.key_prefix)
    policy = DecayPolicy(s.half_life_s)
    sync = sync_client(url)

    async def go() -> dict[str, Any]:
        client = async_client(url, socket_timeout=60)
        state = RedisState(client, keys, s.clicks_topic, window=s.cooc_window, history_len=s.history_len,
                           neighbours_k=s.neighbours_cut, trending_k=s.trending_k)

        async def sink(dead: Any) -> None:
            pass

        proc = BatchProcessor(s, state, sink, FactorCache(client, keys, s.fold_in_regularization))
        for i in range(0, len(records), batch):
            await proc.process([RawRecord("clicks", r.partition, r.offset, r.value) for r in records[i: i + batch]])
        old = float(sync.hget(keys.meta, "landmark") or 0)
        last = float(sync.hget(keys.meta, "last_event_time") or old)
        # A move as the worker makes it when the next click is one budget past the landmark.
        t = max(last, old + policy.max_exponent / policy.rate + 1.0)
        new = policy.next_landmark(t, old)
        kinds: dict[str, int] = {}
        for kind in ("zset", "hash"):
            kinds[kind] = sum(1 for _ in sync.scan_iter(match=f"{keys.prefix}:*", count=1000, _type=kind))
        cpu0, t0 = _redis_cpu(url), time.perf_counter()
        done = await run_rescale(state, state.rescaler_id, plan=(new, policy.rescale_factor(old, new)),
                                 expect_landmark=old)
        seconds, cpu = time.perf_counter() - t0, _redis_cpu(url) - cpu0
        await client.aclose()
        return {"moved": done, "old_landmark": old, "new_landmark": new, "seconds": round(seconds, 3),
                "redis_cpu_s": round(cpu, 3), "sorted_sets": kinds["zset"], "hashes_under_prefix": kinds["hash"]}

    out = asyncio.run(go())
    snap = read_redis(sync, keys)
    views, _ = views_of(records, s.event_types)
    oracle = build_oracle(s, views, out["old_landmark"], chunk=batch)
    oracle.rescale(out["new_landmark"])
    out["state_equal_to_oracle_moved_alike"] = compare(snap, oracle, s, rel_tol=0.0).equal
    user_hashes = sum(1 for _ in sync.scan_iter(match=keys.user_state("*"), count=1000, _type="hash"))
    rewritten = out["sorted_sets"] + user_hashes
    out.update(user_item_hashes=user_hashes, keys_rewritten=rewritten,
               usec_per_key=round(out["seconds"] * 1e6 / max(rewritten, 1), 1),
               redis_cpu_usec_per_key=round(out["redis_cpu_s"] * 1e6 / max(rewritten, 1), 1))
    sync.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=RESULTS / "rescale.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="driftrec-rescale-"))
    redis = PrivateRedis(work / "redis")
    try:
        redis.start()
        result = {"events": args.events, **run(redis.url, args.events, args.batch)}
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    result.update(machine=machine(), commit=commit(), command="python " + " ".join(sys.argv))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
