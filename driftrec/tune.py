"""``driftrec tune``: the live settings tuned on a shop's own click log, checked on a later part of it.

The log is cut in two at ``tune_fraction``. Tuning replays the first part alone, prequentially
(its first half warms up, its second half is scored), in stages:

1. **write**: half-life and co-occurrence window (each value its own in-memory store);
2. **read**: the reader's reads and the blend weights (recent items, neighbours per item,
   shrinkage, the order and session of the last clicks, source weights) — many readers of one
   store, one replay; seeded random combinations plus every one-setting change of the best;
3. **refine**: one-setting changes around stage 2's best, when the budget allows.

The check then replays the whole log, the first part warming up, and scores the later part
(never seen by the tuning) with the defaults, the tuned settings and two baselines (plain live
co-occurrence, V-SKNN). The tuned settings are recommended only when the 95 % bootstrap interval
of tuned / defaults (scored hours resampled, paired) lies above 1. No I/O beyond reading the log
(:func:`driftrec.evaluate.load_stream`); the caller writes the files.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftrec.models.blend import SOURCES, BlendWeights
from driftrec.models.online import EventView
from driftrec.models.prequential import PrequentialResult, Recommender, run_prequential, scored_mask
from driftrec.settings import Settings

__all__ = ["TuneOptions", "TuneResult", "ratio_interval", "tune", "settings_file_content", "parse_budget", "load_events",
           "WRITE_KEYS", "READ_SPACE"]

logger = logging.getLogger(__name__)

DAY = 86400.0
#: Settings that need a store of their own (the worker's writes).
WRITE_KEYS = ("half_life_s", "cooc_window", "cooc_window_s", "neighbours_k")
#: Values tried for the write-path settings, one at a time around the defaults.
WRITE_SPACE: dict[str, tuple[float | int, ...]] = {
    "half_life_s": (1 * DAY, 30 * DAY, 365 * DAY, 3650 * DAY),
    "cooc_window": (3, 5, 20, 50),
    "cooc_window_s": (1800.0, 6 * 3600.0, 1 * DAY),
    "neighbours_k": (20, 100, 200),
}
#: Seconds one in-memory store costs per replayed event, and one reader per scored event.
STORE_S_PER_EVENT = 6e-5
READER_S_PER_SCORED = 2e-3
#: Values tried for the read-path settings and blend weights (``w.<source>``).
READ_SPACE: dict[str, tuple[float | int, ...]] = {
    "reader_recent_items": (2, 4, 8, 16, 30),
    "reader_neighbours": (10, 20, 50, 100),
    "similarity_shrinkage": (0.0, 1.0, 5.0, 20.0),
    "similarity_alpha": (0.5, 0.7, 0.9),
    "reader_recent_position_decay": (0.0, 0.25, 1.0, 3.0),
    "reader_outside_session_weight": (1.0, 0.5, 0.2),
    "w.user_vector": (0.0, 0.15, 0.3, 0.6, 1.0),
    "w.similar_users": (0.0, 0.1, 0.3),
    "w.trending": (0.0, 0.05, 0.15, 0.3),
    "w.session_knn": (0.0, 0.25, 0.5, 1.0, 2.0),
}


#: Shoppers per item in the session index while tuning (the worker's default keeps none, as the
#: session_knn source is off by default): what the source was measured with.
SESSION_INDEX_K = 50


def parse_budget(text: str) -> float:
    """Seconds in ``"10m"``, ``"90s"``, ``"1h"`` or a plain number of seconds."""
    text = text.strip().lower()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


@dataclass(frozen=True)
class TuneOptions:
    """How ``tune`` cuts the log and how much it may try."""

    tune_fraction: float = 0.5
    budget_s: float = 600.0
    seed: int = 0
    max_windows: int | None = 150
    window_s: float = 3600.0
    read_samples: int = 24
    model: bool = True
    progress: bool = True


@dataclass
class TuneResult:
    """What tuning found and how it held on the later part."""

    defaults: dict[str, Any]
    tuned: dict[str, Any]
    check: dict[str, dict[str, float]]
    intervals: dict[str, list[float]]
    recommended: bool
    reason: str
    best_baseline: str = ""
    stages: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    scored: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"defaults": self.defaults, "tuned": self.tuned, "check": self.check, "ci95": self.intervals,
                "recommended": self.recommended, "reason": self.reason,
                "best_baseline": self.best_baseline, "stages": self.stages,
                "seconds": self.seconds, "scored": self.scored}


def ratio_interval(result: PrequentialResult, a: str, b: str, window_s: float = 3600.0, draws: int = 2000,
                   seed: int = 0) -> list[float] | None:
    """95 % bootstrap interval of HR(a) / HR(b), resampling scored windows (hours), paired."""
    if result.scored == 0 or a not in result.ranks or b not in result.ranks:
        return None
    _, cluster = np.unique(np.floor(result.times / window_s), return_inverse=True)
    n = int(cluster.max()) + 1
    ha = np.bincount(cluster, weights=(result.ranks[a] > 0).astype(float), minlength=n)
    hb = np.bincount(cluster, weights=(result.ranks[b] > 0).astype(float), minlength=n)
    w = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=draws).astype(float)
    num, den = w @ ha, w @ hb
    ratio = np.divide(num, den, out=np.full(draws, np.inf), where=den > 0)
    return [float(np.quantile(ratio, q, method="inverted_cdf")) for q in (0.025, 0.975)]


def _defaults(settings: Settings) -> dict[str, Any]:
    w = BlendWeights().with_overrides(settings.reader_blend_weights)
    out: dict[str, Any] = {k: getattr(settings, k) for k in WRITE_KEYS}
    out.update({k: getattr(settings, k) for k in READ_SPACE if not k.startswith("w.")})
    out.update({f"w.{s}": float(getattr(w, s)) for s in SOURCES})
    return out


def _split(config: dict[str, Any], base: Settings) -> tuple[Settings, BlendWeights]:
    """Settings and blend weights of one flat configuration (``w.<source>`` keys are weights)."""
    weights = {k[2:]: float(v) for k, v in config.items() if k.startswith("w.")}
    plain = {k: v for k, v in config.items() if not k.startswith("w.")}
    s = base.model_copy(update={**plain, "reader_blend_weights": weights})
    return s, BlendWeights().with_overrides(weights)


def _key(config: dict[str, Any]) -> str:
    return ",".join(f"{k}={config[k]:g}" if isinstance(config[k], float) else f"{k}={config[k]}"
                    for k in sorted(config))


class _Bench:
    """Replays one part of the log for many configurations; keeps the cost per store and per reader."""

    def __init__(self, base: Settings, events: Sequence[EventView], start: int, mask: np.ndarray,
                 options: TuneOptions, model: Any) -> None:
        self.base, self.events, self.start, self.mask, self.options, self.model = (
            base, events, start, mask, options, model)
        # Cost model, from the log's size only (never from measured speed, so the plan - which
        # configurations are tried - is the same on any machine: same log + budget + seed, same
        # answer). Calibrated on a 2-core x86 server; a slower machine overruns the budget.
        self.per_store_s = STORE_S_PER_EVENT * len(events)
        self.per_reader_s = READER_S_PER_SCORED * int(mask.sum())
        self.took_s = 0.0

    def cost(self, stores: int, readers: int) -> float:
        return stores * self.per_store_s + readers * self.per_reader_s

    def run(self, configs: Sequence[dict[str, Any]], desc: str,
            extra: dict[str, Recommender] | None = None) -> tuple[PrequentialResult, dict[str, dict[str, Any]]]:
        from driftrec.live_eval import LiveRecommender

        offset = self.events[self.start].offset if self.start < len(self.events) else 0
        stores: dict[tuple[Any, ...], LiveRecommender] = {}
        methods: dict[str, Recommender] = dict(extra or {})
        named: dict[str, dict[str, Any]] = {}
        for c in configs:
            s, w = _split(c, self.base)
            wkey = tuple(c[k] for k in WRITE_KEYS)
            live = stores.get(wkey)
            if live is None:
                live = stores[wkey] = LiveRecommender(s, w, self.model, publish_offset=offset)
                reader: Recommender = live
            else:
                reader = live.reader(s, w)
            name = _key(c)
            if name not in methods:
                methods[name], named[name] = reader, c
        t0 = time.perf_counter()
        from tqdm import tqdm

        with tqdm(total=len(self.events), unit="ev", desc=desc, disable=not self.options.progress,
                  mininterval=1.0, leave=False) as bar:
            res = run_prequential(self.events, methods, self.mask, progress=bar.update)
        self.took_s += time.perf_counter() - t0
        return res, named


def _one_setting_changes(best: dict[str, Any], space: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [{**best, k: v} for k, values in space.items() for v in values if v != best.get(k)]


def _best(res: PrequentialResult, named: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], float]:
    summary = res.summary()
    name = max(named, key=lambda m: (summary[m]["hr10"], summary[m]["ndcg10"]))
    return named[name], summary[name]["hr10"]


def _publish_model(settings: Settings, events: Sequence[EventView], tf: bool = False) -> Any:
    from driftrec.evaluate import PrequentialOptions, _publish
    from driftrec.models.baselines import Interactions
    from driftrec.models.decay import EventWeights

    warm = Interactions(EventWeights(settings.event_weights))
    warm.add(events)
    if len(warm.users) < 2 or len(warm.item_names) < 2:
        return None
    return _publish(settings, warm, PrequentialOptions(tf=tf))[1]


def tune(events: Sequence[EventView], base: Settings, options: TuneOptions,
         log: Callable[[str], Any] = logger.info) -> TuneResult:
    """Tune on ``events[:cut]``, check on ``events[cut:]`` (see the module's docstring)."""
    t_begin = time.perf_counter()
    if base.session_index_k == 0:  # the session_knn source is searched too: its index must exist
        base = base.model_copy(update={"session_index_k": SESSION_INDEX_K})
    spent = 0.0  # estimated seconds of the stages planned so far (see _Bench)
    rng = random.Random(options.seed)
    cut = int(len(events) * options.tune_fraction)
    part = events[:cut]
    start = len(part) // 2
    mask = scored_mask(part, start, window_s=options.window_s, max_windows=options.max_windows)
    model = _publish_model(base, part[:start]) if options.model else None
    bench = _Bench(base, part, start, mask, options, model)
    default = _defaults(base)
    stages: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    # the check replays the whole log with four methods: keep time for it
    check_cost = 2.5 * bench.per_store_s * len(events) / max(len(part), 1) + 4 * bench.per_reader_s
    log(f"tuning on {len(part)} events ({int(mask.sum())} scored), checking on {len(events) - cut}")

    def left() -> float:
        return options.budget_s - spent - check_cost

    best, best_hr = dict(default), -1.0
    # Stage 1: write-path settings, one at a time (each its own store).
    writes = [dict(default)] + _one_setting_changes(default, WRITE_SPACE)
    while len(writes) > 1 and bench.cost(len(writes), len(writes)) > left():
        writes.pop()
    t = time.perf_counter()
    spent += bench.cost(len(writes), len(writes))
    res, named = bench.run(writes, "tune: write path")
    stages["write"] = res.summary()
    best, best_hr = _best(res, named)
    seconds["write"] = time.perf_counter() - t
    log(f"write path: {len(writes)} tried, best HR@10 {best_hr:.4f} ({_key({k: best[k] for k in WRITE_KEYS})})")

    # Stage 2: reads and blend weights on that store: random combinations and one-setting changes.
    for stage in ("read", "refine"):
        configs = [dict(best)]
        if stage == "read":
            for _ in range(options.read_samples):
                configs.append({**best, **{k: rng.choice(v) for k, v in READ_SPACE.items()}})
        configs += _one_setting_changes(best, READ_SPACE)
        if stage == "refine":
            # drop what stage "read" already scored with the same store
            configs = [c for c in configs if _key(c) not in stages["read"]] or configs[:1]
            if len(configs) == 1:
                break
        affordable = int((left() - bench.cost(1, 0)) / max(bench.per_reader_s, 1e-9))
        if affordable < 2:
            log(f"budget: stage {stage} skipped")
            break
        configs = configs[:max(2, affordable)]
        spent += bench.cost(1, len(configs))
        t = time.perf_counter()
        res, named = bench.run(configs, f"tune: {stage}")
        stages[stage] = res.summary()
        cand, hr = _best(res, named)
        seconds[stage] = time.perf_counter() - t
        if hr > best_hr or stage == "read":
            best, best_hr = cand, hr
        log(f"{stage}: {len(configs)} tried, best HR@10 {best_hr:.4f}")

    # The check: the later part, never seen above.
    t = time.perf_counter()
    check_mask = scored_mask(events, cut, window_s=options.window_s, max_windows=options.max_windows)
    from driftrec.models.baselines import RawCooccurrenceRecommender
    from driftrec.models.sknn import SessionKNNRecommender

    store = {"window": base.cooc_window, "window_s": base.cooc_window_s, "history_len": base.history_len,
             "neighbours_k": base.neighbours_k, "trending_k": base.trending_k}
    baselines: dict[str, Recommender] = {
        "raw_cooccurrence": RawCooccurrenceRecommender.create(list(base.event_weights), **store),
        "vsknn": SessionKNNRecommender(sequential=True)}
    check_model = _publish_model(base, events[:cut]) if options.model else None
    checker = _Bench(base, events, cut, check_mask, options, check_model)
    res, named = checker.run([default, best], "check: later part", extra=baselines)
    seconds["check"] = time.perf_counter() - t
    names = {_key(default): "defaults", _key(best): "tuned"}
    summary = res.summary()
    check = {names.get(m, m): v for m, v in summary.items()}
    if "tuned" not in check:  # tuning kept the defaults
        check["tuned"] = check["defaults"]
    ranks = {names.get(m, m): r for m, r in res.ranks.items()}
    if "tuned" not in ranks:
        ranks["tuned"] = ranks["defaults"]
    renamed = PrequentialResult(methods=list(ranks), k=res.k, index=res.index, times=res.times, ranks=ranks)
    base_best = max(("raw_cooccurrence", "vsknn"), key=lambda m: check[m]["hr10"])
    intervals = {k: v for k, v in {
        "tuned_vs_defaults": ratio_interval(renamed, "tuned", "defaults", options.window_s, seed=options.seed),
        "tuned_vs_best_baseline": ratio_interval(renamed, "tuned", base_best, options.window_s, seed=options.seed),
        "defaults_vs_best_baseline": ratio_interval(renamed, "defaults", base_best, options.window_s,
                                                    seed=options.seed),
    }.items() if v is not None}
    lo = intervals.get("tuned_vs_defaults", [0.0, 0.0])[0]
    if best == default:
        ok, reason = False, "tuning kept the defaults"
    elif lo > 1.0:
        ok, reason = True, f"tuned / defaults {check['tuned']['hr10'] / max(check['defaults']['hr10'], 1e-12):.2f}, " \
                           f"95 % interval [{lo:.2f}, {intervals['tuned_vs_defaults'][1]:.2f}] above 1"
    else:
        ok, reason = False, ("tuned settings not better than the defaults beyond the 95 % interval "
                             f"(tuned / defaults interval {intervals.get('tuned_vs_defaults')})")
    seconds["total"] = time.perf_counter() - t_begin
    return TuneResult(defaults=default, tuned=best, check=check, intervals=intervals, recommended=ok,
                      reason=reason, best_baseline=base_best, stages=stages, seconds=seconds,
                      scored={"tuning": int(mask.sum()), "check": int(check_mask.sum())})


def load_events(source: str, settings: Settings, max_events: int | None = None) -> tuple[str, list[EventView]]:
    """The time-ordered clicks of ``source``: ``kafka`` or ``kafka:<topic>`` (every retained event of
    the topic, read without a consumer group), else whatever :func:`driftrec.evaluate.load_stream`
    reads (a file or folder, a shared data-set name, ``simulator``)."""
    if source == "kafka" or source.startswith("kafka:"):
        from driftrec.training.clicklog import read_topic

        topic = source.partition(":")[2] or settings.clicks_topic
        log = read_topic(settings, progress=True, topic=topic)
        by_weight = {w: t for t, w in settings.event_weights.items()}
        order = np.argsort(log.times, kind="stable")
        if max_events is not None:
            order = order[:max_events]
        events = [EventView(user=log.user_ids[int(log.users[i])], item=log.item_ids[int(log.items[i])],
                            type=by_weight.get(float(log.weights[i]), next(iter(settings.event_weights))),
                            t=float(log.times[i]), category=None, offset=n, partition=0)
                  for n, i in enumerate(order)]
        return f"topic {topic}", events
    from driftrec.evaluate import load_stream

    return load_stream(source, max_events)


def settings_file_content(result: TuneResult, base: Settings) -> dict[str, Any]:
    """The settings file ``driftrec worker`` / ``serve`` read (``DRIFTREC_SETTINGS_FILE``): the
    tuned values that differ from ``base``, blend weights as ``reader_blend_weights``."""
    s, _ = _split(result.tuned, base)
    out: dict[str, Any] = {}
    for k in result.tuned:
        if k.startswith("w."):
            continue
        if getattr(s, k) != getattr(base, k):
            out[k] = getattr(s, k)
    weights = {k[2:]: float(v) for k, v in result.tuned.items() if k.startswith("w.")}
    if weights != {k[2:]: float(v) for k, v in result.defaults.items() if k.startswith("w.")}:
        out["reader_blend_weights"] = weights
    if weights.get("session_knn", 0.0) > 0 and base.session_index_k == 0:
        out["session_index_k"] = SESSION_INDEX_K  # the worker keeps the index the source reads
    return out
