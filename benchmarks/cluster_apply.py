"""The batch processor on one Redis vs a local three-node Redis Cluster, same records.

Usage: python benchmarks/cluster_apply.py [--events 30000] [--out benchmarks/results/cluster_apply.json]

No Kafka and no Faust: simulator records go straight to :class:`driftrec.streams.processor.BatchProcessor`
in batches of ``--batch`` (what the worker's micro-batches are), against a private
``redis-server`` and against three ``redis-server --cluster-enabled yes`` nodes joined with
``redis-cli --cluster create`` (all on this machine). Reports events/s, Redis CPU per 1,000
events (summed over the nodes) and script calls per batch, and checks both states against the
oracle. The cost of the per-slot split (streams/cluster_state.py), not a cluster's capacity.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftrec.keys import Keys  # noqa: E402
from driftrec.redis_conn import async_client, cluster_nodes, is_cluster_url, sync_client  # noqa: E402
from driftrec.settings import Settings  # noqa: E402
from driftrec.simulator import ShopSimulator  # noqa: E402
from tools.chaos.procs import commit, machine  # noqa: E402
from tools.chaos.stack import LocalRedisCluster, PrivateRedis  # noqa: E402
from tools.chaos.state import TopicRecord, build_oracle, compare, read_redis, views_of  # noqa: E402


def _records(n: int, partitions: int = 4) -> list[TopicRecord]:
    sim = ShopSimulator(n_users=2000, n_items=5000, n_categories=20, seed=7)
    out, offsets = [], [0] * partitions
    for e in sim.events(n):
        p = zlib.crc32(e["user_id"].encode()) % partitions
        out.append(TopicRecord(p, offsets[p], e["user_id"].encode(), orjson.dumps(e)))
        offsets[p] += 1
    return out


def _redis_cpu(url: str) -> float:
    import redis

    urls = ([f"redis://{h}:{p}/0" for h, p in cluster_nodes(url)[0]] if is_cluster_url(url) else [url])
    total = 0.0
    for u in urls:
        c = redis.Redis.from_url(u)
        info = c.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        c.close()
    return total


def run(url: str, records: list[TopicRecord], batch: int) -> dict[str, Any]:
    from driftrec.streams.cluster_state import ClusterRedisState
    from driftrec.streams.processor import BatchProcessor, RawRecord
    from driftrec.streams.published import FactorCache
    from driftrec.streams.redis_state import RedisState

    s = Settings(redis_url=url, kafka_bootstrap_servers="unused:1", key_prefix="capply", clicks_topic="clicks")
    keys = Keys(s.key_prefix)

    async def go() -> tuple[float, int]:
        client = async_client(url, socket_timeout=30)
        cls = ClusterRedisState if is_cluster_url(url) else RedisState
        state = cls(client, keys, s.clicks_topic, window=s.cooc_window, history_len=s.history_len,
                    neighbours_k=s.neighbours_k, trending_k=s.trending_k)

        async def sink(dead: Any) -> None:
            pass

        proc = BatchProcessor(s, state, sink, FactorCache(client, keys, s.fold_in_regularization))
        t0 = time.perf_counter()
        for i in range(0, len(records), batch):
            await proc.process([RawRecord("clicks", r.partition, r.offset, r.value) for r in records[i: i + batch]])
        dt = time.perf_counter() - t0
        await client.aclose()
        return dt, state.commands_sent

    cpu0 = _redis_cpu(url)
    seconds, calls = asyncio.run(go())
    cpu = _redis_cpu(url) - cpu0
    sync = sync_client(url)
    snap = read_redis(sync, keys)
    sync.close()
    views, _ = views_of(records, s.event_types)
    cmp = compare(snap, build_oracle(s, views, float(snap.meta["landmark"])), s)
    batches = -(-len(records) // batch)
    return {"events_per_s": round(len(records) / seconds, 1), "seconds": round(seconds, 2),
            "redis_cpu_ms_per_1000_events": round(cpu * 1e6 / len(records), 1),
            "script_or_command_calls_per_batch": round(calls / batches, 1),
            "state_equal_to_oracle": cmp.equal}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cluster_apply.json")
    args = ap.parse_args()
    records = _records(args.events)
    work = Path(tempfile.mkdtemp(prefix="driftrec-cluster-"))
    single, cluster = PrivateRedis(work / "single"), LocalRedisCluster(work / "cluster", n=3)
    mach = machine()
    try:
        single.start()
        cluster.start()
        result = {"events": args.events, "batch": args.batch,
                  "single_node": run(single.url, records, args.batch),
                  "cluster_3_nodes": run(cluster.url, records, args.batch)}
    finally:
        single.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["cluster_vs_single_events_per_s"] = round(
        result["cluster_3_nodes"]["events_per_s"] / result["single_node"]["events_per_s"], 3)
    result.update({"machine": mach, "commit": commit(), "command": "python " + " ".join(sys.argv)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
