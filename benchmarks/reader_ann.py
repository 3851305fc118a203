"""Per-request cost of the reader's model sources: exact scans against HNSW candidates re-scored.

Usage: python benchmarks/reader_ann.py [--items 10000 1000000] [--requests 400]
                                       [--exact-requests 100] [--out benchmarks/results/reader_ann.json]

For each catalogue size a synthetic model at ``driftrec train``'s default sizes (128 ALS
factors, one 256-wide TF hidden layer, a 10,000-user nearest-user pool) is published as parts
and loaded with :func:`driftrec.online.model_cache.build_model` three ways:

``exact_all``
    exact scans of every item (``scan_items`` None, no index);
``exact_pool``
    exact scans of the ``reader_scan_items`` (20,000) items with the largest factor norms, the
    reader's behaviour before the indexes (only differs from ``exact_all`` above 20,000 items);
``ann``
    the indexes at the settings' defaults (``reader_ann_*``, from the environment like the
    reader's; ``build_model(..., ann=ann_config(settings))``), every item searchable.

Each then answers the same requests with :meth:`PublishedModel.sources` as the reader calls it
(``want = n + history``, n = 20, the 5 nearest users) after one warm-up pass, three timed
passes, on one thread with BLAS on one thread (``blas_threads``); reported: µs per call (the
median of the passes' means, p50 and p99 over every call), each
source's share (``score`` for the user vector and for the TF logits, ``nearest_users``) and
similar items (``item_neighbours``, n = 20), recall@want of each source against
``exact_all`` on the same requests, and for ``ann`` the build seconds and graph bytes of each
index and the process' resident memory before and after the load.

Synthetic data: item factors ``N(0, 0.1)`` each scaled by a log-normal popularity factor
(σ = 1, so norms spread as trained factors' do), users likewise; TF weights ``N(0, 0.05)``
(first layer), ``N(0, 0.1)`` (output), output bias ``N(0, 0.5)``; histories of 1-5 items for
80% of users, 6-20 for 15%, 21-50 for 5%, items drawn Zipf-like. Random factors have no
cluster structure, which makes a graph search harder than on trained ones
(``tests/unit/test_reader_ann.py`` checks recall on trained ALS factors).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

# Before numpy loads: one BLAS thread, as ``driftrec serve`` runs.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402

from common import RESULTS, ROOT, commit, machine  # noqa: E402

from driftrec.modelformat import MODEL_PARTS  # noqa: E402
from driftrec.online.ann import ann_config  # noqa: E402
from driftrec.online.model_cache import PublishedModel, build_model  # noqa: E402
from driftrec.settings import load_settings  # noqa: E402

logger = logging.getLogger("benchmarks.reader_ann")

K, TF_HIDDEN, POOL_USERS, N, N_SIMILAR = 128, 256, 10_000, 20, 5
#: Timed passes over the requests; ``mean`` is the median of the passes' means (the machine is shared).
PASSES = 3
Pairs = list[tuple[str, float]]


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def synthetic_parts(n_items: int, seed: int) -> tuple[dict[str, bytes | None], dict[str, bytes | None]]:
    """A published version's parts (head, TF layers) as the module docstring describes."""
    rng = np.random.default_rng(seed)

    def factors(n: int) -> np.ndarray:
        x = rng.standard_normal((n, K), dtype=np.float32)
        x *= (0.1 * rng.lognormal(0.0, 1.0, n)).astype(np.float32)[:, None]
        return x

    head: dict[str, bytes | None] = {
        "item_ids": "\n".join(f"i{j}" for j in range(n_items)).encode(),
        "item_factors": npy(factors(n_items)),
        "user_ids": "\n".join(f"u{j}" for j in range(POOL_USERS)).encode(),
        "user_factors": npy(factors(POOL_USERS)),
        "alpha": npy(np.array([2.0])),
        "regularization": npy(np.array([20.0])),
        "tf_n_layers": npy(np.array([2], np.int32)),
    }
    w0 = rng.standard_normal((n_items, TF_HIDDEN), dtype=np.float32)
    w0 *= 0.05
    w1 = rng.standard_normal((TF_HIDDEN, n_items), dtype=np.float32)
    w1 *= 0.1
    tf: dict[str, bytes | None] = {
        "tf_layer0_weight": npy(w0), "tf_layer0_bias": npy(np.zeros(TF_HIDDEN, np.float32)),
        "tf_layer1_weight": npy(w1), "tf_layer1_bias": npy((0.5 * rng.standard_normal(n_items)).astype(np.float32)),
    }
    return head, tf


