"""``driftrec demo``: the whole system on the embedded stack, with live recommendations printed."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from driftrec.settings import Settings

__all__ = ["run_demo", "find_movielens"]

logger = logging.getLogger(__name__)


def find_movielens() -> Path | None:
    """ml-latest-small's ratings.csv from the shared data sets, when present."""
    from driftrec.datasets import shared_datasets_dir

    path = shared_datasets_dir() / "ml-latest-small" / "ratings.csv"
    return path if path.exists() else None


def _get(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


def _wait_http(url: str, deadline_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2.0):  # noqa: S310 - loopback only
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {deadline_s:.0f}s")


def _spawn(args: list[str], log: Path, settings: Settings) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")  # noqa: SIM115 - owned by the child
    env = {**os.environ, **settings.to_env()}
    return subprocess.Popen([sys.executable, "-m", "driftrec.cli", *args], stdout=out,
                            stderr=subprocess.STDOUT, env=env)


def _reset(settings: Settings) -> None:
    """Give the demo a clean slate: its own topics recreated and its own Redis keys removed."""
    import asyncio

    import redis
    from aiokafka.admin import AIOKafkaAdminClient

    async def drop_topics() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            doomed = [t for t in (settings.clicks_topic, settings.dead_letter_topic, settings.items_topic,
                                  settings.items_dead_letter_topic) if t in existing]
            if doomed:
                await admin.delete_topics(doomed)
                for _ in range(100):
                    if not set(doomed) & set(await admin.list_topics()):
                        break
                    await asyncio.sleep(0.1)
        finally:
            await admin.close()

    asyncio.run(drop_topics())
    client = redis.Redis.from_url(settings.redis)
    try:
        for key in client.scan_iter(match=f"{settings.key_prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def _label(item: dict[str, Any]) -> str:
    """An answered item as the demo prints it: its catalogue title, else its id."""
    title = item.get("title")
    return f"{title} ({item['item_id']})" if title else str(item["item_id"])


def _show_unavailable(base: str, user: str | None) -> None:
    """Mark the user's first recommendation unavailable through the catalogue endpoint and show
    that the next answer no longer has it."""
    if user is None:
        return
    try:
        top = _get(f"{base}/v1/recommendations/{user}?n=5&fields=title")["items"]
        if not top:
            return
        item = top[0]["item_id"]
        req = urllib.request.Request(f"{base}/v1/items/{item}", method="PUT", data=json.dumps(
            {"title": top[0].get("title") or item, "available": False}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5):  # noqa: S310 - loopback only
            pass
        started = time.monotonic()
        while time.monotonic() - started < 5:
            after = _get(f"{base}/v1/recommendations/{user}?n=5&fields=title")["items"]
            if item not in [it["item_id"] for it in after]:
                print(f"\nmarked {_label(top[0])} unavailable (PUT /v1/items/{item}); "
                      f"{time.monotonic() - started:.2f} s later user {user} gets: {'; '.join(map(_label, after))}")
                return
            time.sleep(0.05)
        print(f"\n{item} was still recommended 5 s after it was marked unavailable")
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        print(f"\ncatalogue step skipped: {exc}")


def _applied(settings: Settings) -> int:
    import redis

    client = redis.Redis.from_url(settings.redis)
    try:
        return int(client.hget(f"{settings.key_prefix}:{{g}}:meta", "applied_events") or 0)
    finally:
        client.close()


def run_demo(settings: Settings, *, events: int, rate: float, source: str) -> int:
    from collections import Counter

    from driftrec.items_import import movielens_items, publish_items, simulator_items
    from driftrec.publisher import publish_events
    from driftrec.runtime import ensure_services
    from driftrec.simulator import wall_clock

    # The demo keeps to its own topics, consumer group and key prefix, and starts from scratch.
    settings = settings.model_copy(update={
        "clicks_topic": "driftrec.demo.clicks", "dead_letter_topic": "driftrec.demo.dlq",
        "items_topic": "driftrec.demo.items", "items_dead_letter_topic": "driftrec.demo.items.dlq",
        "consumer_group": "driftrec-demo", "key_prefix": "demo",
        "allow_anonymous_writes": True,  # a local demo: curl -X POST /v1/events works as shown
    })
    print("starting Kafka (KRaft) and Redis ...", flush=True)
    ensure_services(settings)
    _reset(settings)
    ensure_services(settings, start=False)
    logs = Path(settings.home) / "logs"
    worker = _spawn(["worker"], logs / "worker.log", settings)
    reader = _spawn(["serve"], logs / "reader.log", settings)
    base = f"http://{settings.reader_host}:{settings.reader_port}"
    try:
        _wait_http(f"{base}/readyz", 60, reader)
        _wait_http(f"http://127.0.0.1:{settings.worker_metrics_port}/metrics", 90, worker)
        ml = find_movielens() if source in ("auto", "movielens") else None
        if ml is not None:
            from driftrec.datasets import load_movielens

            batch = list(itertools.islice(iter(load_movielens(ml)), events))
            label = f"MovieLens ({ml})"
            movies = ml.parent / "movies.csv"
            items = list(movielens_items(movies)) if movies.exists() else []
        else:
            from driftrec.simulator import ShopSimulator

            # Live clicks: a small shop, so the followed shoppers click often enough to watch.
            sim = ShopSimulator.live(rate=rate, shoppers=100, n_users=300, n_items=1500,
                                     n_categories=10, seed=7)
            batch = list(itertools.islice(sim.events(events), events))
            label = "the built-in shop simulator"
            items = list(simulator_items(sim.item_ids, sim.item_category))
        # The catalogue first (titles, genres or categories, prices): answers ask for titles.
        if items:
            report = publish_items(settings, items)
            print(f"catalogue: {report.sent} items to {settings.items_topic} ({report.rate:,.0f}/s)")
        # Follow the three most active shoppers of the stream, so their lists visibly move.
        followed = [u for u, _ in Counter(str(ev["user_id"]) for ev in batch).most_common(3)]
        print(f"\nstreaming {len(batch)} clicks from {label} at {rate:.0f}/s")
        print(f"  reader:  {base}/v1/recommendations/<user_id>?n=5   ({base}/readyz)")
        print(f"  worker metrics: http://127.0.0.1:{settings.worker_metrics_port}/metrics")
        print("  stop: Ctrl-C; `make stop` (or `driftrec stack down`) stops Kafka and Redis\n")
        done = threading.Event()
        result: dict[str, Any] = {}

        def produce() -> None:
            try:
                # Simulated clicks are stamped as they are sent (MovieLens keeps its own times).
                clicks = batch if ml is not None else wall_clock(batch)
                result["report"] = publish_events(settings, clicks, rate=rate)
            finally:
                done.set()

        threading.Thread(target=produce, daemon=True).start()
        last: dict[str, list[str]] = {}
        changes = 0
        deadline = None
        while True:
            finished = done.is_set()
            time.sleep(2.0)
            applied = _applied(settings)
            print(f"[{time.strftime('%H:%M:%S')}] applied {applied}/{len(batch)} events", flush=True)
            for user in followed:
                try:
                    recs = _get(f"{base}/v1/recommendations/{user}?n=5&fields=title")
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    print(f"  user {user}: reader error {exc}")
                    continue
                shown = [it["item_id"] for it in recs["items"]]
                changed = last.get(user) not in (None, shown)
                changes += changed
                why = f"  [#1 {recs['items'][0]['reason']}]" if recs["items"] else ""
                titles = [_label(it) for it in recs["items"]]
                print(f"  user {user:>6}: {'; '.join(titles) or '(nothing yet)'}{why}{'   <- changed' if changed else ''}",
                      flush=True)
                last[user] = shown
            if finished:
                deadline = deadline or time.monotonic() + 30
                if applied >= len(batch) or time.monotonic() > deadline:
                    break
        print(f"\ndone: {result.get('report')}; {_applied(settings)} events applied; "
              f"{changes} changes seen in the followed users' lists")
        _show_unavailable(base, followed[0] if followed else None)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        for proc in (worker, reader):
            proc.terminate()
        for proc in (worker, reader):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
