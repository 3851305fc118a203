"""Forward decay with a moving landmark equals plain exponential decay; event weights."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.errors import InvalidEventError
from driftrec.models.decay import (
    DEFAULT_MAX_EXPONENT,
    SCORE_SCALE,
    DecayPolicy,
    EventWeights,
    quantise,
)


def test_rate_is_ln2_over_half_life() -> None:
    p = DecayPolicy(3600.0)
    assert p.rate == pytest.approx(math.log(2) / 3600.0, rel=1e-15)


def test_value_halves_after_one_half_life() -> None:
    p = DecayPolicy(100.0)
    landmark = 1000.0
    stored = p.increment(3.0, 1050.0, landmark)
    assert stored == round(3.0 * SCORE_SCALE * 2**0.5)  # 4344.5...: a whole number of units
    # Fixed point: the stored value is off by at most half a unit of 1/SCORE_SCALE at L.
    tol = 0.5 / SCORE_SCALE / 3.0
    assert p.value_at(stored, landmark, 1050.0) == pytest.approx(3.0, rel=tol)
    assert p.value_at(stored, landmark, 1150.0) == pytest.approx(1.5, rel=tol)
    assert p.value_at(stored, landmark, 1250.0) == pytest.approx(0.75, rel=tol)


def test_increments_are_whole_units_rounded_half_up() -> None:
    p = DecayPolicy(100.0)
    assert p.increment(1.0, 0.0, 0.0) == SCORE_SCALE
    assert p.increment(1.0, 100.0, 0.0) == 2 * SCORE_SCALE
    # 1.0 at 1,000 half-lives before the landmark is worth less than half a unit: nothing.
    assert p.increment(1.0, -100_000.0, 0.0) == 0.0
    assert quantise(2.5) == 3.0 and quantise(2.4999) == 2.0 and quantise(0.5) == 1.0
    assert p.read_factor(0.0, 100.0) == pytest.approx(0.5 / SCORE_SCALE, rel=1e-15)


def test_decayed_weight_matches_hand_computation() -> None:
    p = DecayPolicy(10.0)
    assert p.decayed_weight(8.0, 0.0, 30.0) == pytest.approx(1.0, rel=1e-12)
    assert p.decayed_weight(2.0, 5.0, 5.0) == 2.0


def test_needs_rescale_and_next_landmark_follow_the_threshold() -> None:
    p = DecayPolicy(10.0, max_exponent=5.0)
    edge = 5.0 / p.rate  # the event time whose exponent is exactly the threshold
    assert not p.needs_rescale(edge * 0.999, 0.0)
    assert p.needs_rescale(edge * 1.001, 0.0)
    assert p.next_landmark(edge * 0.999, 0.0) == 0.0
    assert p.next_landmark(edge * 1.001, 0.0) == math.floor(edge * 1.001)  # a whole second


def test_default_threshold_moves_landmark_before_overflow() -> None:
    p = DecayPolicy(1.0)
    t = 1.0 + DEFAULT_MAX_EXPONENT / p.rate
    assert p.needs_rescale(t, 0.0)
    assert math.isfinite(p.factor(t, 0.0))  # still representable just past the threshold


def test_rescale_factor_composes() -> None:
    p = DecayPolicy(50.0)
    f = p.rescale_factor(0.0, 30.0) * p.rescale_factor(30.0, 80.0)
    assert f == pytest.approx(p.rescale_factor(0.0, 80.0), rel=1e-12)
    assert p.rescale_factor(10.0, 10.0) == 1.0


@pytest.mark.parametrize("half_life", [0.0, -1.0, math.inf, math.nan])
def test_rejects_bad_half_life(half_life: float) -> None:
    with pytest.raises(ValueError):
        DecayPolicy(half_life)


@settings(max_examples=200, deadline=None)
@given(
    half_life=st.floats(1.0, 1e6),
    events=st.lists(
        st.tuples(st.floats(0.1, 10.0), st.floats(0.0, 1e7)), min_size=1, max_size=40
    ),
    lag=st.floats(0.0, 1e6),
    max_exponent=st.floats(0.5, 50.0),
)
def test_forward_decay_equals_direct_decay_across_rescales(
    half_life: float, events: list[tuple[float, float]], lag: float, max_exponent: float
) -> None:
    """Σ stored, read at ``now``, equals Σ w·exp(−λ(now − t)), whatever landmark moves happen,
    to within the fixed point's half unit per increment and per rescale."""
    p = DecayPolicy(half_life, max_exponent=max_exponent)
    events = sorted(events, key=lambda e: e[1])
    landmark, stored, moves = events[0][1], 0.0, 0
    for w, t in events:
        new = p.next_landmark(t, landmark)
        if new != landmark:
            stored = quantise(stored * p.rescale_factor(landmark, new))  # what rescale.lua does
            landmark, moves = new, moves + 1
        assert p.rate * (t - landmark) <= max_exponent
        inc = p.increment(w, t, landmark)
        assert inc == int(inc)
        stored += inc
    now = events[-1][1] + lag
    direct = sum(p.decayed_weight(w, t, now) for w, t in events)
    # Each rounding is at most half a unit at the landmark it happened under; a later rescale
    # only shrinks it, so half a unit at the final landmark bounds every one of them.
    units = 0.5 * (len(events) + moves) * p.read_factor(landmark, now)
    assert abs(p.value_at(stored, landmark, now) - direct) <= units + 1e-9 * direct


def test_forward_decay_with_forced_rescales_matches_direct() -> None:
    # A deterministic case that certainly moves the landmark several times.
    p = DecayPolicy(1.0, max_exponent=2.0)
    events = [(1.0, 0.0), (2.0, 1.0), (1.0, 5.0), (3.0, 5.5), (1.0, 9.0)]
    landmark, stored, moves = 0.0, 0.0, 0
    for w, t in events:
        new = p.next_landmark(t, landmark)
        if new != landmark:
            stored = quantise(stored * p.rescale_factor(landmark, new))
            landmark, moves = new, moves + 1
        stored += p.increment(w, t, landmark)
    assert moves >= 2
    expected = 1 * 2**-10 + 2 * 2**-9 + 1 * 2**-5 + 3 * 2**-4.5 + 1 * 2**-1
    units = 0.5 * (len(events) + moves) * p.read_factor(landmark, 10.0)
    assert abs(p.value_at(stored, landmark, 10.0) - expected) <= units
    assert units < 3e-3 * expected  # and that bound is tight enough to mean something


def test_event_weights_lookup_and_rejection() -> None:
    w = EventWeights({"view": 1.0, "purchase": 5.0})
    assert w.weight("view") == 1.0
    assert w.weight("purchase") == 5.0
    with pytest.raises(InvalidEventError) as info:
        w.weight("refund")
    assert info.value.field == "type"
    assert "refund" in info.value.reason


def test_event_weights_are_a_copy() -> None:
    src = {"view": 1.0}
    w = EventWeights(src)
    src["view"] = 9.0
    assert w.weight("view") == 1.0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_event_weights_reject_non_positive(bad: float) -> None:
    with pytest.raises(ValueError):
        EventWeights({"view": bad})