def requests(n_items: int, count: int, seed: int) -> list[tuple[str, list[tuple[str, float]]]]:
    """(pool user, decayed history) per request; history sizes and items as the docstring says."""
    rng = np.random.default_rng(seed)
    band = rng.choice(3, size=count, p=[0.80, 0.15, 0.05])
    sizes = rng.integers(np.array([1, 6, 21])[band], np.array([5, 20, 50])[band] + 1)
    # Zipf-like ranks drawn by inverse CDF of a continuous power law (no n_items-long table).
    out = []
    for r, size in enumerate(sizes.tolist()):
        ranks = np.unique((n_items ** rng.random(4 * size) - 1).astype(np.int64))[:size]
        weights = rng.lognormal(-0.5, 1.0, ranks.size)
        out.append((f"u{r % POOL_USERS}", [(f"i{j}", float(w)) for j, w in zip(ranks.tolist(), weights.tolist(), strict=True)]))
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 1)


def measure(model: PublishedModel, reqs: list[tuple[str, list[tuple[str, float]]]]) -> dict[str, Any]:
    """µs per call of ``sources`` and of each source alone; the answers of the timed pass."""
    def call(user: str, weights: list[tuple[str, float]]) -> tuple[Pairs, Pairs, Pairs]:
        return model.sources(None, None, user, weights, N + len(weights), N_SIMILAR)

    for user, weights in reqs:  # warm-up: first touches of the arrays and the graphs
        call(user, weights)
    times: list[float] = []
    pass_means: list[float] = []
    answers: list[tuple[Pairs, Pairs, Pairs]] = []
    for _ in range(PASSES):
        answers = []
        for user, weights in reqs:
            t0 = time.perf_counter()
            answers.append(call(user, weights))
            times.append((time.perf_counter() - t0) * 1e6)
        pass_means.append(float(np.mean(times[-len(reqs):])))
    parts: dict[str, list[float]] = {"user_vector": [], "tf": [], "similar_users": [], "similar_items": []}
    similar_items: list[Pairs] = []
    for user, weights in reqs:
        u = model.user_vector(None, None, user, weights)
        h = model.tf_hidden_state(weights)
        want = N + len(weights)
        t0 = time.perf_counter()
        model.score(u, None, want)
        t1 = time.perf_counter()
        model.score(None, h, want)
        t2 = time.perf_counter()
        if u is not None:
            model.nearest_users(u, user, N_SIMILAR)
        t3 = time.perf_counter()
        similar_items.append(model.item_neighbours(weights[0][0], N))
        t4 = time.perf_counter()
        for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[name].append(dt * 1e6)
    return {
        "requests": len(reqs),
        "sources_us": {"mean": round(float(np.median(pass_means)), 1), "p50": pct(times, 50), "p99": pct(times, 99),
                       "pass_means": [round(x, 1) for x in pass_means]},
        "source_mean_us": {name: round(float(np.mean(xs)), 1) for name, xs in parts.items()},
        "_answers": answers,
        "_similar_items": similar_items,
    }


def recall(got: list[Pairs], truth: list[Pairs]) -> float | None:
    """Mean share of each exact answer's items that ``got`` also holds (None: nothing to find)."""
    shares = [len({i for i, _ in g} & {i for i, _ in t}) / len(t) for g, t in zip(got, truth, strict=False) if t]
    return round(float(np.mean(shares)), 4) if shares else None


