"""The batch processor alone (no Kafka, no Faust) on two versions of the code, side by side.

Usage: python benchmarks/processor_ab.py [--baseline-ref 2eff196] [--events 100000] [--rounds 3]
                                         [--baseline-index 0] [--new-index 0] [--reference-index K]
                                         [--out benchmarks/results/processor_ab.json]
                                         [--redis-config zset-max-listpack-entries 0 ...]
                                         [--overlap] [--model]

``--baseline-ref`` is checked out into a temporary git worktree; each round runs the baseline and
then the working tree, each in a child process of its own, against a private ``redis-server``
(flushed between runs) on the same simulator clicks (ISGD vectors on, default settings, batches of
``batch_max_events`` cut across 4 partitions as the worker gets them). Reported: events/s per run,
Redis commands executed per event (``INFO commandstats``, the scripts' inner calls included; also by command), the Redis server's CPU seconds per 1,000 events (``INFO cpu``),
the child's CPU per 1,000 events, Redis' time per event by command, the memory of the state it
left (``used_memory_dataset``; ``MEMORY USAGE`` of up to 2,000 neighbour rows), and the median
ratio new/baseline.
``--overlap`` feeds the batches as the worker does (each planned while Redis applies the one before,
``BatchProcessor.feed``, with the next batch as ``upcoming`` where the code takes it) instead of one
after another; ``--model`` publishes item factors for every
item first (the fold-in mode instead of ISGD vectors).
``--baseline-index`` / ``--new-index`` set each side's ``session_index_k`` (the session index and
the shopper session values the worker keeps); ``--reference-index K`` adds a third side each round,
the working tree with ``session_index_k`` K (e.g. 0: what the index costs on top).
``--redis-config NAME VALUE ...`` starts that Redis with those settings (both sides). On a shared machine
compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, commit, free_port, machine

# Runs inside the child, with the code under test first on sys.path.
CHILD = r'''
import asyncio, inspect, itertools, json, resource, sys, time
import orjson, redis, redis.asyncio as aioredis
from driftrec.keys import Keys
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.streams.processor import BatchProcessor, RawRecord
from driftrec.streams.published import FactorCache
from driftrec.streams.redis_state import RedisState

port, n, index_k = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
overlap, model = "overlap" in sys.argv[4:], "model" in sys.argv[4:]
s = Settings(kafka_bootstrap_servers="x:1", redis_url=f"redis://127.0.0.1:{port}/0", key_prefix="ab")
sim = ShopSimulator(n_users=10_000, n_items=20_000, n_categories=20, seed=17)
rows = [orjson.dumps(e) for e in itertools.islice(sim.events(n), n)]
# 4 partitions, offsets per partition, batches as a slice across partitions (the worker's view).
raws = [RawRecord(s.clicks_topic, j % 4, j // 4, v) for j, v in enumerate(rows)]

async def main():
    client = aioredis.Redis.from_url(s.redis)
    keys = Keys(s.key_prefix)
    state = RedisState(client, keys, s.clicks_topic, window=s.cooc_window, history_len=s.history_len,
                       neighbours_k=getattr(s, "neighbours_cut", s.neighbours_k), trending_k=s.trending_k)
    state.session_index_k = index_k  # as `driftrec worker` sets it (streams/agents.py)
    async def sink(dead): pass
    proc = BatchProcessor(s, state, sink, FactorCache(client, keys, s.fold_in_regularization))
    sync = redis.Redis(port=port)
    if model:  # item factors for every item: the fold-in mode
        import numpy as np
        try:
            from driftrec.modelformat import pack_factors
        except ImportError:  # a baseline from before driftrec.modelformat
            from driftrec.streams.published import pack_factors
        y = np.random.default_rng(0).normal(0, 0.1, (len(sim.item_ids), s.factors))
        for part, blob in pack_factors(list(sim.item_ids), y, alpha=1.0,
                                       regularization=s.fold_in_regularization).items():
            sync.set(keys.model_blob("bench", part), blob)
        sync.set(keys.model_current, "bench")
    sync.config_resetstat()
    cpu0 = sync.info("cpu")
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    cuts = [raws[i:i + s.batch_max_events] for i in range(0, len(raws), s.batch_max_events)]
    # feed(upcoming=): the next batch parsed while Redis applies (code that has it, as the worker).
    ahead = "upcoming" in inspect.signature(proc.feed).parameters
    for k, cut in enumerate(cuts):
        if overlap and ahead:
            await proc.feed(cut, k, upcoming=cuts[k + 1] if k + 1 < len(cuts) else None)
        elif overlap:  # as the worker does: each batch planned while Redis applies the one before
            await proc.feed(cut, k)
        else:
            await proc.process(cut)
    if overlap:
        await proc.flush()
    took = time.perf_counter() - started
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu1 = sync.info("cpu")
    # Commands Redis executed, those inside scripts included (the INFO calls left out).
    stats = sync.info("commandstats")
    inner = sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config|resetstat"))
    redis_cpu = sum(cpu1[k] - cpu0[k] for k in ("used_cpu_sys", "used_cpu_user"))
    own_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    applied = int(sync.hget(keys.meta, "applied_events") or 0)
    # Memory of the state the run left: the dataset, and the neighbour rows (MEMORY USAGE of the
    # first 2,000 a SCAN finds, with every member counted).
    dataset = sync.info("memory")["used_memory_dataset"]
    nbr = list(itertools.islice(sync.scan_iter(match=f"{s.key_prefix}:*:nbr", count=1000), 2000))
    nbr_bytes = [sync.memory_usage(k, samples=0) for k in nbr]
    nbr_len = [sync.zcard(k) for k in nbr]
    await client.aclose()
    print(json.dumps({"events": len(raws), "applied": applied, "seconds": round(took, 3),
                      "events_per_s": round(len(raws) / took, 1),
                      "redis_commands_sent_per_event": round(state.commands_sent / len(raws), 4),
                      "redis_commands_executed_per_event": round(inner / len(raws), 3),
                      "redis_cpu_ms_per_1000_events": round(redis_cpu / len(raws) * 1e6, 1),
                      "python_cpu_ms_per_1000_events": round(own_cpu / len(raws) * 1e6, 1),
                      # Redis' own time per event by command (a script's time includes its calls).
                      "redis_usec_per_event_by_command": {k.removeprefix("cmdstat_"): round(v["usec"] / len(raws), 2)
                                                          for k, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])
                                                          if k not in ("cmdstat_info", "cmdstat_config|resetstat")},
                      "redis_calls_per_event_by_command": {k.removeprefix("cmdstat_"): round(v["calls"] / len(raws), 3)
                                                           for k, v in sorted(stats.items(), key=lambda kv: -kv[1]["calls"])
                                                           if k not in ("cmdstat_info", "cmdstat_config|resetstat")},
                      "redis_dataset_bytes": dataset,
                      "nbr_rows_sampled": len(nbr),
                      "nbr_row_bytes_mean": round(sum(nbr_bytes) / max(1, len(nbr)), 1),
                      "nbr_row_members_mean": round(sum(nbr_len) / max(1, len(nbr)), 2),
                      "batch_max_events": s.batch_max_events}))

asyncio.run(main())
'''


def _run(code_root: Path, port: int, events: int, index_k: int, modes: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code_root), "PYTHONHASHSEED": "0"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(port), str(events), str(index_k), *modes],
                         cwd=code_root, env=env,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"child failed in {code_root}:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline-ref", default="2eff196")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "processor_ab.json")
    ap.add_argument("--redis-config", nargs="*", default=[], metavar="ARG",
                    help="extra redis-server arguments for both sides, e.g. zset-max-listpack-entries 0")
    ap.add_argument("--overlap", action="store_true",
                    help="feed() the batches (overlapped, as the worker runs them) instead of process()")
    ap.add_argument("--model", action="store_true", help="publish item factors first (fold-in mode)")
    ap.add_argument("--baseline-index", type=int, default=0, help="session_index_k of the baseline side")
    ap.add_argument("--new-index", type=int, default=0, help="session_index_k of the new side")
    ap.add_argument("--reference-index", type=int, default=None,
                    help="also run the working tree with this session_index_k each round ('reference')")
    args = ap.parse_args()
    modes = [m for m, on in (("overlap", args.overlap), ("model", args.model)) if on]
    tmp = Path(tempfile.mkdtemp(prefix="driftrec-ab-"))
    base = tmp / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline_ref], cwd=ROOT,
                   check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                               "--dir", str(tmp), *(f"--{a}" if i % 2 == 0 else a
                                                     for i, a in enumerate(args.redis_config))],
                              stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    sides = [("baseline", base, args.baseline_index), ("new", ROOT, args.new_index)]
    if args.reference_index is not None:
        sides.append(("reference", ROOT, args.reference_index))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in sides}
    try:
        for _ in range(args.rounds):
            for name, root, index_k in sides:
                client.flushall()
                row = _run(root, port, args.events, index_k, modes)
                row["load_avg"] = [round(x, 2) for x in os.getloadavg()]
                runs[name].append(row)
                print(name, json.dumps(row), flush=True)
    finally:
        server.terminate()
        server.wait()
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[name]))

    keys = ("events_per_s", "redis_commands_executed_per_event", "redis_cpu_ms_per_1000_events",
            "python_cpu_ms_per_1000_events", "redis_dataset_bytes", "nbr_row_bytes_mean",
            "nbr_row_members_mean")
    summary = {k: {name: med(name, k) for name in runs}
               | {"ratio_new_over_baseline": round(med("new", k) / med("baseline", k), 3)}
               | ({"ratio_new_over_reference": round(med("new", k) / med("reference", k), 3)}
                  if "reference" in runs else {}) for k in keys}
    result = {"summary": summary, "runs": runs, "baseline_ref": args.baseline_ref,
              "commit": commit(), "events": args.events, "rounds": args.rounds,
              "redis_config": args.redis_config, "modes": modes,
              "session_index_k": {name: k for name, _, k in sides},
              "machine": machine(("redis", "orjson")) | {"load_avg_at_end": list(os.getloadavg())},
              "command": "python " + " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
