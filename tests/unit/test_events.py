"""The click-event schema: good events pass, bad ones fail with a reason naming the field."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftrec.errors import InvalidEventError
from driftrec.events import MAX_EVENT_BYTES, encode_event, parse_event, validate_event

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "view", "timestamp": 1_700_000_000}


def _bad(**change: object) -> dict:
    ev = dict(GOOD)
    for k, v in change.items():
        if v is ...:
            ev.pop(k)
        else:
            ev[k] = v
    return ev


def test_good_event_round_trips() -> None:
    ev = validate_event({**GOOD, "category": "shoes", "session_id": "s1", "request_id": "r1",
                         "properties": {"price": 3}})
    assert parse_event(encode_event(ev)) == ev
    assert ev.timestamp == 1_700_000_000.0


@pytest.mark.parametrize("ts,expected", [
    (1_700_000_000_123, 1_700_000_000.123), ("2023-11-14T22:13:20Z", 1_700_000_000.0),
    ("2023-11-14T23:13:20+01:00", 1_700_000_000.0), (1_700_000_000.5, 1_700_000_000.5),
])
def test_timestamp_forms(ts: object, expected: float) -> None:
    assert validate_event(_bad(timestamp=ts)).timestamp == pytest.approx(expected)


@pytest.mark.parametrize("change,field", [
    ({"user_id": ...}, "user_id"), ({"item_id": ...}, "item_id"), ({"timestamp": ...}, "timestamp"),
    ({"user_id": 1.5}, "user_id"), ({"user_id": "x" * 200}, "user_id"), ({"item_id": "a b"}, "item_id"),
    ({"user_id": "{u:evil}"}, "user_id"), ({"type": "click"}, "type"), ({"type": 3}, "type"),
    ({"timestamp": "yesterday"}, "timestamp"), ({"timestamp": "2023-11-14T22:13:20"}, "timestamp"),
    ({"timestamp": -5}, "timestamp"), ({"timestamp": float("nan")}, "timestamp"),
    ({"timestamp": True}, "timestamp"), ({"category": "c" * 65}, "category"),
    ({"properties": [1]}, "properties"), ({"surprise": 1}, "surprise"), ({"item_id": ""}, "item_id"),
])
def test_bad_fields_are_named(change: dict, field: str) -> None:
    with pytest.raises(InvalidEventError) as err:
        validate_event(_bad(**change))
    assert err.value.field == field
    assert err.value.reason.startswith(field)


def test_bad_json_and_oversize() -> None:
    with pytest.raises(InvalidEventError, match="not valid JSON"):
        parse_event(b"{not json")
    with pytest.raises(InvalidEventError, match="must be a JSON object"):
        parse_event(b"[1, 2]")
    big = orjson.dumps({**GOOD, "properties": {"x": "y" * MAX_EVENT_BYTES}})
    with pytest.raises(InvalidEventError, match="limit"):
        parse_event(big)


def test_unknown_type_uses_configured_types() -> None:
    assert validate_event(_bad(type="wishlist"), ("view", "wishlist")).type == "wishlist"
    with pytest.raises(InvalidEventError, match="unknown event type"):
        validate_event(_bad(type="wishlist"))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    try:
        parse_event(raw)
    except InvalidEventError as exc:
        assert exc.reason
