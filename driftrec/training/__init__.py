"""Batch training from the click log and publishing to the online path (``driftrec train``)."""

from driftrec.training.clicklog import (
    ClickLog,
    ClickLogBuilder,
    LogStats,
    events_to_log,
    read_file,
    read_topic,
)
from driftrec.training.gate import GateDecision, Holdout, decide, evaluate, make_holdout
from driftrec.training.matrix import Interactions, build_interactions
from driftrec.training.publish import Publisher, check_parts, pack_models, pack_version
from driftrec.training.runner import (
    DEFAULT_MODELS,
    TrainConfig,
    TrainReport,
    parse_params,
    train_once,
)
from driftrec.training.schedule import parse_interval, run_every

__all__ = [
    "ClickLog", "ClickLogBuilder", "LogStats", "events_to_log", "read_file", "read_topic",
    "GateDecision", "Holdout", "decide", "evaluate", "make_holdout",
    "Interactions", "build_interactions",
    "Publisher", "check_parts", "pack_models", "pack_version",
    "DEFAULT_MODELS", "TrainConfig", "TrainReport", "parse_params", "train_once",
    "parse_interval", "run_every",
]
