"""Offline benchmark of every batch model on MovieLens with Microsoft Recommenders' protocol.

Protocol: all ratings are binary implicit interactions; per-user stratified random split 75/25
(seeded); hyperparameters are chosen by nDCG@10 on a validation split carved the same way
(75/25) out of the training part only; the chosen configuration is refitted on the whole
training part and scored once on the test part at k=10, training items excluded.

    nice -n 10 .venv/bin/python benchmarks/offline_models.py            # ml-latest-small
    .venv/bin/python benchmarks/offline_models.py --ratings path/to/u.data --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from common import RESULTS, commit, machine, portable

from driftrec.datasets.base import shared_datasets_dir
from driftrec.models.batch import MODELS, create_model
from driftrec.models.offline import (
    encode_ids,
    evaluate_model,
    load_ratings_table,
    stratified_split,
    to_csr,
)

logger = logging.getLogger("benchmarks.offline_models")

#: MovieLens beside the checkout (``$DRIFTREC_DATASETS`` or ``../shared/datasets``; docs/datasets.md).
DEFAULT_RATINGS = str(shared_datasets_dir() / "ml-latest-small" / "ratings.csv")

#: Validation grids. Kept small enough that the whole run stays near 5 minutes on 2 cores;
#: the ranges come from a coarser exploration on the validation split (never the test split).
GRIDS: dict[str, list[dict[str, Any]]] = {
    "pop": [{}],
    "als": [
        {"factors": f, "regularization": reg, "alpha": a, "iterations": 15}
        for f in (64, 128)
        for reg, a in ((1.0, 1.0), (10.0, 1.0), (20.0, 2.0), (30.0, 3.0))
    ]
    + [
        {
            "factors": 128,
            "regularization": 10.0,
            "alpha": 1.0,
            "iterations": 15,
            "weighting": "bm25",
            "bm25_k1": 1.2,
            "bm25_b": 0.75,
        },
        {
            "factors": 128,
            "regularization": 10.0,
            "alpha": 1.0,
            "iterations": 15,
            "weighting": "bm25_item",
            "bm25_k1": 100.0,
            "bm25_b": 0.8,
        },
    ],
    "svd": [{"factors": f} for f in (16, 32, 64, 128)]
    + [{"factors": 32, "weighting": "bm25", "bm25_k1": 1.2, "bm25_b": 0.75}],
    "itemknn": [{"neighbours": k, "shrink": s} for k in (50, 200) for s in (0.0, 20.0)],
    "userknn": [{"neighbours": k, "shrink": s} for k in (20, 50, 100, 200) for s in (0.0, 10.0)],
    "ease": [{"lam": lam, "min_item_count": 3} for lam in (100.0, 200.0, 400.0, 800.0)],
    "tf": [
        {
            "hidden": [256],
            "epochs": e,
            "learning_rate": 3e-3,
            "batch_size": 128,
            "input_dropout": 0.5,
        }
        for e in (20, 40)
    ],
}

#: Microsoft Recommenders' published MovieLens-100k numbers (same protocol, other data set).
REFERENCE_ML100K = {
    "BiVAE": {"precision": 0.412, "ndcg": 0.475},
    "SAR": {"precision": 0.331, "ndcg": 0.382},
}


def split(
    user: np.ndarray, item: np.ndarray, shape: tuple[int, int], mask: np.ndarray
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    return to_csr(user[mask], item[mask], shape), to_csr(user[~mask], item[~mask], shape)


def rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in d.items()}


def run(ratings: str, seed: int, k: int, models: list[str]) -> dict[str, Any]:
    t_start = time.perf_counter()
    users, items, _, _ = load_ratings_table(ratings)
    u, _ = encode_ids(users)
    i, _ = encode_ids(items)
    shape = (int(u.max()) + 1, int(i.max()) + 1)
    test_mask = stratified_split(u, 0.75, seed=seed)
    train, test = split(u, i, shape, test_mask)
    # Validation: the same split applied to the training rows only.
    tu, ti = u[test_mask], i[test_mask]
    val_mask = stratified_split(tu, 0.75, seed=seed + 1)
    sub_train, val = split(tu, ti, shape, val_mask)
    print(
        f"{ratings}: {shape[0]} users, {shape[1]} items, {len(u)} interactions; "
        f"train {train.nnz}, test {test.nnz}; validation train {sub_train.nnz}, val {val.nnz}",
        flush=True,
    )
    results: dict[str, Any] = {}
    for name in models:
        tried = []
        for params in GRIDS[name]:
            t0 = time.perf_counter()
            model = create_model(name, **params).fit(sub_train, seed=seed)
            fit_s = time.perf_counter() - t0
            metrics = evaluate_model(model, sub_train, val, k)
            tried.append({"params": params, "fit_seconds": round(fit_s, 2), **rounded(metrics)})
            print(
                f"  [val] {name} {params}: P {metrics['precision']:.4f} nDCG {metrics['ndcg']:.4f} ({fit_s:.1f}s)",
                flush=True,
            )
        best = max(tried, key=lambda r: (r["ndcg"], r["precision"]))
        t0 = time.perf_counter()
        model = create_model(name, **best["params"]).fit(train, seed=seed)
        fit_s = time.perf_counter() - t0
        metrics = evaluate_model(model, train, test, k)
        results[name] = {
            "params": best["params"],
            "fit_seconds": round(fit_s, 2),
            **rounded(metrics),
            "validation": tried,
        }
        print(
            f"  [test] {name}: P {metrics['precision']:.4f} nDCG {metrics['ndcg']:.4f} ({fit_s:.1f}s)",
            flush=True,
        )
    return {
        "dataset": os.path.basename(os.path.dirname(ratings)) or ratings,
        "ratings_file": ratings,
        "shape": list(shape),
        "interactions": int(len(u)),
        "protocol": {
            "split": "per-user stratified random 75/25 (python_stratified_split semantics)",
            "validation": "75/25 per-user stratified split of the training part; best nDCG@k",
            "seed": seed,
            "k": k,
            "relevance": "binary; every rating is an interaction",
            "metrics": "MS Recommenders python_evaluation: precision=hits/k, recall=hits/|test|, "
            "ndcg normalised by ideal DCG over min(|test|,k), map_at_k=AP/min(|test|,k), "
            "map=AP/|test| (the MAP of MS's benchmark table)",
            "exclude_seen": True,
        },
        "models": results,
        "reference_ml100k_ms_recommenders": REFERENCE_ML100K,
        "machine": machine(("numpy", "scipy", "implicit", "tensorflow")),
        "commit": commit(),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }


def print_table(report: dict[str, Any]) -> None:
    cols = ["precision", "recall", "ndcg", "map", "map_at_k", "coverage", "novelty", "fit_seconds"]
    print(f"\n{'model':<9}" + "".join(f"{c:>12}" for c in cols) + "  params")
    for name, r in sorted(report["models"].items(), key=lambda kv: -kv[1]["ndcg"]):
        print(
            f"{name:<9}" + "".join(f"{r[c]:>12.4f}" for c in cols) + f"  {json.dumps(r['params'])}"
        )
    print(f"total {report['total_seconds']}s, commit {report['commit']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ratings", default=DEFAULT_RATINGS, help="ratings.csv or u.data")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--models", default=",".join(GRIDS), help="comma-separated subset")
    parser.add_argument("--out", default=str(RESULTS / "offline_models.json"))
    args = parser.parse_args(argv)
    try:
        os.nice(10)  # the machine is shared; the benchmark yields to interactive work
    except OSError:
        pass
    logging.basicConfig(level=logging.WARNING)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}")
    report = run(args.ratings, args.seed, args.k, models)
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(portable(report), indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
