"""``driftrec evaluate``: prequential evaluation on the live code path, and the offline protocol."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from driftrec.models.blend import SOURCES, BlendWeights
from driftrec.models.decay import EventWeights
from driftrec.models.online import EventView
from driftrec.models.prequential import (
    PrequentialResult,
    Recommender,
    event_views,
    run_prequential,
    scored_mask,
)
from driftrec.settings import Settings

__all__ = [
    "PrequentialOptions",
    "BASELINES",
    "load_stream",
    "build_methods",
    "prequential",
    "summarise",
    "offline",
    "title_year",
    "catalogue_changes",
    "prior_clicks",
    "hit_intervals",
]

logger = logging.getLogger(__name__)

#: The methods the live recommender is compared against (the hourly batch is the better of two).
BASELINES = ("popularity", "static_als", "hourly_batch", "raw_cooccurrence", "isgd", "sknn", "vsknn")
#: The baselines the issue-25 target names: live >= 1.15x the best of them.
SESSION_BASELINES = ("raw_cooccurrence", "vsknn")
_ONE = {name: 0.0 for name in SOURCES}


#: Batch configurations tried on the warm-up (ALS: from coarse to the offline benchmark's best).
ALS_GRID: tuple[dict[str, Any], ...] = (
    {"factors": 64, "regularization": 0.05, "alpha": 1.0, "iterations": 15},
    {"factors": 64, "regularization": 10.0, "alpha": 1.0, "iterations": 15},
    {"factors": 128, "regularization": 20.0, "alpha": 2.0, "iterations": 15},
)
KNN_GRID: tuple[dict[str, Any], ...] = ({"neighbours": 100, "shrink": 0.0}, {"neighbours": 100, "shrink": 10.0})


@dataclass(frozen=True)
class PrequentialOptions:
    """How one prequential run is cut, sampled and which models it trains.

    ``max_windows`` thins the scored half to that many evenly spaced windows of ``window_s``
    seconds (all scorable events inside a kept window are scored): the hourly batch baseline
    must refit once per kept hour, which bounds the run's cost. ``None`` scores every event.
    """

    k: int = 10
    batch_size: int = 1
    bulk_size: int = 1000
    window_s: float = 3600.0
    max_windows: int | None = 150
    max_events: int | None = None
    hourly_period_s: float = 3600.0
    hourly_both: bool = False
    als: dict[str, Any] = field(default_factory=lambda: dict(ALS_GRID[0]))
    itemknn: dict[str, Any] = field(default_factory=lambda: dict(KNN_GRID[0]))
    als_grid: tuple[dict[str, Any], ...] = ALS_GRID
    itemknn_grid: tuple[dict[str, Any], ...] = KNN_GRID
    tf: bool = True
    tf_params: dict[str, Any] = field(default_factory=lambda: {"epochs": 30})
    seed: int = 0
    n_windows: int = 10
    progress: bool = True


#: Apart by this much (seconds) :func:`separate_ties` sets one user's events stamped alike.
TIE_STEP_S = 0.001


def separate_ties(events: Sequence[dict[str, Any]], step_s: float = TIE_STEP_S) -> list[dict[str, Any]]:
    """The events, one user's events with the same timestamp set ``step_s`` apart in log order.

    A log stamped in seconds, or an invoice whose lines share one time (Online Retail), loses
    the order of a shopper's clicks: the live history orders equal times by item id, while a
    method that keeps the log's order (V-SKNN) knows which line came last. A shop's clicks are
    stamped apart as they happen; this gives every method the log's order. The result is
    sorted by the new times (stable), so the stream stays time-ordered.
    """
    out: list[dict[str, Any]] = []
    seen: dict[tuple[str, float], int] = {}
    for e in events:
        key = (str(e["user_id"]), float(e["timestamp"]))
        n = seen.get(key, 0)
        seen[key] = n + 1
        out.append({**e, "timestamp": key[1] + n * step_s} if n else e)
    return sorted(out, key=lambda e: float(e["timestamp"])) if len(seen) < len(out) else out


def load_stream(dataset: str | Path, max_events: int | None = None,
                ties: bool = True) -> tuple[str, list[EventView]]:
    """The time-ordered events of a data set: a file or folder (any layout ``load_any`` knows),
    a name under the shared data-set folder, or ``simulator`` (a shop whose tastes all drift at
    the middle of the stream). ``ties``: one user's equal timestamps set apart in log order
    (:func:`separate_ties`)."""
    if str(dataset).startswith("simulator"):
        from driftrec.simulator import ShopSimulator

        n = max_events or 60_000
        shape: dict[str, Any] = {"n_users": 800, "n_items": 3000, "n_categories": 12, "seed": 7,
                                 "drift_every_s": None}
        t0 = 1_700_000_000.0
        # Every shopper's taste moves at the middle of the stream (the rate is known in advance).
        mid = t0 + 0.5 * n / ShopSimulator(**shape, start_time=t0).expected_event_rate
        return "simulator", event_views(ShopSimulator(**shape, start_time=t0, drift_at=mid).events(n))
    from driftrec.datasets import load_any
    from driftrec.datasets.base import shared_datasets_dir

    p = Path(dataset)
    if not p.exists():
        p = shared_datasets_dir() / str(dataset)
    log = load_any(p)
    events = list(log)
    if max_events is not None:
        events = events[:max_events]
    return log.dataset, event_views(separate_ties(events) if ties else events)


def _publish(settings: Settings, warm: Any, options: PrequentialOptions) -> tuple[Any, Any, Any]:
    """Train ALS (and the TF next-items network) on the warm-up and publish them as one version."""
    from driftrec.live_eval import LiveModel, publish_parts
    from driftrec.models.batch.registry import create_model

    x = warm.matrix()
    from driftrec.models.batch.als import ALSModel

    als = ALSModel(**options.als).fit(x, seed=options.seed)
    users = [u for u, _ in sorted(warm.users.items(), key=lambda kv: kv[1])]
    tf_w: list[np.ndarray] = []
    tf_b: list[np.ndarray] = []
    if options.tf:
        tf = create_model("tf", **options.tf_params).fit(x, seed=options.seed)
        tf_w, tf_b = tf.weights, tf.biases  # type: ignore[attr-defined]
    parts = publish_parts(warm.item_names, als.item_factors, alpha=options.als.get("alpha", 1.0),
                          regularization=options.als.get("regularization", 0.05),
                          user_ids=users, user_factors=als.user_factors, tf_weights=tf_w, tf_biases=tf_b)
    return als, LiveModel("eval-warmup", parts, settings), parts


def tune_batch_models(warm: Sequence[EventView], settings: Settings, options: PrequentialOptions,
                      holdout: float = 0.1) -> dict[str, Any]:
    """Choose ALS and item-kNN hyperparameters, and the hourly model, on the warm-up alone.

    Every configuration is fitted on the warm-up's first ``1 - holdout`` of events; each known
    user's list is then held fixed (seen items removed) over the remaining events, and the
    configuration whose lists hit most of those users' first-time items wins — the hourly
    protocol with a single refit. The better of the best ALS and the best item-kNN becomes the
    hourly batch model.
    """
    from driftrec.models.baselines import Interactions, top_unseen
    from driftrec.models.batch.registry import create_model

    cut = int(len(warm) * (1 - holdout))
    data = Interactions(EventWeights(settings.event_weights))
    data.add(warm[:cut])
    x = data.matrix()
    seen = {(e.user, e.item) for e in warm[:cut]}
    asks: list[EventView] = []
    for e in warm[cut:]:
        if (e.user, e.item) not in seen and e.user in data.users:
            asks.append(e)
        seen.add((e.user, e.item))
    rows = sorted({data.users[e.user] for e in asks})

    def hit_rate(kind: str, params: dict[str, Any]) -> float:
        if not asks:
            return 0.0
        model = create_model(kind, **params).fit(x, seed=options.seed)
        scores = dict(zip(rows, np.asarray(model._score_users(np.asarray(rows, dtype=np.int64))), strict=True))
        hits, met = 0, dict[str, set[str]]()
        for e in asks:
            r = data.users[e.user]
            s = scores[r].astype(np.float64)
            s[x.indices[x.indptr[r]:x.indptr[r + 1]]] = -np.inf
            mine = met.setdefault(e.user, set())
            hits += e.item in top_unseen(s, data.item_names, options.k, mine, data.items)
            mine.add(e.item)
        return hits / len(asks)

    tried: dict[str, list[dict[str, Any]]] = {kind: [{"params": p, "hr10": hit_rate(kind, p)} for p in grid]
             for kind, grid in (("als", options.als_grid), ("itemknn", options.itemknn_grid))}
    best = {kind: max(runs, key=lambda r: float(r["hr10"])) for kind, runs in tried.items()}
    chosen = "als" if float(best["als"]["hr10"]) > float(best["itemknn"]["hr10"]) else "itemknn"
    return {"holdout_events": len(asks), "tried": tried, "als": best["als"]["params"],
            "itemknn": best["itemknn"]["params"], "hourly": chosen}


def build_methods(settings: Settings, events: Sequence[EventView], start: int,
                  options: PrequentialOptions, weights: BlendWeights | None = None,
                  scored: np.ndarray | None = None, hourly: Sequence[str] = ("als", "itemknn"),
                  ) -> dict[str, Recommender]:
    """Every compared method, the batch ones trained on ``events[:start]`` only.

    ``scored`` (the scored-event flags) tells the hourly batch who will ask in which hour, so it
    can score them together; ``hourly`` names the hourly models to run.
    """
    from driftrec.live_eval import LiveRecommender
    from driftrec.models.baselines import (
        HourlyBatchRecommender,
        Interactions,
        ISGDRecommender,
        PopularityRecommender,
        RawCooccurrenceRecommender,
        StaticModelRecommender,
    )
    from driftrec.models.batch.registry import create_model
    from driftrec.models.sknn import SessionKNNRecommender

    ew = EventWeights(settings.event_weights)
    warm = Interactions(ew)
    warm.add(events[:start])
    als, model, _ = _publish(settings, warm, options)
    store = {"window": settings.cooc_window, "window_s": settings.cooc_window_s,
             "history_len": settings.history_len, "neighbours_k": settings.neighbours_k,
             "trending_k": settings.trending_k}
    live = LiveRecommender(settings, weights, model, publish_offset=events[start].offset if start < len(events) else 0)
    schedule: dict[float, set[str]] = {}
    if scored is not None:
        period = options.hourly_period_s
        for i in np.flatnonzero(scored):
            e = events[int(i)]
            schedule.setdefault(float(np.floor(e.t / period) * period), set()).add(e.user)
    methods: dict[str, Recommender] = {
        "popularity": PopularityRecommender(ew),
        "static_als": StaticModelRecommender(als, warm),
    }
    for kind in hourly:
        params = options.als if kind == "als" else options.itemknn
        methods[f"hourly_{kind}"] = HourlyBatchRecommender(
            lambda kind=kind, params=params: create_model(kind, **params), ew,  # type: ignore[misc]
            options.hourly_period_s, options.seed, schedule)
    methods.update({
        "raw_cooccurrence": RawCooccurrenceRecommender.create(list(settings.event_weights), **store),
        "isgd": ISGDRecommender(settings.factors, settings.isgd_learning_rate,
                                settings.isgd_regularization, options.seed),
        "sknn": SessionKNNRecommender(sequential=False),
        "vsknn": SessionKNNRecommender(sequential=True),
        "live": live,
    })
    for source in SOURCES:
        if (source == "tf" and not options.tf) or (source == "new_items" and live.catalogue is None):
            continue  # nothing to score: no TF model, or no catalogue (benchmarks/cold_start.py has one)
        methods[f"live_{source}"] = live.view(BlendWeights(**{**_ONE, source: 1.0}))
    if live.weights.session_knn > 0:  # the blend without it, on the same reads: what the source adds
        methods["live_without_session_knn"] = live.view(replace(live.weights, session_knn=0.0))
    return methods


def _ratio_intervals(result: PrequentialResult, out: dict[str, Any], window_s: float,
                     draws: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """95 % bootstrap intervals of the two ratios, resampling whole scored windows (hours).

    Events of one hour are not independent (one shopper's session), so the hours are the unit
    resampled; both methods are scored on the same resampled events (a paired comparison).
    """
    if result.scored == 0:
        return {}
    win = np.floor(result.times / window_s)
    _, cluster = np.unique(win, return_inverse=True)
    n = int(cluster.max()) + 1
    hits = {m: np.bincount(cluster, weights=(r > 0).astype(float), minlength=n) for m, r in result.ranks.items()}
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(float)  # window weights per draw
    live = w @ hits["live"] if "live" in hits else None
    found: dict[str, list[float]] = {}
    hourly = out.get("methods", {}).get("hourly_batch", {}).get("model")
    pairs = {"live_vs_hourly_batch": hourly, "live_vs_best_baseline": out.get("best_baseline"),
             "live_vs_session_baseline": out.get("session_baseline")}
    for key in ("live_vs_best_baseline", "live_vs_session_baseline"):
        if pairs[key] == "hourly_batch":
            pairs[key] = hourly
    # live against every other method too (its single sources: the blend must not lose to them)
    pairs.update({f"live_vs_{m}": m for m in hits if m != "live"})
    for key, base in pairs.items():
        if live is None or base not in hits:
            continue
        other = w @ hits[base]
        ratio = np.divide(live, other, out=np.full(draws, np.inf), where=other > 0)
        found[key] = [float(np.quantile(ratio, q, method="inverted_cdf")) for q in (0.025, 0.975)]
    return found


def summarise(result: PrequentialResult, n_windows: int = 10, window_s: float = 3600.0) -> dict[str, Any]:
    """Metrics per method, the hourly batch as the better of its two models, and the ratios."""
    metrics = result.summary()
    hourly = [m for m in ("hourly_als", "hourly_itemknn") if m in metrics]
    out: dict[str, Any] = {"methods": metrics}
    if hourly:
        best = max(hourly, key=lambda m: (metrics[m]["hr10"], metrics[m]["ndcg10"]))
        metrics["hourly_batch"] = {**metrics[best], "model": best}  # type: ignore[dict-item]
    base = {m: metrics[m]["hr10"] for m in BASELINES if m in metrics}
    live = metrics.get("live", {}).get("hr10", 0.0)
    if base:
        best_base = max(base, key=lambda m: base[m])
        out["best_baseline"] = best_base
        out["live_vs_best_baseline"] = live / base[best_base] if base[best_base] > 0 else None
    session = {m: metrics[m]["hr10"] for m in SESSION_BASELINES if m in metrics}
    if session:
        best_session = max(session, key=lambda m: session[m])
        out["session_baseline"] = best_session
        out["live_vs_session_baseline"] = live / session[best_session] if session[best_session] > 0 else None
    if "hourly_batch" in metrics:
        hb = metrics["hourly_batch"]["hr10"]
        out["live_vs_hourly_batch"] = live / hb if hb > 0 else None
    out["ci95"] = _ratio_intervals(result, out, window_s)
    out["hr10"] = {m: v["hr10"] for m, v in metrics.items()}
    out["ndcg10"] = {m: v["ndcg10"] for m, v in metrics.items()}
    mids, per = result.windows(n_windows)
    out["windows"] = {"t": mids.tolist(), "hr10": {m: v.tolist() for m, v in per.items()}}
    return out


def prequential(dataset: str | Path, settings: Settings, options: PrequentialOptions,
                weights: BlendWeights | None = None,
                log: Callable[[str], Any] = logger.info) -> dict[str, Any]:
    """Run the prequential protocol on one data set; returns the report section for it."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    name, events = load_stream(dataset, options.max_events)
    start = len(events) // 2
    mask = scored_mask(events, start, window_s=options.window_s, max_windows=options.max_windows)
    log(f"{name}: {len(events)} events, warm-up {start}, scored {int(mask.sum())}")
    t1 = time.perf_counter()
    choice = tune_batch_models(events[:start], settings, options)
    log(f"{name}: on the warm-up: ALS {choice['als']}, item-kNN {choice['itemknn']}, hourly {choice['hourly']}")
    options = replace(options, als=choice["als"], itemknn=choice["itemknn"])
    # item-kNN is always replayed (cheap: rows of the asking users only); ALS, which must be
    # refitted whole every scored hour, only when the warm-up prefers it.
    hourly = ("als", "itemknn") if options.hourly_both or choice["hourly"] == "als" else ("itemknn",)
    methods = build_methods(settings, events, start, options, weights, mask, hourly)
    t2 = time.perf_counter()
    with tqdm(total=len(events), unit="ev", desc=f"prequential {name}", disable=not options.progress,
              mininterval=2.0) as bar:
        result = run_prequential(events, methods, mask, k=options.k, batch_size=options.batch_size,
                                 bulk_size=options.bulk_size, progress=bar.update)
    t3 = time.perf_counter()
    report = summarise(result, options.n_windows, options.window_s)
    report.update({
        "dataset": name, "events": len(events), "warmup_events": start, "scored_events": result.scored,
        "scored_windows": int(np.unique(np.floor(result.times / options.window_s)).size),
        "batch_tuning": choice,
        "hourly_refits": {m: getattr(methods[m], "fits", 0) for m in methods if m.startswith("hourly_")},
        "options": asdict(options),
        "blend_weights": asdict(getattr(methods["live"], "weights", BlendWeights())),
        "seconds": {"load": t1 - t0, "train_warmup": t2 - t1, "replay": t3 - t2},
    })
    return report


def _table(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, Path]:
    """(users, items, timestamps, file) of a ratings file, or of any event log ``load_any`` reads."""
    from driftrec.datasets import detect_layout, load_any
    from driftrec.datasets.base import shared_datasets_dir
    from driftrec.models.offline import load_ratings_table

    p = Path(path)
    if not p.exists():
        p = shared_datasets_dir() / str(path)
    layout, f = detect_layout(p)
    if layout == "movielens":
        users, items, _ratings, ts = load_ratings_table(f)
        return users, items, ts, f
    rows = [(e["user_id"], e["item_id"], e["timestamp"]) for e in load_any(f)]
    return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
            np.array([r[2] for r in rows], dtype=np.float64), f)


