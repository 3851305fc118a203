"""Catalogue: seconds from a catalogue event to the last answer that still shows the item, under
background clicks, the import rate, and the reader's latency with and without ``fields=``.

Usage: python benchmarks/catalogue.py [--probes 100] [--clicks-rate 2000] [--import-items 20000]
                                      [--out benchmarks/results/catalogue.json]

Runs on a stack of its own (free ports, folder under .driftrec-test/): a worker and a reader at
their defaults, simulator clicks applied first. Then ``driftrec simulate`` (the product's simulator
and publisher, a process of its own) sends ``--clicks-rate`` clicks/s (the issue's 2,000) over the
same shoppers and items for the whole probe phase; what the worker applied meanwhile is recorded
(``background``), so a run where the publisher fell short says so.

Probe k takes the (k mod 10)-th item of the trending answer, a shopper whose recommendations show
it and an item whose similar items show it (each if one of 50 shoppers / one of the item's own similar
items or of the trending top 10 does), marks it
unavailable through ``PUT /v1/items/{id}`` and polls every watched answer (trending,
recommendations, similar items) back to back until a whole round shows it nowhere, then keeps
polling for ``--confirm-s`` more (an answer that shows it again counts). The measure is the
issue's: seconds from just before the PUT (the catalogue event) to the **last answer that showed
the item** (the moment that answer was received: an upper bound on when the reader built it; so
the HTTP call, Kafka, the worker, Redis and the reader's 0.1 s poll are all in it). The first
clean round is recorded too (``unavailable_to_first_clean_round_s``, what this benchmark reported
before: one poll round later), and when the probe loop first saw the worker's record of the item
in Redis say unavailable (``unavailable_to_applied_in_redis_s``: the worker's share). The item is
then made available again and the seconds to the first trending answer (top 100) with it recorded. Then ``driftrec items import`` of a JSON-lines file of
``--import-items`` items (items/s through the CLI, and until the worker applied them, and the
latency of sequential recommendation requests meanwhile, while the reader decodes the changes),
and sequential recommendation requests alternating with and without
``fields=title,price,image_url`` (latency percentiles); both without background clicks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import shutil
import signal
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
    """Percentiles; a timed-out probe (inf) sorts last and is written as null (strict JSON)."""
    def r(x: float) -> float | None:
        return None if math.isinf(x) else round(x, 4)

    return {"n": len(values), "p50": r(pct(values, 0.5)), "p90": r(pct(values, 0.9)),
            "p99": r(pct(values, 0.99)), "max": r(max(values)), "mean": r(statistics.fmean(values)),
            "timed_out_10s": sum(math.isinf(x) for x in values)}


#: Requests sent again after the server closed a kept-alive connection under them (counted).
RESENT = [0]


def items_of(http: httpx.Client, path: str) -> list[str]:
    try:
        r = http.get(path)
    except httpx.RemoteProtocolError:  # uvicorn closed an idle kept-alive connection as it was reused
        RESENT[0] += 1
        r = http.get(path)
    r.raise_for_status()
    return [x["item_id"] for x in r.json()["items"]]


def probe(http: httpx.Client, users: list[str], k: int, timeout: float = 10.0,
          confirm_s: float = 0.5, stored: Any = None) -> dict[str, Any] | None:
    """Probe ``k``: the ``k % 10``-th trending item made unavailable; seconds from the event to
    the last watched answer that showed it (and to the first round where none did).
    ``stored(item)`` (the record the worker stored, or None) splits the time: until the worker
    applied the event to Redis, then until the readers stopped showing it."""
    top = items_of(http, "/v1/trending?n=10")
    if not top:
        return None
    item = top[k % len(top)]
    watched = ["/v1/trending?n=10"]
    for u in users[:50]:
        path = f"/v1/recommendations/{u}?n=10"
        if item in items_of(http, path):
            watched.append(path)
            break
    # a similar-items answer that shows it: among its own neighbours' (co-occurrence is symmetric)
    for other in [*items_of(http, f"/v1/items/{item}/similar?n=10"), *top]:
        path = f"/v1/items/{other}/similar?n=10"
        if other != item and item in items_of(http, path):
            watched.append(path)
            break
    started = time.monotonic()
    r = http.put(f"/v1/items/{item}", json={"title": f"probe {item}", "available": False})
    r.raise_for_status()
    rounds = 0
    applied_at: float | None = None  # the worker's record of the item says unavailable
    last_with: float | None = None  # seconds after the event the last answer showing it came back
    clean_at: float | None = None   # the first whole round that showed it nowhere
    while True:
        rounds += 1
        shown = False
        for p in watched:
            got = items_of(http, p)
            if item in got:
                shown = True
                last_with = time.monotonic() - started
        if stored is not None and applied_at is None and '"available":false' in (stored(item) or ""):
            applied_at = time.monotonic() - started
        now = time.monotonic() - started
        if shown:
            clean_at = None  # shown again after a clean round: that round did not count
        elif clean_at is None:
            clean_at = now
        if clean_at is not None and now - clean_at >= confirm_s:
            break
        if now > timeout:
            break
    gone = last_with if last_with is not None else 0.0
    if clean_at is None:
        gone = float("inf")
    r = http.put(f"/v1/items/{item}", json={"title": f"probe {item}", "available": True})
    r.raise_for_status()
    # Back: the first trending answer (top 100: under live clicks its rank moves) that shows it.
    started = time.monotonic()
    while item not in items_of(http, "/v1/trending?n=100") and time.monotonic() - started < timeout:
        time.sleep(0.005)
    back = time.monotonic() - started
    return {"item": item, "watched": watched, "answers_watched": len(watched), "last_answer_with_item_s": gone,
            "first_clean_round_s": clean_at if clean_at is not None else float("inf"),
            "shown_at_event": last_with is not None, "back_s": back, "poll_rounds": rounds,
            "applied_in_redis_s": applied_at}


def requests_while(port: int, users: list[str], running: threading.Event, out: list[float]) -> None:
    """Sequential recommendation requests (one client, closed loop) while ``running`` is set."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        k = 0
        while running.is_set():
            t = time.monotonic()
            http.get(f"/v1/recommendations/{users[k % len(users)]}?n=10").raise_for_status()
            out.append(time.monotonic() - t)
            k += 1


