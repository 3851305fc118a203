"""Reader benchmark: wrk on loopback against ``driftrec serve`` over a populated private Redis.

Fills a private ``redis-server`` (a free port, no persistence) directly with the key layout of
``docs/redis-keys.md``: 10k items in 20 categories, 50k users with histories, decayed weights,
category tastes and factor vectors, item neighbours, popularity, trending, and a published model
version (ALS-like item and user factors plus TF next-item arrays). Then starts one reader
process and drives ``GET /v1/recommendations/{random user}`` with wrk (installed with apt-get
when missing) and writes ``benchmarks/results/reader.json``.

    .venv/bin/python benchmarks/reader.py [--concurrency 8] [--duration 20] [--sweep 4,8,16,32]
        [--variants] [--baseline DIR --baseline-label TEXT]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import redis

from common import RESULTS, ROOT, commit, cpu_jitter, free_port, machine

from driftrec import modelblobs
from driftrec.keys import Keys
from driftrec.models.decay import SCORE_SCALE
from driftrec.userstate import encode_state, pack_vector
from tools.chaos.scale import cpu_s, redis_cpu_s

logger = logging.getLogger("benchmarks.reader")

PREFIX = "bench"
VERSION = "bench-v1"
K = 32
TF_HIDDEN = 64
N_CATS = 20

WRK_LUA = r"""
math.randomseed(7)
local users = tonumber(os.getenv("BENCH_USERS") or "50000")
local items = tonumber(os.getenv("BENCH_ITEMS") or "10000")
local path = os.getenv("BENCH_PATH") or "/v1/recommendations/u{u}?n=10"
request = function()
  local p = path:gsub("{u}", tostring(math.random(0, users - 1))):gsub("{i}", tostring(math.random(0, items - 1)))
  return wrk.format("GET", p)
