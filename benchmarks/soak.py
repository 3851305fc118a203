"""Soak: simulator clicks at a steady rate for a long time; worker and reader memory over time and
Redis memory per user and per item at the end.

Usage: python benchmarks/soak.py [--events 1000000] [--rate 1700] [--max-seconds 0]
                                 [--out benchmarks/results/soak.json]

Runs on a stack of its own (free ports, folder under .driftrec-test/), default settings (ISGD
vectors, history_len 50, neighbours_k 50, factors 32). Events are generated as they are sent,
so the script holds none of them. Every ``--sample-s`` seconds it records the RSS of the worker
and the reader (polled 20 times a second), Redis ``used_memory``, events sent and applied.
After a warm-up (the first ``--warmup`` share of the run) RSS must stay within ±10 % of its
median over the rest of the run. ``--max-seconds`` stops publishing early (the JSON's
``events`` is what was sent; ``events_planned`` what was asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import redis

from common import RESULTS, ROOT, commit, machine

from driftrec.keys import Keys
from driftrec.simulator import ShopSimulator
from tools.chaos.memory import (
    encoding_what_if,
    history_sizes,
    memory_per_owner,
    redis_memory_info,
)
from tools.chaos.procs import Child, rss_mb, tree_rss_mb, wait_http
from tools.chaos.scenario import run_settings
from tools.chaos.stack import PrivateStack
from tools.chaos.traffic import PublishStats, ReaderPoller, publish_steady


class Sampler(threading.Thread):
    def __init__(self, every_s: float, fn: Any) -> None:
        super().__init__(daemon=True)
        self.every_s, self.fn = every_s, fn
        self.rows: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every_s):
            self.rows.append(self.fn())


def stability(values: list[float], warmup: float) -> dict[str, Any]:
    """Median after warm-up and the largest deviation from it, in %."""
    rest = values[int(len(values) * warmup):]
    if not rest:
        return {}
    med = statistics.median(rest)
    dev = max(abs(v - med) / med for v in rest) * 100
    return {"median_mb": round(med, 1), "min_mb": round(min(rest), 1), "max_mb": round(max(rest), 1),
            "max_deviation_pct": round(dev, 2), "within_10pct": dev <= 10.0,
            "first_mb": round(values[0], 1), "drift_first_to_last_after_warmup_pct": round(
                (rest[-1] - rest[0]) / rest[0] * 100, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=1700.0)
    ap.add_argument("--max-seconds", type=float, default=0.0, help="stop publishing after this long (0 = never)")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=0.25)
    ap.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = ROOT / ".driftrec-test" / f"soak-{os.getpid()}"
    shutil.rmtree(home, ignore_errors=True)
    stack = PrivateStack(home)
    mach = machine()
    started = time.time()
    stack.up()
    try:
        s = run_settings(stack.settings)
        keys = Keys(s.key_prefix)
        sim = ShopSimulator(n_users=args.users, n_items=args.items, n_categories=20, seed=17)
        rows = ((e["user_id"].encode(), orjson.dumps(e)) for e in sim.events(args.events))
        worker = Child(s, ["worker"], home / "logs" / "soak-worker.log").start()
        reader = Child(s, ["serve"], home / "logs" / "soak-reader.log").start()
        wait_http(f"http://127.0.0.1:{s.reader_port}/healthz", 60, reader)
        client = redis.Redis.from_url(s.redis)
        stats = PublishStats()
        t0 = time.monotonic()

        def sample() -> dict[str, Any]:
            return {"t_s": round(time.monotonic() - t0, 1), "sent": stats.sent,
                    "applied": int(client.hget(keys.meta, "applied_events") or 0),
                    "worker_rss_mb": rss_mb(worker.pid),
                    # `serve` is a launcher: the front and the Python reader are its children.
                    "reader_rss_mb": tree_rss_mb(reader.pid),
                    "redis_used_mb": round(int(client.info("memory")["used_memory"]) / 2**20, 1)}

        sampler = Sampler(args.sample_s, sample)
        poller = ReaderPoller(f"http://127.0.0.1:{s.reader_port}", sim.user_ids[:2000], rate=20.0)
        sampler.start()
        poller.start()
        asyncio.run(publish_steady(s, rows, args.rate, stats=stats, record_positions=False,
                                   max_seconds=args.max_seconds or None))
        published_s = time.monotonic() - t0
        while int(client.hget(keys.meta, "applied_events") or 0) < stats.acked:
            if not worker.check():
                raise SystemExit(f"worker died:\n{worker.tail()}")
            time.sleep(1.0)
        drained_s = time.monotonic() - t0
        sampler.halt.set()
        sampler.join()
        poller.stop()
        crashed = {"worker": worker.unexpected_exits, "reader": reader.unexpected_exits}
        worker.stop()
        reader.stop()
        users = [u for u in sim.user_ids if client.exists(keys.user_state(u))]
        items = [k.decode() for k in client.zrange(keys.popularity, 0, -1)]
        mem = memory_per_owner(client, keys, users, items, history_len=s.history_len)
        at_cap = [u for u, n in zip(users[:5000], history_sizes(client, keys, users[:5000]), strict=True)
                  if n >= s.history_len]
        what_if = encoding_what_if(client, keys, at_cap)
        info = redis_memory_info(client)
        client.close()
    finally:
        stack.down()
        shutil.rmtree(home / "kafka", ignore_errors=True)
        shutil.rmtree(home / "redis", ignore_errors=True)
    rows_ = sampler.rows
    w = [r["worker_rss_mb"] for r in rows_ if r["worker_rss_mb"]]
    rd = [r["reader_rss_mb"] for r in rows_ if r["reader_rss_mb"]]
    per_user, per_item = mem["bytes_per_user"]["mean"], mem["bytes_per_item"]["mean"]
    result = {
        "events": stats.acked, "events_planned": args.events, "rate_per_s": args.rate,
        "stopped_early": stats.acked < args.events, "publish_seconds": round(published_s, 1),
        "seconds_to_apply_all": round(drained_s, 1), "applied_events_per_s": round(stats.acked / drained_s, 1),
        "publish_failures": stats.failed, "unexpected_exits": crashed,
        "warmup_share": args.warmup,
        "worker_rss": stability(w, args.warmup), "reader_rss": stability(rd, args.warmup),
        "reader": poller.summary(),
        "redis_memory": {**mem, **info, "users": len(users), "items": len(items)},
        "users_at_history_cap_what_if": what_if,
        "targets": {"bytes_per_user_max": 2048, "bytes_per_item_max": 4096,
                    "per_user_met": per_user <= 2048, "per_item_met": per_item <= 4096,
                    "per_user_at_cap_met": (mem["bytes_per_user_at_history_cap"] or {}).get("mean", 0) <= 2048},
        "samples": rows_,
        "settings": {k: getattr(s, k) for k in ("history_len", "neighbours_k", "trending_k", "factors",
                                                 "batch_max_events", "topic_partitions")},
        "simulator": {"users": args.users, "items": args.items, "categories": 20, "seed": 17},
        "machine": {**mach, "load_avg_at_end": list(os.getloadavg())}, "commit": commit(),
        "wall_seconds": round(time.time() - started, 1), "command": "python " + " ".join(sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("events", "stopped_early", "applied_events_per_s", "worker_rss",
                                             "reader_rss", "targets")}, indent=2))
    print(json.dumps({k: mem[k] for k in ("bytes_per_user", "bytes_per_user_at_history_cap", "bytes_per_item")}))
    print(json.dumps(what_if))


if __name__ == "__main__":
    main()