#: The seed clicks' simulator; ``driftrec simulate`` with the same shape and seed clicks the same
#: shoppers (u0..) and items (i0..), so the probed items keep being clicked while hidden.
SIM = {"shoppers": 200, "users": 2000, "items": 2000, "categories": 10, "seed": 3}


def background_clicks(s: Any, home: Path, rate: float) -> Child:
    """``driftrec simulate`` at ``rate`` clicks/s (wall-clock stamps), in a process of its own."""
    args = ["simulate", "--events", str(int(rate * 3600)), "--rate", str(rate),
            *(x for k, v in SIM.items() for x in (f"--{k}", str(v)))]
    return Child(s, args, home / "logs" / "catalogue-simulate.log").start()


def applied_events(client: redis.Redis, keys: Keys) -> int:
    return int(client.hget(keys.meta, "applied_events") or 0)


def click_backlog(s: Any, client: redis.Redis, keys: Keys) -> int:
    """Clicks on the topic the worker has not applied yet (its end offsets less applied_events):
    whether the worker keeps up with the background load when a probe starts."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def ends() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap)
        await consumer.start()
        try:
            got = await consumer.end_offsets([TopicPartition(s.clicks_topic, p) for p in range(s.topic_partitions)])
            return int(sum(got.values()))
        finally:
            await consumer.stop()

    return max(0, asyncio.run(ends()) - applied_events(client, keys))


def backlog_probes(s: Any, sim: ShopSimulator, worker: Child, http: httpx.Client, users: list[str],
                   client: redis.Redis, keys: Keys, args: argparse.Namespace, stored: Any) -> dict[str, Any]:
    """Probes while the worker catches up a click backlog: the case where a catalogue record used
    to wait behind the clicks. The worker is paused (SIGSTOP) while ``--backlog-clicks`` are
    published, resumed, and probed while it is more than 1 s of clicks behind."""
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGSTOP)
    try:
        published = time.monotonic()
        publish_events(s, wall_clock(sim.events(args.backlog_clicks)))
        paused_s = time.monotonic() - published
    finally:
        worker.proc.send_signal(signal.SIGCONT)
    probes: list[dict[str, Any]] = []
    started = time.monotonic()
    for k in range(args.probes):
        backlog = click_backlog(s, client, keys)
        if backlog < args.clicks_rate:
            break
        p = probe(http, users, 1000 + k, confirm_s=args.confirm_s, stored=stored)
        if p is not None:
            probes.append({**p, "click_backlog_at_start": backlog,
                           "click_backlog_at_end": click_backlog(s, client, keys)})
    last = [p["last_answer_with_item_s"] for p in probes]
    applied = [p["applied_in_redis_s"] for p in probes if p["applied_in_redis_s"] is not None]
    print(f"behind a backlog: {len(probes)} probes, last answer with the item "
          f"{[round(x, 3) for x in last]}, backlog {[p['click_backlog_at_start'] for p in probes]}", flush=True)
    return {"backlog_clicks": args.backlog_clicks, "worker_paused_s": round(paused_s, 1),
            "probing_s": round(time.monotonic() - started, 1), "probes": len(probes),
            "click_backlog_at_start": summary([float(p["click_backlog_at_start"]) for p in probes]) if probes else None,
            "unavailable_to_last_answer_s": summary(last) if last else None,
            "unavailable_to_applied_in_redis_s": summary(applied) if applied else None,
            "probes_over_1s": sum(x >= 1.0 for x in last)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--import-items", type=int, default=20_000)
    ap.add_argument("--clicks-rate", type=float, default=2000.0,
                    help="background clicks per second during the probes (driftrec simulate; 0: none)")
    ap.add_argument("--confirm-s", type=float, default=0.5,
                    help="seconds a probe keeps polling after the first round without the item")
    ap.add_argument("--latency-requests", type=int, default=1000, help="per variant (with / without fields=)")
    ap.add_argument("--backlog-clicks", type=int, default=150_000,
                    help="clicks published while the worker is paused (SIGSTOP), then probes while it "
                         "catches them up under the background clicks (0: no backlog phase)")
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
    children: list[Child | None] = []
    try:
        tag = os.urandom(4).hex()
        s = run_settings(stack.settings, tag, items_topic=f"chaos-{tag}.items",
                         items_dead_letter_topic=f"chaos-{tag}.items.dlq", allow_anonymous_writes=True)
        ensure_services(s, start=False)
        keys = Keys(s.key_prefix)
        worker = Child(s, ["worker"], home / "logs" / "catalogue-worker.log").start()
        reader = Child(s, ["serve"], home / "logs" / "catalogue-reader.log").start()
        children.extend([worker, reader])
        wait_http(f"http://127.0.0.1:{s.reader_port}/readyz", 60, reader)
        sim = ShopSimulator.live(rate=2000.0, shoppers=SIM["shoppers"], n_users=SIM["users"], n_items=SIM["items"],
                                 n_categories=SIM["categories"], seed=SIM["seed"])
        seed_clicks = list(wall_clock(sim.events(20_000)))
        publish_events(s, seed_clicks)
        client = redis.Redis.from_url(s.redis)
        while int(client.hget(keys.meta, "applied_events") or 0) < len(seed_clicks):
            if not worker.check():
                raise SystemExit(f"worker died:\n{worker.tail()}")
            time.sleep(0.5)
        users = list(dict.fromkeys(str(e["user_id"]) for e in reversed(seed_clicks)))[:200]
        with httpx.Client(base_url=f"http://127.0.0.1:{s.reader_port}", timeout=10) as http:
            # The first catalogue event also starts the worker's fetches of the items topic.
            http.put("/v1/items/warm-up", json={"title": "warm-up"}).raise_for_status()
            deadline = time.monotonic() + 60
            while http.get("/v1/items/warm-up").status_code != 200:
                assert time.monotonic() < deadline, worker.tail()
                time.sleep(0.1)
            bg = background_clicks(s, home, args.clicks_rate) if args.clicks_rate > 0 else None
            children.append(bg)
            if bg is not None:  # the publisher is up and the worker applies its clicks
                a0 = applied_events(client, keys)
                deadline = time.monotonic() + 60
                while applied_events(client, keys) < a0 + args.clicks_rate:
                    if not bg.check() or time.monotonic() > deadline:
                        raise SystemExit(f"background clicks did not start:\n{bg.tail()}")
                    time.sleep(0.2)
            def stored(item: str) -> str | None:
                raw = client.hget(keys.catalogue, item)
                return raw.decode() if isinstance(raw, bytes) else raw

            a0, t0 = applied_events(client, keys), time.monotonic()
            probes = []
            for k in range(args.probes):
                backlog = click_backlog(s, client, keys)
                try:
                    p = probe(http, users, k, confirm_s=args.confirm_s, stored=stored)
                except httpx.HTTPError as exc:
                    # What was measured so far is kept beside the result, for the diagnosis.
                    part = args.out.with_suffix(".partial.json")
                    part.write_text(json.dumps({**out, "failed_at_probe": k, "error": repr(exc),
                                                "reader_alive": reader.check(), "worker_alive": worker.check(),
                                                "probes": probes}, indent=1) + "\n")
                    raise SystemExit(f"probe {k}: {exc!r}; reader alive: {reader.check()} "
                                     f"(exit {reader.proc.poll() if reader.proc else None}); "
                                     f"partial results in {part}\n{reader.tail()}") from exc
                if p is not None:
                    probes.append({**p, "click_backlog_at_start": backlog})
                if k % 10 == 9:
                    print(f"probe {k + 1}: last answer with the item "
                          f"{[round(x['last_answer_with_item_s'], 3) for x in probes[-10:]]}", flush=True)
                if bg is not None and not bg.check():
                    raise SystemExit(f"background clicks stopped:\n{bg.tail()}")
            a1, t1 = applied_events(client, keys), time.monotonic()
            if args.backlog_clicks > 0:
                out["behind_a_backlog"] = backlog_probes(s, sim, worker, http, users, client, keys, args, stored)
            if bg is not None:
                bg.stop()
            out["background"] = {"clicks_per_s_offered": args.clicks_rate, "seconds": round(t1 - t0, 1),
                                 "clicks_applied": a1 - a0,
                                 "clicks_applied_per_s": round((a1 - a0) / (t1 - t0), 1),
                                 "click_backlog_at_end": click_backlog(s, client, keys)}
            # The import and the latencies below are measured without clicks: the backlog drains first.
            drain0 = time.monotonic()
            while click_backlog(s, client, keys) > 0 and time.monotonic() - drain0 < 600:
                if not worker.check():
                    raise SystemExit(f"worker died:\n{worker.tail()}")
                time.sleep(1.0)
            out["background"]["drain_s"] = round(time.monotonic() - drain0, 1)
            last = [p["last_answer_with_item_s"] for p in probes]
            out["unavailable_to_last_answer_s"] = summary(last)
            out["unavailable_to_first_clean_round_s"] = summary([p["first_clean_round_s"] for p in probes])
            out["available_to_first_answer_s"] = summary([p["back_s"] for p in probes])
            applied = [p["applied_in_redis_s"] for p in probes if p["applied_in_redis_s"] is not None]
            if applied:  # the split: event -> the worker's record in Redis (seen by the probe loop)
                out["unavailable_to_applied_in_redis_s"] = summary(applied)
            out["answers_watched"] = {str(n): sum(p["answers_watched"] == n for p in probes) for n in (1, 2, 3)}
            out["probes_shown_after_the_event"] = sum(p["shown_at_event"] for p in probes)
            out["probes_over_1s"] = sum(g >= 1.0 for g in last)
            out["requests_resent_after_a_closed_connection"] = RESENT[0]
            # The same, for the probes that started while the worker kept up (under 1 s of clicks behind)
            up = [p["last_answer_with_item_s"] for p in probes if p["click_backlog_at_start"] < args.clicks_rate]
            out["worker_kept_up"] = {"probes": len(up), "unavailable_to_last_answer_s": summary(up) if up else None}
            out["probes"] = [{k: (None if math.isinf(v) else round(v, 4)) if isinstance(v, float) else v
                              for k, v in p.items() if k != "watched"} for p in probes]
            print(json.dumps({k: out[k] for k in ("background", "unavailable_to_last_answer_s",
                                                  "unavailable_to_first_clean_round_s", "probes_over_1s")}),
                  flush=True)

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
        for child in children:
            if child is not None and child.alive():
                child.stop()
        stack.down()
        shutil.rmtree(home / "kafka", ignore_errors=True)
        shutil.rmtree(home / "redis", ignore_errors=True)
    out["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("machine",)}, indent=1))


if __name__ == "__main__":
    main()
