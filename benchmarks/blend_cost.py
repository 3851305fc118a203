"""Per-request cost of the reader's ranking maths: ``user_recent`` + ``blend``, before and after a change.

Times the pure-Python part of one recommendation (no Redis, no model scans) on a synthetic but
reader-sized request: a 50-item history, 8 recent items x 20 neighbour rows, 100 user-vector,
TF and similar-user candidates, 60 trending items. ``--baseline-ref REF`` loads
``models/candidates.py`` and ``models/blend.py`` as they were at REF (``git show``) and times
them in alternating rounds beside the working tree's, with the settings given by ``--set``.

    python benchmarks/blend_cost.py --baseline-ref d9b12e3~1 --set reader_recent_position_decay=1
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
import types
from typing import Any

from common import RESULTS, ROOT, commit, machine

from driftrec.models.blend import BlendWeights, Candidates
from driftrec.models.decay import DecayPolicy


def load_at(ref: str) -> tuple[Any, Any]:
    """``(user_recent, blend)`` of models/candidates.py and models/blend.py at ``ref``."""
    mods = {}
    for name in ("blend", "candidates"):
        src = subprocess.run(["git", "show", f"{ref}:models/{name}.py"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        mod = types.ModuleType(f"baseline_{name}")
        sys.modules[mod.__name__] = mod
        if name == "candidates":  # make it use the baseline's blend module
            src = src.replace("from driftrec.models.blend import", "from baseline_blend import")
        exec(compile(src, f"{ref}:models/{name}.py", "exec"), mod.__dict__)  # noqa: S102
        mods[name] = mod
    return mods["candidates"].user_recent, mods["blend"].blend


def request(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    items = [f"sku-{i}" for i in range(5000)]
    now = 1_700_000_000.0
    history = sorted(((rng.choice(items), now - rng.random() * 86400 * 3) for _ in range(50)),
                     key=lambda kv: -kv[1])
    history = list({i: t for i, t in reversed(history)}.items())[::-1]
    stored = sorted(((i, rng.random() * 10) for i, _ in history), key=lambda kv: -kv[1])
    rows = {i: [(rng.choice(items), rng.random() * 5) for _ in range(20)] for i, _ in history}
    pairs = lambda n: [(rng.choice(items), rng.random()) for _ in range(n)]  # noqa: E731
    return {"history": history, "stored": stored, "rows": rows, "now": now, "vec": pairs(100), "tf": pairs(100),
            "sim": pairs(100), "trend": pairs(60), "norms": {i: rng.random() * 50 + 1 for i in items}}


def one(user_recent: Any, blend: Any, r: dict[str, Any], kw: dict[str, Any]) -> None:
    kw = dict(kw)
    extra = {"alpha": kw.pop("alpha")} if "alpha" in kw else {}
    decayed, recent = user_recent(r["stored"], r["history"], 1.0, r["now"], DecayPolicy(604800.0), k=8,
                                  order="time", **kw)
    c = Candidates(recent=recent, neighbours={i: r["rows"][i] for i, _ in recent}, norms=r["norms"],
                   vector_scores=r["vec"], tf_scores=r["tf"], similar_users=r["sim"], trending=r["trend"])
    blend(c, 10, exclude={i for i, _ in r["history"]}, weights=BlendWeights(), shrinkage=5.0, **extra)


def timed(fn: Any, reqs: list[dict[str, Any]], kw: dict[str, Any], repeat: int) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        for r in reqs:
            fn(r, kw)
    return (time.perf_counter() - t) / (repeat * len(reqs)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-ref", default=None)
    ap.add_argument("--set", action="append", default=[], help="user_recent keyword for the working tree, e.g. "
                    "reader_recent_position_decay=1 (position_decay), reader_outside_session_weight=0.5")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    names = {"reader_recent_position_decay": "position_decay", "reader_outside_session_weight": "outside_session",
             "reader_session_gap_s": "session_gap_s", "similarity_alpha": "alpha"}
    kw = {names[k]: float(v) for k, v in (s.split("=", 1) for s in args.set)}
    from driftrec.models.blend import blend
    from driftrec.models.candidates import user_recent

    reqs = [request(s) for s in range(100)]
    variants = {"tree_defaults": (lambda r, k: one(user_recent, blend, r, {}), {}),
                "tree_set": (lambda r, k: one(user_recent, blend, r, k), kw)}
    if args.baseline_ref:
        ur, bl = load_at(args.baseline_ref)
        variants["baseline"] = (lambda r, k: one(ur, bl, r, {}), {})
    us: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for name, (fn, k) in variants.items():
            us[name].append(timed(fn, reqs, k, args.repeat))
    out = {"commit": commit(), "machine": machine(), "command": "python benchmarks/blend_cost.py " + " ".join(sys.argv[1:]),
           "settings": kw, "us_per_request": {k: {"median": statistics.median(v), "rounds": v} for k, v in us.items()}}
    (RESULTS / "blend_cost.json").write_text(json.dumps(out, indent=1))
    for k, v in out["us_per_request"].items():
        print(f"{k:14s} median {v['median']:.1f} us per request")


if __name__ == "__main__":
    main()
