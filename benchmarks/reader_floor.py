"""The reader's floor: what the parts issue 6 prescribes cost on this machine with nothing else.

Usage: python benchmarks/reader_floor.py [--rounds 3] [--seconds 8] [--concurrency 8]
                                         [--out benchmarks/results/reader_floor.json]

The reader target is p99 <= 5 ms at >= 2,000 req/s per reader process: at most 0.5 ms of one
core per recommendation. This benchmark measures how much of that budget the prescribed parts
take *before* any recommendation logic, on the reader benchmark's shop (``benchmarks/reader.py``:
10k items, 50k users, a published model with TF arrays, in a private ``redis-server``). One
``driftrec serve``-like process (the real app from :func:`driftrec.online.app.create_app`, uvicorn with
uvloop and httptools, BLAS on one thread, ``tune_gc``) gets extra routes, one per stage, each
doing a prefix of what a recommendation does with the real code:

``http``
    Starlette + uvicorn + the reader's middleware answer ``{"items": []}`` (no Redis).
``read``
    ``http`` plus the first round trip: :meth:`driftrec.online.store.ReaderStore.read_user` (meta,
    model version, the user's HASH and vector, decoded), the one read a recommendation cannot skip.
``reads``
    ``read`` plus the second round trip the item-item source needs, whose keys come from the
    first answer: the neighbour rows of the user's recent items
    (:meth:`driftrec.online.store.ReaderStore.read_expansion`, no row cache, no similar users).
``scans``
    ``read`` plus the three exact scans of the catalogue the issue asks for (the user vector
    against the item factors, the TF model's output layer, the nearest-user pool), each with its
    top-k: :meth:`PublishedModel.score` and :meth:`PublishedModel.nearest_users`.
``full``
    ``GET /v1/recommendations/{user}``: everything (the second round trip, assembling, blend).

wrk drives each stage in turn, alternating the order between rounds, on loopback with the
same random users; reported per stage: medians over rounds of req/s, p50/p99 and the reader's CPU
per request (``/proc``), and what that CPU would allow on one free core.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Before numpy loads (``reader`` imports it): one BLAS thread, as ``driftrec serve`` runs.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import redis  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import reader as bench  # noqa: E402

from tools.benchinfo import commit, cpu_jitter, machine  # noqa: E402

logger = logging.getLogger("benchmarks.reader_floor")

STAGES = {
    "http": "/floor/http/u{u}",
    "read": "/floor/read/u{u}",
    "reads": "/floor/reads/u{u}",
    "scans": "/floor/scans/u{u}",
    "full": bench.MAIN_PATH,
}
#: One core's CPU per request at the target: 2,000 req/s.
BUDGET_MS = 0.5


def serve(port: int) -> None:
    """The real reader app plus the ``/floor/{stage}/{user_id}`` routes, run as ``driftrec serve`` runs it."""
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from driftrec.models.candidates import user_recent
    from driftrec.online.app import create_app, tune_gc
    from driftrec.online.http import json_response
    from driftrec.settings import load_settings

    settings = load_settings()
    app = create_app(settings)

    async def floor(request: Request) -> Response:
        stage, user = request.path_params["stage"], request.path_params["user_id"]
        if stage not in STAGES or stage == "full":
            return json_response({"error": f"unknown stage {stage!r}"}, 404)
        if stage == "http":
            return json_response({"items": []})
        rec = request.app.state.recommender
        r = await rec.store.read_user(user, None, 0)
        if stage == "read":
            return json_response({"items": [], "history": len(r.history)})
        f = r.meta.factor(rec.rate)
        decayed, recent = user_recent(r.weights, r.history, f, r.meta.now, rec.policy,
                                      k=settings.reader_recent_items, order=settings.reader_recent_order)
        if stage == "reads":
            k_nbrs = settings.neighbours_read
            nbrs, _ = await rec.store.read_expansion([i for i, _ in recent], k_nbrs, [], 0)
            return json_response({"items": [], "rows": sum(map(len, nbrs.values()))})
        model = rec.models.observe(r.model_version)
        if model is None:
            return json_response({"error": "no model"}, 503)
        want = 10 + len(r.history)  # n + the seen items blend filters out, as for_user asks
        vec, tf, similar = model.sources(r.vec, r.vec_version, user, decayed, want, settings.reader_similar_users)
        return json_response({"items": [i for i, _ in vec[:10]], "tf": len(tf), "similar": len(similar)})

    app.router.routes.insert(0, Route("/floor/{stage}/{user_id}", floor))
    tune_gc()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8, help="wrk run per stage and round")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--factors", type=int, default=bench.K, help="Published ALS factors (driftrec train: 128).")
    ap.add_argument("--tf-hidden", type=int, default=bench.TF_HIDDEN, help="TF hidden width (driftrec train: 256).")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reader_floor.json")
    ap.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    wrk = bench.ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="driftrec-floor-"))
    rport, hport = bench.free_port(), bench.free_port()
    redis_proc = bench.private_redis(rport, work)
    server: subprocess.Popen[bytes] | None = None
    try:
        logger.info("filling Redis on port %d", rport)
        data = bench.populate(redis.Redis(port=rport), args.items, args.users, k=args.factors,
                              tf_hidden=args.tf_hidden)
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{rport}/0", "DRIFTREC_KEY_PREFIX": bench.PREFIX,
               "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
        server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(hport)],
                                  cwd=ROOT, env=env, stdout=open(work / "server.log", "wb"),
                                  stderr=subprocess.STDOUT)
        bench.wait_ready(hport, bench.VERSION, 60, server)
        script = work / "recs.lua"
        script.write_text(bench.WRK_LUA)
        jitter = cpu_jitter(5.0)
        for path in STAGES.values():  # warm every route (and the model) once
            bench.run_wrk(wrk, hport, args.concurrency, 2, script, args.users, args.items, path)
        runs = bench.alternating_runs(
            wrk, {name: (hport, server.pid, path) for name, path in STAGES.items()}, rounds=args.rounds,
            seconds=args.seconds, concurrency=args.concurrency, script=script, users=args.users,
            items=args.items, redis_port=rport)
        stages: dict[str, Any] = {}
        for name, rs in runs.items():
            med: dict[str, Any] = dict(bench.medians(rs))
            med["errors"] = sum(r["errors"] for r in rs)
            med["one_free_core_req_per_s"] = round(1000 / med["reader_cpu_ms_per_request"], 1)
            med["share_of_budget"] = round(med["reader_cpu_ms_per_request"] / BUDGET_MS, 2)
            med["path"] = STAGES[name]
            med["rounds"] = rs
            stages[name] = med
        body = {
            "stages": stages,
            "budget_ms_per_request": BUDGET_MS,
            "target": "p99 <= 5 ms at >= 2000 req/s per reader process",
            "concurrency": args.concurrency,
            "seconds_per_run": args.seconds,
            "rounds": args.rounds,
            "machine": machine(),
            "machine_jitter": jitter,
            "commit": commit(),
            "load_generator": "wrk -t1 (closed loop) on loopback, same machine",
            "data": data,
            "command": "python benchmarks/reader_floor.py " + " ".join(sys.argv[1:]),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(body, indent=2) + "\n")
        for name, med in stages.items():
            logger.info("%-6s %7.1f req/s  p50 %6.2f ms  p99 %6.2f ms  reader %.3f ms CPU/request (%.2f of the budget)",
                        name, med["req_per_s"], med["p50_ms"], med["p99_ms"], med["reader_cpu_ms_per_request"],
                        med["share_of_budget"])
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        redis_proc.terminate()
        redis_proc.wait(10)


if __name__ == "__main__":
    main()
