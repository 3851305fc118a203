"""How long the write path holds Redis: the slowest command, and what a reader's command waits.

Usage: python benchmarks/apply_stall.py [--events 40000] [--rate 2000] [--seconds 30]
                                        [--chunk-costs 0 800] [--factors 128] [--rounds 1]
                                        [--out benchmarks/results/apply_stall.json]

Redis runs one command at a time: while a script applies a micro-batch, every reader request waits
behind it. Starts the embedded local stack (Kafka + Redis, as ``write_path.py``) and publishes a
random item-factor model of ``--factors`` (the fold-in mode, as ``driftrec train`` leaves the
worker). Then, for each ``apply_chunk_cost`` of ``--chunk-costs`` (0: one script per batch, the
apply before streams/chunked.py), on a topic and key prefix of its own:

1. **backlog**: ``--events`` live-shaped clicks (``ShopSimulator.live``: ~1,600 interleaved
   shoppers per 2,000 clicks, 50k users, 10k items) published up front; one ``driftrec worker``
   applies them at full speed: events/s (as ``write_path.run_worker`` measures it);
2. **live**: a ``driftrec worker`` consumes while ``driftrec simulate`` publishes ``--rate``
   clicks/s for ``--seconds``; then how long the worker took to apply the last of them.

In both: Redis' SLOWLOG (``slowlog-log-slower-than`` 500 µs, reset at the start): the slowest
command, by script name, and how many passed 1 and 2 ms; ``INFO latencystats`` of ``EVALSHA``
(p50 / p99 / p99.9 of every script call); and a probe, a connection of its own that sends a reader's
``ZREVRANGE`` of a neighbour row (20 with scores) every 2 ms: its round-trip latency is what a
reader's command waits for Redis (plus this process' own scheduling, on the same two cores).
On a machine whose two cores also run Kafka, the worker, the publisher and other work, SLOWLOG's
wall-clock durations include the time Redis was not scheduled at all; ``--redis-nice -10`` runs
Redis at that priority (root), and ``--pin`` puts Redis on CPU 0 and Kafka, the worker, the
publisher and this process on CPU 1: closer to what a Redis with a core of its own sees (other
processes on the machine still run where they like).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from write_path import _free_port, publish, publish_random_model, run_worker, services  # noqa: E402

from driftrec.kafka_admin import ensure_topics  # noqa: E402
from driftrec.keys import Keys  # noqa: E402
from driftrec.settings import Settings  # noqa: E402
from driftrec.simulator import ShopSimulator, wall_clock  # noqa: E402
from driftrec.streams import chunked  # noqa: E402
from driftrec.streams.redis_state import _APPLY_LUA, _BEGIN_LUA, _CHUNK_LUA, _FINISH_LUA, _LOAD_LUA  # noqa: E402
from tools import benchinfo  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SHOP = {"users": 50_000, "items": 10_000, "categories": 20, "shoppers": 10_000, "seed": 7}
SLOWLOG_US = 500


def _script_names(r: redis.Redis) -> dict[str, str]:
    """sha1 -> file name of the worker's scripts (SLOWLOG shows EVALSHA's sha)."""
    sources = {"apply_batch.lua": _APPLY_LUA, "load_batch.lua": _LOAD_LUA, chunked.BEGIN: _BEGIN_LUA,
               chunked.APPLY_CHUNK: _CHUNK_LUA, chunked.FINISH: _FINISH_LUA}
    return {str(r.script_load(src)): name for name, src in sources.items()}


class Probe:
    """A reader's command every ``every_s`` on a connection of its own, timed (a thread)."""

    def __init__(self, url: str, key: str, every_s: float = 0.002) -> None:
        self.r = redis.Redis.from_url(url)
        self.key, self.every_s = key, every_s
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        clock, lat = time.perf_counter, self.latencies
        while not self._stop.is_set():
            t0 = clock()
            self.r.zrevrange(self.key, 0, 19, withscores=True)
            lat.append(clock() - t0)
            time.sleep(self.every_s)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def summary(self) -> dict[str, Any]:
        ms = sorted(x * 1000 for x in self.latencies)
        if not ms:
            return {}

        def q(p: float) -> float:
            return round(ms[min(len(ms) - 1, int(p * len(ms)))], 3)
        return {"samples": len(ms), "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999),
                "max_ms": round(ms[-1], 3), "over_2ms": sum(x > 2 for x in ms),
                "over_10ms": sum(x > 10 for x in ms)}


