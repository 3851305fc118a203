"""Scale-out benchmark: one worker vs two in one consumer group (four partitions), and a worker
leaving mid-stream by SIGTERM and by kill -9, all on the same published events.

Usage: python benchmarks/scale.py [--events 60000] [--out benchmarks/results/scale.json]

Runs on a stack of its own (free ports, folder under .driftrec-test/). The events are published
once; each mode then consumes them from the start with its own consumer group and Redis key
prefix. Reported per mode: seconds, events/s after the first 5 %, group members seen, lost and
double-applied events (applied counter vs the topic), the state against the oracle, and against
the one-worker run (exact where no bound cut a list; capped lists by overlap, see
tools/chaos/state.py). Default bounds (neighbours_k 50, history_len 50), unless --unbounded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, commit, machine, portable

from tools.chaos.scale import run_scale
from tools.chaos.stack import PrivateStack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--reader-requests", type=int, default=2000,
                    help="then reader and Redis CPU per recommendation on the one-worker state")
    ap.add_argument("--unbounded", action="store_true", help="bounds no run reaches: every key exact")
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = ROOT / ".driftrec-test" / f"scale-{os.getpid()}"
    shutil.rmtree(home, ignore_errors=True)
    stack = PrivateStack(home)
    mach = machine()
    started = time.time()
    stack.up()
    update = {"neighbours_k": 100_000, "trending_k": 100_000, "history_len": 100_000} if args.unbounded else {}
    try:
        result = run_scale(stack.settings, home / "logs", events=args.events, users=args.users,
                           items=args.items, settings_update=update, reader_requests=args.reader_requests)
    finally:
        stack.down()
        shutil.rmtree(home / "kafka", ignore_errors=True)
        shutil.rmtree(home / "redis", ignore_errors=True)
    mach["load_avg_at_end"] = list(os.getloadavg())
    result.update({"bounds": "unbounded" if args.unbounded else "defaults", "machine": mach,
                   "commit": commit(), "wall_seconds": round(time.time() - started, 1),
                   "command": "python " + " ".join(sys.argv), "logs": str(home / "logs")})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(portable(result), indent=2) + "\n")
    for mode, run in result["runs"].items():
        print(mode, {k: run.get(k) for k in ("seconds", "events_per_s_after_5pct", "lost_events",
                                              "double_applied_events", "state_equal_to_oracle",
                                              "state_equal_to_one_worker")})


if __name__ == "__main__":
    main()
