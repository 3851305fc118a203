"""Parity of the compiled model sources (``online/native`` ``model``) with ``PublishedModel.sources``.

Usage: python online/native/tests/model_parity.py [--requests 1000] [--passes 3]
                                                  [--bin PATH] [--root DIR] [--seed 0]

For each model below a version is published as parts (``modelformat.pack_version``, random
factors as ``benchmarks/reader_ann.py`` draws them), built into a ``SharedModels`` folder as the
first reader process would (``build_model`` at the settings' defaults), and opened again from the
folder (``SharedModels.opened``), as a second reader process maps it. The same random requests
then go through ``PublishedModel.sources`` and through ``model_check`` (the Rust side opening
the same folder), and the answers are compared list by list:

* identical: the same ids in the same order in all three lists of a request;
* score error: ``|rust - python| / |python|`` over the entries of identical lists (the TF scores
  are logits shifted so the last is 1e-6: near the bottom of a list the relative error of a
  shifted score says little, so their error is also given relative to the list's top score);
* per-request time: the fastest of ``--passes`` calls of each request, median and mean, one
  BLAS thread (as ``driftrec serve`` runs); ``model_check`` times ``Model::sources`` alone;
* concurrency: ``model_check`` answers every request again on ``--threads`` threads at once
  (two concurrent searches allowed per index, the rest wait) and counts answers that differ.

Models: ``ann`` (driftrec train's sizes: 10,000 items, 128 factors, one 256-wide TF hidden
layer, 10,000 pool users, ``reader_ann`` on: three HNSW indexes), ``ann_no_tf`` (no TF parts),
``ann_f32`` (indexes of float32 rows, ``reader_ann_dtype=f32``, 6,000 pool users),
``exact_small`` (3,000 items and 2,000 users: below ``reader_ann_min_rows``, exact scans with the
ANN config recorded) and ``exact_pool`` (``reader_ann`` off, 8,000 items scanned through a
5,000-item scan pool, two TF hidden layers).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402

from driftrec import modelformat  # noqa: E402
from driftrec.online.ann import ann_config  # noqa: E402
from driftrec.online.model_cache import build_model  # noqa: E402
from driftrec.online.shared_model import SharedModels  # noqa: E402
from driftrec.settings import Settings  # noqa: E402

K, TF_HIDDEN = 128, 256
MODELS: dict[str, dict[str, Any]] = {
    "ann": {"items": 10_000, "users": 10_000, "tf": [TF_HIDDEN], "ann": True},
    "ann_no_tf": {"items": 10_000, "users": 10_000, "tf": None, "ann": True},
    "ann_f32": {"items": 10_000, "users": 6_000, "tf": [TF_HIDDEN], "ann": True, "dtype": "f32"},
    "exact_small": {"items": 3_000, "users": 2_000, "tf": [TF_HIDDEN], "ann": True},
    "exact_pool": {"items": 8_000, "users": 3_000, "tf": [TF_HIDDEN, 64], "ann": False, "scan_items": 5_000},
}
Pairs = list[tuple[str, float]]


def parts(spec: dict[str, Any], rng: np.random.Generator) -> tuple[dict[str, bytes | None], dict[str, bytes | None]]:
    """A version's head and TF parts: factors N(0, 0.1) scaled by a log-normal popularity."""
    def factors(n: int) -> np.ndarray:
        x = rng.standard_normal((n, K), dtype=np.float32)
        x *= (0.1 * rng.lognormal(0.0, 1.0, n)).astype(np.float32)[:, None]
        return x

    n = spec["items"]
    als = {"item_factors": factors(n), "user_factors": factors(spec["users"]), "alpha": np.array([2.0]),
           "regularization": np.array([20.0])}
    tf = None
    if spec["tf"]:
        widths = [n, *spec["tf"], n]
        tf = {"n_layers": np.array([len(widths) - 1])}
        for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
            tf[f"layer{i}_weight"] = (rng.standard_normal((a, b), dtype=np.float32) * (0.05 if i == 0 else 0.1))
            tf[f"layer{i}_bias"] = (rng.standard_normal(b) * (0.5 if i == len(widths) - 2 else 0.05)).astype(np.float32)
    blob = modelformat.pack_version([f"i{j}" for j in range(n)], als,
                                    user_ids=[f"u{j}" for j in range(spec["users"])], tf=tf)
    head = {p: blob.get(p) for p in modelformat.MODEL_PARTS}
    n_layers = modelformat.tf_layer_count(head.get("tf_n_layers"))
    tf_parts = {p: blob.get(p) for p in modelformat.tf_part_names(n_layers)} if n_layers else {}
    return head, tf_parts


