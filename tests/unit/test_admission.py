"""The reader's admission bound: slots taken and given back, refusal past the limit."""

from __future__ import annotations

import pytest

from driftrec.online.admission import Admission


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
