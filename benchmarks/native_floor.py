"""How fast a compiled request path answers on this machine, beside the Python reader (issue 23).

Usage: python benchmarks/native_floor.py [--rates 250 500 1000 2000] [--seconds 10]
                                         [--out benchmarks/results/native_floor.json]

Builds ``benchmarks/native_floor`` (Rust: hyper on one thread, two round trips to Redis, an
item-item sum; see its ``src/main.rs``), fills a private Redis with ``benchmarks/reader.py``'s
shop (10,000 items, 50,000 shoppers, its published model), and drives three servers open-loop
with vegeta at each rate, one after the other on the same Redis:

``python_blend``
    ``driftrec serve`` as users start it, the full blend (``GET /v1/recommendations/{u}?n=20``);
``python_item_item``
    the same process asked for the item-item source alone (``&strategy=item_item``): the reads and
    the maths closest to what the floor does;
``native_floor``
    the Rust floor: the same two reads, a plain item-item sum, JSON.

Reported per server and rate: vegeta's latency percentiles and statuses, and the CPU of the server
and of Redis per request (from /proc). The floor is not a recommender (no decay, norms, other
sources, catalogue, shedding, metrics); it bounds what a port of the request path could reach.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from common import RESULTS, ROOT, commit, free_port, machine

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reader as rb  # noqa: E402
import system as sb  # noqa: E402

CRATE = ROOT / "benchmarks" / "native_floor"


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def attack(veg: str, targets: Path, rate: int, seconds: float, work: Path, server: int, redis_pid: int) -> dict[str, Any]:
    c0, r0 = cpu_s(server), cpu_s(redis_pid)
    res = sb.vegeta(veg, targets, rate, seconds, work)
    n = max(res["requests"], 1)
    res["server_cpu_ms_per_request"] = round((cpu_s(server) - c0) * 1e3 / n, 3)
    res["redis_cpu_ms_per_request"] = round((cpu_s(redis_pid) - r0) * 1e3 / n, 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=int, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "native_floor.json")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path", str(CRATE / "Cargo.toml")], check=True)
    binary = CRATE / "target" / "release" / "native-floor"
    veg = sb.vegeta_bin()
    work = Path(tempfile.mkdtemp(prefix="native-floor-"))
    rport, py_port, rs_port = free_port(), free_port(), free_port()
    rp = rb.private_redis(rport, work)
    procs: list[subprocess.Popen[bytes]] = [rp]
    try:
        r = redis.Redis(port=rport)
        rb.populate(r, 10_000, 50_000)
        env = {**os.environ, "DRIFTREC_REDIS_URL": f"redis://127.0.0.1:{rport}/0", "DRIFTREC_KEY_PREFIX": rb.PREFIX,
               "DRIFTREC_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
        py = subprocess.Popen([sys.executable, "-m", "driftrec.cli", "serve", "--port", str(py_port)], cwd=ROOT,
                              env=env, stdout=open(work / "reader.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(py)
        rb.wait_ready(py_port, rb.VERSION, 120, py)
        rs = subprocess.Popen([str(binary), f"redis://127.0.0.1:{rport}/0", rb.PREFIX, str(rs_port)],
                              stdout=open(work / "native.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(rs)
        time.sleep(0.5)
        rng = random.Random(7)
        users = [rng.randrange(50_000) for _ in range(20_000)]
        servers = {
            "python_blend": (py.pid, f"http://127.0.0.1:{py_port}/v1/recommendations/u{{u}}?n=20"),
            "python_item_item": (py.pid, f"http://127.0.0.1:{py_port}/v1/recommendations/u{{u}}?n=20&strategy=item_item"),
            "native_floor": (rs.pid, f"http://127.0.0.1:{rs_port}/v1/recommendations/u{{u}}"),
        }
        out: dict[str, Any] = {"commit": commit(), "machine": machine(), "command": " ".join(["python", *sys.argv]),
                               "shop": {"items": 10_000, "shoppers": 50_000}, "seconds": args.seconds, "servers": {}}
        for name, (pid, url) in servers.items():
            targets = work / f"{name}.txt"
            targets.write_text("".join(f"GET {url.format(u=u)}\n" for u in users))
            sb.vegeta(veg, targets, 100, 2.0, work)  # warm-up: caches, connections
            out["servers"][name] = {}
            for rate in args.rates:
                res = attack(veg, targets, rate, args.seconds, work, pid, rp.pid)
                out["servers"][name][str(rate)] = res
                print(f"{name} at {rate}/s: p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, statuses {res['status']}, "
                      f"server {res['server_cpu_ms_per_request']} ms CPU/request, Redis {res['redis_cpu_ms_per_request']}",
                      flush=True)
                time.sleep(1.0)
        out["load_avg_at_end"] = os.getloadavg()
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