def recalls(run: dict[str, Any], exact: dict[str, Any]) -> dict[str, float | None]:
    n = exact["requests"]
    got, truth = run["_answers"][:n], exact["_answers"]
    return {
        "user_vector": recall([a[0] for a in got], [a[0] for a in truth]),
        "tf": recall([a[1] for a in got], [a[1] for a in truth]),
        "similar_users": recall([a[2] for a in got], [a[2] for a in truth]),
        "similar_items": recall(run["_similar_items"][:n], exact["_similar_items"]),
    }


def one_size(n_items: int, n_requests: int, n_exact: int, seed: int) -> dict[str, Any]:
    settings = load_settings()
    config = ann_config(settings.model_copy(update={"reader_ann": True}))
    t0 = time.perf_counter()
    head, tf = synthetic_parts(n_items, seed)
    logger.info("%d items: synthetic parts in %.1f s", n_items, time.perf_counter() - t0)
    reqs = requests(n_items, n_requests, seed + 1)
    out: dict[str, Any] = {"items": n_items, "ann_config": config.__dict__ if config else None}
    kw: dict[str, Any] = {"default_reg": settings.fold_in_regularization, "pool_size": settings.reader_similar_users_pool}
    head = {p: head.get(p) for p in MODEL_PARTS}
    variants: list[tuple[str, dict[str, Any], int]] = [
        ("exact_all", {}, n_exact),
        ("exact_pool", {"scan_items": settings.reader_scan_items}, n_exact),
        ("ann", {"scan_items": settings.reader_scan_items, "ann": config}, n_requests),
    ]
    for name, extra, count in variants:
        if name == "exact_pool" and n_items <= settings.reader_scan_items:
            continue
        rss0 = rss_mb()
        t0 = time.perf_counter()
        model = build_model(f"v{n_items}", head, tf, **kw, **extra)
        load_s = time.perf_counter() - t0
        res = measure(model, reqs[:count])
        res["load_s"] = round(load_s, 2)
        res["rss_mb_before_load"], res["rss_mb_after_load"] = round(rss0), round(rss_mb())
        res["searchable_items"] = len(model.scan_ids)
        if name == "ann":
            res["indexes"] = model.index_stats()
        out[name] = res
        logger.info("%d items %-10s load %.1f s, sources %.0f us/call (p99 %.0f), %s", n_items, name, load_s,
                    res["sources_us"]["mean"], res["sources_us"]["p99"], res["source_mean_us"])
        del model
    for name in ("exact_pool", "ann"):
        if name in out:
            out[name]["recall_vs_exact_all"] = recalls(out[name], out["exact_all"])
            logger.info("%d items %s recall vs exact_all: %s", n_items, name, out[name]["recall_vs_exact_all"])
    for name in ("exact_all", "exact_pool", "ann"):
        if name in out:
            del out[name]["_answers"], out[name]["_similar_items"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--requests", type=int, default=400, help="Requests timed per ANN model (and pooled scan).")
    ap.add_argument("--exact-requests", type=int, default=100,
                    help="Requests timed on the exact models (a full scan of 1M items takes ~0.2 s).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "reader_ann.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.time()
    sizes = [one_size(n, args.requests, min(args.exact_requests, args.requests), args.seed) for n in args.items]
    by_size = {s["items"]: s["ann"]["sources_us"]["mean"] for s in sizes}
    lo, hi = min(by_size), max(by_size)
    body = {
        "sizes": sizes,
        "ann_growth_largest_over_smallest": round(by_size[hi] / by_size[lo], 2) if hi != lo else None,
        "target": "ANN per-request cost of sources at 1M items within ~1.5x of 10k",
        "n": N, "similar_users": N_SIMILAR, "factors": K, "tf_hidden": TF_HIDDEN, "user_pool": POOL_USERS,
        "blas_threads": 1,
        "machine": machine(["numpy", "usearch"]),
        "commit": commit(ROOT),
        "command": "python benchmarks/reader_ann.py " + " ".join(sys.argv[1:]),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=2) + "\n")
    logger.info("wrote %s; ANN cost largest/smallest catalogue: %s", args.out, body["ann_growth_largest_over_smallest"])


if __name__ == "__main__":
    main()
