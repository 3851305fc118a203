"""Scale out: two workers in one consumer group against one worker on the same events, and a
worker that leaves mid-stream (SIGTERM or kill -9); each run's Redis state against the oracle
and against the one-worker run."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from driftrec.keys import Keys
from driftrec.oncall.lag import LagCollector, LagError
from driftrec.redis_conn import sync_client
from driftrec.settings import Settings
from tools.chaos.procs import Child
from tools.chaos.scenario import ChaosConfig, run_settings, sim_rows
from tools.chaos.stack import free_port
from tools.chaos.state import (
    RedisSnapshot,
    build_oracle,
    compare,
    last_offsets,
    read_redis,
    read_topic,
    views_of,
)
from tools.chaos.traffic import PublishStats, publish_steady

__all__ = ["run_scale", "MODES"]

logger = logging.getLogger(__name__)

#: mode -> (workers, how one leaves: None, "sigterm" or "kill9")
MODES: dict[str, tuple[int, str | None]] = {
    "one_worker": (1, None), "two_workers": (2, None),
    "two_workers_one_leaves_sigterm": (2, "sigterm"), "two_workers_one_leaves_kill9": (2, "kill9"),
}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a live process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _offsets(client: redis.Redis, keys: Keys) -> dict[int, int]:
    raw: dict[bytes, bytes] = client.hgetall(keys.offsets)  # type: ignore[assignment]
    return {int(k.decode().rsplit(":", 1)[1]): int(v) for k, v in raw.items()}


async def _members(s: Settings) -> tuple[int, int]:
    """(members of the group, partitions assigned) as the coordinator sees them; (0, 0) if unknown."""
    try:
        async with LagCollector(s.bootstrap, groups=[s.consumer_group], topics=[s.clicks_topic]) as lag:
            info = (await lag.collect()).groups[s.consumer_group]
            return info.members, len(info.assigned.get(s.clicks_topic, ()))
    except LagError:
        return 0, 0


def _one_run(topic_settings: Settings, mode: str, ends: dict[int, int], n_events: int, logs: Path,
             leave_at: float, timeout_s: float) -> tuple[dict[str, Any], Settings, RedisSnapshot]:
    workers_n, leave = MODES[mode]
    tag = uuid.uuid4().hex[:6]
    s = topic_settings.model_copy(update={"consumer_group": f"scale-{tag}", "key_prefix": f"scale{tag}"})
    keys = Keys(s.key_prefix)
    client = sync_client(s.redis)
    workers = [Child(s.model_copy(update={"worker_web_port": free_port(), "worker_metrics_port": free_port()}),
                     ["worker"], logs / f"scale-{mode}-{i}.log").start() for i in range(workers_n)]
    samples: list[tuple[float, int]] = []
    max_members = max_assigned_to_group = 0
    left_at: float | None = None
    redis_cpu0 = redis_cpu_s(client)
    worker_cpu = 0.0
    started = time.monotonic()
    try:
        while True:
            applied = int(client.hget(keys.meta, "applied_events") or 0)
            samples.append((time.monotonic(), applied))
            if workers_n == 2 and left_at is None and len(samples) % 10 == 1:
                members, assigned = asyncio.run(_members(s))
                max_members, max_assigned_to_group = max(max_members, members), max(max_assigned_to_group, assigned)
            if leave and left_at is None and applied >= leave_at * n_events and max_members >= 2:
                (workers[1].stop if leave == "sigterm" else workers[1].kill9)()
                left_at = time.monotonic() - started
            stored = _offsets(client, keys)
            if all(stored.get(p, -1) >= o - 1 for p, o in ends.items()):
                break
            for w in workers[: 1 if left_at is not None else workers_n]:
                if not w.check():
                    raise RuntimeError(f"worker died on its own:\n{w.tail()}")
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{mode}: not done after {timeout_s}s: {stored} vs {ends}")
            time.sleep(0.1)
        worker_cpu = sum(cpu_s(w.pid) for w in workers if w.alive())
    finally:
        for w in workers:
            w.stop()
    redis_cpu = redis_cpu_s(client) - redis_cpu0
    first = next((i for i, (_, a) in enumerate(samples) if a >= 0.05 * n_events), 0)
    (t0, a0), (t1, a1) = samples[first], samples[-1]
    result = {
        "workers": workers_n, "leaves": leave, "left_at_s": round(left_at, 2) if left_at is not None else None,
        "seconds": round(t1 - samples[0][0], 2),
        "events_per_s_after_5pct": round((a1 - a0) / (t1 - t0), 1) if t1 > t0 else None,
        "max_group_members_seen": max_members if workers_n == 2 else 1,
        "unexpected_exits": [c for w in workers for c in w.unexpected_exits],
        # CPU per event, start-up included: what a capacity plan scales (leave=kill9 loses a worker's).
        "worker_cpu_ms_per_1000_events": round(worker_cpu * 1e6 / n_events, 1) if not leave else None,
        "redis_cpu_ms_per_1000_events": round(redis_cpu * 1e6 / n_events, 1),
    }
    snap = read_redis(client, keys)
    client.close()
    return result, s, snap


def _reader_cost(s: Settings, logs: Path, views: list[Any], n: int) -> dict[str, Any]:
    """Reader and Redis CPU per ``GET /v1/recommendations/<user>?n=10`` on the state just built."""
    import random
    import urllib.request

    from tools.chaos.procs import wait_http

    s = s.model_copy(update={"reader_port": free_port()})
    client = sync_client(s.redis)
    reader = Child(s, ["serve"], logs / "scale-reader.log").start()
    users = sorted({v.user for v in views})
    rng = random.Random(0)
    try:
        wait_http(f"http://127.0.0.1:{s.reader_port}/readyz", 60, reader)
        for _ in range(50):  # warm-up: model cache, snapshot, connections
            urllib.request.urlopen(f"http://127.0.0.1:{s.reader_port}/v1/recommendations/{rng.choice(users)}?n=10").read()
        r0, c0, t0 = redis_cpu_s(client), cpu_s(reader.pid), time.monotonic()
        for _ in range(n):
            urllib.request.urlopen(f"http://127.0.0.1:{s.reader_port}/v1/recommendations/{rng.choice(users)}?n=10").read()
        r1, c1, t1 = redis_cpu_s(client), cpu_s(reader.pid), time.monotonic()
    finally:
        reader.stop()
        client.close()
    return {"requests": n, "sequential_req_per_s": round(n / (t1 - t0), 1),
            "reader_cpu_ms_per_request": round((c1 - c0) * 1000 / n, 3),
            "redis_cpu_us_per_request": round((r1 - r0) * 1e6 / n, 1)}


def run_scale(base: Settings, logs: Path, *, events: int = 60_000, users: int = 2000, items: int = 5000,
              seed: int = 13, modes: tuple[str, ...] = tuple(MODES), leave_at: float = 0.4,
              timeout_s: float = 600.0, settings_update: dict[str, Any] | None = None,
              reader_requests: int = 0) -> dict[str, Any]:
    """Publish ``events`` once; run every mode on them; compare states (see module docstring)."""
    s = run_settings(base, **(settings_update or {}))
    cfg = ChaosConfig(events=events, users=users, items=items, seed=seed)
    _, rows = sim_rows(cfg)
    stats = asyncio.run(publish_steady(s, rows, rate=1e9, stats=PublishStats()))
    records = read_topic(s, s.clicks_topic)
    ends = {p: o + 1 for p, o in last_offsets(records).items()}
    views, _ = views_of(records, s.event_types)
    out: dict[str, Any] = {"events": events, "partitions": s.topic_partitions, "publish_failures": stats.failed,
                           "runs": {}}
    snaps: dict[str, RedisSnapshot] = {}
    for mode in modes:
        result, run_s, snap = _one_run(s, mode, ends, events, logs, leave_at, timeout_s)
        oracle = build_oracle(run_s, views, float(snap.meta.get("landmark", min(v.t for v in views))))
        cmp = compare(snap, oracle, run_s, last_offsets=last_offsets(records))
        result.update({"landmark": snap.meta.get("landmark"), "applied_events_counter": snap.applied,
                       "lost_events": max(0, len(views) - snap.applied),
                       "double_applied_events": max(0, snap.applied - len(views)),
                       "state_equal_to_oracle": cmp.equal, "oracle_comparison": cmp.as_dict()})
        snaps[mode] = snap
        if mode != modes[0]:
            vs = compare(snap, snaps[modes[0]], run_s)
            result[f"state_equal_to_{modes[0]}"] = vs.equal
            result[f"vs_{modes[0]}"] = vs.as_dict()
        out["runs"][mode] = result
        if mode == modes[0] and reader_requests:
            out["reader_cost"] = _reader_cost(run_s, logs, views, reader_requests)
        logger.info("scale %s: %s", mode, {k: v for k, v in result.items() if "comparison" not in k and "vs_" not in k})
    return out
