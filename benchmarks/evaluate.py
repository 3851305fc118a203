"""The evaluation benchmark: prequential (live vs baselines) and offline metrics, with a report and plots.

Per data set it replays the log test-then-train (``driftrec.evaluate.prequential``: the first
half warms up, the second half is scored) and runs the offline protocol on the same events;
writes ``benchmarks/results/evaluation.json``, ``evaluation.md`` and PNG plots beside them.
Live settings and blend weights tuned on the warm-up half (``benchmarks/tune_live.py``) are
read from ``benchmarks/results/tuning_<dataset>.json`` when present.

    nice .venv/bin/python benchmarks/evaluate.py                 # the full run (~15 min, 2 cores)
    nice .venv/bin/python benchmarks/evaluate.py --datasets simulator --no-offline   # quick
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC
from pathlib import Path
from typing import Any

from common import RESULTS, commit, machine, portable

TARGETS = {"live_vs_hourly_batch": 2.0, "live_vs_best_baseline": 1.15, "live_vs_session_baseline": 1.15}
#: Scored hours per data set: bounds the hourly batch's refits (see PrequentialOptions).
#: None: every scorable event (the RetailRocket sample is small: 9,385 clicks of 5,000 visitors).
MAX_WINDOWS: dict[str, int | None] = {"ml-latest-small": 120, "uci-online-retail": 40, "simulator": 20,
                                      "retailrocket-sample": None}
#: Offline models per split (the time split skips the two slowest to keep the run near 15 min).
OFFLINE_MODELS = {"stratified": ("pop", "als", "itemknn", "userknn", "svd", "ease"),
                  "time": ("pop", "als", "itemknn", "svd")}

logger = logging.getLogger("benchmarks.evaluate")


def _offline_params() -> dict[str, dict[str, Any]]:
    """Hyperparameters chosen by benchmarks/offline_models.py on its validation split, if run."""
    f = RESULTS / "offline_models.json"
    if not f.is_file():
        return {}
    data = json.loads(f.read_text())
    return {name: m.get("params", {}) for name, m in data.get("models", {}).items()}


def _tuned(dataset: str) -> dict[str, Any] | None:
    names = {"ml-latest-small": "movielens", "uci-online-retail": "online-retail"}
    f = RESULTS / f"tuning_{names.get(dataset, dataset)}.json"
    if f.is_file():
        best = json.loads(f.read_text()).get("best")
        if best:
            return best
    return None


def run_dataset(dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    from driftrec.evaluate import PrequentialOptions, offline, prequential
    from driftrec.models.blend import BlendWeights
    from driftrec.settings import Settings

    tuned = _tuned(dataset) if args.tuned else None
    settings = Settings(**tuned["settings"]) if tuned else Settings()
    weights = BlendWeights(**tuned["weights"]) if tuned else None
    windows = MAX_WINDOWS.get(dataset, 80) if args.max_windows is None else (args.max_windows or None)
    options = PrequentialOptions(max_windows=windows,
                                 tf=not args.no_tf)
    report = prequential(dataset, settings, options, weights, log=logger.info)
    report["tuned_on_warmup"] = tuned
    report["settings"] = {k: getattr(settings, k) for k in (
        "half_life_s", "cooc_window", "cooc_window_s", "history_len", "neighbours_k", "similarity_shrinkage",
        "reader_recent_items", "reader_recent_order", "reader_neighbours", "reader_similar_users",
        "reader_recent_position_decay", "reader_session_gap_s", "reader_outside_session_weight", "similarity_alpha",
        "event_weights")}
    report["targets"] = {k: {"target": v, "value": report.get(k), "met": (report.get(k) or 0) >= v}
                         for k, v in TARGETS.items()}
    if not args.no_offline and dataset != "simulator":
        params = _offline_params()
        report["offline"] = {}
        for split in args.splits.split(","):
            report["offline"][split] = offline(dataset, models=OFFLINE_MODELS[split], params=params,
                                               split=split, log=logger.info)
    return report


def plot(report: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for name, d in report["datasets"].items():
        w = d["windows"]
        fig, ax = plt.subplots(figsize=(9, 5))
        from datetime import datetime

        x = [datetime.fromtimestamp(t, tz=UTC) for t in w["t"]]
        colours = plt.get_cmap("tab20").colors
        for k, (method, ys) in enumerate(sorted(w["hr10"].items())):
            live = method == "live"
            ax.plot(x, ys, marker="o" if live else ".", lw=2.5 if live else 1.0, color=colours[k % 20],
                    ls="-" if method.startswith("live") else "--", label=method)
        ax.set_title(f"{name}: HR@10 per time window (scored half, {d['scored_events']} events)")
        ax.set_ylabel("HR@10")
        ax.legend(fontsize=7, ncol=2)
        fig.autofmt_xdate()
        fig.tight_layout()
        f = out / f"evaluation_{name}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f.name)
    fig, ax = plt.subplots(figsize=(10, 5))
    names = list(report["datasets"])
    methods = [m for m in report["datasets"][names[0]]["hr10"] if m not in ("hourly_als", "hourly_itemknn")]
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        hr = report["datasets"][name]["hr10"]
        ax.bar([i + k * width for i in range(len(methods))], [hr.get(m, 0.0) for m in methods], width, label=name)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(methods))], methods, rotation=45, ha="right")
    ax.set_ylabel("HR@10")
    ax.set_title("Prequential HR@10 per method")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "evaluation_summary.png", dpi=110)
    plt.close(fig)
    files.append("evaluation_summary.png")
    return files


def markdown(report: dict[str, Any], plots: list[str]) -> str:
    lines = ["# Evaluation", "",
             f"Commit `{report['commit']}`, {report['machine']['cores']} CPUs ({report['machine']['platform']}), "
             f"load average at start {report['machine']['load_avg'][0]:.1f}; "
             f"{report['seconds']:.0f} s in all. Command: `{report['command']}`.", "",
             "Prequential protocol: the log is replayed in time order; for every scored event each method is "
             "asked for the user's top-10 (items the user already met excluded) before the event is applied; "
             "repeats of a (user, item) pair are applied but not scored. The first half of each log warms up "
             "(and is the only data used for tuning), the second half is scored: every scorable event of an "
             "evenly spaced sample of hours (the hourly batch must refit once per scored hour). "
             "Micro-batches of one event around scored events; stretches without one are applied in batches "
             "of 1000.", ""]
    lines += ["## Summary", "", "| data set | scored events | live HR@10 | hourly batch HR@10 | live / hourly batch (target 2.0) "
              "| best baseline | live / best baseline (target 1.15) | best of co-occurrence and V-SKNN "
              "| live / it (target 1.15) |", "|---|---|---|---|---|---|---|---|---|"]
    lines_ci = "Ratios with their 95 % bootstrap interval (scored hours resampled, paired)."
    for name, d in report["datasets"].items():
        hb = d["methods"].get("hourly_batch", {})
        lvh, lvb = d.get("live_vs_hourly_batch"), d.get("live_vs_best_baseline")
        ok = {k: "met" if v["met"] else "**not met**" for k, v in d["targets"].items()}
        ci = d.get("ci95", {})

        def fmt(key: str, value: float | None, ci: dict = ci, ok: dict = ok) -> str:
            lo_hi = ci.get(key)
            band = f" [{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]" if lo_hi else ""
            return f"{value:.2f}{band} ({ok[key]})" if value is not None else "n/a"

        lines.append(f"| {name} | {d['scored_events']} | {d['hr10']['live']:.4f} | {hb.get('hr10', 0):.4f} "
                     f"({hb.get('model', '')}) | {fmt('live_vs_hourly_batch', lvh)} | {d['best_baseline']} "
                     f"{d['hr10'][d['best_baseline']]:.4f} | {fmt('live_vs_best_baseline', lvb)} | "
                     + (f"{d['session_baseline']} {d['hr10'][d['session_baseline']]:.4f} | "
                        f"{fmt('live_vs_session_baseline', d.get('live_vs_session_baseline'))} |"
                        if d.get("session_baseline") else "n/a | n/a |"))
    lines += ["", lines_ci]
    for name, d in report["datasets"].items():
        lines += ["", f"## {name}", "", f"{d['events']} events, {d['warmup_events']} warm-up, {d['scored_events']} "
                  f"scored in {d['scored_windows']} hours. Hourly refits: {d['hourly_refits']}. "
                  f"Batch models chosen on the warm-up: ALS {d['batch_tuning']['als']}, item-kNN "
                  f"{d['batch_tuning']['itemknn']}, hourly {d['batch_tuning']['hourly']}.",
                  "", "| method | HR@10 | NDCG@10 | MRR@10 | live / method, HR@10 [95 %] |", "|---|---|---|---|---|"]
        for m, v in d["methods"].items():
            band = d.get("ci95", {}).get(f"live_vs_{m}")
            lines.append(f"| {m} | {v['hr10']:.4f} | {v['ndcg10']:.4f} | {v['mrr10']:.4f} | "
                         + (f"{d['hr10']['live'] / v['hr10']:.2f} [{band[0]:.2f}, {band[1]:.2f}] |"
                            if band and v["hr10"] > 0 else "|"))
        lines += ["", f"Live settings: {d['settings']}; blend weights: {d['blend_weights']}"
                  + (" (tuned on the warm-up half)." if d.get("tuned_on_warmup") else " (defaults)."), ""]
        if f"evaluation_{name}.png" in plots:
            lines.append(f"![HR@10 per window, {name}](evaluation_{name}.png)")
        for split, off in (d.get("offline") or {}).items():
            lines += ["", f"Offline, {split} 75/25 split ({off['users']} users, {off['items']} items), k=10:", "",
                      "| model | precision | recall | NDCG | MAP | coverage | mean popularity |", "|---|---|---|---|---|---|---|"]
            for m, v in off["models"].items():
                lines.append(f"| {m} | {v['precision']:.4f} | {v['recall']:.4f} | {v['ndcg']:.4f} | {v['map']:.4f} "
                             f"| {v['coverage']:.4f} | {v['mean_popularity']:.4f} |")
    lines += ["", "![HR@10 per method](evaluation_summary.png)", ""]
    notes = report.get("notes")
    if notes:
        lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-latest-small,uci-online-retail,retailrocket-sample,simulator")
    ap.add_argument("--max-windows", type=int, default=None, help="override the per-data-set sample of scored hours (0: every event)")
    ap.add_argument("--no-offline", action="store_true")
    ap.add_argument("--splits", default="stratified,time")
    ap.add_argument("--no-tf", action="store_true")
    ap.add_argument("--no-tuned", dest="tuned", action="store_false", help="ignore tuning_<dataset>.json")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--replot", action="store_true", help="only redraw plots and Markdown from evaluation.json")
    args = ap.parse_args()
    if args.replot:
        report = json.loads((args.out / "evaluation.json").read_text())
        plots = plot(report, args.out)
        (args.out / "evaluation.md").write_text(markdown(report, plots))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("driftrec.models.batch.als").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"commit": commit(), "machine": machine(),
                              "command": "nice python benchmarks/evaluate.py " + " ".join(sys.argv[1:]),
                              "targets": TARGETS, "datasets": {}}
    for dataset in args.datasets.split(","):
        d = run_dataset(dataset, args)
        report["datasets"][dataset] = d
    report["seconds"] = time.perf_counter() - t0
    notes_file = args.out / "evaluation_notes.md"
    if notes_file.is_file():
        report["notes"] = notes_file.read_text().splitlines()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluation.json").write_text(json.dumps(portable(report), indent=1, default=str))
    plots = plot(report, args.out)
    (args.out / "evaluation.md").write_text(markdown(report, plots))
    print(markdown(report, plots).split("## ")[1])
    print(f"wrote {args.out / 'evaluation.json'} in {report['seconds']:.0f}s")


if __name__ == "__main__":
    main()
