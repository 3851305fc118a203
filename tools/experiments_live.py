"""A/A (and A/B) experiments run one after another on a live stack: the real reader splits and
records, the real exporter credits the clicks and computes the figures.

Used by ``benchmarks/experiments.py --real-stack`` (200 runs) and by
``tests/integration/test_experiments_aa_live.py`` (30 runs). The stack (Kafka, Redis, worker,
reader, exporter) is the caller's; this module only talks to it: the reader's HTTP API, the clicks
topic, the exporter's ``/api/state``.

One experiment runs at a time (the product's rule: a shopper is in at most one), so the runs are
sequential: run ``k`` is defined with ``start`` = now, serves its traffic, and is stopped (its
``stop`` set, which keeps its counts) at the instant run ``k + 1`` starts. Every run has its own
name, so the reader's hash of (experiment, shopper) splits the same shoppers afresh: what makes
the runs independent is the split and fresh click draws, not fresh shoppers. A run's clicks are
published after the next run has been served, so that the reader has written every record they
point at; once everything is published, the exporter's figures of every run are read when its
credits match what was published, click for click.

Clicks: each shopper has a click propensity ``p`` (drawn once by the caller); an answer is clicked
(a ``view`` of its first item) with probability ``p``, ``p x (1 + margin)`` for the treatment of
a run with a margin; a click goes on to the cart with 0.3 and the cart to a purchase with 0.3.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import redis

from driftrec.keys import Keys
from driftrec.models.experiments import assign
from driftrec.publisher import Publisher, publish_events
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from tools.chaos.procs import ROOT, Child, wait_http

__all__ = ["Run", "RunResult", "shop", "live_stack", "wait_attribution_ready", "run_sequential", "VARIANTS"]

VARIANTS = ("control", "treat")
TYPES = ("view", "add_to_cart", "purchase")


@dataclass(frozen=True)
class Run:
    """One experiment to run: its name and the treatment's relative click margin (0: A/A)."""

    name: str
    margin: float = 0.0


@dataclass
class RunResult:
    """What was served and published for one run, and the exporter's figures of it."""

    name: str
    margin: float
    answers: int = 0
    skipped: int = 0  # degraded or empty answers: not recorded, not clickable
    shed: int = 0  # answered from the snapshot because the reader was full: in no variant
    variant_of: dict[str, str] = field(default_factory=dict)  # shopper -> variant the reader named
    recorded: set[str] = field(default_factory=set)  # shoppers with an answer holding items (recorded)
    clicks: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def expected(self) -> dict[str, dict[str, Any]]:
        """Per variant: shoppers served, and per type the clicks and the shoppers with one."""
        out: dict[str, dict[str, Any]] = {}
        for v in VARIANTS:
            shoppers = {u for u in self.recorded if self.variant_of[u] == v}
            row: dict[str, Any] = {"shoppers": len(shoppers)}
            for t in TYPES:
                mine = [c for c in self.clicks if c["type"] == t and self.variant_of[c["user_id"]] == v]
                row[t] = (len(mine), len({c["user_id"] for c in mine}))
            out[v] = row
        return out

    def credited(self) -> dict[str, dict[str, Any]]:
        """The same figures as the exporter reports them."""
        out: dict[str, dict[str, Any]] = {}
        for v in self.figures.get("variants", []):
            row: dict[str, Any] = {"shoppers": v["shoppers"]}
            for t in TYPES:
                row[t] = (v["types"][t]["clicks"], v["types"][t]["shoppers_clicked"])
            out[v["name"]] = row
        return out

    def view(self) -> dict[str, Any]:
        (c,) = [c for c in self.figures["comparisons"] if c["type"] == "view"]
        return dict(c)


