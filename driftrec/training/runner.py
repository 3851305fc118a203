"""One training run: click log -> decayed matrix -> batch models -> gate -> published version."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftrec.errors import ModelError
from driftrec.keys import Keys
from driftrec.models.batch import MODELS, BatchModel, create_model
from driftrec.models.decay import DecayPolicy
from driftrec.settings import Settings
from driftrec.training.clicklog import ClickLog, LogStats, read_file, read_topic
from driftrec.training.gate import GateDecision, SourceScore, decide, evaluate, make_holdout
from driftrec.training.matrix import Interactions, build_interactions
from driftrec.training.publish import PUBLISHABLE, Publisher, check_parts, pack_models

__all__ = ["DEFAULT_MODELS", "PUBLISHABLE", "DEFAULT_PARAMS", "TrainConfig", "TrainReport",
           "parse_params", "train_once", "make_publisher"]

logger = logging.getLogger(__name__)

#: Trained by a plain ``driftrec train``: ALS supplies the item factors, TF the next-item source.
DEFAULT_MODELS: tuple[str, ...] = ("als", "tf")
#: Hyperparameters chosen on the validation split of benchmarks/offline_models.py (see
#: benchmarks/results/offline_models.json); ALS without BM25 because the online fold-in applies
#: none. Override with ``--param als.factors=64``.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "als": {"factors": 128, "regularization": 20.0, "alpha": 2.0, "iterations": 15},
    "svd": {"factors": 64},
    "itemknn": {"neighbours": 50, "shrink": 20.0},
    "userknn": {"neighbours": 100, "shrink": 0.0},
    "ease": {"lam": 100.0, "min_item_count": 3},
    "tf": {"hidden": [256], "epochs": 40, "learning_rate": 3e-3, "batch_size": 128, "input_dropout": 0.5},
    "pop": {},
}


@dataclass(frozen=True)
class TrainConfig:
    """What ``driftrec train`` was asked to do."""

    models: tuple[str, ...] = DEFAULT_MODELS
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seed: int = 0
    #: None: publish when ALS is among the models and the log is the topic (not --from-file).
    publish: bool | None = None
    gate: bool = True
    from_file: Path | None = None
    out_dir: Path | None = None
    progress: bool = False


@dataclass
class TrainReport:
    """What one run did (printed by the CLI, asserted by tests)."""

    log: LogStats
    data: str = ""
    shape: tuple[int, int] = (0, 0)
    nnz: int = 0
    fit_seconds: dict[str, float] = field(default_factory=dict)
    version: str | None = None
    live_before: str | None = None
    gate: GateDecision | None = None
    removed: list[str] = field(default_factory=list)
    total_seconds: float = 0.0


def parse_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["als.factors=64", "tf.hidden=[128]"]`` -> ``{"als": {"factors": 64}, "tf": {"hidden": [128]}}``.

    Values are JSON when they parse as JSON, else strings.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        model, dot, name = key.strip().partition(".")
        if not (sep and dot and model and name):
            raise ModelError(f"--param {item!r}: use MODEL.NAME=VALUE, e.g. als.factors=64")
        if model not in MODELS:
            raise ModelError(f"--param {item!r}: unknown model {model!r}; known: {sorted(MODELS)}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(model, {})[name] = value
    return out


def _recipe(config: TrainConfig) -> dict[str, dict[str, Any]]:
    unknown = [m for m in config.models if m not in MODELS]
    if unknown or not config.models:
        raise ModelError(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    recipe = {m: {**DEFAULT_PARAMS.get(m, {}), **dict(config.params.get(m, {}))} for m in dict.fromkeys(config.models)}
    for name, params in recipe.items():
        create_model(name, **params)  # bad hyperparameters fail now, not after reading the log
    return recipe


def make_publisher(settings: Settings) -> Publisher:
    import redis

    client = redis.Redis.from_url(settings.redis, socket_timeout=30, socket_connect_timeout=5)
    return Publisher(client, Keys(settings.key_prefix), grace_s=settings.model_grace_s,
                     default_reg=settings.fold_in_regularization,
                     pool_size=settings.reader_similar_users_pool)


def _fit(recipe: Mapping[str, Mapping[str, Any]], data: Interactions, seed: int, progress: bool,
         echo: Callable[[str], None], label: str) -> tuple[dict[str, BatchModel], dict[str, float]]:
    models: dict[str, BatchModel] = {}
    seconds: dict[str, float] = {}
    for name, params in recipe.items():
        if name == "tf":
            _deterministic_tensorflow()
        model = create_model(name, **params)
        started = time.perf_counter()
        model.fit(data.matrix, seed=seed, progress=progress)
        seconds[name] = time.perf_counter() - started
        models[name] = model
        echo(f"{label}{name}: trained in {seconds[name]:.2f}s on {data.shape[0]} users x "
             f"{data.shape[1]} items, {data.matrix.nnz} non-zeros ({json.dumps(params)})")
    return models, seconds


def _deterministic_tensorflow() -> None:
    # The TF model draws its randomness from numpy; op determinism fixes reduction order so a
    # seed gives the same weights run after run.
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def _pack(models: Mapping[str, BatchModel], data: Interactions, manifest: Mapping[str, Any]) -> dict[str, bytes]:
    return pack_models({m: models[m] for m in models if m in PUBLISHABLE}, data.item_ids,
                       user_ids=data.user_ids, manifest=manifest)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="seconds")


def _read(settings: Settings, config: TrainConfig) -> ClickLog:
    if config.from_file is not None:
        return read_file(config.from_file, settings, progress=config.progress)
    return read_topic(settings, progress=config.progress)


def train_once(settings: Settings, config: TrainConfig, *, echo: Callable[[str], None] = print,
               publisher: Publisher | None = None) -> TrainReport:
    """Read the log, train, gate and publish once (see :mod:`driftrec.training.gate`).

    Raises
    ------
    ModelError
        Empty log, unknown models or parameters, a version that does not decode, a concurrent
        publish. The live version is untouched whenever this raises.
    """
    started = time.perf_counter()
    recipe = _recipe(config)
    if config.publish is None:
        publish = "als" in recipe and config.from_file is None
    else:
        publish = config.publish
    if publish and "als" not in recipe:
        raise ModelError("publishing needs the als model (it supplies item_factors); add "
                         "--model als or pass --no-publish")
    log = _read(settings, config)
    echo(log.stats.summary())
    policy = DecayPolicy(settings.half_life_s)
    data = build_interactions(log, policy)
    report = TrainReport(log=log.stats, data=data.describe(), shape=data.shape, nnz=int(data.matrix.nnz))
    echo(f"data: {data.describe()}; decayed to {_iso(data.until)} (half-life {settings.half_life_s:.0f}s)")

    decision: GateDecision | None = None
    gate_info: dict[str, Any] = {}
    to_publish = {m: p for m, p in recipe.items() if m in PUBLISHABLE} if publish else {}
    if publish:
        publisher = publisher or make_publisher(settings)
        live = report.live_before = publisher.live_version()
        if config.gate:
            decision, gate_info = _gate(settings, config, log, policy, to_publish, publisher, live, echo)
            echo(f"gate: {'PASS' if decision.passed else 'KEEP LIVE'} - {decision.reason}")
    fit_now = {m: p for m, p in recipe.items()
               if not (decision is not None and not decision.passed and m in to_publish and config.out_dir is None)}
    models, report.fit_seconds = _fit(fit_now, data, config.seed, config.progress, echo, "")
    if config.out_dir is not None:
        _save(models, data, config.out_dir, echo)
    if publish and publisher is not None and (decision is None or decision.passed):
        manifest = {
            "trained_until": data.until, "events": data.events, "users": data.shape[0],
            "items": data.shape[1], "nnz": int(data.matrix.nnz), "seed": config.seed,
            "source": log.stats.source, "half_life_s": settings.half_life_s,
            "event_weights": dict(settings.event_weights),
            "models": {m: dict(p) for m, p in to_publish.items()},
            "fit_seconds": {m: round(report.fit_seconds[m], 3) for m in to_publish},
        }
        report.version = publisher.publish(_pack(models, data, manifest), report.live_before)
        echo(f"published model {report.version} (was {report.live_before})")
        report.removed = publisher.cleanup()
    if publish and publisher is not None:
        record = {"time": time.time(), "live_version": report.live_before,
                  "published_version": report.version, "models": sorted(to_publish),
                  "seed": config.seed, "events": data.events, **gate_info}
        if decision is not None:
            record.update(decision.record())
        else:
            record.update({"passed": True, "reason": "gate skipped (--no-gate)"})
        publisher.log_gate(record)
    report.gate = decision
    report.total_seconds = time.perf_counter() - started
    echo(f"done in {report.total_seconds:.1f}s")
    return report


def _gate(settings: Settings, config: TrainConfig, log: ClickLog, policy: DecayPolicy,
          recipe: Mapping[str, Mapping[str, Any]], publisher: Publisher, live: str | None,
          echo: Callable[[str], None]) -> tuple[GateDecision, dict[str, Any]]:
    """Compare the recipe, trained up to the holdout cut, with the live version on the holdout."""
    def verdict(cand: Mapping[str, SourceScore], live_scores: Mapping[str, SourceScore] | None,
                users: int, note: str | None = None) -> GateDecision:
        return decide(cand, live_scores, users=users, metric=settings.gate_metric, k=settings.gate_k,
                      margin=settings.gate_margin, min_users=settings.gate_min_users, live_note=note)

    if live is None:
        return verdict({}, None, 0), {}
    try:
        live_model = publisher.load(live)
    except ModelError as exc:
        # The reader keeps serving what it had; a good new version is the way out.
        return verdict({}, None, 0, f"live model {live!r} cannot be read ({exc})"), {}
    until = (publisher.manifest(live) or {}).get("trained_until")
    holdout = make_holdout(log, policy, fraction=settings.gate_holdout_fraction,
                           history_len=settings.history_len,
                           not_before=float(until) if isinstance(until, int | float) else None)
    info: dict[str, Any] = {"cut": holdout.cut, "holdout_events": holdout.events,
                            "holdout_users": len(holdout.users)}
    echo(f"gate holdout: {holdout.events} events after {_iso(holdout.cut) if holdout.cut > 0 else '-'}, "
         f"{len(holdout.users)} users with history")
    if len(holdout.users) < settings.gate_min_users:
        return verdict({}, {}, len(holdout.users)), info
    data = build_interactions(holdout.train, policy)
    models, seconds = _fit(recipe, data, config.seed, config.progress, echo, "gate candidate ")
    parts = _pack(models, data, {"gate_candidate": True})
    candidate = check_parts("gate-candidate", parts, default_reg=settings.fold_in_regularization,
                            pool_size=settings.reader_similar_users_pool)
    cand_scores = evaluate(candidate, holdout, settings.gate_k)
    live_scores = evaluate(live_model, holdout, settings.gate_k)
    info["candidate_fit_seconds"] = {m: round(s, 3) for m, s in seconds.items()}
    return verdict(cand_scores, live_scores, len(holdout.users)), info


def _save(models: Mapping[str, BatchModel], data: Interactions, out: Path, echo: Callable[[str], None]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        model.save(out / f"{name}.npz")
    (out / "index.json").write_text(json.dumps(
        {"user_ids": data.user_ids, "item_ids": data.item_ids, "until": data.until}))
    echo(f"saved {sorted(models)} to {out}/ (<model>.npz, index.json: row/column ids)")
