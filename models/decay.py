"""Forward exponential decay with a moving landmark, and the weight of each event type."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from driftrec.errors import InvalidEventError

__all__ = ["DecayPolicy", "EventWeights", "DEFAULT_MAX_EXPONENT", "SCORE_SCALE", "quantise", "read_factor"]

logger = logging.getLogger(__name__)

#: Stored units per unit of weight at the landmark: decayed scores are stored as whole numbers of
#: 1/65536 of a weight (fixed point; ~1.5e-5 of a view, a resolution of ~9 s of event time at
#: the default 7-day half-life). Redis 7.0 keeps an integral score below 2**52 as an integer
#: inside a listpack-encoded sorted set and compares it without parsing text; a fractional score
#: is ``%.17g`` text that every insert re-parses (measured: ``ZADD`` into 50-member neighbour rows
#: 51 → 15 µs per event, ``benchmarks/results/processor_ab_fixed_point.json``). Whole numbers
#: below 2**53 also add exactly, so increments commute bit for bit in any order.
SCORE_SCALE = 65536.0
#: Largest forward exponent λ(t − L) allowed before the landmark must move: e**10 ≈ 22,000, so a
#: decayed score stays a whole number below 2**52 (Redis' integer range for scores) up to ~3e6
#: of decayed weight (a pair co-clicked 3.5 times a second for ever, at a 7-day half-life; above
#: that the score is stored as text again: correct, only slower), and the landmark moves every
#: 10 / ln 2 ≈ 14.4 half-lives (~100 days with the default 7-day half-life).
DEFAULT_MAX_EXPONENT = 10.0


def quantise(x: float) -> float:
    """Round a stored score to the nearest whole unit (halves up), the same in Python and Lua."""
    return float(math.floor(x + 0.5))


def read_factor(rate: float, landmark: float, now: float) -> float:
    """``exp(−λ (now − L)) / S``: multiplies a stored score into its value at ``now``."""
    return math.exp(-rate * (now - landmark)) / SCORE_SCALE


@dataclass(frozen=True, slots=True)
class DecayPolicy:
    """Exponential decay in event time, stored in forward form (Cormode et al., 2009).

    A weight ``w`` observed at event time ``t`` is stored as ``S w exp(λ (t − L))`` rounded to a
    whole number (:meth:`increment`), where ``λ = ln 2 / half_life_s``, ``L`` is a global
    landmark (an event time) and ``S`` = :data:`SCORE_SCALE`. Stored scores never need touching
    as time passes: reading at time ``now`` multiplies by ``exp(−λ (now − L)) / S``
    (:meth:`read_factor`), which gives ``Σ w exp(−λ (now − t))`` to within half a unit per
    event. Because stored scores are whole numbers, increments from any number of workers add
    exactly and commute.

    When ``λ (t − L)`` would exceed ``max_exponent`` the landmark must move forward to ``L'``;
    every stored score is then multiplied by ``exp(−λ (L' − L))`` (:meth:`rescale_factor`).

    Parameters
    ----------
    half_life_s : float
        Half-life of every decayed signal, in seconds of event time.
    max_exponent : float
        Threshold on ``λ (t − L)`` above which :meth:`needs_rescale` is true.
    """

    half_life_s: float
    max_exponent: float = DEFAULT_MAX_EXPONENT
    rate: float = field(init=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.half_life_s) and self.half_life_s > 0):
            raise ValueError(f"half_life_s must be positive and finite, got {self.half_life_s!r}")
        if not (0 < self.max_exponent <= 700):  # exp(709.8) overflows float64
            raise ValueError(f"max_exponent must be in (0, 700], got {self.max_exponent!r}")
        object.__setattr__(self, "rate", math.log(2.0) / self.half_life_s)

    def factor(self, t: float, landmark: float) -> float:
        """Forward factor ``exp(λ (t − L))`` of an event at ``t`` (before scale and rounding)."""
        return math.exp(self.rate * (t - landmark))

    def increment(self, w: float, t: float, landmark: float) -> float:
        """The stored increment of a weight ``w`` at ``t``: ``round(S w exp(λ (t − L)))``.

        0.0 for an event so far before the landmark that it is worth less than half a unit.
        """
        return quantise(SCORE_SCALE * w * math.exp(self.rate * (t - landmark)))

    def read_factor(self, landmark: float, now: float) -> float:
        """``exp(−λ (now − L)) / S``: multiplies a stored score into its value at ``now``."""
        return read_factor(self.rate, landmark, now)

    def value_at(self, stored: float, landmark: float, now: float) -> float:
        """Read a stored score at time ``now``: ``stored * exp(−λ (now − L)) / S``."""
        return stored * self.read_factor(landmark, now)

    def needs_rescale(self, t: float, landmark: float) -> bool:
        """True when an event at ``t`` would push the forward exponent past the threshold."""
        return self.rate * (t - landmark) > self.max_exponent

    def next_landmark(self, t: float, landmark: float) -> float:
        """The landmark to use for events up to ``t``: ``landmark`` or, if it must move, ``t``
        rounded down to a whole second (what the worker stores).

        Moving all the way to ``t`` makes the newest event's factor ~1, which leaves the whole
        exponent budget for the events still to come.
        """
        if not self.needs_rescale(t, landmark):
            return landmark
        whole = float(math.floor(t))
        return t if self.needs_rescale(t, whole) else whole  # a half-life under a second

    def rescale_factor(self, old_landmark: float, new_landmark: float) -> float:
        """Multiplier ``exp(−λ (L' − L))`` applied to every stored score when L moves to L'
        (a sorted-set score is then rounded again with :func:`quantise`)."""
        return math.exp(-self.rate * (new_landmark - old_landmark))

    def decayed_weight(self, w: float, t: float, now: float) -> float:
        """Direct (backward) decay ``w * exp(−λ (now − t))``: the reference forward decay matches."""
        return w * math.exp(-self.rate * (now - t))


@dataclass(frozen=True, slots=True)
class EventWeights:
    """Weight per event type (view < add_to_cart < purchase); unknown types are rejected.

    Parameters
    ----------
    weights : Mapping[str, float]
        Event type to positive, finite weight (``Settings.event_weights``).
    """

    weights: Mapping[str, float]

    def __post_init__(self) -> None:
        for name, w in self.weights.items():
            if not (math.isfinite(w) and w > 0):
                raise ValueError(f"event weight for {name!r} must be positive and finite")
        # A read-only copy: the caller's dict can change without changing this policy.
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))

    def weight(self, type: str) -> float:  # noqa: A002 - mirrors ClickEvent.type
        """Weight of one event type.

        Raises
        ------
        InvalidEventError
            When ``type`` has no weight.
        """
        try:
            return self.weights[type]
        except KeyError:
            known = ", ".join(sorted(self.weights))
            raise InvalidEventError(
                f"type: unknown event type {type!r} (known: {known})", field="type"
            ) from None