end
done = function(summary, latency, requests)
  io.write(string.format("BENCH_JSON {\"p50_us\": %d, \"p99_us\": %d, \"p999_us\": %d, \"max_us\": %d, " ..
    "\"requests\": %d, \"duration_us\": %d, \"non2xx\": %d, \"connect\": %d, \"read\": %d, \"write\": %d, \"timeout\": %d}\n",
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout))
end
"""


def ensure_wrk() -> str:
    """wrk from Debian; installed here so a fresh machine gets it."""
    path = shutil.which("wrk")
    if path:
        return path
    logger.info("installing wrk with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, check=True)
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk could not be installed")
    return path


def private_redis(port: int, work: Path) -> subprocess.Popen[bytes]:
    """A ``redis-server`` on ``port`` with no persistence, answering once this returns."""
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_redis(redis.Redis(port=port))
    return proc


def wait_redis(r: redis.Redis) -> None:
    for _ in range(50):
        try:
            r.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.1)


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def populate(r: redis.Redis, n_items: int, n_users: int, seed: int = 7, k: int = K,
             tf_hidden: int = TF_HIDDEN) -> dict[str, Any]:
    """Fill Redis with a plausible shop state in the worker's key layout.

    ``k`` and ``tf_hidden`` size the published model: 32 and 64 by default, the sizes every
    earlier reader result was measured at; ``driftrec train`` publishes ALS with 128 factors
    and a TF model with a 256-wide hidden layer (``DEFAULT_PARAMS`` of driftrec/training/runner.py).
    """
    rng = np.random.default_rng(seed)
    keys = Keys(PREFIX)
    t0 = 1.7e9
    landmark, now = t0, t0 + 86400.0
    items = [f"i{j}" for j in range(n_items)]
    cats = [f"c{j % N_CATS}" for j in range(n_items)]
    # Zipf-like popularity: a few items take most clicks, as in a shop.
    pop = (1.0 / np.arange(1, n_items + 1) ** 0.8) * 5000.0
    rng.shuffle(pop)
    prob = pop / pop.sum()
    # rng.choice(n_items, p=prob) rebuilds this CDF on every call (O(n_items) each: hours at 100k
    # items); drawing from it once built gives the very same numbers.
    cdf = prob.cumsum()
    cdf /= cdf[-1]

    def by_popularity(size: int) -> np.ndarray:
        return cdf.searchsorted(rng.random(size), side="right")
    # Stored as the worker stores decayed scores: whole units of 1/SCORE_SCALE (models/decay.py).
    pop = np.floor(pop * SCORE_SCALE + 0.5)
    started = time.perf_counter()

    pipe = r.pipeline(transaction=False)
    pipe.hset(keys.meta, mapping={"landmark": repr(landmark), "last_event_time": repr(now)})
    pipe.zadd(keys.popularity, dict(zip(items, pop.tolist(), strict=True)))
    for c in range(N_CATS):
        idx = np.arange(c, n_items, N_CATS)
        top = idx[np.argsort(-pop[idx])[:500]]
        pipe.zadd(keys.trending(f"c{c}"), {items[j]: float(pop[j]) for j in top})
    for start in range(0, n_items, 2000):
        pipe.hset(keys.item_category, mapping=dict(zip(items[start:start + 2000], cats[start:start + 2000], strict=True)))
    pipe.execute()

    # Neighbours: 50 per item, mostly from the same category, co-occurrence below popularity.
    for start in range(0, n_items, 500):
        pipe = r.pipeline(transaction=False)
        for j in range(start, min(start + 500, n_items)):
            same = rng.integers(0, n_items // N_CATS, size=35) * N_CATS + (j % N_CATS)
            other = by_popularity(15)
            nb = {items[x]: float(np.floor(min(pop[j], pop[x]) * rng.uniform(0.05, 0.5) + 0.5))
                  for x in np.concatenate([same, other]) if x != j and x < n_items}
            pipe.zadd(keys.item_nbrs(items[j]), nb)
        pipe.execute()

    Y = (rng.normal(size=(n_items, k)) * 0.3).astype(np.float32)
    U = (rng.normal(size=(n_users, k)) * 0.3).astype(np.float32)
    for start in range(0, n_users, 1000):
        pipe = r.pipeline(transaction=False)
        for u in range(start, min(start + 1000, n_users)):
            user = f"u{u}"
            n_hist = int(rng.integers(5, 40))
            chosen = np.unique(by_popularity(n_hist))
            times = now - rng.uniform(0, 20 * 86400.0, size=chosen.size)
            weights = np.floor(rng.choice([1.0, 3.0, 5.0], size=chosen.size) * SCORE_SCALE * np.exp(
                (times - landmark) * np.log(2) / (7 * 86400.0)) + 0.5)
            pipe.hset(keys.user_state(user), mapping=encode_state(  # type: ignore[arg-type]
                {items[j]: float(t) for j, t in zip(chosen, times, strict=True)},
                {items[j]: float(w) for j, w in zip(chosen, weights, strict=True)}))
            cw: dict[str, float] = {}
            for j, w in zip(chosen, weights, strict=True):
                cw[cats[j]] = cw.get(cats[j], 0.0) + float(w)
            pipe.zadd(keys.user_cats(user), cw)
            pipe.set(keys.user_vec(user), pack_vector(U[u].tobytes(), VERSION))
        pipe.execute()

    dims = [n_items, tf_hidden, n_items]
    parts: dict[str, bytes] = {
        "item_ids": "\n".join(items).encode(), "item_factors": npy(Y),
        "user_ids": "\n".join(f"u{u}" for u in range(n_users)).encode(), "user_factors": npy(U),
        "alpha": npy(np.array([1.0])), "regularization": npy(np.array([0.1])),
        "tf_n_layers": npy(np.array([2], np.int32)),
    }
    del Y, U
    for i in range(2):
        w = rng.normal(size=(dims[i], dims[i + 1])).astype(np.float32)
        w *= 0.1
        parts[f"tf_layer{i}_weight"] = npy(w)
        parts[f"tf_layer{i}_bias"] = npy(np.zeros(dims[i + 1], np.float32))
        del w
    # Parts over modelblobs.CHUNK_BYTES (a million items' TF layers) go in chunks, as the
    # publisher writes them: Redis refuses one value over 512 MB.
    pipe = r.pipeline(transaction=False)
    for name, value in parts.items():
        head, chunks = modelblobs.split(value)
        for c, chunk in enumerate(chunks):
            pipe.set(modelblobs.chunk_key(keys.model_blob(VERSION, name), c), chunk)
            pipe.execute()
        pipe.set(keys.model_blob(VERSION, name), head)
    del parts
    pipe.set(keys.model_current, VERSION)
    pipe.execute()
    info = r.info("memory")
    return {"items": n_items, "users": n_users, "categories": N_CATS, "factors": k,
            "tf_hidden": tf_hidden, "keys": r.dbsize(), "redis_used_mb": round(info["used_memory"] / 2**20, 1),
            "fill_s": round(time.perf_counter() - started, 1)}


def wait_ready(port: int, version: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("reader exited during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                body = json.loads(resp.read())
                if body.get("model_version") == version:
                    return
            # The model loads on the first request that sees its version.
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/recommendations/u0", timeout=5).read()
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"reader not ready with model {version} after {timeout}s")


MAIN_PATH = "/v1/recommendations/u{u}?n=10"
#: Other endpoints and single sources, to show what each part of the blend costs.
VARIANTS = {
    "recommendations, item_item only": "/v1/recommendations/u{u}?n=10&strategy=item_item",
    "recommendations, no similar users / TF": "/v1/recommendations/u{u}?n=10&weights=similar_users:0,tf:0",
    "similar items": "/v1/items/i{i}/similar?n=10",
    "trending": "/v1/trending?n=10",
}


def run_wrk(wrk: str, port: int, concurrency: int, duration: int, script: Path, users: int,
            items: int = 10_000, path: str = MAIN_PATH) -> dict[str, Any]:
    cmd = [wrk, "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "2s", "-s", str(script),
           f"http://127.0.0.1:{port}"]
    env = {**os.environ, "BENCH_USERS": str(users), "BENCH_ITEMS": str(items), "BENCH_PATH": path}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    match = re.search(r"BENCH_JSON (\{.*\})", out)
    if not match:
        raise SystemExit(f"unexpected wrk output:\n{out}")
    raw = json.loads(match.group(1))
    seconds = raw["duration_us"] / 1e6
    errors = raw["non2xx"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "req_per_s": round(raw["requests"] / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 3),
        "p99_ms": round(raw["p99_us"] / 1000, 3),
        "p999_ms": round(raw["p999_us"] / 1000, 3),
        "max_ms": round(raw["max_us"] / 1000, 3),
        "errors": errors,
        "concurrency": concurrency,
        "n": raw["requests"],
        "duration_s": round(seconds, 2),
    }


def served_records(port: int) -> dict[str, float]:
    """The reader's answer records (P:{r:R}) by outcome, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^driftrec_reader_served_records_total\{outcome="(\w+)"\} (\S+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def row_cache(port: int) -> dict[str, float]:
    """Hit rate of the reader's shared-row caches (online/rowcache.py) since it started."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    counts: dict[str, dict[str, float]] = {}
    pattern = r'^driftrec_reader_row_cache_lookups\{cache="(\w+)",outcome="(\w+)"\} (\S+)$'
    for m in re.finditer(pattern, text, re.M):
        counts.setdefault(m.group(1), {})[m.group(2)] = float(m.group(3))
    return {cache: round(c.get("hit", 0.0) / max(c.get("hit", 0.0) + c.get("miss", 0.0), 1.0), 3)
            for cache, c in counts.items()}


#: What :func:`medians` summarises of a run.
MEDIAN_KEYS = ("req_per_s", "p50_ms", "p99_ms", "reader_cpu_ms_per_request", "redis_cpu_ms_per_request")


def alternating_runs(wrk: str, targets: dict[str, tuple[int, int, str]], *, rounds: int, seconds: int,
                     concurrency: int, script: Path, users: int, items: int,
                     redis_port: int) -> dict[str, list[dict[str, Any]]]:
    """Short wrk runs on each target (reader port, reader pid, request path), the order reversed
    every other round, with the reader's and Redis' CPU per request added to each run: on a
    shared machine only the ratios of one such run mean something."""
    seen: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    names = list(targets)
    for k in range(rounds):
        for name in (names if k % 2 == 0 else names[::-1]):
            port, pid, path = targets[name]
            cpu0, rcpu0 = cpu_seconds(pid), redis_cpu_seconds(redis_port)
            one = run_wrk(wrk, port, concurrency, seconds, script, users, items, path)
            one["reader_cpu_ms_per_request"] = (cpu_seconds(pid) - cpu0) * 1000 / max(one["n"], 1)
            one["redis_cpu_ms_per_request"] = (redis_cpu_seconds(redis_port) - rcpu0) * 1000 / max(one["n"], 1)
            logger.info("round %d %s: %s", k, name, one)
            seen[name].append(one)
    return seen


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in MEDIAN_KEYS}


def ab_rounds(wrk: str, readers: dict[str, tuple[int, int]], args: argparse.Namespace, script: Path,
              redis_port: int, rounds: int = 4) -> dict[str, Any]:
    """Alternate short wrk runs between readers (port, pid) on the same data; medians over the rounds."""
    seen = alternating_runs(wrk, {name: (port, pid, MAIN_PATH) for name, (port, pid) in readers.items()},
                            rounds=rounds, seconds=max(5, args.duration // 4), concurrency=args.concurrency,
                            script=script, users=args.users, items=args.items, redis_port=redis_port)
    out: dict[str, Any] = {"rounds": rounds, "concurrency": args.concurrency}
    for name, runs in seen.items():
        out[name] = medians(runs)
    out["redis_cpu_per_request_ratio"] = round(out["this"]["redis_cpu_ms_per_request"]
                                               / max(out["baseline"]["redis_cpu_ms_per_request"], 1e-9), 3)
    out["cpu_per_request_ratio"] = round(out["this"]["reader_cpu_ms_per_request"]
                                         / out["baseline"]["reader_cpu_ms_per_request"], 3)
    out["req_per_s_ratio"] = round(out["this"]["req_per_s"] / out["baseline"]["req_per_s"], 3)
    logger.info("A/B: %s", out)
    return out


def redis_cpu_seconds(port: int) -> float:
    """User + system CPU of the Redis server so far (its own ``INFO cpu``)."""
    return redis_cpu_s(redis.Redis(port=port))


cpu_seconds = cpu_s  # user + system CPU seconds of a process so far (from /proc)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--factors", type=int, default=K, help="Published ALS factors (driftrec train: 128).")
    ap.add_argument("--tf-hidden", type=int, default=TF_HIDDEN, help="TF hidden width (driftrec train: 256).")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--sweep", default="", help="Extra concurrencies to measure, comma-separated.")
    ap.add_argument("--variants", action="store_true", help="Also measure the other endpoints and single sources.")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="A checkout of other reader code (e.g. a git worktree): its reader runs on the same "
                         "Redis and the two are measured in alternating rounds (ratios in the JSON).")
    ap.add_argument("--baseline-label", default="", help="What --baseline is (recorded in the JSON).")
    ap.add_argument("--out", type=Path, default=RESULTS / "reader.json")
    ap.add_argument("--redis-port", type=int, default=0,
                    help="Use this running Redis (filled once, reused while it holds the data) "
                         "instead of a private one.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="driftrec-bench-"))
    rport, hport = args.redis_port or free_port(), free_port()
    redis_proc = None
    if not args.redis_port:
        redis_proc = private_redis(rport, work)
    reader: subprocess.Popen[bytes] | None = None
    other: subprocess.Popen[bytes] | None = None
    try:
        r = redis.Redis(port=rport)
        wait_redis(r)
        filled = r.get(f"{PREFIX}:bench-filled")
        shape = [args.items, args.users, args.factors, args.tf_hidden]
        if filled is not None and json.loads(filled)[0] == shape:
            data = json.loads(filled)[1]
        else:
            logger.info("filling Redis on port %d", rport)
            for key in r.scan_iter(match=f"{PREFIX}:*", count=5000):
                r.delete(key)
            data = populate(r, args.items, args.users, k=args.factors, tf_hidden=args.tf_hidden)
            r.set(f"{PREFIX}:bench-filled", json.dumps([shape, data]))
        logger.info("data: %s", data)
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{rport}/0", "DRIFTREC_KEY_PREFIX": PREFIX,
               "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
        log = open(work / "reader.log", "wb")
        reader = subprocess.Popen([sys.executable, "-m", "driftrec.cli", "serve", "--port", str(hport)],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_ready(hport, VERSION, 60, reader)
        script = work / "recs.lua"
        script.write_text(WRK_LUA)
        # The machine's own jitter, idle, just before the load: a floor under any measured tail.
        jitter = cpu_jitter(5.0)
        logger.info("machine jitter (fixed ~1 ms Python loop): %s", jitter)
        logger.info("warming up")
        run_wrk(wrk, hport, args.concurrency, 3, script, args.users, args.items)
        cpu0, load0 = cpu_seconds(reader.pid), load_average()
        result = run_wrk(wrk, hport, args.concurrency, args.duration, script, args.users, args.items)
        # CPU the reader spent per request: what its throughput on one free core would be.
        result["reader_cpu_ms_per_request"] = round((cpu_seconds(reader.pid) - cpu0) * 1000 / max(result["n"], 1), 3)
        result["load_average_before"] = load0
        result["load_average_after"] = load_average()
        logger.info("c=%d: %s", args.concurrency, result)
        sweep = []
        for c in [int(x) for x in args.sweep.split(",") if x]:
            one = run_wrk(wrk, hport, c, max(5, args.duration // 2), script, args.users, args.items)
            logger.info("c=%d: %s", c, one)
            sweep.append(one)
        # Every answer is recorded for click attribution: written, or dropped and counted.
        result["served_records"] = served_records(hport)
        result["row_cache_hit_rate"] = row_cache(hport)
        variants = {}
        for name, path in (VARIANTS.items() if args.variants else ()):
            cpu0 = cpu_seconds(reader.pid)
            one = run_wrk(wrk, hport, args.concurrency, max(5, args.duration // 2), script, args.users,
                          args.items, path)
            one["reader_cpu_ms_per_request"] = round((cpu_seconds(reader.pid) - cpu0) * 1000 / max(one["n"], 1), 3)
            one["path"] = path
            logger.info("%s: %s", name, one)
            variants[name] = one
        baseline = None
        if args.baseline is not None:
            oport = free_port()
            other = subprocess.Popen([sys.executable, "-m", "driftrec.cli", "serve", "--port", str(oport)],
                                     cwd=args.baseline, env=env, stdout=open(work / "baseline.log", "wb"),
                                     stderr=subprocess.STDOUT)
            wait_ready(oport, VERSION, 60, other)
            run_wrk(wrk, oport, args.concurrency, 3, script, args.users, args.items)
            baseline = ab_rounds(wrk, {"baseline": (oport, other.pid), "this": (hport, reader.pid)},
                                 args, script, rport)
            baseline["label"] = args.baseline_label or str(args.baseline)
        body = {
            **result,
            "ab_against_baseline": baseline,
            "endpoint": "GET /v1/recommendations/{random of the users}?n=10",
            "target": "p99 <= 5 ms at >= 2000 req/s per reader process",
            "met": result["p99_ms"] <= 5.0 and result["req_per_s"] >= 2000 and result["errors"] == 0,
            "machine": machine(),
            "machine_jitter": jitter,
            "commit": commit(),
            "load_generator": "wrk -t1 (closed loop) on loopback, same machine",
            "data": data,
            "sweep": sweep,
            "variants": variants,
            "command": "python benchmarks/reader.py " + " ".join(sys.argv[1:]),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(body, indent=2) + "\n")
        print(json.dumps(body, indent=2))
    finally:
        if other is not None:
            other.send_signal(signal.SIGTERM)
            other.wait(10)
        if reader is not None:
            reader.send_signal(signal.SIGTERM)
            try:
                reader.wait(10)
            except subprocess.TimeoutExpired:
                reader.kill()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
