"""The training matrix holds the stream's decayed weights: checked by hand and against InMemoryState."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from driftrec.errors import ModelError
from driftrec.models.decay import DecayPolicy
from driftrec.models.online import EventView, InMemoryState
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.training.clicklog import events_to_log
from driftrec.training.matrix import MIN_WEIGHT, build_interactions

S = Settings()
POLICY = DecayPolicy(S.half_life_s)


def ev(n: int, user: str, item: str, kind: str, t: float) -> dict:
    return {"event_id": f"e{n}", "user_id": user, "item_id": item, "type": kind, "timestamp": t}


def test_cells_are_decayed_sums_of_event_weights() -> None:
    h = S.half_life_s
    t0 = 1_700_000_000.0
    log = events_to_log([
        ev(0, "u1", "a", "view", t0), ev(1, "u1", "a", "purchase", t0 + h),
        ev(2, "u2", "b", "add_to_cart", t0 + 2 * h), ev(3, "u1", "b", "view", t0 + 2 * h),
    ], S)
    data = build_interactions(log, POLICY)
    w = S.event_weights
    assert data.user_ids == ["u1", "u2"] and data.item_ids == ["a", "b"]
    assert data.until == t0 + 2 * h and data.events == 4
    m = data.matrix.toarray()
    assert m[0, 0] == pytest.approx(w["view"] / 4 + w["purchase"] / 2, rel=1e-6)
    assert m[0, 1] == pytest.approx(w["view"], rel=1e-6)
    assert m[1, 1] == pytest.approx(w["add_to_cart"], rel=1e-6)
    assert m[1, 0] == 0.0 and data.matrix.dtype == np.float32
    # read at a later time every weight halves per half-life
    later = build_interactions(log, POLICY, until=t0 + 3 * h).matrix.toarray()
    np.testing.assert_allclose(later, m / 2, rtol=1e-6)


def test_matrix_equals_the_streams_user_weights() -> None:
    """The worker's reference state (models.online.InMemoryState), fed the same events in batches."""
    sim = ShopSimulator(n_users=40, n_items=120, n_categories=4, seed=5, start_time=1.7e9)
    events = list(itertools.islice(sim.events(3000), 3000))
    state = InMemoryState.from_settings(S, history_len=10_000)  # no cap: the matrix has none
    views = [EventView(e["user_id"], e["item_id"], e["type"], float(e["timestamp"]), e.get("category"), n, 0)
             for n, e in enumerate(events)]
    for start in range(0, len(views), 250):
        state.process(views[start:start + 250])
    data = build_interactions(events_to_log(events, S), POLICY)
    assert data.until == state.last_event_time
    m = data.matrix.tocsr()
    checked = 0
    for r, user in enumerate(data.user_ids):
        row = {data.item_ids[j]: float(v) for j, v in zip(m.indices[m.indptr[r]:m.indptr[r + 1]],
                                                          m.data[m.indptr[r]:m.indptr[r + 1]], strict=True)}
        ref = {i: v for i, v in state.user_weights(user).items() if v >= MIN_WEIGHT}
        assert row.keys() == ref.keys(), user
        for item, v in ref.items():
            assert row[item] == pytest.approx(v, rel=1e-5), (user, item)
            checked += 1
    assert checked > 500


def test_dust_is_dropped_and_empty_rows_and_columns_go() -> None:
    h = S.half_life_s
    log = events_to_log([ev(0, "old", "x", "view", 1e9), ev(1, "new", "y", "view", 1e9 + 30 * h)], S)
    data = build_interactions(log, POLICY)
    assert data.user_ids == ["new"] and data.item_ids == ["y"] and data.matrix.nnz == 1
    assert 2.0 ** -30 < MIN_WEIGHT  # the old view really is below the floor


def test_empty_or_fully_decayed_logs_are_model_errors() -> None:
    with pytest.raises(ModelError, match="no accepted events"):
        build_interactions(events_to_log([], S), POLICY)
    log = events_to_log([ev(0, "u", "x", "view", 1e9)], S)
    with pytest.raises(ModelError, match="decayed below"):
        build_interactions(log, POLICY, until=1e9 + 40 * S.half_life_s)
    with pytest.raises(ModelError, match="after the decay time"):
        build_interactions(log, POLICY, until=1e9 - 1)


def test_describe_reports_the_data_size() -> None:
    log = events_to_log([ev(n, f"u{n % 3}", f"i{n % 4}", "view", 1e9 + n) for n in range(12)], S)
    text = build_interactions(log, POLICY).describe()
    assert text.startswith("12 events -> 3 users x 4 items, 12 non-zeros")
    assert math.isfinite(float(text.split("density ")[1].split(",")[0]))
