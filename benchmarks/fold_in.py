"""Fold-in cost per user: the direct k x k solve against the low-rank (Woodbury) solve.

Usage: python benchmarks/fold_in.py [--users 1600] [--items 10000] [--ks 32 128] [--repeats 5]
                                    [--out benchmarks/results/fold_in.json]

One micro-batch of interleaved traffic folds ~1,600 distinct users in (2,000 events). Their
history sizes n are drawn like such traffic: 80% of users 1-5 items, 15% 6-20, 5% 21-50
(``history_len`` is 50), items Zipf-like over the catalogue, confidences ``alpha * w`` with
alpha 2 and log-normal decayed weights (so both below and above 1). Random item factors
(``N(0, 0.1)``) and λ = 0.1. ``old`` is :func:`driftrec.models.foldin.fold_in_direct` (the worker's
solve before the change: one stacked k x k solve, padded to the widest user), ``new`` is
:func:`driftrec.models.foldin.fold_in_many` with the model's ``Zz``. BLAS runs on one thread, as the
worker does (``blas_threads``). Times are medians of ``--repeats`` calls, CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftrec.models.foldin import fold_in_basis, fold_in_direct, fold_in_lowrank, fold_in_many  # noqa: E402
from tools import benchinfo  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def users(rng: np.random.Generator, n_users: int, n_items: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Distinct item rows and confidences per user, drawn as the module docstring says."""
    band = rng.choice(3, size=n_users, p=[0.80, 0.15, 0.05])
    lo, hi = np.array([1, 6, 21])[band], np.array([5, 20, 50])[band]
    sizes = rng.integers(lo, hi + 1)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    pop /= pop.sum()
    rows, confs = [], []
    for n in sizes:
        rows.append(rng.choice(n_items, size=int(n), replace=False, p=pop).astype(np.intp))
        confs.append(2.0 * rng.lognormal(-0.5, 1.0, int(n)))
    return rows, confs


def cpu_median(fn: Any, args: tuple[Any, ...], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn(*args)
        times.append(time.process_time() - t0)
    return statistics.median(times)


def by_width(Yz: np.ndarray, YtY: np.ndarray, Zz: np.ndarray, rng: np.random.Generator,
             repeats: int) -> dict[int, dict[str, float]]:
    """µs per user of 256 users all of one width, both solves: where the low-rank stops paying."""
    n_items = Yz.shape[0] - 1
    out = {}
    for w in (1, 2, 4, 8, 16, 32, 64):
        rows = [rng.choice(n_items, size=w, replace=False).astype(np.intp) for _ in range(256)]
        confs = [2.0 * rng.lognormal(-0.5, 1.0, w) for _ in range(256)]
        d = cpu_median(fold_in_direct, (Yz, YtY, rows, confs, 0.1), repeats)
        lr = cpu_median(fold_in_lowrank, (Yz, Zz, rows, confs, w), repeats)
        out[w] = {"direct_us": round(d / 256 * 1e6, 2), "lowrank_us": round(lr / 256 * 1e6, 2)}
    return out


def run_k(k: int, n_users: int, n_items: int, repeats: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    Y = rng.normal(0, 0.1, (n_items, k))
    Yz = np.vstack([Y, np.zeros((1, k))])
    YtY, reg = Y.T @ Y, 0.1
    t0 = time.process_time()
    Zz = fold_in_basis(Yz, YtY, reg)
    basis_s = time.process_time() - t0
    assert Zz is not None
    rows, confs = users(rng, n_users, n_items)
    old = cpu_median(fold_in_direct, (Yz, YtY, rows, confs, reg), repeats)
    new = cpu_median(fold_in_many, (Yz, YtY, rows, confs, reg, Zz), repeats)
    a = fold_in_direct(Yz, YtY, rows, confs, reg)
    b = fold_in_many(Yz, YtY, rows, confs, reg, Zz)
    rel = float(np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)))
    sizes = np.array([len(r) for r in rows])
    return {
        "k": k, "users": n_users, "items": n_items,
        "sizes": {"mean": round(float(sizes.mean()), 2), "median": float(np.median(sizes)),
                  "max": int(sizes.max()), "share_le_5": round(float((sizes <= 5).mean()), 3)},
        "old_us_per_user": round(old / n_users * 1e6, 2),
        "new_us_per_user": round(new / n_users * 1e6, 2),
        "speedup": round(old / new, 1),
        "basis_once_ms": round(basis_s * 1e3, 2),
        "max_rel_diff": rel,
        "by_width_us_per_user": by_width(Yz, YtY, Zz, rng, repeats),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1600)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--ks", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "fold_in.json")
    args = ap.parse_args()
    result: dict[str, Any] = {"machine": benchinfo.machine(["numpy", "scipy"]), "commit": benchinfo.commit(),
                              "blas_threads": 1, "runs": []}
    with threadpool_limits(1, "blas"):
        for k in args.ks:
            run = run_k(k, args.users, args.items, args.repeats, args.seed)
            print(json.dumps({x: y for x, y in run.items() if x != "by_width_us_per_user"}), flush=True)
            result["runs"].append(run)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
