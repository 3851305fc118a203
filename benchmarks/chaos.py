"""Chaos benchmark: faults injected during a steady replay, the state checked against the oracle.

Usage: python benchmarks/chaos.py [--events 100000] [--rate 1000] [--kafka-down 30]
                                  [--poison 10000] [--poison-good 20000] [--out benchmarks/results/chaos.json]

Runs on a stack of its own (Kafka KRaft + Redis with AOF everysec, unique folder under
.driftrec-test/, free ports), so it can kill Kafka and Redis without hurting anything else.

1. Chaos: ``--events`` simulator clicks (unique event ids) published at ``--rate``/s while a
   ``driftrec worker`` applies them and a ``driftrec serve`` reader is polled 20 times a second.
   Faults: the worker is killed with SIGKILL at 30 % and 70 % of the events applied (and started
   again), Redis is killed with SIGKILL at 50 % and started again 1 s later (it replays its AOF),
   the Kafka broker is stopped at 85 % of the events published and started again
   ``--kafka-down`` seconds after the stop began. Then: seconds from the last fault's end to
   zero consumer lag (the lag collector of ``driftrec lag``), and the final Redis state against
   the in-process oracle fed the topic's records in offset order.
2. AOF rollback (``--aof-rollback N``, a separate 30,000-event run): Redis is killed and its
   AOF loses the last N applied scripts before the restart, as an OS crash with ``appendfsync
   everysec`` would; whether the worker re-applies them is what the result shows.
3. Poison flood: ``--poison`` fuzzed bad events mixed into ``--poison-good`` good ones; worker
   crashes, dead letters and their reasons, the good events' state against the oracle.

Writes ``--out`` (JSON).
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

from common import RESULTS, ROOT, commit, machine

from tools.chaos.poison import run_poison
from tools.chaos.scenario import ChaosConfig, Fault, run_chaos
from tools.chaos.stack import PrivateStack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--kafka-down", type=float, default=30.0)
    ap.add_argument("--poison", type=int, default=10_000)
    ap.add_argument("--poison-good", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--no-model", action="store_true", help="no published model: ISGD vectors")
    ap.add_argument("--aof-rollback", type=int, default=20,
                    help="then a separate run whose Redis loses its last N applied scripts (0 = skip)")
    ap.add_argument("--keep", action="store_true", help="keep the stack's folder (logs, data)")
    ap.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    home = ROOT / ".driftrec-test" / f"chaos-{os.getpid()}"
    shutil.rmtree(home, ignore_errors=True)
    stack = PrivateStack(home)
    started = time.time()
    mach = machine()
    stack.up()
    try:
        cfg = ChaosConfig(events=args.events, rate=args.rate, users=args.users, items=args.items,
                          model=not args.no_model,
                          faults=(Fault("worker_kill9", 0.3), Fault("redis_kill9", 0.5, 1.0),
                                  Fault("worker_kill9", 0.7), Fault("kafka_stop", 0.85, args.kafka_down)))
        result = run_chaos(stack, cfg, home / "logs")
        if args.aof_rollback:
            # What the kill -9 above cannot show: an OS crash loses up to a second of AOF.
            rb = ChaosConfig(events=30_000, rate=args.rate, users=args.users, items=args.items,
                             model=False, faults=(Fault("redis_rollback", 0.5, float(args.aof_rollback)),))
            r = run_chaos(stack, rb, home / "logs")
            result["aof_rollback_experiment"] = {k: r[k] for k in (
                "events", "faults", "applied_events_counter", "lost_events", "double_applied_events",
                "state_equal_to_oracle", "seconds_to_zero_lag")} | {"comparison": r["comparison"]["mismatches"]}
        if args.poison:
            result["poison_flood"] = run_poison(stack.settings, home / "logs", good=args.poison_good,
                                                bad=args.poison)
    finally:
        stack.down()
        if not args.keep:
            logs = home / "logs"
            if logs.exists():  # keep the process logs (ignored by git), drop the data
                dest = ROOT / ".driftrec-test" / "chaos-logs"
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(logs, dest)
            shutil.rmtree(home, ignore_errors=True)
    mach["load_avg_at_end"] = list(os.getloadavg())
    result.update({"machine": mach, "commit": commit(), "wall_seconds": round(time.time() - started, 1),
                   "command": "python " + " ".join(sys.argv)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    keys = ("events", "lost_events", "double_applied_events", "state_equal_to_oracle", "reader_5xx",
            "seconds_to_zero_lag")
    print(json.dumps({k: result.get(k) for k in keys}, indent=2))
    if "poison_flood" in result:
        pf = result["poison_flood"]
        print(json.dumps({k: pf[k] for k in ("worker_crashes", "bad_events_in_dlq", "bad_events_missing_from_dlq",
                                               "good_state_equal_to_oracle")}, indent=2))


if __name__ == "__main__":
    main()
