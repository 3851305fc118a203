"""Parity of the Rust blend (``online/native/src/blend*.rs``) with the Python reader's functions.

Generates random cases, runs them through the Rust harness (``blend_check``) and through
``models/blend.py`` / ``models/candidates.py`` / ``TrendingSnapshot.norms``, and compares for
exact equality: items, sources, reasons, every score's bits (``blend`` and ``blend_each``), the
intermediate values of a request (read factor, decayed weights, recent items, norms, neighbours,
similar-users scores, trending), the session_knn source's query, neighbours and scores, the
new_items source's scores and labels, and the JSON text of the answer's items and of floats and
strings against ``orjson.dumps``. Floats travel as IEEE-754 bit patterns both ways. Exits 1 when
anything differs. Also times one typical request both ways (``--time``; the Python side is
``_for_user``'s calls on the same reads, as ``py_rec`` lists them).

Run from the repository root::

    CARGO_TARGET_DIR=/tmp/cargo-blend cargo build --release --manifest-path online/native/Cargo.toml --bin blend_check
    PYTHONPATH=. python online/native/tests/blend_parity.py --bin /tmp/cargo-blend/release/blend_check
"""

from __future__ import annotations

import argparse
import json
import math
import random
import struct
import subprocess
import sys
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from driftrec.models.blend import SOURCES, BlendWeights, Candidates, Scored, blend, blend_each
from driftrec.models.candidates import (
    NewItemRule,
    assemble,
    new_item_scores,
    session_knn_scores,
    session_neighbours,
    session_query,
    user_recent,
)
from driftrec.models.decay import DecayPolicy
from driftrec.online.snapshot import TrendingSnapshot
from driftrec.online.store import Meta

# Ids from a small alphabet so rows, sources and exclusions overlap; the non-ASCII ones check
# that Rust's byte order of UTF-8 ties the same way as Python's code-point order.
IDS = [f"i{k}" for k in range(30)] + ["I1", "a b", "é", "z", "ü", "€", "😀", "\U0001f600x", "i1\u0301"]
USERS = [f"u{k}" for k in range(10)]
LABELS = [None, "", "shoes", "crème"]


def bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def unbits(b: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", b))[0]


def enc(pairs: Any) -> list[list[Any]]:
    return [[i, bits(x)] for i, x in pairs]


def enc_rows(rows: dict[str, Any]) -> dict[str, Any]:
    return {k: enc(v) for k, v in rows.items()}


def score(rng: random.Random) -> float:
    """A source score: ties (a few fixed values), zeros and negatives, tiny and plain ones."""
    r = rng.random()
    if r < 0.3:
        return rng.choice([0.5, 1.0, 0.25, 3.0, 1e-3])
    if r < 0.35:
        return rng.choice([0.0, -0.0, -0.5])
    if r < 0.4:
        return rng.uniform(0, 1e-300)
    return rng.uniform(0, 10)


def score_list(rng: random.Random, k: int, dup: bool = True, pool: list[str] = IDS) -> list[tuple[str, float]]:
    ids = rng.choices(pool, k=k) if dup and rng.random() < 0.2 else rng.sample(pool, min(k, len(pool)))
    return [(i, score(rng)) for i in ids]


def stored_row(rng: random.Random, k: int, pool: list[str]) -> list[tuple[str, float]]:
    """A stored ZSET row, strongest first: whole numbers (fixed point), with ties and zeros."""
    ids = rng.sample(pool, min(k, len(pool)))
    vals = sorted((float(rng.choice([0, 65536, 131072, rng.randint(1, 10**7)])) for _ in ids), reverse=True)
    return list(zip(ids, vals, strict=True))


def weights_of(rng: random.Random) -> dict[str, float]:
    w = {}
    for name in SOURCES:
        w[name] = rng.choice([0.0, 0.0, 0.05, 0.1, 0.3, 1.0, 0.5, rng.uniform(0, 2)])
    if rng.random() < 0.3:
        w = {k: v for k, v in w.items() if rng.random() < 0.5}  # the rest keep BlendWeights' defaults
    return w


def alpha_of(rng: random.Random) -> float:
    return rng.choice([0.5, 0.5, 0.0, 1.0, 0.3, 0.75, rng.random()])


def blend_case(rng: random.Random) -> dict[str, Any]:
    recent = score_list(rng, rng.randint(0, 8), dup=True)
    rec_ids = [i for i, _ in recent]
    neighbours = {i: score_list(rng, rng.randint(0, 20)) for i in rec_ids if rng.random() < 0.9}
    items = set(rec_ids) | {j for row in neighbours.values() for j, _ in row}
    norms = {i: rng.choice([0.0, 1.0, 2.0, rng.uniform(0, 50)]) for i in sorted(items) if rng.random() < 0.9}
    new = score_list(rng, rng.randint(0, 5)) if rng.random() < 0.4 else []
    cands = dict(recent=recent, neighbours=neighbours, norms=norms,
                 vector_scores=score_list(rng, rng.choice([0, 5, 40])) if rng.random() < 0.8 else [],
                 tf_scores=score_list(rng, rng.choice([0, 5, 40])) if rng.random() < 0.7 else [],
                 similar_users=score_list(rng, rng.choice([0, 5, 20])) if rng.random() < 0.6 else [],
                 trending=score_list(rng, rng.choice([0, 10, 35])) if rng.random() < 0.9 else [],
                 trending_label=rng.choice(LABELS), new_items=new,
                 new_labels={i: rng.choice(["", "shoes", "t-shirts"]) for i, _ in new if rng.random() < 0.7},
                 session_knn=score_list(rng, rng.randint(0, 15)) if rng.random() < 0.4 else [])
    case = dict(kind="blend", cands=cands, weights=weights_of(rng), n=rng.choice([0, 1, 3, 5, 10, 20, 50]),
                exclude=rng.sample(IDS, rng.randint(0, 8)), shrinkage=rng.choice([0.0, 5.0]), alpha=alpha_of(rng))
    if rng.random() < 0.3:  # an interleaving experiment: blend_each over two or three weights sets
        case["weights_each"] = [weights_of(rng) for _ in range(rng.randint(2, 3))]
    return case


def py_blend(case: dict[str, Any]) -> list[Scored]:
    c = Candidates(**case["cands"])
    return blend(c, case["n"], exclude=set(case["exclude"]), weights=BlendWeights().with_overrides(case["weights"]),
                 shrinkage=case["shrinkage"], alpha=case["alpha"])


def py_blend_each(case: dict[str, Any]) -> list[list[Scored]]:
    c = Candidates(**case["cands"])
    sets = [BlendWeights().with_overrides(w) for w in case["weights_each"]]
    return blend_each(c, case["n"], sets, exclude=set(case["exclude"]), shrinkage=case["shrinkage"],
                      alpha=case["alpha"])


def enc_blend(case: dict[str, Any]) -> dict[str, Any]:
    c = dict(case["cands"])
    for k in ("recent", "vector_scores", "tf_scores", "similar_users", "trending", "new_items", "session_knn"):
        c[k] = enc(c[k])
    c["neighbours"] = enc_rows(c["neighbours"])
    c["norms"] = {k: bits(v) for k, v in c["norms"].items()}
    out = {**case, "cands": c, "weights": {k: bits(v) for k, v in case["weights"].items()},
           "shrinkage": bits(case["shrinkage"]), "alpha": bits(case["alpha"])}
    if "weights_each" in case:
        out["weights_each"] = [{k: bits(v) for k, v in w.items()} for w in case["weights_each"]]
    return out


def rec_case(rng: random.Random, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """One request's read inputs; ``sizes`` fixes them (the timing case, from 400 ids so that
    the sources are as long as asked), else random."""
    sz = sizes or {}
    ids = [f"item{k}" for k in range(400)] if sz else IDS
    half_life = rng.choice([3600.0, 604800.0, rng.uniform(60, 1e6)])
    landmark = rng.choice([0.0, 1.7e9, rng.uniform(0, 2e9)])
    now = landmark + rng.choice([0.0, rng.uniform(0, 14 * half_life)])
    gap = 1800.0
    # History: (item, last click) newest first, unique items, sometimes a gap that ends a session.
    hist_ids = rng.sample(ids, sz.get("history", rng.randint(0, 15)))
    t, history = now, []
    for i in hist_ids:
        history.append((i, t))
        t -= rng.choice([5.0, 60.0, 600.0, 2000.0, 1e5]) if rng.random() < 0.9 else 0.0
    # Stored weights: strongest first; sometimes none (pruned, not yet written).
    wpool = hist_ids + rng.sample(ids, 5)
    stored = [] if rng.random() < 0.2 and not sz else stored_row(rng, sz.get("weights", rng.randint(0, 12)), list(dict.fromkeys(wpool)))
    context = rng.choices(ids, k=rng.randint(1, 3)) if rng.random() < 0.3 and not sz else []
    all_rows = {i: stored_row(rng, sz.get("neighbours", rng.randint(0, 20)), ids) for i in ids if sz or rng.random() < 0.85}
    user_rows = {u: stored_row(rng, sz.get("per_user", rng.randint(0, 10)), ids) for u in USERS if sz or rng.random() < 0.8}
    similar = [(u, rng.choice([1.0, 0.5, -0.0, -0.2, rng.uniform(-1, 1)]) if not sz else rng.uniform(0.1, 1))
               for u in rng.sample(USERS, sz.get("similar", rng.randint(0, 5)))]
    pop_items = rng.sample(ids, rng.randint(0, len(IDS))) if not sz else ids[:300]
    snap_landmark = rng.choice([None, landmark, landmark - rng.uniform(0, 1e5)])
    kv = sz.get("vector", rng.choice([0, 10, 40]))
    return dict(
        kind="rec", half_life_s=half_life, landmark=landmark, now=now, history=history, weights_stored=stored,
        context=context, exclude=rng.sample(ids, rng.randint(0, 4)), neighbour_rows=all_rows, user_rows=user_rows,
        vector_scores=score_list(rng, kv, dup=False, pool=ids), tf_scores=score_list(rng, sz.get("tf", kv), dup=False, pool=ids),
        similar=similar, trending=stored_row(rng, sz.get("trending", rng.randint(0, 35)), ids),
        trending_label=rng.choice(LABELS), new_items=[], new_labels={},
        session_knn=score_list(rng, rng.randint(0, 10)) if rng.random() < 0.2 and not sz else [],
        snapshot=dict(pop={i: float(rng.randint(1, 10**8)) for i in pop_items},
                      floor=rng.choice([0.0, 65536.0, 1.5e6]), landmark=snap_landmark),
        hidden=rng.sample(ids, rng.randint(0, 3)) if not sz else [],
        settings=dict(k=8 if sz else rng.choice([1, 3, 8]), order="time" if sz else rng.choice(["time", "weight"]),
                      position_decay=1.0 if sz else rng.choice([0.0, 1.0, 0.5]), session_gap_s=gap,
                      outside_session=0.2 if sz else rng.choice([1.0, 0.2]),
                      shrinkage=5.0 if sz else rng.choice([0.0, 5.0]), alpha=0.5 if sz else alpha_of(rng)),
        weights={} if sz else weights_of(rng), n=10 if sz else rng.choice([1, 5, 10, 20]),
    )


def py_rec(case: dict[str, Any]) -> dict[str, Any]:
    """``Recommender._for_user``'s calls (online/recommender.py), in its order, on the case's reads."""
    s = case["settings"]
    policy = DecayPolicy(case["half_life_s"])
    w = BlendWeights().with_overrides(case["weights"])
    meta = Meta(case["landmark"], case["now"])
    f = meta.factor(policy.rate)
    excluded = set(case["exclude"]) | set(case["context"])
    excluded |= {i for i, _ in case["history"]}
    decayed, recent = user_recent(case["weights_stored"], case["history"], f, meta.now, policy, k=s["k"],
                                  order=s["order"], context=case["context"], position_decay=s["position_decay"],
                                  session_gap_s=s["session_gap_s"], outside_session=s["outside_session"])
    nbr_items = [i for i, _ in recent] if w.item_item > 0 else []
    nbrs = {i: case["neighbour_rows"][i] for i in nbr_items if i in case["neighbour_rows"]}
    theirs = {v: case["user_rows"][v] for v, _ in case["similar"] if v in case["user_rows"]}
    snap = TrendingSnapshot(None, policy, n_items=len(case["snapshot"]["pop"]))  # type: ignore[arg-type]
    snap.pop, snap.floor = case["snapshot"]["pop"], case["snapshot"]["floor"]
    sl = case["snapshot"]["landmark"]
    snap.meta = None if sl is None else Meta(sl, case["now"])
    landmark = meta.landmark
    cands = assemble(recent, nbrs, f, lambda items: snap.norms(items, landmark, f),
                     vector_scores=case["vector_scores"], tf_scores=case["tf_scores"], similar=case["similar"],
                     theirs=theirs, trending=case["trending"], trending_label=case["trending_label"],
                     new_items=case["new_items"], new_labels=case["new_labels"], session_knn=case["session_knn"])
    hidden = excluded | set(case["hidden"])
    items = blend(cands, case["n"], exclude=hidden, weights=w, shrinkage=s["shrinkage"], alpha=s["alpha"])
    return dict(factor=f, rate=policy.rate, decayed=decayed, recent=recent, excluded=sorted(excluded),
                cands=cands, items=items)


def enc_rec(case: dict[str, Any]) -> dict[str, Any]:
    out = dict(case)
    for k in ("half_life_s", "landmark", "now"):
        out[k] = bits(case[k])
    for k in ("history", "weights_stored", "vector_scores", "tf_scores", "similar", "trending", "new_items",
              "session_knn"):
        out[k] = enc(case[k])
    out["neighbour_rows"] = enc_rows(case["neighbour_rows"])
    out["user_rows"] = enc_rows(case["user_rows"])
    snap = case["snapshot"]
    out["snapshot"] = dict(pop={k: bits(v) for k, v in snap["pop"].items()}, floor=bits(snap["floor"]),
                           landmark=None if snap["landmark"] is None else bits(snap["landmark"]))
    out["settings"] = {k: (bits(v) if isinstance(v, float) else v) for k, v in case["settings"].items()}
    out["weights"] = {k: bits(v) for k, v in case["weights"].items()}
    return out


def sknn_case(rng: random.Random) -> dict[str, Any]:
    """The session_knn source's inputs: click logs of a dozen shoppers over 15 items (so sessions
    overlap), gaps longer than the session gap now and then, the session index's rows derived
    from the logs (sometimes with a stale time), and the shopper's own history."""
    gap = 1800.0
    items = IDS[:12] + ["é", "😀"]
    shoppers = [f"s{k}" for k in range(12)] + ["me"]
    clicks: dict[str, tuple[tuple[float, ...], str]] = {}
    last: dict[str, dict[str, float]] = {}  # item -> shopper -> last click
    for v in shoppers:
        t = rng.choice([1.7e9, rng.uniform(1.6e9, 1.7e9)])
        times, ids = [], []
        for _ in range(rng.randint(0, 14)):
            t += rng.choice([0.0, 10.0, 60.0, 600.0, 1800.0, 2000.0, 1e4])
            i = rng.choice(items)
            times.append(t)
            ids.append(i)
            last.setdefault(i, {})[v] = t + (rng.choice([0.0, 5.0, -3000.0]) if rng.random() < 0.1 else 0.0)
        if v != "me" and rng.random() < 0.1:
            continue  # forgotten: no log, still in the index
        clicks[v] = (tuple(times), "\0".join(ids))
    index = {i: sorted(row.items(), key=lambda kv: (kv[1], kv[0]), reverse=True) for i, row in last.items()}
    mine = clicks.get("me", ((), ""))
    seen: dict[str, float] = {}
    for t, i in zip(mine[0], mine[1].split("\0") if mine[1] else [], strict=True):
        seen[i] = t
    history = sorted(seen.items(), key=lambda kv: kv[1], reverse=True)
    return dict(kind="sknn", history=history, context=rng.choices(items, k=rng.randint(1, 2)) if rng.random() < 0.2 else [],
                gap_s=gap, k=rng.choice([1, 3, 8]), m=rng.choice([1, 5, 20, 100]), index_rows=index, user="me",
                clicks=clicks, rank_by_query=rng.random() < 0.85)


def py_sknn(case: dict[str, Any]) -> dict[str, Any]:
    query = session_query(case["history"], case["context"], k=case["k"], session_gap_s=case["gap_s"])
    rows = {i: case["index_rows"][i] for i in query if i in case["index_rows"]}  # _expansion reads the query's rows
    nbrs = session_neighbours(rows, case["user"], case["m"], query if case["rank_by_query"] else ())
    scores = session_knn_scores(query, nbrs, case["clicks"], gap_s=case["gap_s"])
    return dict(query=query, neighbours=enc(nbrs), scores=enc(scores), rows=rows)


def enc_sknn(case: dict[str, Any]) -> dict[str, Any]:
    rows = py_sknn(case)["rows"]
    return {**case, "history": enc(case["history"]), "gap_s": bits(case["gap_s"]), "index_rows": enc_rows(rows),
            "clicks": {v: [[bits(t) for t in times], ids] for v, (times, ids) in case["clicks"].items()}}


def compare_sknn(case: dict[str, Any], rust: dict[str, Any]) -> list[str]:
    if rust.get("error"):
        return [f"rust error: {rust['error']}"]
    py = py_sknn(case)
    return [f"{k}: python {py[k]} rust {rust[k]}" for k in ("query", "neighbours", "scores") if rust[k] != py[k]]


class _Catalogue:
    """A NewItemIndex over generated records (what ``CatalogueView`` serves from memory)."""

    def __init__(self, features: dict[str, frozenset[str]], newest: dict[str, list[tuple[float, str, frozenset[str]]]]):
        self._features, self._newest = features, newest

    def features(self, item: str) -> frozenset[str]:
        return self._features.get(item, frozenset())

    def newest(self, feature: str) -> list[tuple[float, str, frozenset[str]]]:
        return self._newest.get(feature, [])


def new_case(rng: random.Random) -> dict[str, Any]:
    """Catalogue records (one category, up to two tags; some items unknown), each feature's
    newest list as ``CatalogueView`` sorts it, recent items with weights, a rule."""
    now = 1.7e9
    max_age = rng.choice([3600.0, 14 * 86400.0])
    cats, tags = ["c:shoes", "c:hats", "c:crème"], ["t:red", "t:blue", "t:wool", "t:sale"]
    features: dict[str, frozenset[str]] = {}
    added: dict[str, float] = {}
    for item in IDS:
        if rng.random() < 0.1:
            continue  # not in the catalogue
        features[item] = frozenset([rng.choice(cats), *rng.sample(tags, rng.randint(0, 2))])
        added[item] = now - rng.choice([0.0, -5.0, rng.uniform(0, 2 * max_age)])
    newest: dict[str, list[tuple[float, str, frozenset[str]]]] = {}
    for item, feats in features.items():
        for f in feats:
            newest.setdefault(f, []).append((-added[item], item, feats))
    for row in newest.values():
        row.sort(key=lambda e: (e[0], e[1]))
    recent = [(i, rng.choice([1.0, 0.5, 0.0, -1.0, rng.uniform(0, 3)])) for i in rng.sample(IDS, rng.randint(0, 8))]
    rule = dict(half_life_s=rng.choice([86400.0, 7 * 86400.0, 3600.0]), max_age_s=max_age,
                per_feature=rng.choice([0, 1, 3, 10]))
    return dict(kind="new", now=now, features=features, newest=newest, recent=recent, rule=rule)


def py_new(case: dict[str, Any]) -> dict[str, Any]:
    scores, labels = new_item_scores(case["recent"], _Catalogue(case["features"], case["newest"]), case["now"],
                                     NewItemRule(**case["rule"]))
    return dict(scores=enc(scores), labels={j: labels[j] for j in labels})


def enc_new(case: dict[str, Any]) -> dict[str, Any]:
    return {**case, "now": bits(case["now"]), "recent": enc(case["recent"]),
            "features": {i: sorted(f) for i, f in case["features"].items()},
            "newest": {f: [[bits(a), i, sorted(fs)] for a, i, fs in row] for f, row in case["newest"].items()},
            "rule": {**case["rule"], "half_life_s": bits(case["rule"]["half_life_s"]),
                     "max_age_s": bits(case["rule"]["max_age_s"])}}


def compare_new(case: dict[str, Any], rust: dict[str, Any]) -> list[str]:
    if rust.get("error"):
        return [f"rust error: {rust['error']}"]
    py = py_new(case)
    # Compared as mappings: Python lists the items in the order it meets them walking each
    # recent item's frozenset of features, which string hashing reorders from run to run (the
    # blend reads the list as a mapping, so no answer depends on it).
    got, want = {i: b for i, b in rust["scores"]}, {i: b for i, b in py["scores"]}
    diffs = [f"scores: python {want} rust {got}"] if got != want or len(got) != len(rust["scores"]) else []
    return diffs + ([f"labels: python {py['labels']} rust {rust['labels']}"] if rust["labels"] != py["labels"] else [])


def items_of(got: list[Scored]) -> list[list[Any]]:
    return [[x.item, bits(x.score), x.source, x.reason] for x in got]


def orjson_items(got: list[Scored]) -> str:
    """The answer's items as ``online/routes_recs.py`` ``_body`` lays them out, through orjson."""
    return orjson.dumps([{"item_id": x.item, "score": x.score, "reason": x.reason, "source": x.source}
                         for x in got]).decode()


def compare_blend(case: dict[str, Any], rust: dict[str, Any]) -> list[str]:
    got = py_blend(case)
    diffs = []
    if rust.get("error"):
        return [f"rust error: {rust['error']}"]
    if rust["items"] != items_of(got):
        diffs.append(f"items: python {items_of(got)} rust {rust['items']}")
    if rust["json"] != orjson_items(got):
        diffs.append(f"json: python {orjson_items(got)} rust {rust['json']}")
    if "weights_each" in case:
        each = py_blend_each(case)
        if [r["items"] for r in rust["each"]] != [items_of(x) for x in each]:
            diffs.append(f"blend_each: python {[items_of(x) for x in each]} rust {[r['items'] for r in rust['each']]}")
    return diffs


def compare_rec(case: dict[str, Any], rust: dict[str, Any]) -> list[str]:
    if rust.get("error"):
        return [f"rust error: {rust['error']}"]
    py = py_rec(case)
    c = py["cands"]
    want = {
        "factor": bits(py["factor"]), "rate": bits(py["rate"]), "decayed": enc(py["decayed"]),
        "recent": enc(py["recent"]), "excluded": py["excluded"],
        "norms": {k: bits(v) for k, v in c.norms.items()}, "neighbours": enc_rows(c.neighbours),
        "similar_users": enc(c.similar_users), "trending": enc(c.trending), "items": items_of(py["items"]),
        "json": orjson_items(py["items"]),
    }
    return [f"{k}: python {v} rust {rust[k]}" for k, v in want.items() if rust[k] != v]


def float_samples(rng: random.Random, count: int) -> list[float]:
    xs = [10.0 ** e for e in range(-324, 309)] + [2.0 ** e for e in range(-1074, 1024, 7)]
    xs += [math.nextafter(x, d) for x in (1e16, 1e15, 1e-5, 1e-4, 1e-6, 1.0, 0.1) for d in (0.0, math.inf)]
    xs += [0.0, -0.0, 5e-324, sys.float_info.max, sys.float_info.min, 1e-9, 2.5e-10, 123456789012345678.0]
    while len(xs) < count:
        x = unbits(rng.getrandbits(64))
        if math.isfinite(x):
            xs.append(x)
        xs.append(rng.uniform(0, 1) * 10.0 ** rng.randint(-12, 20))
    return xs + [math.nan, math.inf, -math.inf]


STRINGS = ["a\x01\x1f\"\\\n\t\b\f\r\u2028\u2029\x7f é😀", "\x00", "</script>", "popular in crème", "'"]


def run_rust(binary: str, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    text = "\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n"
    done = subprocess.run([binary], input=text.encode(), capture_output=True, check=True)
    # split on "\n" only: str.splitlines would also split inside strings holding U+2028.
    return [json.loads(line) for line in done.stdout.decode().split("\n") if line]


def per_call(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="the built blend_check binary")
    ap.add_argument("--cases", type=int, default=3000, help="random cases of each kind")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--time", action="store_true", help="also time one typical request both ways")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    blends = [blend_case(rng) for _ in range(args.cases)]
    recs = [rec_case(rng) for _ in range(args.cases)]
    floats = float_samples(rng, 20000)
    sknns = [sknn_case(rng) for _ in range(args.cases)]
    news = [new_case(rng) for _ in range(args.cases)]
    rust = run_rust(args.bin, [enc_blend(c) for c in blends] + [enc_rec(c) for c in recs]
                    + [enc_sknn(c) for c in sknns] + [enc_new(c) for c in news]
                    + [{"kind": "fmt", "bits": [bits(x) for x in floats], "strings": STRINGS}])
    failed = 0
    for kind, cases, results, compare in (("blend", blends, rust[:len(blends)], compare_blend),
                                          ("rec", recs, rust[len(blends):len(blends) + len(recs)], compare_rec)):
        bad = [(k, d) for k, (c, r) in enumerate(zip(cases, results, strict=True)) if (d := compare(c, r))]
        shown = sum(len(r["items"]) for r in results if "items" in r)
        each = sum(1 for c in cases if "weights_each" in c)
        print(f"{kind}: {len(cases)} cases ({shown} items shown; {each} also ranked by blend_each), {len(bad)} differ")
        for k, d in bad[:5]:
            print(f"  case {k}:", *d[:3], sep="\n    ")
        failed += len(bad)
        # What the cases reached: a source or reason no case shows was not compared.
        by_source: dict[str, int] = {}
        for r in results:
            for _, _, source, reason in r.get("items", []):
                key = f"{source} ({reason.split(' ')[0]})"
                by_source[key] = by_source.get(key, 0) + 1
        print("  items by source (reason):", ", ".join(f"{k} {v}" for k, v in sorted(by_source.items())))
    results = rust[len(blends) + len(recs):len(blends) + len(recs) + len(sknns)]
    bad = [(k, d) for k, (c, r) in enumerate(zip(sknns, results, strict=True)) if (d := compare_sknn(c, r))]
    scored = sum(1 for r in results if r.get("scores"))
    print(f"session_knn: {len(sknns)} cases ({scored} with scores, "
          f"{sum(len(r.get('neighbours', [])) for r in results)} neighbours in all), {len(bad)} differ")
    for k, d in bad[:5]:
        print(f"  case {k}:", *d[:3], sep="\n    ")
    failed += len(bad)
    results = rust[len(blends) + len(recs) + len(sknns):-1]
    bad = [(k, d) for k, (c, r) in enumerate(zip(news, results, strict=True)) if (d := compare_new(c, r))]
    print(f"new_items: {len(news)} cases ({sum(1 for r in results if r.get('scores'))} with scores, "
          f"{sum(len(r.get('scores', [])) for r in results)} items in all), {len(bad)} differ")
    for k, d in bad[:5]:
        print(f"  case {k}:", *d[:3], sep="\n    ")
    failed += len(bad)
    print(f"rec cases: {sum(bool(c['context']) for c in recs)} with context, "
          f"{sum(not c['weights_stored'] and bool(c['history']) for c in recs)} with history and no weights, "
          f"{sum(c['settings']['order'] == 'weight' for c in recs)} by weight order, "
          f"{sum(c['settings']['alpha'] != 0.5 for c in recs)} with alpha != 0.5")
    fmt = rust[-1]
    want_f = [orjson.dumps(x).decode() for x in floats]
    bad_f = [(x, a, b) for x, a, b in zip(floats, want_f, fmt["floats"], strict=True) if a != b]
    want_s = [orjson.dumps(s).decode() for s in STRINGS]
    bad_s = [(a, b) for a, b in zip(want_s, fmt["strings"], strict=True) if a != b]
    print(f"json: {len(floats)} floats, {len(bad_f)} written differently from orjson; "
          f"{len(STRINGS)} strings, {len(bad_s)} differently")
    for x, a, b in bad_f[:10]:
        print(f"  {x!r}: orjson {a} rust {b}")
    for a, b in bad_s:
        print(f"  orjson {a} rust {b}")
    failed += len(bad_f) + len(bad_s)

    if args.time:
        sizes = dict(history=20, weights=12, neighbours=20, vector=80, tf=80, similar=5, per_user=10, trending=60)
        case = rec_case(random.Random(args.seed), sizes)
        py = py_rec(case)
        assert not compare_rec(case, run_rust(args.bin, [enc_rec(case)])[0]), "the timed case must agree"
        c = py["cands"]
        n_nbrs = sum(len(r) for r in c.neighbours.values())
        hidden = set(py["excluded"]) | set(case["hidden"])
        w = BlendWeights().with_overrides(case["weights"])
        s = case["settings"]
        t_rec = per_call(lambda: py_rec(case), 200)
        t_blend = per_call(lambda: blend(c, case["n"], exclude=hidden, weights=w, shrinkage=s["shrinkage"],
                                         alpha=s["alpha"]), 200)
        r = run_rust(args.bin, [{**enc_rec(case), "kind": "time", "reps": 2000}])[0]
        print(f"timing: {len(c.recent)} recent items, {n_nbrs} neighbour entries, {len(c.vector_scores)} vector + "
              f"{len(c.tf_scores)} tf, {len(case['similar'])} similar users ({len(c.similar_users)} items), "
              f"{len(c.trending)} trending, n={case['n']}")
        print(f"  python: whole request path {t_rec * 1e6:.1f} us, blend alone {t_blend * 1e6:.1f} us (best of 5 x 200)")
        print(f"  rust:   whole request path {r['recommend_s'] * 1e6:.1f} us, blend alone {r['blend_s'] * 1e6:.1f} us "
              f"(best of 5 x 2000)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
