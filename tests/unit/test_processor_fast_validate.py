"""The worker's fast event check decides exactly as the pydantic model does, with the same reasons."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from driftrec.errors import InvalidEventError
from driftrec.events import (
    MAX_EVENT_BYTES,
    TOMBSTONE_TYPE,
    ClickEvent,
    EventFields,
    check_fields,
    fast_validate,
    parse_event,
    validate_event,
)

FIELDS = list(ClickEvent.model_fields)
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "view",
        "timestamp": 1_700_000_000.5, "category": "shoes", "session_id": "s1"}
ALLOWED = ("view", "add_to_cart", "purchase")

ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9._:@/+\-]{1,12}", fullmatch=True),
    st.sampled_from(["", "a b", "x" * 129, "x" * 128, "{u:1}", "u1\n", "é", "\x00"]),
    st.integers(-5, 10**6), st.booleans(), st.none(), st.floats(allow_nan=True),
)
timestamps = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 5 * 10**12),
    st.sampled_from([1_700_000_000, 1_700_000_000_123, "2023-11-14T22:13:20Z",
                     "2023-11-14T22:13:20", "yesterday", "0001-01-01T00:00:00+00:00", True]),
    st.none(), st.lists(st.integers(), max_size=2),
)
types = st.one_of(st.sampled_from([*ALLOWED, TOMBSTONE_TYPE, "click", "View", "view\n", ""]),
                  st.text(max_size=4), st.integers())
categories = st.one_of(st.none(), st.text(max_size=3), st.sampled_from(["c" * 64, "c" * 65, "a\x00"]),
                       st.integers())
props = st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=34),
                  st.lists(st.integers(), max_size=2), st.text(max_size=3))
VALUES = {"event_id": ids, "user_id": ids, "item_id": ids, "session_id": ids, "request_id": ids,
          "type": types, "timestamp": timestamps, "category": categories, "properties": props}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    ev: dict[str, Any] = {}
    for name in FIELDS:
        mode = draw(st.sampled_from(["good", "good", "good", "drawn", "missing"]))
        if mode == "good" and name in GOOD:
            ev[name] = GOOD[name]
        elif mode == "drawn" or (mode == "good" and name not in GOOD):
            ev[name] = draw(VALUES[name])
    if draw(st.booleans()):
        ev[draw(st.sampled_from(["extra", "Type", "userId"]))] = 1
    keys = draw(st.permutations(list(ev)))  # pydantic reports extras in input order
    return {k: ev[k] for k in keys}


def _pydantic(data: Any) -> tuple[str, Any]:
    try:
        return "ok", tuple(validate_event(data, ALLOWED).model_dump().values())
    except InvalidEventError as exc:
        return "err", (exc.reason, exc.field)


def _fast(data: Any) -> tuple[str, Any]:
    try:
        return "ok", tuple(check_fields(data, ALLOWED))
    except InvalidEventError as exc:
        return "err", (exc.reason, exc.field)


@settings(max_examples=600, deadline=None)
@given(events())
@example(GOOD)
@example({**GOOD, "timestamp": 1_700_000_000_123})
@example({**GOOD, "user_id": 42})
@example({**GOOD, "type": TOMBSTONE_TYPE, "item_id": ""})
@example({**GOOD, "item_id": ""})
@example({**GOOD, "user_id": "u1\n"})
def test_same_decision_and_reason_as_pydantic(data: dict[str, Any]) -> None:
    assert _fast(data) == _pydantic(data)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), events().map(lambda d: json.dumps(d).encode())))
@example(b"{not json")
@example(b"[1, 2]")
@example(orjson.dumps({**GOOD, "properties": {"x": "y" * MAX_EVENT_BYTES}}))
def test_raw_bytes_same_as_parse_event(raw: bytes) -> None:
    def run(f: Any) -> tuple[str, Any]:
        try:
            return "ok", tuple(f(raw, ALLOWED))
        except InvalidEventError as exc:
            return "err", exc.reason

    expected = run(lambda r, a: tuple(parse_event(r, a).model_dump().values()))
    assert run(fast_validate) == expected


def test_fast_path_returns_the_model_fields() -> None:
    fields = fast_validate(orjson.dumps(GOOD))
    assert isinstance(fields, EventFields)
    assert fields._asdict() == validate_event(GOOD).model_dump()
    assert fast_validate(orjson.dumps({**GOOD, "timestamp": "2023-11-14T22:13:20Z"})).timestamp == 1_700_000_000.0
