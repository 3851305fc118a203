"""Catalogue: seconds from a catalogue event to the last answer that still shows the item, the
import rate, and the reader's latency with and without ``fields=``.

Usage: python benchmarks/catalogue.py [--probes 100] [--import-items 20000] [--clicks-rate 0]
                                      [--out benchmarks/results/catalogue.json]

Runs on a stack of its own (free ports, folder under .driftrec-test/): a worker and a reader at
their defaults, simulator clicks applied first. Probe k takes the (k mod 10)-th item of the
trending answer and a shopper whose recommendations show it (if one of 200 does), marks it unavailable through
``PUT /v1/items/{id}`` and polls both answers until neither shows it: the seconds from just before the PUT to the first poll round without it
(so the HTTP call, Kafka, the worker, Redis and the reader's poll are all in it, and the poll
round's own time bounds the resolution, ~10-30 ms here). The item is then made available again.
``--clicks-rate`` publishes simulator clicks in the background meanwhile (the issue asks for
2,000/s; the default 0 measures the path alone). Then ``driftrec items import`` of a JSON-lines
file of ``--import-items`` items (items/s through the CLI, and until the worker applied them, and
the latency of sequential recommendation requests meanwhile, while the reader decodes the changes),
and sequential recommendation requests alternating with and without
``fields=title,price,image_url`` (latency percentiles).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from common import RESULTS, ROOT, commit, machine

from driftrec.keys import Keys
from driftrec.publisher import publish_events
from driftrec.runtime import ensure_services
from driftrec.simulator import ShopSimulator, wall_clock
from tools.chaos.procs import Child, wait_http
from tools.chaos.scenario import run_settings
from tools.chaos.stack import PrivateStack


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": round(pct(values, 0.5), 4), "p90": round(pct(values, 0.9), 4),
            "p99": round(pct(values, 0.99), 4), "max": round(max(values), 4),
            "mean": round(statistics.fmean(values), 4)}


def items_of(http: httpx.Client, path: str) -> list[str]:
    r = http.get(path)
    r.raise_for_status()
    return [x["item_id"] for x in r.json()["items"]]


def probe(http: httpx.Client, users: list[str], k: int, timeout: float = 10.0) -> dict[str, Any] | None:
    """Probe ``k``: the ``k % 10``-th trending item made unavailable; seconds until no watched
    answer shows it."""
    top = items_of(http, "/v1/trending?n=10")
    if not top:
        return None
    item = top[k % len(top)]
    watched = ["/v1/trending?n=10"]
    for u in users:
        path = f"/v1/recommendations/{u}?n=10"
        if item in items_of(http, path):
            watched.append(path)
            break
    started = time.monotonic()
    r = http.put(f"/v1/items/{item}", json={"title": f"probe {item}", "available": False})
    r.raise_for_status()
    rounds = 0
    while True:
        rounds += 1
        if not any(item in items_of(http, p) for p in watched):
            gone = time.monotonic() - started
            break
        if time.monotonic() - started > timeout:
            gone = float("inf")
            break
    r = http.put(f"/v1/items/{item}", json={"title": f"probe {item}", "available": True})
    r.raise_for_status()
    started = time.monotonic()
    while item not in items_of(http, watched[0]) and time.monotonic() - started < timeout:
        pass
    back = time.monotonic() - started
    return {"item": item, "answers_watched": len(watched), "gone_s": gone, "back_s": back, "poll_rounds": rounds}


def requests_while(port: int, users: list[str], running: threading.Event, out: list[float]) -> None:
    """Sequential recommendation requests (one client, closed loop) while ``running`` is set."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        k = 0
        while running.is_set():
            t = time.monotonic()
            http.get(f"/v1/recommendations/{users[k % len(users)]}?n=10").raise_for_status()
            out.append(time.monotonic() - t)
            k += 1


