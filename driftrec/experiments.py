"""Online experiments: their definition, validated in one place, and where they live in Redis.

An experiment splits shoppers between two or more *variants* of the recommendation strategy
(blend weights, one source alone, list length, a pinned model version). It comes from the file
named by ``Settings.experiments_file`` (JSON or YAML: ``{"experiments": [...]}``) or from the
reader's ``PUT /v1/experiments/{name}`` (stored in ``P:{x}:experiments``), and every reader
process and the exporter read the same definitions. Example::

    {"name": "tf-heavier", "method": "ab",
     "variants": [{"name": "control", "share": 0.5},
                  {"name": "tf", "share": 0.5, "weights": {"tf": 1.0}}],
     "start": "2026-12-07T12:00:00Z", "stop": null}

``method="interleave"`` takes exactly two variants that differ only in weights or strategy:
each answer merges both rankings by team draft (``driftrec.models.experiments``) and each
click is credited to the variant that contributed the item.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from driftrec.errors import DriftrecError, NotFoundError
from driftrec.models.blend import SOURCES, BlendWeights

__all__ = [
    "Variant",
    "Experiment",
    "InvalidExperimentError",
    "ExperimentConflict",
    "UnknownExperiment",
    "parse_experiment",
    "check_no_overlap",
    "load_experiments_file",
    "decode_stored",
    "definitions_key",
    "counts_key",
    "shoppers_key",
    "clicked_key",
    "preferences_key",
    "experiment_keys",
    "STRATEGIES",
    "NAME_PATTERN",
    "MAX_N",
]

logger = logging.getLogger(__name__)

#: Names of experiments and variants: they appear in Redis keys, hash fields and metric labels.
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
#: A variant's strategy: the configured blend, or one source alone (as ``strategy=`` of the reader).
STRATEGIES = ("blend", *SOURCES)
MAX_N = 100


class InvalidExperimentError(DriftrecError):
    """An experiment definition that cannot run (shares, names, strategy, model version)."""

    http_status = 422


class ExperimentConflict(DriftrecError):
    """The experiment would clash with another one (its name is taken by the file, or it overlaps)."""

    http_status = 409


class UnknownExperiment(NotFoundError):
    """No experiment of that name."""


class Variant(BaseModel):
    """One arm of an experiment: how its shoppers' answers are ranked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="The variant's name (in answers, records and metrics).")
    share: float = Field(default=0.0, ge=0, le=1, description="Share of the experiment's shoppers (A/B).")
    strategy: Literal["blend", "item_item", "user_vector", "tf", "similar_users", "trending"] = Field(
        default="blend", description="The configured blend, or one source alone.")
    weights: dict[str, float] = Field(default_factory=dict, description="Blend weights over the strategy's.")
    n: int | None = Field(default=None, ge=1, le=MAX_N, description="Answer length, overriding the request's n.")
    model_version: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$",
        description="A published model version this variant ranks with instead of the live one.")

    @field_validator("weights")
    @classmethod
    def _known_sources(cls, v: dict[str, float]) -> dict[str, float]:
        BlendWeights().with_overrides(v)  # raises ValueError naming the source or the weight
        return v

    def blend_weights(self, base: BlendWeights) -> BlendWeights:
        """The weights this variant ranks with, over the reader's configured ``base``."""
        w = base
        if self.strategy != "blend":
            w = BlendWeights(**{s: (1.0 if s == self.strategy else 0.0) for s in SOURCES})
        return w.with_overrides(self.weights)

    @property
    def label(self) -> str:
        """What the served record's ``#strategy`` says for this variant."""
        return self.strategy