def _reset(r: redis.Redis) -> None:
    r.config_set("slowlog-log-slower-than", SLOWLOG_US)
    r.config_set("slowlog-max-len", 10_000)
    r.slowlog_reset()
    r.config_resetstat()
    # Stalls outside commands (AOF write, fork of an AOF rewrite): LATENCY LATEST at the end.
    r.config_set("latency-monitor-threshold", 2)
    r.execute_command("LATENCY", "RESET")


def _renice(r: redis.Redis, nice: int | None) -> None:
    if nice is not None:
        os.setpriority(os.PRIO_PROCESS, int(r.info("server")["process_id"]), nice)


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def _stalls(r: redis.Redis, names: dict[str, str]) -> dict[str, Any]:
    """SLOWLOG and EVALSHA latency percentiles since :func:`_reset`."""
    entries = r.slowlog_get(10_000)
    rows = []
    for e in entries:
        cmd = e["command"].decode(errors="replace") if isinstance(e["command"], bytes) else str(e["command"])
        words = cmd.split()
        what = words[0].upper() if words else "?"
        if what == "EVALSHA" and len(words) > 1:
            what = names.get(words[1], "EVALSHA " + words[1][:8])
        rows.append((e["duration"], what))
    rows.sort(reverse=True)
    by_name: dict[str, list[int]] = {}
    for us, what in rows:
        by_name.setdefault(what, []).append(us)
    stats = r.info("latencystats")
    persistence = r.info("persistence")
    latency = {(e[0].decode() if isinstance(e[0], bytes) else str(e[0])): {"latest_ms": int(e[2]), "max_ms": int(e[3])}
               for e in r.execute_command("LATENCY", "LATEST")}
    evalsha = stats.get("latency_percentiles_usec_evalsha", {})
    return {
        "slowest_command_ms": round(rows[0][0] / 1000, 3) if rows else f"< {SLOWLOG_US / 1000}",
        "slowest": [{"ms": round(us / 1000, 3), "command": what} for us, what in rows[:5]],
        "commands_over_1ms": sum(us > 1000 for us, _ in rows),
        "commands_over_2ms": sum(us > 2000 for us, _ in rows),
        "slowlog_entries_over_500us_by_command": {k: {"n": len(v), "max_ms": round(max(v) / 1000, 3)}
                                                  for k, v in by_name.items()},
        "evalsha_latency_usec": evalsha,
        "evalsha_calls": int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)),
        # Redis' own latency monitor (events over 2 ms): "command" is a slow command; "aof-*"
        # and "fork" stall the event loop between commands, where SLOWLOG sees nothing.
        "latency_monitor": latency,
        "aof_delayed_fsync": persistence.get("aof_delayed_fsync"),
        "latest_fork_usec": persistence.get("latest_fork_usec"),
        "aof_rewrites": persistence.get("aof_rewrites"),
    }


def _settings(base: Settings, cost: float, factors: int) -> Settings:
    tag = uuid.uuid4().hex[:8]
    s = base.model_copy(update={
        "clicks_topic": f"stall-{tag}.clicks", "dead_letter_topic": f"stall-{tag}.dlq",
        "consumer_group": f"stall-{tag}", "key_prefix": f"stall{tag}", "factors": factors,
        "worker_web_port": _free_port(), "worker_metrics_port": _free_port(), "apply_chunk_cost": cost,
    })
    ensure_topics(s.bootstrap, {s.clicks_topic: s.topic_partitions, s.dead_letter_topic: 1})
    return s


def _sim(rate: float) -> ShopSimulator:
    return ShopSimulator.live(rate=rate, shoppers=SHOP["shoppers"], n_users=SHOP["users"], n_items=SHOP["items"],
                              n_categories=SHOP["categories"], seed=SHOP["seed"])


