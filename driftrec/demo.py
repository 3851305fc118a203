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
from collections import deque
from pathlib import Path
from typing import Any

from driftrec.settings import Settings

__all__ = ["run_demo", "find_movielens"]

logger = logging.getLogger(__name__)


def find_movielens() -> Path | None:
    """../shared/datasets/ml-latest-small/ratings.csv next to the checkout, when present."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        path = base.parent / "shared" / "datasets" / "ml-latest-small" / "ratings.csv"
        if path.exists():
            return path
    return None


def _get(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


def _wait_http(url: str, deadline_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            _get(url)
            return
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {deadline_s:.0f}s")


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen([sys.executable, "-m", "driftrec.cli", *args], stdout=out,
                            stderr=subprocess.STDOUT, env=dict(os.environ))


def run_demo(settings: Settings, *, events: int, rate: float, source: str) -> int:
    from driftrec.publisher import publish_events
    from driftrec.runtime import ensure_services

    print("starting Kafka (KRaft) and Redis ...", flush=True)
    ensure_services(settings)
    logs = Path(settings.home) / "logs"
    worker = _spawn(["worker"], logs / "worker.log")
    reader = _spawn(["serve"], logs / "reader.log")
    base = f"http://{settings.reader_host}:{settings.reader_port}"
    try:
        _wait_http(f"{base}/readyz", 60, reader)
        ml = find_movielens() if source in ("auto", "movielens") else None
        if ml is not None:
            from driftrec.datasets import load_movielens

            stream: Any = load_movielens(ml)
            label = f"MovieLens ({ml})"
        else:
            from driftrec.simulator import ShopSimulator

            stream = ShopSimulator(n_users=300, n_items=1500, n_categories=10, seed=7).events(events)
            label = "the built-in shop simulator"
        recent: deque[str] = deque(maxlen=50)

        def tap(evs: Any) -> Any:
            for ev in itertools.islice(evs, events):
                recent.append(str(ev["user_id"]))
                yield ev

        print(f"\nstreaming {events} clicks from {label} at {rate:.0f}/s")
        print(f"  reader:  {base}/v1/recommendations/<user_id>?n=5   ({base}/readyz)")
        print(f"  worker metrics: http://127.0.0.1:{settings.worker_metrics_port}/metrics")
        print("  stop: Ctrl-C (then `driftrec stack down` or `make stop` stops Kafka and Redis)\n")
        done = threading.Event()
        result: dict[str, Any] = {}

        def produce() -> None:
            try:
                result["report"] = publish_events(settings, tap(stream), rate=rate)
            finally:
                done.set()

        threading.Thread(target=produce, daemon=True).start()
        last: dict[str, list[str]] = {}
        while not done.wait(3.0) or not last:
            shown = list(dict.fromkeys(reversed(recent)))[:3]
            for user in shown:
                try:
                    recs = _get(f"{base}/v1/recommendations/{user}?n=5")
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    print(f"  user {user}: reader error {exc}")
                    continue
                items = [it["item_id"] for it in recs["items"]]
                mark = "changed" if last.get(user) not in (None, items) else ""
                print(f"  user {user:>6}: {', '.join(items) or '(nothing yet)'}  {mark}", flush=True)
                last[user] = items
            print(flush=True)
            if done.is_set():
                break
        time.sleep(2.0)
        print(f"done: {result.get('report')}; the stack keeps running (`driftrec stack down` stops it)")
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
