"""Forward exponential decay with a moving landmark, and the weight of each event type."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from driftrec.errors import InvalidEventError

__all__ = ["DecayPolicy", "EventWeights", "DEFAULT_MAX_EXPONENT"]

logger = logging.getLogger(__name__)

#: Largest forward exponent λ(t − L) allowed before the landmark must move. exp(400) ≈ 5e173
#: leaves ~1e134 of head-room below the float64 maximum for sums of many stored scores.
DEFAULT_MAX_EXPONENT = 400.0


@dataclass(frozen=True, slots=True)
class DecayPolicy:
    """Exponential decay in event time, stored in forward form (Cormode et al., 2009).

    A weight ``w`` observed at event time ``t`` is stored as ``w * exp(λ (t − L))`` where
    ``λ = ln 2 / half_life_s`` and ``L`` is a global landmark (an event time). Stored scores
    never need touching as time passes: reading at time ``now`` multiplies by
    ``exp(−λ (now − L))``, which gives exactly ``Σ w exp(−λ (now − t))``. Because sums of
    stored scores are sums of plain numbers, increments from any number of workers commute.

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
        """Forward factor ``exp(λ (t − L))`` that turns a weight at ``t`` into a stored score."""
        return math.exp(self.rate * (t - landmark))

    def value_at(self, stored: float, landmark: float, now: float) -> float:
        """Read a stored score at time ``now``: ``stored * exp(−λ (now − L))``."""
        return stored * math.exp(-self.rate * (now - landmark))

    def needs_rescale(self, t: float, landmark: float) -> bool:
        """True when an event at ``t`` would push the forward exponent past the threshold."""
        return self.rate * (t - landmark) > self.max_exponent

    def next_landmark(self, t: float, landmark: float) -> float:
        """The landmark to use for events up to ``t``: ``landmark`` or, if it must move, ``t``.

        Moving all the way to ``t`` makes the newest event's factor 1, which leaves the whole
        exponent budget for the events still to come.
        """
        return t if self.needs_rescale(t, landmark) else landmark

    def rescale_factor(self, old_landmark: float, new_landmark: float) -> float:
        """Multiplier ``exp(−λ (L' − L))`` applied to every stored score when L moves to L'."""
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