class Experiment(BaseModel):
    """A named split of shoppers between variants, running from ``start`` until ``stop``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="Unique name; also the assignment hash's salt.")
    method: Literal["ab", "interleave"] = Field(default="ab", description="Split shoppers, or interleave.")
    variants: tuple[Variant, ...] = Field(min_length=2, max_length=16, description="The arms, control first.")
    start: AwareDatetime | None = Field(default=None, description="When it starts (unset: at once).")
    stop: AwareDatetime | None = Field(default=None, description="When it stops (unset: never).")
    description: str = Field(default="", max_length=500, description="Free text for the operator.")

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variants: names must be unique")
        if self.start is not None and self.stop is not None and self.stop <= self.start:
            raise ValueError("stop must be after start")
        if self.method == "interleave":
            if len(self.variants) != 2:
                raise ValueError("interleave takes exactly two variants")
            a, b = self.variants
            if a.model_version != b.model_version or a.n != b.n:
                raise ValueError("interleaved variants must share model_version and n (they differ in "
                                 "strategy or weights: both rankings come from one read)")
        else:
            total = math.fsum(v.share for v in self.variants)
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"variants: shares must add up to 1, they add up to {total:g}")
            if any(v.share == 0 for v in self.variants):
                raise ValueError("variants: every share must be above 0")
        return self

    @property
    def shares(self) -> tuple[float, ...]:
        """Traffic share per variant (interleaving shows both variants to everyone: 1/2 each)."""
        if self.method == "interleave":
            return (0.5, 0.5)
        return tuple(v.share for v in self.variants)

    @property
    def start_ts(self) -> float:
        return self.start.timestamp() if self.start is not None else -math.inf

    @property
    def stop_ts(self) -> float:
        return self.stop.timestamp() if self.stop is not None else math.inf

    def running(self, now: float) -> bool:
        return self.start_ts <= now < self.stop_ts

    def overlaps(self, other: Experiment) -> bool:
        return self.start_ts < other.stop_ts and other.start_ts < self.stop_ts

    @property
    def model_versions(self) -> set[str]:
        return {v.model_version for v in self.variants if v.model_version is not None}

    def status(self, now: float) -> str:
        if now < self.start_ts:
            return "scheduled"
        return "running" if now < self.stop_ts else "stopped"

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def parse_experiment(data: Any, name: str | None = None) -> Experiment:
    """Validate one definition; ``name`` (from a URL) must match the body's when both are given.

    Raises :class:`InvalidExperimentError` with every problem named.
    """
    if not isinstance(data, dict):
        raise InvalidExperimentError("an experiment is a JSON object")
    if name is not None:
        if data.get("name", name) != name:
            raise InvalidExperimentError(f"name: the body names {data.get('name')!r}, the URL {name!r}")
        data = {**data, "name": name}
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        raise InvalidExperimentError(_explain(exc)) from None


def check_no_overlap(new: Experiment, others: Iterable[Experiment]) -> None:
    """One experiment at a time: a shopper is in at most one, so their results stay separate."""
    for other in others:
        if other.name != new.name and new.overlaps(other):
            raise ExperimentConflict(f"{new.name} overlaps {other.name} in time; stop one first "
                                     "(one experiment runs at a time)")


def load_experiments_file(path: Path) -> list[Experiment]:
    """Definitions from a JSON or YAML file (``{"experiments": [...]}`` or a list); bad ones raise."""
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidExperimentError(f"{path}: not readable: {exc}") from None
    items = raw.get("experiments", []) if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise InvalidExperimentError(f"{path}: expected a list of experiments")
    out: list[Experiment] = []
    for i, item in enumerate(items):
        try:
            exp = parse_experiment(item)
            check_no_overlap(exp, out)
        except DriftrecError as exc:
            raise InvalidExperimentError(f"{path}: experiment {i}: {exc}") from None
        if any(e.name == exp.name for e in out):
            raise InvalidExperimentError(f"{path}: experiment {exp.name} defined twice")
        out.append(exp)
    return out


def definitions_key(prefix: str) -> str:
    """HASH experiment name -> its definition (JSON): the admin endpoint writes, readers poll.

    Kept here rather than in :class:`driftrec.keys.Keys` so this feature's keys stay in one
    module; ``{x}`` is their Redis Cluster hash tag (docs/redis-keys.md, *Experiments*).
    """
    return f"{prefix}:{{x}}:experiments"


def counts_key(prefix: str, name: str) -> str:
    """HASH of one experiment's counters (``answers|<variant>``, ``clicked|<variant>|<type>``, ...):
    readers count answers, the exporter clicks; no TTL (deleted with the experiment)."""
    return f"{prefix}:{{x}}:exp:{name}"


def shoppers_key(prefix: str, name: str, variant: str) -> str:
    """SET of the shoppers who were served ``variant`` (readers ``SADD``): the unit of the split."""
    return f"{prefix}:{{x}}:exp:{name}:shoppers:{variant}"


def clicked_key(prefix: str, name: str, variant: str, kind: str) -> str:
    """SET of ``variant``'s shoppers with a click of type ``kind`` on its items (the exporter ``SADD``s)."""
    return f"{prefix}:{{x}}:exp:{name}:clicked:{variant}:{kind}"


def preferences_key(prefix: str, name: str) -> str:
    """HASH ``<shopper>|<variant>`` -> views credited to the variant in that shopper's interleaved answers."""
    return f"{prefix}:{{x}}:exp:{name}:prefs"


def experiment_keys(prefix: str, exp: Experiment, kinds: Iterable[str]) -> list[str]:
    """Every key one experiment's counts use (deleted with it, or when its variants change)."""
    names = [v.name for v in exp.variants]
    return [counts_key(prefix, exp.name), preferences_key(prefix, exp.name),
            *(shoppers_key(prefix, exp.name, v) for v in names),
            *(clicked_key(prefix, exp.name, v, k) for v in names for k in kinds)]


def decode_stored(rows: Mapping[Any, Any]) -> list[Experiment]:
    """Definitions from the ``P:{x}:experiments`` hash (name -> JSON); a bad one is skipped, logged."""
    out = []
    for name, raw in rows.items():
        try:
            out.append(Experiment.model_validate_json(raw))
        except ValidationError as exc:
            logger.error("stored experiment %r is not valid, ignored: %s", name, _explain(exc))
    return sorted(out, key=lambda e: (e.start_ts, e.name))
