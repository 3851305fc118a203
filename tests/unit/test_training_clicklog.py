"""The trainer's click log: worker-identical validation, tombstones, order-independent ids."""

from __future__ import annotations

import orjson
import pytest

from driftrec.settings import Settings
from driftrec.training.clicklog import ClickLogBuilder, events_to_log

S = Settings()


def ev(n: int, user: str, item: str, kind: str = "view", t: float = 1_700_000_000.0) -> dict:
    return {"event_id": f"e{n}", "user_id": user, "item_id": item, "type": kind, "timestamp": t + n}


def test_valid_events_become_columns_with_the_type_weights() -> None:
    log = events_to_log([ev(0, "u1", "a"), ev(1, "u1", "b", "purchase"), ev(2, "u2", "a", "add_to_cart")], S)
    assert log.user_ids == ["u1", "u2"] and log.item_ids == ["a", "b"]
    assert log.users.tolist() == [0, 0, 1] and log.items.tolist() == [0, 1, 0]
    w = S.event_weights
    assert log.weights.tolist() == [w["view"], w["purchase"], w["add_to_cart"]]
    assert log.times.tolist() == [1_700_000_000.0, 1_700_000_001.0, 1_700_000_002.0]
    assert log.last_event_time == 1_700_000_002.0
    assert log.stats.accepted == 3 and log.stats.skipped == 0


def test_bad_messages_are_skipped_and_counted_by_field() -> None:
    b = ClickLogBuilder(S.event_weights, source="t")
    b.add_raw(orjson.dumps(ev(0, "u1", "a")), 0, 0)
    b.add_raw(b"{not json", 0, 1)
    b.add_raw(None, 0, 2)
    b.add_raw(orjson.dumps(ev(3, "u1", "a", kind="wishlist")), 0, 3)  # type without a weight
    b.add_raw(orjson.dumps({**ev(4, "u1", "a"), "user_id": "has space"}), 0, 4)
    b.add_raw(orjson.dumps({**ev(5, "u1", "a"), "extra": 1}), 0, 5)
    b.add_raw(b"x" * 20000, 0, 6)
    log = b.finish()
    assert len(log) == 1
    assert log.stats.messages == 7 and log.stats.accepted == 1
    assert dict(log.stats.bad) == {"message": 3, "type": 1, "user_id": 1, "extra": 1}
    assert "6 skipped" in log.stats.summary()


def test_forget_user_drops_only_that_users_earlier_events() -> None:
    b = ClickLogBuilder(S.event_weights, source="t")
    b.add_dict(ev(0, "u1", "a"), 0, 0)
    b.add_dict(ev(1, "u2", "a"), 1, 0)
    b.add_dict(ev(2, "u1", "b"), 0, 1)
    b.add_dict({**ev(3, "u1", ""), "type": "forget_user"}, 0, 2)
    b.add_dict(ev(4, "u1", "c"), 0, 3)
    b.add_dict(ev(5, "u2", "b"), 1, 1)
    log = b.finish()
    pairs = sorted((log.user_ids[u], log.item_ids[i]) for u, i in zip(log.users, log.items, strict=True))
    assert pairs == [("u1", "c"), ("u2", "a"), ("u2", "b")]
    assert log.stats.tombstones == 1 and log.stats.forgotten == 2
    assert "a" in log.item_ids and "b" in log.item_ids  # still used by u2


def test_the_log_does_not_depend_on_how_partitions_were_interleaved() -> None:
    p0 = [(0, k, ev(k, f"u{k % 3}", f"i{k % 5}", t=1e9)) for k in range(0, 20, 2)]
    p1 = [(1, k, ev(k, f"v{k % 4}", f"i{k % 7}", t=1e9)) for k in range(1, 20, 2)]

    def build(order: list) -> object:
        b = ClickLogBuilder(S.event_weights, source="t")
        for part, off, e in order:
            b.add_dict(e, part, off)
        return b.finish()

    a = build(p0 + p1)
    z = build([x for pair in zip(p1, p0, strict=True) for x in pair])
    assert a.user_ids == z.user_ids and a.item_ids == z.item_ids
    for col in ("users", "items", "weights", "times"):
        assert getattr(a, col).tolist() == getattr(z, col).tolist(), col
    assert a.user_ids == sorted(a.user_ids) and a.item_ids == sorted(a.item_ids)


def test_empty_log_has_no_last_event_time() -> None:
    from driftrec.errors import ModelError

    log = events_to_log([], S)
    assert len(log) == 0 and log.user_ids == [] and log.item_ids == []
    with pytest.raises(ModelError, match="no accepted events"):
        _ = log.last_event_time