def shop(n_events: int, seed: int) -> tuple[list[dict[str, Any]], list[str], dict[str, float]]:
    """The simulator's shop: its events (history ending now), the traffic (the shopper of every
    ``view``: one answer each, in order) and each shopper's click propensity, Beta(2, 18)."""
    sim = ShopSimulator(n_users=20_000, n_items=max(500, n_events // 4), seed=seed)
    events = list(itertools.islice(sim.events(n_events), n_events))
    shift = time.time() - events[-1]["timestamp"]  # the shop's history ends as the experiments start
    for e in events:
        e["timestamp"] += shift
    traffic = [e["user_id"] for e in events if e["type"] == "view"]
    shoppers = sorted(set(traffic))
    rng = np.random.default_rng(seed)
    return events, traffic, dict(zip(shoppers, rng.beta(2.0, 18.0, len(shoppers)).tolist(), strict=True))


@contextmanager
def live_stack(s: Settings, events: Sequence[dict[str, Any]], logs: Path,
               timeout: float = 120.0) -> Iterator[tuple[str, str, dict[str, Child]]]:
    """A worker that has applied ``events``, a reader and an exporter (``lag --serve``) on ``s``
    (Kafka and Redis are the caller's): yields the reader's and the exporter's URLs and the children."""
    procs: dict[str, Child] = {}

    def start(name: str, args: list[str]) -> Child:
        procs[name] = Child(s, args, logs / f"{name}.log", cwd=ROOT).start()
        return procs[name]

    try:
        worker = start("worker", ["worker"])
        publish_events(s, events)
        client = redis.Redis.from_url(s.redis)
        deadline = time.monotonic() + timeout
        try:
            while int(client.hget(Keys(s.key_prefix).meta, "applied_events") or 0) < len(events):
                if time.monotonic() > deadline or not worker.alive():
                    raise AssertionError(f"the worker did not apply the shop's events:\n{worker.tail()}")
                time.sleep(0.2)
        finally:
            client.close()
        base = f"http://127.0.0.1:{s.reader_port}"
        wait_http(f"{base}/readyz", timeout, start("reader", ["serve"]))
        ebase = f"http://127.0.0.1:{s.exporter_port}"
        wait_http(f"{ebase}/healthz", timeout,
                  start("exporter", ["lag", "--serve", "--port", str(s.exporter_port), "--reader-url", base]))
        yield base, ebase, procs
    finally:
        for child in reversed(list(procs.values())):
            child.stop()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def _click(user: str, item: str, request_id: str, kind: str, t: float) -> dict[str, Any]:
    return {"event_id": f"x-{uuid.uuid4().hex}", "user_id": user, "item_id": item, "type": kind,
            "timestamp": t, "request_id": request_id}


async def _define(http: httpx.AsyncClient, name: str, start: float, stop: float | None, key: str) -> None:
    body: dict[str, Any] = {"variants": [{"name": VARIANTS[0], "share": 0.5}, {"name": VARIANTS[1], "share": 0.5}],
                            "start": _iso(start), "description": "A/A run on the live stack"}
    if stop is not None:
        body["stop"] = _iso(stop)
    r = await http.put(f"/v1/experiments/{name}", json=body, headers={"X-API-Key": key})
    if r.status_code not in (200, 201):
        raise AssertionError(f"PUT {name}: {r.status_code} {r.text}")


async def wait_attribution_ready(settings: Settings, exporter_url: str, timeout: float = 60.0) -> None:
    """The exporter's attribution consumer starts at the log's end: wait until it credits a probe."""
    deadline = time.monotonic() + timeout
    async with Publisher(settings) as pub, httpx.AsyncClient(base_url=exporter_url, timeout=10) as ex:
        k = 0
        while True:
            await pub.send(_click("probe-shopper", "probe", f"probe-{uuid.uuid4().hex}-{k}", "view", time.time()))
            await pub.flush()
            await asyncio.sleep(0.5)
            state = (await ex.get("/api/state")).json()
            if state["unattributed"].get("unknown_request", 0) > 0:
                return
            k += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"the exporter credits nothing after {timeout}s")


class _Conn:
    """One keep-alive HTTP/1.1 connection for GETs: far cheaper per request than httpx, so that on a
    shared machine the reader, not this client, takes the CPU."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(x.split(b":", 1)[1]) for x in lines[1:] if x.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _serve(reader_url: str, run: Run, res: RunResult, traffic: Sequence[str],
                 propensity: dict[str, float], rng: random.Random, n: int, concurrency: int) -> None:
    """Every answer of ``traffic`` from the reader, in order, ``concurrency`` at a time; the clicks drawn."""
    draws = [(rng.random(), rng.random(), rng.random()) for _ in traffic]
    shares = (0.5, 0.5)
    url = httpx.URL(reader_url)
    todo = iter(enumerate(traffic))

    def one(k: int, user: str, status: int, raw: bytes) -> None:
        if status != 200:
            raise AssertionError(f"{user}: {status} {raw[:300]!r}")
        body = orjson.loads(raw)
        exp = body.get("experiment")
        want = VARIANTS[assign(run.name, user, shares)]
        res.answers += 1
        if exp is not None and exp.get("variant") is None and body["degraded"]:
            res.shed += 1  # the reader was full: the snapshot answered, nothing recorded
            return
        # The answer names the running experiment and the shopper's variant by the hash: sticky.
        if exp != {"name": run.name, "variant": want, "method": "ab"}:
            raise AssertionError(f"{user} in {run.name}: expected variant {want}, answer says {exp}")
        res.variant_of[user] = want
        if body["degraded"] or not body["items"]:
            res.skipped += 1  # not recorded (Redis missing) or nothing to click
            return
        res.recorded.add(user)  # the reader records the answer and adds its shopper to the variant
        p = propensity[user] * (1.0 + run.margin if want == VARIANTS[1] else 1.0)
        u_click, u_cart, u_buy = draws[k]
        if u_click >= p:
            return
        item, rid, now = body["items"][0]["item_id"], body["request_id"], time.time()
        res.clicks.append(_click(user, item, rid, "view", now))
        if u_cart < 0.3:
            res.clicks.append(_click(user, item, rid, "add_to_cart", now))
            if u_buy < 0.3:
                res.clicks.append(_click(user, item, rid, "purchase", now))

    async def worker() -> None:
        conn = _Conn(url.host, url.port or 80)
        try:
            for k, user in todo:
                status, raw = await conn.get(f"/v1/recommendations/{user}?n={n}")
                one(k, user, status, raw)
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run_sequential(settings: Settings, reader_url: str, exporter_url: str, api_key: str,
                         runs: Sequence[Run], traffic: Sequence[str], propensity: dict[str, float], *,
                         seed: int = 0, n: int = 10, concurrency: int = 16, settle_timeout: float = 120.0,
                         progress: Any = None) -> list[RunResult]:
    """Run ``runs`` one after another over the same ``traffic`` (one answer per entry, in order).

    Returns each run's result with the exporter's figures; raises when the reader names a wrong
    variant or the exporter's credits do not reach what was published within ``settle_timeout``.
    """
    results: list[RunResult] = []
    pending: list[dict[str, Any]] = []
    published = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with (httpx.AsyncClient(base_url=reader_url, timeout=30, limits=limits) as http,
                Publisher(settings) as pub):
        prev: tuple[Run, float] | None = None
        for k, run in enumerate(runs):
            rng = random.Random(seed * 1_000_003 + k)
            t = time.time()
            if prev is not None:  # stop the previous one at the instant this one starts
                await _define(http, prev[0].name, prev[1], t, api_key)
            await _define(http, run.name, t, None, api_key)
            prev = (run, t)
            res = RunResult(run.name, run.margin)
            await _serve(reader_url, run, res, traffic, propensity, rng, n, concurrency)
            results.append(res)
            # The previous run's clicks: its records were written while this one served.
            for c in pending:
                await pub.send(c)
            published += len(pending)
            pending = res.clicks
            if progress is not None:
                progress(k, res)
        if prev is not None:
            await _define(http, prev[0].name, prev[1], time.time(), api_key)
        await asyncio.sleep(1.0)
        for c in pending:
            await pub.send(c)
        published += len(pending)
        await pub.flush()

    names = {r.name: r for r in results}
    deadline = time.monotonic() + settle_timeout
    async with httpx.AsyncClient(base_url=exporter_url, timeout=30) as ex:
        while True:
            state = (await ex.get("/api/state")).json()
            figures = {e["name"]: e for e in state["experiments"] if e["name"] in names}
            for name, fig in figures.items():
                names[name].figures = fig
            behind = [r.name for r in results if r.credited() != r.expected()]
            if not behind:
                return results
            if time.monotonic() > deadline:
                first = names[behind[0]]
                raise AssertionError(
                    f"{len(behind)} of {len(results)} runs not fully credited after {settle_timeout}s "
                    f"({published} clicks published); {first.name}: exporter {json.dumps(first.credited())}, "
                    f"published {json.dumps(first.expected())}")
            await asyncio.sleep(1.0)