def offline(path: str | Path, *, models: Sequence[str] = ("pop", "als", "itemknn", "userknn", "svd", "ease"),
            params: dict[str, dict[str, Any]] | None = None, k: int = 10, seed: int = 42,
            split: str = "stratified", log: Callable[[str], Any] = logger.info) -> dict[str, Any]:
    """The offline protocol on a ratings file (ml-latest ``ratings.csv`` or ML-100k ``u.data``).

    ``split="stratified"``: per-user random 75/25 split (Microsoft Recommenders'
    ``python_stratified_split``), every rating a binary interaction; ``split="time"``: each
    user's earliest 75 % train. Returns precision/recall/NDCG/MAP at ``k``, coverage and
    popularity bias per model.
    """
    from driftrec.models.batch.registry import create_model
    from driftrec.models.offline import (
        encode_ids,
        evaluate_model,
        stratified_split,
        time_split,
        to_csr,
    )

    users, items, ts, p = _table(path)
    u, _ = encode_ids(users)
    i, item_ids = encode_ids(items)
    shape = (int(u.max()) + 1, item_ids.size)
    mask = stratified_split(u, 0.75, seed) if split == "stratified" else time_split(u, ts, 0.75)
    train, test = to_csr(u[mask], i[mask], shape), to_csr(u[~mask], i[~mask], shape)
    out: dict[str, Any] = {"file": str(p), "split": split, "k": k, "users": shape[0],
                           "items": shape[1], "train": int(train.nnz), "test": int(test.nnz), "models": {}}
    for name in models:
        t = time.perf_counter()
        model = create_model(name, **(params or {}).get(name, {})).fit(train, seed=seed)
        fit_s = time.perf_counter() - t
        m: dict[str, Any] = dict(evaluate_model(model, train, test, k))
        m.update({"fit_s": fit_s, "params": model.params()})
        out["models"][name] = m
        log(f"offline {split} {name}: P@{k} {m['precision']:.4f} nDCG@{k} {m['ndcg']:.4f} ({fit_s:.1f}s)")
    return out