def background_clicks(s: Any, sim: ShopSimulator, rate: float, halt: threading.Event) -> threading.Thread:
    def run() -> None:
        while not halt.is_set():
            publish_events(s, wall_clock(sim.events(int(rate))), rate=rate)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--import-items", type=int, default=20_000)
    ap.add_argument("--clicks-rate", type=float, default=0.0, help="background simulator clicks per second")
    ap.add_argument("--latency-requests", type=int, default=1000, help="per variant (with / without fields=)")
    ap.add_argument("--out", type=Path, default=RESULTS / "catalogue.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    home = ROOT / ".driftrec-test" / f"catalogue-{os.getpid()}"
    shutil.rmtree(home, ignore_errors=True)
    stack = PrivateStack(home)
    mach = machine()
    out: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "commit": commit(), "machine": mach,
                           "args": vars(args) | {"out": str(args.out)}}
    stack.up()
    try:
        tag = os.urandom(4).hex()
        s = run_settings(stack.settings, tag, items_topic=f"chaos-{tag}.items",
                         items_dead_letter_topic=f"chaos-{tag}.items.dlq", allow_anonymous_writes=True)
        ensure_services(s, start=False)
        keys = Keys(s.key_prefix)
        worker = Child(s, ["worker"], home / "logs" / "catalogue-worker.log").start()
        reader = Child(s, ["serve"], home / "logs" / "catalogue-reader.log").start()
        wait_http(f"http://127.0.0.1:{s.reader_port}/readyz", 60, reader)
        sim = ShopSimulator.live(rate=2000.0, shoppers=200, n_users=2000, n_items=2000, n_categories=10, seed=3)
        seed_clicks = list(wall_clock(sim.events(20_000)))
        publish_events(s, seed_clicks)
        client = redis.Redis.from_url(s.redis)
        while int(client.hget(keys.meta, "applied_events") or 0) < len(seed_clicks):
            if not worker.check():
                raise SystemExit(f"worker died:\n{worker.tail()}")
            time.sleep(0.5)
        users = list(dict.fromkeys(str(e["user_id"]) for e in reversed(seed_clicks)))[:200]
        halt = threading.Event()
        bg = background_clicks(s, sim, args.clicks_rate, halt) if args.clicks_rate > 0 else None
        with httpx.Client(base_url=f"http://127.0.0.1:{s.reader_port}", timeout=10) as http:
            # The first catalogue event also starts the worker's fetches of the items topic.
            http.put("/v1/items/warm-up", json={"title": "warm-up"}).raise_for_status()
            deadline = time.monotonic() + 60
            while http.get("/v1/items/warm-up").status_code != 200:
                assert time.monotonic() < deadline, worker.tail()
                time.sleep(0.1)
            probes = [p for k in range(args.probes) if (p := probe(http, users, k)) is not None]
            halt.set()
            if bg is not None:
                bg.join(30)
            gone = [p["gone_s"] for p in probes]
            out["unavailable_to_last_answer_s"] = summary(gone)
            out["available_to_first_answer_s"] = summary([p["back_s"] for p in probes])
            out["probes_with_a_recommendation_watched"] = sum(p["answers_watched"] > 1 for p in probes)
            out["probes_over_1s"] = sum(g >= 1.0 for g in gone)

            path = home / "items.jsonl"
            with path.open("w") as f:
                for k in range(args.import_items):
                    f.write(json.dumps({"item_id": f"imp{k}", "title": f"Imported item {k}", "category": f"c{k % 10}",
                                        "tags": [f"t{k % 7}"], "price": round(1 + k % 500 * 0.37, 2),
                                        "image_url": f"https://shop.example/img/{k}.jpg"}) + "\n")
            before = client.hlen(keys.catalogue)
            during: list[float] = []
            importing = threading.Event()
            importing.set()
            watcher = threading.Thread(target=requests_while, args=(s.reader_port, users, importing, during),
                                       daemon=True)
            watcher.start()
            started = time.monotonic()
            env = {**os.environ, **s.to_env()}
            done = subprocess.run([sys.executable, "-m", "driftrec.cli", "items", "import", str(path)],
                                  env=env, cwd=ROOT, capture_output=True, text=True, check=False)
            cli_s = time.monotonic() - started
            if done.returncode != 0:
                raise SystemExit(done.stdout + done.stderr)
            while client.hlen(keys.catalogue) < before + args.import_items:
                if not worker.check():
                    raise SystemExit(f"worker died:\n{worker.tail()}")
                time.sleep(0.2)
            applied_s = time.monotonic() - started
            time.sleep(1.0)  # the reader's view has the imported items
            importing.clear()
            watcher.join(30)
            out["import"] = {"items": args.import_items, "cli_s": round(cli_s, 2),
                             "cli_items_per_s": round(args.import_items / cli_s),
                             "applied_s": round(applied_s, 2),
                             "applied_items_per_s": round(args.import_items / applied_s),
                             "reader_latency_during_import_s": summary(during) if during else None}

            lat: dict[str, list[float]] = {"without_fields": [], "with_fields": []}
            for k in range(args.latency_requests * 2):
                u = users[k % len(users)]
                variant = "with_fields" if k % 2 else "without_fields"
                path_q = f"/v1/recommendations/{u}?n=10" + ("&fields=title,price,image_url" if k % 2 else "")
                t = time.monotonic()
                http.get(path_q).raise_for_status()
                lat[variant].append(time.monotonic() - t)
            out["reader_latency_s"] = {v: summary(xs) for v, xs in lat.items()}
        worker.stop()
        reader.stop()
        client.close()
    finally:
        stack.down()
        shutil.rmtree(home / "kafka", ignore_errors=True)
        shutil.rmtree(home / "redis", ignore_errors=True)
    out["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("machine",)}, indent=1))


if __name__ == "__main__":
    main()
