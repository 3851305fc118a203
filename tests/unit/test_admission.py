"""The reader's admission bound: slots taken and given back, refusal past the limit."""

from __future__ import annotations

import pytest

from driftrec.online.admission import LAG_WINDOW, Admission


def test_slots_are_bounded_and_given_back() -> None:
    gate = Admission(2, 0.1)
    assert gate.enter() and gate.enter()
    assert not gate.enter()  # full: refused, and no slot taken
    assert gate.in_flight == 2
    gate.leave()
    assert gate.enter() and gate.in_flight == 2 and gate.peak == 2
    gate.leave()
    gate.leave()
    assert gate.in_flight == 0


@pytest.mark.parametrize("limit, deadline", [(0, 0.1), (1, 0.0), (1, -1.0)])
def test_rejects_a_bound_it_cannot_keep(limit: int, deadline: float) -> None:
    with pytest.raises(ValueError):
        Admission(limit, deadline)


def test_a_standing_lag_sheds_new_rankings_until_the_loop_catches_up() -> None:
    gate = Admission(16, 0.1, lag_limit_s=0.015)
    gate.note_lag(0.005)
    assert gate.admit() is None
    gate.note_lag(0.200)  # one late wake-up (a GC pause): no queue, nothing shed
    assert gate.admit() is None and gate.in_flight == 2
    for _ in range(LAG_WINDOW):  # 40 ms of work queued ahead of every new request, 50 ms long
        gate.note_lag(0.040)
    assert gate.lag_s == 0.040
    assert gate.admit() == "loop_lag" and gate.in_flight == 2  # refused: no slot taken
    gate.note_lag(0.002)  # caught up
    assert gate.admit() is None and gate.in_flight == 3


def test_the_in_flight_bound_is_reported_first_and_lag_off_never_sheds() -> None:
    full = Admission(1, 0.1, lag_limit_s=0.015)
    assert full.enter()
    for _ in range(LAG_WINDOW):
        full.note_lag(1.0)
    assert full.admit() == "in_flight"
    off = Admission(4, 0.1)
    for _ in range(LAG_WINDOW):
        off.note_lag(5.0)
    assert off.admit() is None


def test_watch_lag_measures_how_late_the_loop_wakes() -> None:
    import asyncio
    import time

    async def run() -> tuple[float, float]:
        gate = Admission(4, 0.1, lag_limit_s=0.015)
        task = asyncio.get_running_loop().create_task(gate.watch_lag(0.005))
        await asyncio.sleep(0.05)
        quiet = gate._lags[-1]
        time.sleep(0.08)  # the loop is blocked: the watcher's timer fires ~80 ms late
        await asyncio.sleep(0.001)
        busy = gate._lags[-1]
        task.cancel()
        return quiet, busy

    quiet, busy = asyncio.run(run())
    assert busy > 0.05 and busy > quiet + 0.03


@pytest.mark.parametrize("lag", [-0.001])
def test_rejects_a_negative_lag_limit(lag: float) -> None:
    with pytest.raises(ValueError):
        Admission(1, 0.1, lag_limit_s=lag)
