"""The session_knn source end to end in the reader: its reads and maths per ranked request, before
(neighbours' whole item HASHes) and now (their click logs), side by side, against a private Redis.

Builds the worker's state from simulator clicks with the in-memory reference
(:class:`driftrec.models.online.InMemoryState`, session index on) and writes it to a
``redis-server`` on a free port (no persistence): the users' item HASHes, their click logs, the
session index and the neighbour rows. Then, for the latest-active shoppers, times through
``online/app.py``'s ``create_store`` (the raw RESP pool the reader uses) what
``Recommender._for_user`` / ``_session_knn`` run for the source, after the user's own read:

* ``without``: the neighbour-row round trip alone (the source off);
* ``index_rows``: that round trip with the session-index rows and the neighbours picked from them
  (what both ways below share);
* ``hashes``: that round trip with the session-index rows, the neighbours, one pipeline of their
  ``HGETALL`` replies decoded and each one's session around the shared click scored (the reader at
  0e4a223, kept here as it was);
* ``click_logs``: the same with one ``MGET`` of their click logs and
  :func:`driftrec.models.candidates.session_knn_scores` (the reader now).

Reported: this process's CPU and the wall time per request (row caches off: every request reads),
alternating rounds, medians; ``hashes`` minus ``without`` and ``click_logs`` minus ``without`` are
what the source adds before the blend (``benchmarks/session_knn_cost.py`` times the blend's share),
and whether both ways scored alike.

    python benchmarks/session_knn_source.py [--events 100000] [--requests 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis
from reader import private_redis
from session_knn_cost import history_times

from common import RESULTS, alternating_rounds, commit, free_port, machine

from driftrec.keys import Keys
from driftrec.live_eval import new_state
from driftrec.models.candidates import (
    session_around,
    session_knn_scores,
    session_neighbours,
    session_query,
)
from driftrec.models.online import EventView
from driftrec.models.sknn import vsknn_scores
from driftrec.online.app import create_store
from driftrec.online.store import ReaderStore
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.userstate import encode_state


def _state(events: int, settings: Settings) -> Any:
    sim = ShopSimulator(n_users=10_000, n_items=20_000, n_categories=20, seed=17)
    views = [EventView(e["user_id"], e["item_id"], e["type"], float(e["timestamp"]), e.get("category"), n, 0)
             for n, e in enumerate(itertools.islice(sim.events(events), events))]
    st = new_state(settings)
    for i in range(0, len(views), 2000):
        st.process(views[i:i + 2000])
    return st


def _fill(r: redis.Redis, keys: Keys, st: Any) -> None:
    pipe = r.pipeline(transaction=False)
    for n, user in enumerate(st.hist.keys() | st.user_items.keys()):
        pipe.hset(keys.user_state(user), mapping=encode_state(st.hist.get(user, {}), st.user_items.get(user, {})))
        if user in st.click_logs:
            pipe.set(keys.user_clicks(user), st.click_logs[user])
        if n % 1000 == 999:
            pipe.execute()
    for item, row in st.sessions.items():
        pipe.zadd(keys.item_sessions(item), row)
    for item, row in st.cooc.items():
        if row:
            pipe.zadd(keys.item_nbrs(item), row)
    pipe.execute()


async def _measure(settings: Settings, st: Any, args: argparse.Namespace) -> dict[str, Any]:
    store: ReaderStore = create_store(settings)
    keys, s = Keys(settings.key_prefix), settings
    gap, sample, m = s.reader_session_gap_s, s.reader_session_knn_sample, s.reader_session_knn_users
    latest = sorted(st.hist, key=lambda u: max(st.hist[u].values()), reverse=True)[:args.requests]
    reqs = []
    for user in latest:
        newest = sorted(st.hist[user].items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        reqs.append((user, [i for i, _ in newest[:s.reader_recent_items]],
                     session_query(newest, k=s.reader_recent_items, session_gap_s=gap)))

    async def without() -> None:
        for _, items, _ in reqs:
            await store.read_expansion(items, s.neighbours_read, [], 10)

    async def rows_only() -> None:
        for user, items, query in reqs:
            _, _, rows = await store.read_expansion(items, s.neighbours_read, [], 10, query, sample)
            session_neighbours(rows, user, m, query)

    async def hashes(out: list[Any] | None = None) -> None:
        for user, items, query in reqs:
            _, _, rows = await store.read_expansion(items, s.neighbours_read, [], 10, query, sample)
            nbrs = session_neighbours(rows, user, m, query)
            res = (await store._run([["HGETALL", keys.user_state(v)] for v, _ in nbrs], frozenset(range(len(nbrs))))
                   if nbrs else [])
            sessions = []
            for (_, t), reply in zip(nbrs, res, strict=True):
                h = history_times(reply) if reply else []
                if h:
                    sessions.append({i if isinstance(i, str) else i.decode() for i in session_around(h, t, gap)})
            got = vsknn_scores(query, sessions, len(sessions)) if query else {}
            if out is not None:
                out.append(got)

    async def click_logs(out: list[Any] | None = None) -> None:
        for user, items, query in reqs:
            _, _, rows = await store.read_expansion(items, s.neighbours_read, [], 10, query, sample)
            nbrs = session_neighbours(rows, user, m, query)
            logs = await store.click_logs([v for v, _ in nbrs])
            got = dict(session_knn_scores(query, nbrs, logs, gap_s=gap))
            if out is not None:
                out.append(got)

    before: list[dict[str, float]] = []
    now: list[dict[str, float]] = []
    await hashes(before)
    await click_logs(now)
    alike = sum(a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-9 * abs(a[k]) for k in a)
                for a, b in zip(before, now, strict=True))
    variants = {"without": without, "index_rows": rows_only, "hashes": hashes, "click_logs": click_logs}
    runs = await alternating_rounds(variants, args.rounds, len(reqs))
    await store.aclose()
    med = {k: {x: statistics.median(v) for x, v in d.items()} for k, d in runs.items()}
    return {"per_request": {k: med[k] | {"rounds": runs[k]} for k in runs},
            "source_adds_cpu_us": {k: med[k]["cpu_us"] - med["without"]["cpu_us"] for k in ("hashes", "click_logs")},
            "requests": len(reqs), "scored_alike": alike,
            "median_candidates": statistics.median(len(x) for x in now)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = private_redis(port, Path(tmp))
        try:
            settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", key_prefix="bench", session_index_k=50,
                                reader_cache_ttl_s=0.0)
            st = _state(args.events, settings)
            r = redis.Redis(port=port)
            keys = Keys(settings.key_prefix)
            _fill(r, keys, st)
            mem = {"click_logs": sum(r.memory_usage(keys.user_clicks(u), samples=0) or 0 for u in list(st.click_logs)[:2000]),
                   "user_hashes": sum(r.memory_usage(keys.user_state(u), samples=0) or 0 for u in list(st.click_logs)[:2000])}
            r.config_resetstat()
            got = asyncio.run(_measure(settings, st, args))
            stats = r.info("commandstats")
            redis_us = {k: v["usec_per_call"] for k, v in stats.items()
                        if k in ("cmdstat_hgetall", "cmdstat_zrevrange", "cmdstat_mget")}
        finally:
            proc.terminate()
            proc.wait()
    out = {"commit": commit(), "machine": machine(),
           "command": "python benchmarks/session_knn_source.py " + " ".join(sys.argv[1:]),
           "events": args.events, **got, "redis_usec_per_call": redis_us,
           "bytes_per_user_of_2000": {k: v / 2000 for k, v in mem.items()}}
    (RESULTS / "session_knn_source.json").write_text(json.dumps(out, indent=1))
    for k, v in got["per_request"].items():
        print(f"{k:12s} wall {v['wall_us']:.0f} us, reader CPU {v['cpu_us']:.0f} us per request")
    print("the source adds (CPU us per request):", {k: round(v) for k, v in got["source_adds_cpu_us"].items()},
          f"scored alike {got['scored_alike']} of {got['requests']}, candidates {got['median_candidates']}")
    print("Redis usec per call:", redis_us, "bytes per user:", out["bytes_per_user_of_2000"])


if __name__ == "__main__":
    main()
