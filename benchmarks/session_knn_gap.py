"""Why the session_knn source alone stays below V-SKNN: both on one data set's warm-up half, in process.

Replays the first half of a data set (its first half warms up, its second half is scored; no model
published), with the session_knn source alone at growing reads, V-SKNN (``models/sknn.py``) as the
evaluation runs it, and V-SKNN cut to the reader's defaults' sizes. ``--history-len`` stores longer
histories (the neighbours' sessions are rebuilt from them); ``--multi-session`` scores every session of a
neighbour that holds one of its shared clicks, not only the one around the latest (an experiment here:
the reader does not do it).

    python benchmarks/session_knn_gap.py simulator --max-windows 15 [--history-len 1000] [--multi-session]
"""

from __future__ import annotations

import argparse
import heapq
import time
from typing import Any

from driftrec import live_eval
from driftrec.evaluate import load_stream
from driftrec.models.candidates import session_around, session_query
from driftrec.models.prequential import scored_mask
from driftrec.models.sknn import SessionKNNRecommender, vsknn_scores
from driftrec.settings import Settings
from driftrec.tune import TuneOptions, _Bench, _defaults

READS = ({"reader_session_knn_users": 30, "reader_session_knn_sample": 20},
         {"reader_session_knn_users": 100, "reader_session_knn_sample": 50},
         {"reader_session_knn_users": 100, "reader_session_knn_sample": 50, "reader_recent_items": 30},
         {"reader_session_knn_users": 300, "reader_session_knn_sample": 100, "reader_recent_items": 50})


def _multi_session(self: Any, user: str, newest: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """LiveRecommender._session_knn, each neighbour contributing every distinct session around one of
    its shared clicks (as V-SKNN compares sessions, not shoppers)."""
    s, st = self.settings, self.state
    query = session_query(newest, k=s.reader_recent_items, session_gap_s=s.reader_session_gap_s)
    if not query:
        return []
    sim: dict[str, int] = {}
    latest: dict[str, float] = {}
    times: dict[str, set[float]] = {}
    for p, item in enumerate(query, 1):
        for v, t in st.session_users(item, s.reader_session_knn_sample):
            if v != user:
                sim[v] = sim.get(v, 0) + p
                latest[v] = max(latest.get(v, t), t)
                times.setdefault(v, set()).add(t)
    sessions: list[set[str]] = []
    for v in heapq.nlargest(s.reader_session_knn_users, sim, key=lambda v: (sim[v], latest[v], v)):
        h = list(st.hist.get(v, {}).items())
        for t in sorted(times[v], reverse=True):
            got = session_around(h, t, s.reader_session_gap_s)
            if got and got not in sessions:
                sessions.append(got)
    return list(vsknn_scores(query, sessions, len(sessions)).items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--max-windows", type=int, default=15)
    ap.add_argument("--history-len", type=int, default=None)
    ap.add_argument("--multi-session", action="store_true")
    args = ap.parse_args()
    if args.multi_session:
        live_eval.LiveRecommender._session_knn = _multi_session  # type: ignore[method-assign]
    base = Settings(session_index_k=100, **({"history_len": args.history_len} if args.history_len else {}))
    name, events = load_stream(args.dataset)
    half = events[: len(events) // 2]
    start = len(half) // 2
    mask = scored_mask(half, start, window_s=3600.0, max_windows=args.max_windows)
    alone = {f"w.{s}": 0.0 for s in ("item_item", "user_vector", "tf", "similar_users", "trending")}
    configs = [{**_defaults(base), **alone, "w.session_knn": 1.0, **r} for r in READS]
    extra: dict[str, Any] = {"vsknn": SessionKNNRecommender(sequential=True),
                             "vsknn_30_of_160_last_8": SessionKNNRecommender(sequential=True, k=30, sample_size=160, last_n=8)}
    t = time.perf_counter()
    res, named = _Bench(base, half, start, mask, TuneOptions(progress=False), None).run(configs, name, extra)
    summary = res.summary()
    print(f"{name}: {int(mask.sum())} scored, {time.perf_counter() - t:.0f} s")
    for m, v in summary.items():
        c = named.get(m)
        label = {k: c[k] for k in ("reader_session_knn_users", "reader_session_knn_sample", "reader_recent_items")} if c else m
        print(f"HR@10 {v['hr10']:.4f}  {label}")


if __name__ == "__main__":
    main()
