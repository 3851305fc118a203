"""Tune the live recommender on the warm-up half only: decay/co-occurrence, reader reads, blend weights.

The prequential protocol is replayed on the first half of the stream alone — its first half
warms up, its second half is scored — so the evaluated (second) half of the stream is never
looked at. Three stages, each keeping the best of the previous: write-path settings (half-life,
co-occurrence window), read-path settings (recent items, neighbours, shrinkage), blend weights.
Writes ``benchmarks/results/tuning_<dataset>.json``.

Usage: nice python benchmarks/tune_live.py ml-latest-small [--max-windows 300]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from typing import Any

from tqdm import tqdm

from common import RESULTS, commit

from driftrec.evaluate import PrequentialOptions, _publish, load_stream
from driftrec.live_eval import LiveRecommender
from driftrec.models.baselines import Interactions, RawCooccurrenceRecommender
from driftrec.models.blend import SOURCES, BlendWeights
from driftrec.models.decay import EventWeights
from driftrec.models.prequential import run_prequential, scored_mask
from driftrec.settings import Settings

DAY = 86400.0
WEIGHTS: dict[str, dict[str, float]] = {
    "default": {k: float(getattr(BlendWeights(), k)) for k in SOURCES},
    "ii1_uv.5_tr.3": {"item_item": 1.0, "user_vector": 0.5, "trending": 0.3},
    "ii1_uv1_tr.3": {"item_item": 1.0, "user_vector": 1.0, "trending": 0.3},
    "ii1_uv.5_tf.2_tr.3": {"item_item": 1.0, "user_vector": 0.5, "tf": 0.2, "trending": 0.3},
    "ii1_uv.3_tr.15": {"item_item": 1.0, "user_vector": 0.3, "trending": 0.15},
    "ii1_uv.5_su.2_tr.3": {"item_item": 1.0, "user_vector": 0.5, "similar_users": 0.2, "trending": 0.3},
    "ii1_uv.7_tf.4_su.3_tr.5": {"item_item": 1.0, "user_vector": 0.7, "tf": 0.4, "similar_users": 0.3, "trending": 0.5},
    "ii.5_uv1_tr.3": {"item_item": 0.5, "user_vector": 1.0, "trending": 0.3},
}


def weights_of(spec: dict[str, float]) -> BlendWeights:
    return BlendWeights(**{**{s: 0.0 for s in SOURCES}, **spec})


def replay(events: list, start: int, mask: Any, configs: dict[str, Any], desc: str) -> dict[str, dict[str, float]]:
    with tqdm(total=len(events), desc=desc, unit="ev", mininterval=5.0) as bar:
        res = run_prequential(events, configs, mask, progress=bar.update)
    return res.summary()


def warm_up_half(dataset: str, max_windows: int) -> tuple[str, list[Any], int, Any]:
    """``(name, events, start, scored mask)`` of a data set's warm-up half: its first half warms
    up, its second half (from ``start``) is scored; the evaluated half is never read."""
    name, events = load_stream(dataset)
    events = events[: len(events) // 2]  # the warm-up half only
    start = len(events) // 2
    return name, events, start, scored_mask(events, start, window_s=3600.0, max_windows=max_windows)


def publish_warm_up(settings: Settings, events: list[Any], start: int, als: dict[str, Any]) -> Any:
    """ALS with ``als``'s hyper-parameters, trained on ``events[:start]`` and published (no TF)."""
    warm = Interactions(EventWeights(settings.event_weights))
    warm.add(events[:start])
    _, model, _ = _publish(settings, warm, PrequentialOptions(tf=False, als=als))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--max-windows", type=int, default=150)
    ap.add_argument("--half-lives", default="7,90,365,1095", help="days")
    ap.add_argument("--windows", default="5,10", help="co-occurrence windows (items)")
    ap.add_argument("--reuse-write", action="store_true",
                    help="take stage 1 (half-life, window) from the existing tuning_<dataset>.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    name, events, start, mask = warm_up_half(args.dataset, args.max_windows)
    base = Settings()
    # ALS as the evaluation tunes it (tune_batch_models) on this warm-up; no TF (its weight stays 0).
    from driftrec.evaluate import tune_batch_models

    choice = tune_batch_models(events[:start], base, PrequentialOptions())
    model = publish_warm_up(base, events, start, choice["als"])
    report: dict[str, Any] = {"dataset": name, "tuning_events": len(events), "scored": int(mask.sum()),
                              "als": choice["als"], "stages": {}, "commit": commit(),
                              "command": "python benchmarks/tune_live.py " + " ".join(sys.argv[1:])}
    out = RESULTS / f"tuning_{name}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    store = {"window": base.cooc_window, "window_s": base.cooc_window_s, "history_len": base.history_len,
             "neighbours_k": base.neighbours_k, "trending_k": base.trending_k}
    offset = events[start].offset

    def raw() -> RawCooccurrenceRecommender:
        return RawCooccurrenceRecommender.create(list(base.event_weights), **store)

    def save(stage: str, summary: dict[str, dict[str, float]]) -> str:
        report["stages"][stage] = summary
        out.write_text(json.dumps(report, indent=1, sort_keys=True))
        # "feed" is the state's own recommender with the default weights: already a candidate.
        best = max((k for k in summary if k not in ("raw_cooccurrence", "feed")), key=lambda k: summary[k]["hr10"])
        print(f"{stage}: best {best} HR@10 {summary[best]['hr10']:.4f} "
              f"(raw co-occurrence {summary['raw_cooccurrence']['hr10']:.4f})", flush=True)
        return best

    # Stage 1: write-path settings (decay, co-occurrence window), default reads, two blends.
    if args.reuse_write:  # stage 1 of an earlier run of this script on the same warm-up
        earlier = json.loads(out.read_text())
        report["stages"]["write"] = earlier["stages"]["write"]
        report["write_stage_from_commit"] = earlier.get("commit", "unknown")
        write = {k: earlier["best"]["settings"][k] for k in ("half_life_s", "cooc_window")}
        print(f"write: reused {write}", flush=True)
    else:
        methods: dict[str, Any] = {"raw_cooccurrence": raw()}
        for hl, win in itertools.product(args.half_lives.split(","), args.windows.split(",")):
            s = base.model_copy(update={"half_life_s": float(hl) * DAY, "cooc_window": int(win)})
            live = LiveRecommender(s, BlendWeights(), model, publish_offset=offset)
            methods[f"{hl},{win}|default"] = live
            methods[f"{hl},{win}|ii1_uv.5_tr.3"] = live.view(weights_of(WEIGHTS["ii1_uv.5_tr.3"]))
        best = save("write", replay(events, start, mask, methods, "stage 1: decay, window"))
        hl, win = best.split("|")[0].split(",")
        write = {"half_life_s": float(hl) * DAY, "cooc_window": int(win)}

    # Stage 2: read-path settings on that write path, two blends.
    s = base.model_copy(update=write)
    live = LiveRecommender(s, BlendWeights(), model, publish_offset=offset)
    methods = {"raw_cooccurrence": raw(), "feed": live}
    grid = [(r, n, 5.0, o) for o in ("time", "weight") for r, n in ((8, 20), (20, 20), (8, 50), (20, 50))]
    grid += [(8, 20, 1.0, "time"), (8, 20, 20.0, "time")]
    for recent, nbrs, shrink, order in grid:
        reader = live.reader(s.model_copy(update={"reader_recent_items": recent, "reader_neighbours": nbrs,
                                                 "similarity_shrinkage": shrink, "reader_recent_order": order}))
        for wname in ("default", "ii1_uv.5_tr.3"):
            methods[f"{recent},{nbrs},{shrink:g},{order}|{wname}"] = reader.view(weights_of(WEIGHTS[wname]))
    best = save("read", replay(events, start, mask, methods, "stage 2: reads"))
    r, n, sh, order = best.split("|")[0].split(",")
    read = {"reader_recent_items": int(r), "reader_neighbours": int(n), "similarity_shrinkage": float(sh),
            "reader_recent_order": order}

    # Stage 3: blend weights on that write and read path.
    s = base.model_copy(update={**write, **read})
    live = LiveRecommender(s, BlendWeights(), model, publish_offset=offset)
    methods = {"raw_cooccurrence": raw(), "feed": live}
    for wname, spec in WEIGHTS.items():
        methods[wname] = live.view(weights_of(spec))
    best = save("weights", replay(events, start, mask, methods, "stage 3: blend weights"))
    report["best"] = {"settings": {**write, **read}, "weights": {**{k: 0.0 for k in SOURCES}, **WEIGHTS[best]},
                      "hr10": report["stages"]["weights"][best]["hr10"],
                      "raw_cooccurrence_hr10": report["stages"]["weights"]["raw_cooccurrence"]["hr10"]}
    report["seconds"] = time.perf_counter() - t0
    out.write_text(json.dumps(report, indent=1, sort_keys=True))
    print(json.dumps(report["best"], indent=1))
    print(f"wrote {out} in {report['seconds']:.0f}s")


if __name__ == "__main__":
    main()
