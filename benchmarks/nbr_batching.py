"""Neighbour rows against batch boundaries, and what keeping more of each row costs Redis (issue 22).

Usage: python benchmarks/nbr_batching.py [--clicks 100000] [--kept 50 256] [--sizes 1 100 2000]
                                         [--out benchmarks/results/nbr_batching.json]
                                         [--redis-config zset-max-listpack-entries 256 ...]

For each ``--kept`` (``neighbours_kept``: 50 is the cut before issue 22, rows cut to
``neighbours_k``), the same simulator clicks (``tools/nbr_batching.py``: ``driftrec simulate``'s
interleaved shoppers, 4 partitions by shopper, the landmark pinned) go through the worker's batch
processor in batches of each ``--sizes``, each run on a fresh private ``redis-server``. Reported per
run: seconds, Redis CPU seconds per 1,000 clicks (``INFO cpu``), ``used_memory_dataset``, the
neighbour rows' bytes (``MEMORY USAGE``) per row, rows that reached the cut; per pair (each size
against the largest): the fraction of identical rows and the largest score difference in views,
for the served rows (the first ``neighbours_read``), the first ``neighbours_k`` (the item page) and
the whole kept rows. On a shared machine the seconds are noisy; CPU and bytes less so.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from common import RESULTS, commit, machine

from driftrec.settings import Settings
from tools.nbr_batching import compare, live_clicks, one_view, run_sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=100_000)
    ap.add_argument("--kept", type=int, nargs="+", default=[50, 256])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 2000])
    ap.add_argument("--out", default=str(RESULTS / "nbr_batching.json"))
    ap.add_argument("--redis-config", nargs="*", default=[], metavar="ARG",
                    help="redis-server settings for every run, e.g. zset-max-listpack-entries 256")
    args = ap.parse_args()
    base = Settings(kafka_bootstrap_servers="unused:1", redis_url="redis://127.0.0.1:1/0", key_prefix="nbr")
    raws = live_clicks(args.clicks)
    view = one_view(base)
    runs: list[dict[str, Any]] = []
    for kept in args.kept:
        s = base.model_copy(update={"neighbours_kept": kept})
        rows, costs = run_sizes(s, raws, args.sizes, redis_config=args.redis_config)
        largest = rows[args.sizes[-1]]
        per_size = {}
        for size, cost in costs.items():
            r = rows[size]
            per_size[str(size)] = {
                "seconds": round(cost["seconds"], 2),
                "redis_cpu_ms_per_1000_clicks": round(1000 * cost["redis_cpu_s"] / len(raws) * 1000, 2),
                "used_memory_dataset": int(cost["used_memory_dataset"]),
                "nbr_rows": int(cost["nbr_rows"]),
                "nbr_bytes_per_row": round(cost["nbr_row_bytes"] / max(cost["nbr_rows"], 1), 1),
                "nbr_members_per_row": round(sum(map(len, r.values())) / max(len(r), 1), 2),
                "rows_at_cut": sum(len(v) >= s.neighbours_cut for v in r.values()),
                "rows_over_128": sum(len(v) > 128 for v in r.values()),  # past a listpack: a skiplist
            }
        compared = {
            f"{size}_vs_{args.sizes[-1]}": {
                name: compare(rows[size], largest, k, view).as_dict()
                for name, k in (("served", s.neighbours_read), ("neighbours_k", s.neighbours_k),
                                ("kept", s.neighbours_cut))}
            for size in args.sizes[:-1]}
        runs.append({"neighbours_kept": kept, "neighbours_cut": s.neighbours_cut, "runs": per_size,
                     "compared": compared})
        print(json.dumps(runs[-1], indent=1), flush=True)
    out = {"benchmark": "nbr_batching", "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit(),
           "machine": machine(), "clicks": args.clicks, "sizes": args.sizes, "one_view_units": view,
           "redis_config": args.redis_config, "neighbours_k": base.neighbours_k, "neighbours_read": base.neighbours_read, "results": runs}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
