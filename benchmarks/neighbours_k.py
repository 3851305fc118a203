"""What ``neighbours_k`` (neighbours kept per item row) costs and buys: write speed, memory, HR@10.

Usage: python benchmarks/neighbours_k.py [--ks 20,30,50] [--events 100000] [--rounds 3]
                                         [--datasets ml-latest-small,uci-online-retail]
                                         [--out benchmarks/results/neighbours_k.json]

Every neighbour row is a sorted set of at most ``neighbours_k`` members, small enough to be a
listpack, where each changed score is a scan, a delete and a re-insert: the longer the row, the
more each of the ~12 (row, neighbour) increments of an event costs Redis. The reader reads only
the strongest ``reader_neighbours`` (20) of a row, so the rest of the row is there to keep
scores accurate: a neighbour cut off by the bound starts again from zero when it comes back.

1. Speed and memory: the batch processor alone (overlapped batches fed as the worker feeds
   them, ISGD vectors, :func:`processor_split.one_round`) on the write-path benchmark's shop
   (5,000 users, 10,000 items, seed 7), each ``k`` in turn per round on one private
   ``redis-server`` (flushed per run), rounds alternating: events/s, the worker's Python CPU and
   Redis' CPU per event, ``ZADD`` / ``ZMSCORE`` µs per event (``INFO commandstats``), then the
   state's ``used_memory_dataset`` and the mean ``MEMORY USAGE`` of the neighbour rows.
2. Quality: the prequential protocol of ``benchmarks/tune_live.py`` on each data set's warm-up
   half only (its first half warms up, its second half is scored; the evaluation's scored half
   is never read), with the settings and blend weights ``tune_live.py`` chose
   (``tuning_<dataset>.json``), one live recommender per ``k``: HR@10 and nDCG@10.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import processor_split  # noqa: E402
import tune_live  # noqa: E402

from driftrec.keys import Keys  # noqa: E402
from driftrec.settings import Settings  # noqa: E402
from tools import benchinfo  # noqa: E402
from tools.chaos.memory import memory_usage  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TUNING = {"ml-latest-small": "tuning_movielens.json", "uci-online-retail": "tuning_online-retail.json"}


def row_memory(port: int, prefix: str, sample: int = 2000) -> dict[str, float]:
    """Mean ``MEMORY USAGE`` and length of up to ``sample`` neighbour rows, and the dataset size."""
    r = redis.Redis(port=port)
    pattern = Keys(prefix).item_nbrs("*")
    keys = [k.decode() for k in itertools.islice(r.scan_iter(match=pattern, count=1000), sample)]
    sizes = memory_usage(r, keys)
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.zcard(k)
        pipe.object("encoding", k)
    got = pipe.execute()
    lens, encs = got[0::2], got[1::2]
    return {"rows_sampled": len(keys), "row_bytes_mean": round(statistics.fmean(sizes), 1),
            "row_members_mean": round(statistics.fmean(lens), 2),
            "listpack_rows": sum(e in (b"listpack", "listpack") for e in encs),
            "used_memory_dataset_mb": round(int(r.info("memory")["used_memory_dataset"]) / 2**20, 2)}


def speed(ks: list[int], events: int, rounds: int) -> dict[str, Any]:
    rows, items = processor_split.shop_clicks(events)
    runs: dict[int, list[dict[str, Any]]] = {k: [] for k in ks}
    with processor_split.private_redis("driftrec-nk-") as port:
        for r in range(rounds):
            order = ks if r % 2 == 0 else ks[::-1]
            for k in order:
                res = asyncio.run(processor_split.one_round(port, rows, items, False, neighbours_k=k))
                if res["applied"] != events:
                    raise SystemExit(f"neighbours_k={k}: applied {res['applied']} of {events}")
                stats = redis.Redis(port=port).info("commandstats")
                per = {c: round(stats[f"cmdstat_{c}"]["usec"] / events, 2)
                       for c in ("zadd", "zmscore") if f"cmdstat_{c}" in stats}
                run = {"events_per_s": res["events_per_s"],
                       "python_cpu_us_per_event": res["python_cpu_us_per_event"],
                       "redis_cpu_us_per_event": res["redis_cpu_us_per_event"],
                       "redis_usec_per_event_by_command": per, **row_memory(port, "split")}
                runs[k].append(run)
                print(f"round {r} neighbours_k={k}: {json.dumps(run)}", flush=True)

    def med(k: int, key: str) -> float:
        return statistics.median(x[key] for x in runs[k])

    base = max(ks)
    summary = {str(k): {"events_per_s": med(k, "events_per_s"),
                        "redis_cpu_us_per_event": med(k, "redis_cpu_us_per_event"),
                        "python_cpu_us_per_event": med(k, "python_cpu_us_per_event"),
                        "row_bytes_mean": med(k, "row_bytes_mean"),
                        "used_memory_dataset_mb": med(k, "used_memory_dataset_mb"),
                        f"events_per_s_over_k{base}": round(med(k, "events_per_s") / med(base, "events_per_s"), 3),
                        f"redis_cpu_over_k{base}": round(med(k, "redis_cpu_us_per_event")
                                                         / med(base, "redis_cpu_us_per_event"), 3)}
               for k in ks}
    return {"events": events, "rounds": rounds, "runs": {str(k): v for k, v in runs.items()},
            "medians": summary, "simulator": processor_split.SHOP}


def quality(dataset: str, ks: list[int], max_windows: int) -> dict[str, Any]:
    from driftrec.live_eval import LiveRecommender
    from driftrec.models.prequential import run_prequential

    tuned = json.loads((RESULTS / TUNING[dataset]).read_text())
    name, events, start, mask = tune_live.warm_up_half(dataset, max_windows)
    base = Settings().model_copy(update=tuned["best"]["settings"])
    weights = tune_live.weights_of(tuned["best"]["weights"])
    model = tune_live.publish_warm_up(base, events, start, tuned["als"])
    offset = events[start].offset
    methods = {f"k{k}": LiveRecommender(base.model_copy(update={"neighbours_k": k}), weights, model,
                                        publish_offset=offset) for k in ks}
    started = time.perf_counter()
    summary = run_prequential(events, methods, mask).summary()
    return {"dataset": name, "tuning_events": len(events), "scored": int(mask.sum()),
            "settings": tuned["best"]["settings"], "weights": tuned["best"]["weights"], "als": tuned["als"],
            "seconds": round(time.perf_counter() - started, 1),
            "by_k": {m: {"hr10": round(v["hr10"], 4), "ndcg10": round(v["ndcg10"], 4)} for m, v in summary.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="20,30,50")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--datasets", default="ml-latest-small,uci-online-retail")
    ap.add_argument("--max-windows", type=int, default=150)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "neighbours_k.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ks = sorted({int(k) for k in args.ks.split(",")})
    machine = benchinfo.machine(["redis", "orjson", "numpy"])
    result: dict[str, Any] = {"ks": ks, "machine": machine, "commit": benchinfo.commit(),
                              "command": "python benchmarks/neighbours_k.py " + " ".join(sys.argv[1:])}
    if not args.skip_speed:
        result["speed"] = speed(ks, args.events, args.rounds)
    result["quality"] = []
    for d in filter(None, args.datasets.split(",")):
        q = quality(d, ks, args.max_windows)
        print(json.dumps(q["by_k"]), f"{d} in {q['seconds']} s", flush=True)
        result["quality"].append(q)
    result["machine"]["load_avg_at_end"] = list(__import__("os").getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result.get("speed", {}).get("medians"), indent=1))


if __name__ == "__main__":
    main()