def requests(spec: dict[str, Any], version: str, count: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Random requests: pool users and unknown ones; stored vectors of this version, of another,
    with a NaN, or none; 1-50 weighted items (a few unknown, zero or repeated); want 10-80."""
    out = []
    for r in range(count):
        user = f"u{rng.integers(spec['users'])}" if rng.random() < 0.4 else f"x{r}"
        size = int(rng.integers(1, 51))
        items = [f"i{j}" for j in rng.integers(spec["items"], size=size)]
        if rng.random() < 0.1:
            items[-1] = "unknown"
        if rng.random() < 0.05:
            items.append(items[0])
        w = np.sort(rng.lognormal(-0.5, 1.0, len(items)))[::-1]
        if rng.random() < 0.05:
            w[-1] = 0.0
        stored = stored_version = None
        kind = rng.random()
        if kind < 0.45:
            vec = (rng.standard_normal(K) * 0.3).astype(np.float32)
            if kind < 0.03:
                vec[0] = np.nan
            stored = vec.tobytes().hex()
            stored_version = version if kind < 0.35 else "older"
        out.append({"user": user, "stored": stored, "stored_version": stored_version,
                    "weights": [[i, float(x)] for i, x in zip(items, w.tolist(), strict=True)],
                    "want": int(rng.integers(10, 81)), "n_similar": int(rng.choice([0, 5])),
                    "vector": bool(rng.random() > 0.05), "tf": bool(rng.random() > 0.05)})
    return out


def python_answers(model: Any, reqs: list[dict[str, Any]], passes: int) -> tuple[list[tuple[Pairs, Pairs, Pairs]], list[float]]:
    answers, times = [], []
    for q in reqs:
        stored = bytes.fromhex(q["stored"]) if q["stored"] is not None else None
        weights = [(i, w) for i, w in q["weights"]]
        best = float("inf")
        for _ in range(passes):
            t0 = time.perf_counter()
            got = model.sources(stored, q["stored_version"], q["user"], weights, q["want"], q["n_similar"],
                                vector=q["vector"], tf=q["tf"])
            best = min(best, time.perf_counter() - t0)
        answers.append(got)
        times.append(best * 1e6)
    return answers, times


def rust_answers(binary: Path, root: Path, version: str, reqs: list[dict[str, Any]], passes: int,
                 threads: int) -> tuple[list[Any], list[float], str]:
    text = "".join(json.dumps(q) + "\n" for q in reqs)
    run = subprocess.run([str(binary), str(root), version, str(passes), str(threads)], input=text, capture_output=True,
                         text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(f"model_check failed ({run.returncode}): {run.stderr[-2000:]}")
    lines = [json.loads(x) for x in run.stdout.splitlines()]
    return [(a["vec"], a["tf"], a["similar"]) for a in lines], [a["us"] for a in lines], run.stderr.strip()


def compare(py: list[tuple[Pairs, Pairs, Pairs]], rs: list[Any]) -> dict[str, Any]:
    names = ("vec", "tf", "similar")
    same_requests = 0
    lists = {n: {"identical": 0, "same_set": 0, "differ": 0, "max_rel": 0.0, "max_rel_top": 0.0} for n in names}
    examples: list[dict[str, Any]] = []
    for r, (p3, r3) in enumerate(zip(py, rs, strict=True)):
        all_same = True
        for name, p, q in zip(names, p3, r3, strict=True):
            pid, qid = [i for i, _ in p], [i for i, _ in q]
            stat = lists[name]
            if pid != qid:
                all_same = False
                stat["same_set" if set(pid) == set(qid) else "differ"] += 1
                if len(examples) < 6:
                    only_p, only_q = set(pid) - set(qid), set(qid) - set(pid)
                    first = next(j for j in range(min(len(pid), len(qid)) + 1)
                                 if j == min(len(pid), len(qid)) or pid[j] != qid[j])
                    examples.append({"request": r, "list": name, "lengths": [len(pid), len(qid)],
                                     "first_difference_at": first, "only_python": sorted(only_p)[:5],
                                     "only_rust": sorted(only_q)[:5],
                                     "python_scores_there": [s for _, s in p[max(0, first - 1):first + 2]],
                                     "rust_scores_there": [s for _, s in q[max(0, first - 1):first + 2]]})
                continue
            stat["identical"] += 1
            top = max((abs(s) for _, s in p), default=0.0)
            for (_, a), (_, b) in zip(p, q, strict=True):
                stat["max_rel"] = max(stat["max_rel"], abs(b - a) / max(abs(a), 1e-30))
                stat["max_rel_top"] = max(stat["max_rel_top"], abs(b - a) / max(top, 1e-30))
        same_requests += all_same
    return {"requests": len(py), "identical_requests": same_requests, "lists": lists, "examples": examples}


def summary(times: list[float]) -> dict[str, float]:
    return {"median_us": round(float(np.median(times)), 1), "mean_us": round(float(np.mean(times)), 1),
            "p99_us": round(float(np.percentile(times, 99)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    default_bin = Path(os.environ.get("CARGO_TARGET_DIR", Path(__file__).parents[1] / "target")) / "release/model_check"
    ap.add_argument("--bin", type=Path, default=default_bin)
    ap.add_argument("--root", type=Path, default=None, help="shared folder root (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    settings = Settings()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="model-parity-") as tmp:
        root = args.root or Path(tmp)
        for m, name in enumerate(args.models):
            spec = MODELS[name]
            rng = np.random.default_rng(args.seed + m)
            version = f"parity-{name}-{args.seed}"
            head, tf_parts = parts(spec, rng)
            ann = ann_config(settings.model_copy(update={"reader_ann": spec["ann"],
                                                         "reader_ann_dtype": spec.get("dtype", settings.reader_ann_dtype)}))
            build = functools.partial(build_model, version, head, tf_parts, default_reg=settings.fold_in_regularization,
                                      pool_size=settings.reader_similar_users_pool,
                                      scan_items=spec.get("scan_items", settings.reader_scan_items), ann=ann)
            t0 = time.perf_counter()
            SharedModels(root).load(version, build)
            built_s = time.perf_counter() - t0
            model = SharedModels(root).opened(version)
            assert model is not None
            reqs = requests(spec, version, args.requests, rng)
            py, py_t = python_answers(model, reqs, args.passes)
            rs, rs_t, info = rust_answers(args.bin, root, version, reqs, args.passes, args.threads)
            res = compare(py, rs)
            lines = info.splitlines()
            res.update({"build_s": round(built_s, 1), "indexes": sorted(model.index_stats()),
                        "python": summary(py_t), "rust": summary(rs_t), "rust_model": json.loads(lines[0]),
                        "rust_concurrent": json.loads(lines[-1]) if args.threads > 1 else None})
            results[name] = res
            print(json.dumps({name: res}, indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
