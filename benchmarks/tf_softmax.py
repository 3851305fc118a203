"""Full vs sampled softmax for the TensorFlow next-items model: training time and quality, side by side.

Same data, split, seed and hyperparameters (`driftrec train`'s defaults) for both; only the
softmax differs. Per-user stratified 75/25 split, k=10, training items excluded (the offline
protocol). Data: ml-latest-small (9.7k items), UCI Online Retail (4k items), and a simulator
shop with a large catalogue (where the full softmax dominates training).

    nice python benchmarks/tf_softmax.py            # writes benchmarks/results/tf_softmax.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from driftrec.models.batch.tf_next import TFNextItemModel
from driftrec.models.offline import encode_ids, evaluate_model, stratified_split, to_csr
from driftrec.training.runner import DEFAULT_PARAMS
from tools.benchinfo import commit, machine

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "tf_softmax.json"


def _simulated(users: int, items: int, events: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from driftrec.simulator import ShopSimulator

    sim = ShopSimulator(n_users=users, n_items=items, seed=seed)
    rows = [(e["user_id"], e["item_id"]) for e in sim.events(events)]
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "simulator-20k-items":
        return _simulated(5000, 20000, 200_000, seed=3)
    from driftrec.evaluate import _table

    users, items, _, _ = _table(name)
    return users, items


def run(name: str, sampled: int) -> dict[str, Any]:
    users, items = _data(name)
    u, _ = encode_ids(users)
    i, _ = encode_ids(items)
    shape = (int(u.max()) + 1, int(i.max()) + 1)
    x = to_csr(u, i, shape)  # binary, as the offline protocol
    train_mask = stratified_split(u, 0.75, seed=42)
    train = to_csr(u[train_mask], i[train_mask], shape)
    test = to_csr(u[~train_mask], i[~train_mask], shape)
    out: dict[str, Any] = {"users": int(x.shape[0]), "items": int(x.shape[1]), "interactions": int(x.nnz)}
    params = dict(DEFAULT_PARAMS["tf"])
    for label, k in (("full", 0), (f"sampled_{sampled}", sampled)):
        model = TFNextItemModel(**{**params, "num_sampled": k})
        t0 = time.perf_counter()
        model.fit(train, seed=7)
        fit_s = time.perf_counter() - t0
        m = evaluate_model(model, train, test, k=10)
        out[label] = {"fit_seconds": round(fit_s, 2), "precision": round(m["precision"], 4),
                      "ndcg": round(m["ndcg"], 4), "recall": round(m["recall"], 4)}
        print(f"{name} {label}: {out[label]}", flush=True)
    out["speed_up"] = round(out["full"]["fit_seconds"] / out[f"sampled_{sampled}"]["fit_seconds"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-latest-small,uci-online-retail,simulator-20k-items")
    ap.add_argument("--sampled", type=int, default=1024)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report: dict[str, Any] = {
        "params": DEFAULT_PARAMS["tf"], "protocol": "per-user stratified 75/25 (seed 42), k=10, binary",
        "datasets": {name: run(name, args.sampled) for name in args.datasets.split(",")},
        "machine": machine(("numpy", "tensorflow")),
        "commit": commit(),
        "command": "python benchmarks/tf_softmax.py",
    }
    OUT.write_text(json.dumps(report, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
