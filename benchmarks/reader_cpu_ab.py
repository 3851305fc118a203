"""The reader's own CPU per recommendation, two versions of the code side by side, no HTTP.

Usage: python benchmarks/reader_cpu_ab.py --baseline-ref REF [--rounds 4] [--requests 3000]
                                          [--out benchmarks/results/reader_cpu_ab.json]

Fills a private ``redis-server`` with the reader benchmark's shop (``benchmarks/reader.py``:
10k items, 50k users, a published model), checks ``REF`` out into a temporary git worktree,
and in alternating rounds runs each version's ``Recommender.for_user`` in a child process of
its own over the same random users, one request after another (BLAS on one thread, as
``driftrec serve`` runs it). Reported: CPU microseconds per recommendation per round, medians,
and the ratio this/baseline. Without wrk, uvicorn and queueing this is far less noisy than the
HTTP benchmark, so a change of a few percent shows; it says nothing about latency under load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tools.benchinfo import commit, machine  # noqa: E402

CHILD = r'''
import os, sys
os.environ["OPENBLAS_NUM_THREADS"] = "1"
root, port, seed, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, root)
import asyncio, random, time
os.environ.update(REDIS_URL=f"redis://127.0.0.1:{port}/0", DRIFTREC_KEY_PREFIX="bench",
                  KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9")
import online
assert online.__file__.startswith(root), online.__file__
from driftrec.settings import Settings
from driftrec.online.app import create_app
app = create_app(Settings(), refresh_snapshot=True)
rec = app.state.recommender

async def main():
    async with app.router.lifespan_context(app):
        rng = random.Random(seed)
        users = [f"u{rng.randrange(50000)}" for _ in range(n + 300)]
        for u in users[:300]:  # warm-up: model loaded, caches filled
            await rec.for_user(u, 10)
        cpu = time.process_time()
        for u in users[300:]:
            await rec.for_user(u, 10)
        print((time.process_time() - cpu) / n * 1e6)
asyncio.run(main())
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-ref", required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reader_cpu_ab.json")
    args = ap.parse_args()
    import reader as bench  # benchmarks/reader.py: the shop it fills Redis with

    work = Path(tempfile.mkdtemp(prefix="driftrec-reader-ab-"))
    port = bench.free_port()
    redis_proc = bench.private_redis(port, work)
    base = work / "baseline"
    try:
        r = redis.Redis(port=port)
        data = bench.populate(r, 10_000, 50_000)
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline_ref], cwd=ROOT,
                       check=True, capture_output=True)
        roots = {"baseline": base, "this": ROOT}
        cpu: dict[str, list[float]] = {k: [] for k in roots}
        for rnd in range(args.rounds):
            for name, root in roots.items():
                out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(port), str(rnd), str(args.requests)],
                                     cwd=root, capture_output=True, text=True, check=True)
                cpu[name].append(round(float(out.stdout.strip().splitlines()[-1]), 1))
                print(f"round {rnd} {name}: {cpu[name][-1]:.0f} us CPU per recommendation", flush=True)
        med = {k: statistics.median(v) for k, v in cpu.items()}
        result = {
            "cpu_us_per_recommendation": cpu,
            "median_us": med,
            "ratio_this_over_baseline": round(med["this"] / med["baseline"], 3),
            "baseline_ref": args.baseline_ref,
            "requests_per_round": args.requests,
            "data": data,
            "endpoint": "Recommender.for_user(random user, n=10), in-process, sequential",
            "machine": machine(),
            "commit": commit(),
            "command": "python " + " ".join(sys.argv),
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: result[k] for k in ("median_us", "ratio_this_over_baseline")}))
    finally:
        redis_proc.terminate()
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
