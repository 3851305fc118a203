"""Per-request CPU cost of the session_knn source in the reader, in-process (no Redis).

Times what the reader does for the source on a reader-sized synthetic request: the session
query from a 50-item history, the neighbours from ``len(query)`` session-index rows of
``reader_session_knn_sample`` entries (parsed from a RESP3-shaped reply, as ``online/store.py``
gets it), then the ``reader_session_knn_users`` neighbours' sessions and the V-SKNN scores, two
ways side by side: ``source_hashes`` (before: each neighbour's whole item HASH decoded from its
raw ``HGETALL`` reply, 50 entries of 16 bytes, and the session cut around the shared click) and
``source`` (now: each neighbour's click log, the raw reply of a ``GET`` of ``P:{u:U}:clk``,
decoded, and the session cut by a bisect); and the blend with and without the source's
candidates. Alternating rounds; medians.

    python benchmarks/session_knn_cost.py [--users 30] [--sample 20] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import struct
import sys
import time
from typing import Any

from common import RESULTS, commit, machine

from driftrec.models.blend import BlendWeights, Candidates, blend
from driftrec.models.candidates import (
    session_around,
    session_knn_scores,
    session_neighbours,
    session_query,
)
from driftrec.models.sknn import vsknn_scores
from driftrec.online.store import pairs, user_state
from driftrec.userstate import ENTRY_BYTES, newest, pack_clicks, unpack_clicks

GAP = 1800.0


def _history(rng: random.Random, items: list[str], now: float) -> dict[bytes, bytes]:
    """A raw ``HGETALL`` reply of a 50-item history: sessions of 3-10 clicks a minute apart,
    hours apart; values are (time, weight) as 16 little-endian bytes."""
    out: dict[bytes, bytes] = {}
    t = now
    while len(out) < 50:
        for _ in range(rng.randint(3, 10)):
            out[rng.choice(items).encode()] = struct.pack("<dd", t, rng.random() * 5)
            t -= 60.0
        t -= rng.uniform(2 * 3600, 48 * 3600)
    return out


def request(seed: int, sample: int, users: int) -> dict[str, Any]:
    rng = random.Random(seed)
    items = [f"sku-{i}" for i in range(5000)]
    now = 1_700_000_000.0
    own = _history(rng, items, now)
    times, _ = user_state(own)
    history = newest(times)
    query = session_query(history, k=8, session_gap_s=GAP)
    # RESP3 WITHSCORES replies: [[member, score], ...], latest first
    index = {i: [[f"user-{rng.randrange(100_000)}", now - n * 600.0] for n in range(sample)] for i in query}
    hists = {}
    for n in range(users):  # each neighbour's latest session holds one to three of the query's items
        h = _history(rng, items, now - rng.random() * 3600)
        latest = max(struct.unpack("<dd", v)[0] for v in h.values())
        for q in rng.sample(query, min(len(query), rng.randint(1, 3))):
            h[q.encode()] = struct.pack("<dd", latest - rng.random() * 300, 1.0)
        hists[f"user-{n}"] = h
    latest_of = {v: max(struct.unpack("<dd", x)[0] for x in h.values()) for v, h in hists.items()}
    # the worker's click log of each: the same history, packed (a raw GET reply: bytes)
    values = {v: pack_clicks(user_state(h)[0]) for v, h in hists.items()}
    return {"history": history, "index": index, "hists": hists, "values": values, "now": now, "latest": latest_of,
            "other": [(rng.choice(items), rng.random()) for _ in range(360)]}


def history_times(reply: Any) -> list[tuple[Any, float]]:
    """The reader's decode of a neighbour's ``HGETALL`` reply before the session values (its
    online/store.py at 0e4a223): (item bytes, time) in one ``struct.unpack``."""
    raws = list(reply.values())
    joined = b"".join(raws)
    if len(joined) == ENTRY_BYTES * len(raws):
        return list(zip(reply, struct.unpack(f"<{len(raws) * 2}d", joined)[0::2], strict=True))
    return list(user_state(reply)[0].items())


def _neighbours(r: dict[str, Any], users: int) -> tuple[list[str], list[tuple[str, float]], list[str]]:
    query = session_query(r["history"], k=8, session_gap_s=GAP)
    rows = {i: pairs(reply) for i, reply in r["index"].items()}
    nbrs = session_neighbours(rows, "me", users, query)
    # the neighbours named by the synthetic index are random ids: they get the prepared histories,
    # and their shared click a time inside their latest session (r["latest"])
    names = list(r["hists"])[:len(nbrs)]
    return query, [(v, r["latest"][name]) for (v, _), name in zip(nbrs, names, strict=False)], names


def source_hashes(r: dict[str, Any], users: int) -> list[tuple[str, float]]:
    """Before: whole HASHes decoded, the session cut around the shared click (0e4a223)."""
    query, nbrs, names = _neighbours(r, users)
    sessions = []
    for (_, t), name in zip(nbrs, names, strict=True):
        h = history_times(r["hists"][name])
        if h:
            sess = session_around(h, t, GAP)
            sessions.append({i if isinstance(i, str) else i.decode("utf-8", "surrogateescape") for i in sess})
    return list(vsknn_scores(query, sessions, len(sessions)).items())


def source(r: dict[str, Any], users: int) -> list[tuple[str, float]]:
    """Now: what ``Recommender._session_knn`` runs (reads replaced by the values' replies)."""
    query, nbrs, names = _neighbours(r, users)
    theirs = {}
    for (v, _), name in zip(nbrs, names, strict=True):
        log = unpack_clicks(r["values"][name])
        if log[0]:
            theirs[v] = log
    return session_knn_scores(query, nbrs, theirs, gap_s=GAP)


def _alike(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    """The same items with the same scores up to rounding (the sums run in another order)."""
    x, y = dict(a), dict(b)
    return x.keys() == y.keys() and all(abs(x[i] - y[i]) <= 1e-9 * abs(y[i]) for i in x)


def ranked(r: dict[str, Any], sess: list[tuple[str, float]], w: BlendWeights) -> None:
    o = r["other"]
    c = Candidates(vector_scores=o[:100], tf_scores=o[100:200], similar_users=o[200:300], trending=o[300:],
                   session_knn=sess)
    blend(c, 10, exclude={i for i, _ in r["history"]}, weights=w)


def timed(fn: Any, reqs: list[dict[str, Any]], repeat: int) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        for r in reqs:
            fn(r)
    return (time.perf_counter() - t) / (repeat * len(reqs)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=30)
    ap.add_argument("--sample", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    reqs = [request(s, args.sample, args.users) for s in range(100)]
    sess = {id(r): source(r, args.users) for r in reqs}
    on, off = BlendWeights(session_knn=0.5), BlendWeights()
    same = sum(_alike(source(r, args.users), source_hashes(r, args.users)) for r in reqs)
    variants = {
        "source_hashes": lambda r: source_hashes(r, args.users),
        "source": lambda r: source(r, args.users),
        "blend_without": lambda r: ranked(r, [], off),
        "blend_with": lambda r: ranked(r, sess[id(r)], on),
    }
    us: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            us[name].append(timed(fn, reqs, args.repeat))
    cands = statistics.median(len(v) for v in sess.values())
    out = {"commit": commit(), "machine": machine(),
           "command": "python benchmarks/session_knn_cost.py " + " ".join(sys.argv[1:]),
           "median_candidates": cands, "requests_scored_alike": [same, len(reqs)],
           "us_per_request": {k: {"median": statistics.median(v), "rounds": v} for k, v in us.items()}}
    (RESULTS / "session_knn_cost.json").write_text(json.dumps(out, indent=1))
    print(f"median candidates of the source: {cands}; scored alike before and now: {same} of {len(reqs)}")
    for k, v in out["us_per_request"].items():
        print(f"{k:14s} median {v['median']:.1f} us per request")


if __name__ == "__main__":
    main()
