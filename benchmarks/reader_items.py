"""The reader's latency against the catalogue's size: p99 at 500 req/s with 10,000 and 1,000,000 items.

Usage: python benchmarks/reader_items.py [--items 10000 1000000] [--rate 500] [--seconds 20]
                                         [--out benchmarks/results/reader_items.json]

Issue 23's scale check: a request's cost must not grow with the catalogue. For each size, in turn:

1. a private ``redis-server`` without persistence is filled by :func:`benchmarks.reader.populate` with a shop in
   the worker's key layout: 50,000 shoppers with histories (5-40 items drawn by a Zipf-like
   popularity), decayed weights, category tastes and factor vectors; 50 neighbours per item,
   popularity, trending; and a published model version at ``driftrec train``'s default sizes
   (128 ALS factors, a 256-wide TF layer) with synthetic weights, since nobody trains a
   million-item model on this machine. Parts over 64 MB go in chunks, as the publisher writes them.
2. ``driftrec serve`` starts as a user starts it (the compiled front and the Python reader behind
   it, which builds the HNSW indexes when the version loads, ``reader_ann_build_threads`` = 2
   so that the million-item build takes minutes rather than most of an hour; the front then
   maps them). The script waits until the front ranks recommendations with the model itself.
3. vegeta offers ``GET /v1/recommendations/{shopper}?n=20`` open-loop at ``--rate`` for
   ``--seconds`` (after 5 s at 100 req/s to warm the caches), spread over the shoppers, in
   ``--windows`` windows ``--pause`` s apart (the last is the one reported: the first can still
   meet the model's load settling), with the CPU of the front, the Python reader and Redis per
   window; ``--perf`` records the front's hottest symbols in the first.

Writes p50 / p99 / p99.9 / max, statuses, sheds, the front's share of the answers, the model's
load time, the reader tree's RSS and Redis' memory per size, and ``p99_ratio`` (the largest size
over the smallest; the issue's target: within 1.5x). Everything shares this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from reader import PREFIX, populate  # noqa: E402
from system import CpuMeter, Proc, front_answers, http_ok, vegeta, vegeta_bin, wait_for  # noqa: E402

from driftrec.settings import Settings  # noqa: E402
from tools import benchinfo  # noqa: E402
from tools.chaos.procs import tree_pids  # noqa: E402
from tools.chaos.stack import PrivateRedis, free_port  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
USERS, FACTORS, TF_HIDDEN, N = 50_000, 128, 256, 20


def wait_model(base: str, timeout: float, proc: Proc) -> float:
    """Seconds until the compiled front answers a recommendation with the model itself (the
    Python reader has loaded the version and built its indexes into the shared folder)."""
    started = time.monotonic()
    url = f"{base}/v1/recommendations/u1?n={N}"

    def front_ranks() -> bool:
        before = front_answers(f"{base}/metrics")
        try:
            urllib.request.urlopen(url, timeout=60).read()
        except OSError:
            return False
        if front_answers(f"{base}/metrics") > before:
            return True
        time.sleep(5)
        return False

    wait_for(front_ranks, timeout, "the front to rank with the model", (proc,))
    return round(time.monotonic() - started, 1)


def one_size(items: int, args: argparse.Namespace, vegeta_: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"reader-items-{items}-") as tmp:
        work = Path(tmp)
        server = PrivateRedis(work / "redis", persist=False)
        server.start()
        try:
            return measure(items, args, vegeta_, work, server)
        finally:
            server.stop()


def measure(items: int, args: argparse.Namespace, vegeta_: str, work: Path, server: PrivateRedis) -> dict[str, Any]:
    """One catalogue size on ``server``: fill it, start ``driftrec serve``, wait for the model, measure."""
    r = redis.Redis.from_url(server.url)
    print(f"[{items}] filling Redis ...", flush=True)
    out: dict[str, Any] = {"items": items, "shop": populate(r, items, USERS, k=FACTORS, tf_hidden=TF_HIDDEN)}
    s = Settings(kafka_bootstrap_servers="127.0.0.1:9", redis_url=server.url, key_prefix=PREFIX,
                 reader_port=free_port(), home=work / "home", reader_ann_build_threads=2)
    base = f"http://127.0.0.1:{s.reader_port}"
    reader = Proc(ROOT, s, ["serve"], work / "reader.log")
    try:
        wait_for(lambda: http_ok(f"{base}/readyz"), 300, "the reader", (reader,))
        print(f"[{items}] waiting for the model's indexes ...", flush=True)
        out["model_load_s"] = wait_model(base, args.load_timeout, reader)
        targets = work / "targets.txt"
        targets.write_text("".join(f"GET {base}/v1/recommendations/u{(u * 7919) % USERS}?n={N}\n"
                                   for u in range(20_000)))
        vegeta(vegeta_, targets, 100, 5.0, work)  # warm the caches; not recorded
        pids = procs(reader, server.pid)
        windows = []
        for w in range(args.windows):
            before = front_answers(f"{base}/metrics")
            meter = CpuMeter(pids)
            perf = start_perf(pids.get("front"), work) if args.perf and w == 0 else None
            print(f"[{items}] window {w + 1}: {args.rate} req/s for {args.seconds:.0f} s ...", flush=True)
            got = vegeta(vegeta_, targets, args.rate, args.seconds, work)
            got.update(meter.read())
            got["front_answers"] = front_answers(f"{base}/metrics") - before
            if perf is not None:
                got["front_perf_top"] = stop_perf(perf, work)
            windows.append(got)
            print(f"[{items}] {json.dumps({k: v for k, v in got.items() if k != 'front_perf_top'})}", flush=True)
            time.sleep(args.pause)
        out["windows"] = windows
        out["at_rate"] = windows[-1]  # the last window: the one furthest from the model's load
        out["reader_rss_mb"] = reader.rss_mb()
        out["redis_used_memory_mb"] = round(int(r.info("memory")["used_memory"]) / 2**20, 1)
        reader.check()
    except BaseException:
        shutil.copy(work / "reader.log", Path(tempfile.gettempdir()) / f"reader-items-{items}.log")
        raise
    finally:
        reader.stop()
    return out


def procs(reader: Proc, redis_pid: int | None) -> dict[str, int | None]:
    """The compiled front, the Python reader behind it and Redis, for :class:`CpuMeter`."""
    out: dict[str, int | None] = {"redis": redis_pid}
    for pid in tree_pids(reader.proc.pid)[1:]:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        out["front" if comm == "driftrec-reader" else "python_reader"] = pid
    return out


def start_perf(pid: int | None, work: Path) -> subprocess.Popen[bytes] | None:
    """``perf record`` of the front's threads for one window (None without perf or the front)."""
    perf = shutil.which("perf")
    if perf is None or pid is None:
        return None
    return subprocess.Popen([perf, "record", "-F", "499", "-g", "-p", str(pid), "-o", str(work / "perf.data")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_perf(proc: subprocess.Popen[bytes], work: Path) -> list[str]:
    """The window's hottest symbols of the front (self time), as ``perf report`` prints them."""
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    text = subprocess.run(["perf", "report", "--stdio", "--no-children", "--sort", "dso,symbol", "-g", "none",
                           "-i", str(work / "perf.data")], capture_output=True, text=True).stdout
    return [" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.startswith("#")][:40]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--windows", type=int, default=2, help="measurement windows per size (the last is reported)")
    ap.add_argument("--pause", type=float, default=10.0, help="seconds between windows")
    ap.add_argument("--perf", action="store_true", help="perf record the front during the first window")
    ap.add_argument("--load-timeout", type=float, default=3600.0, help="seconds to wait for the indexes")
    ap.add_argument("--out", type=Path, default=RESULTS / "reader_items.json")
    args = ap.parse_args()
    vegeta_ = vegeta_bin()
    started = time.time()
    sizes = [one_size(n, args, vegeta_) for n in args.items]
    p99 = {str(x["items"]): x["at_rate"]["p99_ms"] for x in sizes}
    result = {
        "commit": benchinfo.commit(), "machine": benchinfo.machine(),
        "command": " ".join(["python", "benchmarks/reader_items.py", *sys.argv[1:]]),
        "rate_per_s": args.rate, "seconds": args.seconds, "users": USERS, "factors": FACTORS,
        "tf_hidden": TF_HIDDEN, "n": N, "sizes": sizes, "p99_ms": p99,
        "p99_ratio": round(sizes[-1]["at_rate"]["p99_ms"] / sizes[0]["at_rate"]["p99_ms"], 2),
        "wall_s": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"p99_ms": p99, "p99_ratio": result["p99_ratio"]}), flush=True)


if __name__ == "__main__":
    main()