# --- the catalogue's new-item source in the prequential loop ---------------------------------------
_YEAR_RE = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")


def title_year(title: str) -> int | None:
    """The release year a MovieLens title ends with ("Toy Story (1995)"), if any."""
    m = _YEAR_RE.search(title.strip())
    return int(m.group(1)) if m else None


def catalogue_changes(items: Sequence[dict[str, Any]], added: dict[str, float]) -> list[tuple[float, str, bytes]]:
    """Catalogue upserts as the reader's view would store them, each at the time its item was
    added (``added_at``): ``(time, item id, record)`` in time order. Items without an added time
    are left out (the catalogue does not list them)."""
    from driftrec.catalogue import encode_item_event, validate_item_event

    out = []
    for item in items:
        t = added.get(str(item["item_id"]))
        if t is None:
            continue
        event = validate_item_event({**item, "added_at": t})
        out.append((t, event.item_id, encode_item_event(event)))
    out.sort(key=lambda x: (x[0], x[1]))
    return out


def prior_clicks(events: Sequence[EventView], index: np.ndarray) -> np.ndarray:
    """For each event at ``index`` (sorted), the clicks its item had before it in the stream."""
    counts: dict[str, int] = {}
    out = np.zeros(index.size, dtype=np.int64)
    k = 0
    for i, e in enumerate(events):
        while k < index.size and index[k] == i:
            out[k] = counts.get(e.item, 0)
            k += 1
        counts[e.item] = counts.get(e.item, 0) + 1
    return out