def backlog(base: Settings, cost: float, args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    s = _settings(base, cost, args.factors)
    r = redis.Redis.from_url(s.redis)
    sim = _sim(args.rate)
    publish_random_model(r, s, list(sim.item_ids))
    events = list(wall_clock(sim.events(args.events)))
    asyncio.run(publish(s, events))
    names = _script_names(r)
    _reset(r)
    with Probe(s.redis, Keys(s.key_prefix).item_nbrs("i1")) as probe:
        worker = run_worker(s, len(events))
    return {"events_per_s": worker["events_per_s"], "cpu_us_per_event": worker["cpu_us_per_event"],
            "redis_commands_per_event": worker["redis_commands_per_event"],
            "redis": _stalls(r, names), "probe": probe.summary()}


def live(base: Settings, cost: float, args: argparse.Namespace) -> dict[str, Any]:
    s = _settings(base, cost, args.factors)
    r = redis.Redis.from_url(s.redis)
    meta = Keys(s.key_prefix).meta
    publish_random_model(r, s, list(_sim(args.rate).item_ids))
    names = _script_names(r)
    n = int(args.rate * args.seconds)
    env = {**os.environ, **s.to_env()}
    log = open(Path("/tmp") / f"driftrec-stall-worker-{s.key_prefix}.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "driftrec.cli", "worker"], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(8)  # joined the group and subscribed before the first click
        _reset(r)
        with Probe(s.redis, Keys(s.key_prefix).item_nbrs("i1")) as probe:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "driftrec.cli", "simulate", "--events", str(n), "--rate",
                            str(args.rate), "--shoppers", str(SHOP["shoppers"]), "--users", str(SHOP["users"]),
                            "--items", str(SHOP["items"]), "--categories", str(SHOP["categories"])],
                           cwd=ROOT, env=env, check=True, capture_output=True)
            published = time.perf_counter()
            behind_at_end = n - int(r.hget(meta, "applied_events") or 0)
            while int(r.hget(meta, "applied_events") or 0) < n and time.perf_counter() - published < 600:
                if worker.poll() is not None:
                    raise SystemExit(f"worker died; see {log.name}")
                time.sleep(0.05)
            caught_up = time.perf_counter()
        return {"clicks": n, "publish_s": round(published - started, 2),
                "events_behind_when_publishing_ended": behind_at_end,
                "catch_up_after_publishing_s": round(caught_up - published, 2),
                "redis": _stalls(r, names), "probe": probe.summary()}
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--chunk-costs", type=float, nargs="+", default=[0.0, float(chunked.CHUNK_COST)])
    ap.add_argument("--factors", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--phases", nargs="+", default=["backlog", "live"], choices=["backlog", "live"])
    ap.add_argument("--redis-nice", type=int, help="run Redis at this nice value (e.g. -10; needs root)")
    ap.add_argument("--pin", action="store_true", help="Redis on CPU 0, everything this starts on CPU 1")
    ap.add_argument("--no-aof", action="store_true", help="turn the local stack's AOF off (CONFIG SET appendonly no)")
    ap.add_argument("--out", type=Path, default=RESULTS / "apply_stall.json")
    args = ap.parse_args()
    machine = benchinfo.machine(("redis", "faust", "aiokafka"))
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with services() as base:
        _renice(redis.Redis.from_url(base.redis), args.redis_nice)
        if args.pin:
            from write_path import _service_pids

            pids = _service_pids(base, redis.Redis.from_url(base.redis))
            _pin(pids["redis"] or 0, {0})
            if pids["kafka"]:
                _pin(pids["kafka"], {1})
            os.sched_setaffinity(0, {1})  # this process, and the worker and publisher it starts
        if args.no_aof:
            redis.Redis.from_url(base.redis).config_set("appendonly", "no")
        for rnd in range(args.rounds):
            costs = args.chunk_costs if rnd % 2 == 0 else list(reversed(args.chunk_costs))
            for cost in costs:
                for phase in args.phases:
                    print(f"round {rnd}, apply_chunk_cost {cost:g}, {phase} ...", flush=True)
                    res = (backlog if phase == "backlog" else live)(base, cost, args)
                    runs.setdefault(f"{cost:g}", {}).setdefault(phase, []).append(res)
                    print(json.dumps({k: v for k, v in res.items() if k != "redis"} | {
                        "slowest_ms": res["redis"]["slowest_command_ms"],
                        "over_2ms": res["redis"]["commands_over_2ms"]}), flush=True)
    summary = {cost: {phase: {
        "slowest_command_ms": max((x["redis"]["slowest_command_ms"] for x in rows
                                   if isinstance(x["redis"]["slowest_command_ms"], float)), default=None),
        "commands_over_2ms": [x["redis"]["commands_over_2ms"] for x in rows],
        "probe_p99_ms": [x["probe"].get("p99_ms") for x in rows],
        "probe_max_ms": [x["probe"].get("max_ms") for x in rows],
        **({"events_per_s": [x["events_per_s"] for x in rows],
            "median_events_per_s": statistics.median(x["events_per_s"] for x in rows)} if phase == "backlog" else
           {"catch_up_after_publishing_s": [x["catch_up_after_publishing_s"] for x in rows]}),
    } for phase, rows in by_phase.items()} for cost, by_phase in runs.items()}
    out = {"summary": summary, "runs": runs, "shop": SHOP, "factors": args.factors, "events": args.events,
           "rate": args.rate, "seconds": args.seconds, "slowlog_log_slower_than_us": SLOWLOG_US,
           "redis_nice": args.redis_nice, "aof": not args.no_aof, "pinned": args.pin,
           "machine": machine, "commit": benchinfo.commit(),
           "command": "python benchmarks/apply_stall.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