def hit_intervals(result: PrequentialResult, window_s: float, base: str, subset: np.ndarray | None = None,
                  draws: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """HR@k and NDCG@k per method on the scored events of ``subset`` (all when None), with 95 %
    bootstrap intervals resampling whole scored windows (hours) as :func:`_ratio_intervals`
    does, and the paired ratio and difference of HR against ``base`` on the same draws."""
    keep = np.ones(result.scored, dtype=bool) if subset is None else np.asarray(subset, dtype=bool)
    if not keep.any():
        return {m: {"events": 0} for m in result.methods}
    win = np.floor(result.times[keep] / window_s)
    _, cluster = np.unique(win, return_inverse=True)
    n = int(cluster.max()) + 1
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(float)
    count = w @ np.bincount(cluster, minlength=n).astype(float)

    def sums(values: np.ndarray) -> np.ndarray:
        return w @ np.bincount(cluster, weights=values, minlength=n)

    def ci(x: np.ndarray) -> list[float]:
        return [float(np.quantile(x, q, method="inverted_cdf")) for q in (0.025, 0.975)]

    base_hits = sums((result.ranks[base][keep] > 0).astype(float))
    out: dict[str, dict[str, Any]] = {}
    for m in result.methods:
        r = result.ranks[m][keep]
        hit = (r > 0).astype(float)
        gain = np.where(r > 0, 1.0 / np.log2(np.maximum(r, 1) + 1.0), 0.0)
        hits, gains = sums(hit), sums(gain)
        d: dict[str, Any] = {"events": int(keep.sum()), "hits": int(hit.sum()),
                             "hr10": float(hit.mean()), "ndcg10": float(gain.mean()),
                             "hr10_ci95": ci(hits / count), "ndcg10_ci95": ci(gains / count)}
        if m != base:
            d["hr10_minus_base_ci95"] = ci((hits - base_hits) / count)
            ratio = np.divide(hits, base_hits, out=np.full(draws, np.inf), where=base_hits > 0)
            d["hr10_ratio_to_base_ci95"] = ci(ratio)
        out[m] = d
    return out
