"""Fuzzed bad click events for the poison flood: every one must end in the dead-letter topic.

Deterministic for a seed. Families cover what a broken producer sends: random bytes, truncated
or invalid JSON, invalid UTF-8, JSON that is not an object, missing, unknown and ill-typed
fields, ids with forbidden characters, unknown event types, timestamps out of range, oversize
messages, deep nesting and messages with no value at all. :func:`bad_events` keeps only values
the worker's validator (or its event-weight check) rejects, so "bad" is never a guess.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from driftrec.errors import InvalidEventError
from driftrec.events import MAX_EVENT_BYTES, TOMBSTONE_TYPE, fast_validate

__all__ = ["BadEvent", "bad_events", "is_rejected", "FAMILIES"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BadEvent:
    family: str
    key: bytes | None
    value: bytes | None


_REQUIRED = ("event_id", "user_id", "item_id", "type", "timestamp")
_BAD_IDS: tuple[Any, ...] = ("has space", "{braces}", "new\nline", "x" * 129, "", "ümlaut", "tab\t",
                             "semi;colon", "quote\"", [1], {"a": 1}, True, 1.5, None)
_BAD_TS: tuple[Any, ...] = ("yesterday", "2024-01-01T00:00:00", -5, 5e12 * 1000, 4.2e9, True,
                            [1700000000], {"t": 1}, None, "2200-01-01T00:00:00Z")


def _good(r: random.Random, n: int) -> dict[str, Any]:
    return {"event_id": f"bad-{n}", "user_id": f"u{r.randrange(50)}", "item_id": f"i{r.randrange(50)}",
            "type": "view", "timestamp": 1_700_000_000 + r.randrange(10_000), "category": "c0"}


def _random_bytes(r: random.Random, n: int) -> bytes | None:
    return bytes(r.getrandbits(8) for _ in range(r.randrange(0, 200)))


def _truncated(r: random.Random, n: int) -> bytes | None:
    raw = orjson.dumps(_good(r, n))
    return raw[: r.randrange(0, len(raw) - 1)]


def _not_object(r: random.Random, n: int) -> bytes | None:
    return r.choice([b"[1, 2, 3]", b"42", b'"view"', b"null", b"true", b"[]", b"1e999", b'[{"user_id": "u1"}]'])


def _missing(r: random.Random, n: int) -> bytes | None:
    ev = _good(r, n)
    del ev[r.choice(_REQUIRED)]
    return orjson.dumps(ev)


def _unknown_field(r: random.Random, n: int) -> bytes | None:
    ev = _good(r, n)
    ev[r.choice(["userId", "price", "extra", "ts", "Type"])] = r.randrange(100)
    return orjson.dumps(ev)


def _bad_id(r: random.Random, n: int) -> bytes | None:
    ev = _good(r, n)
    ev[r.choice(["event_id", "user_id", "item_id", "session_id", "request_id"])] = r.choice(_BAD_IDS)
    if ev.get("item_id") == "":  # an empty item id is legal for tombstones only; still bad here
        ev["type"] = "view"
    return orjson.dumps(ev)


def _bad_type(r: random.Random, n: int) -> bytes | None:
    ev = _good(r, n)
    ev["type"] = r.choice(["wishlist", "VIEW", "", "add-to-cart", "x" * 40, 3, None, ["view"], "refund"])
    return orjson.dumps(ev)


def _bad_timestamp(r: random.Random, n: int) -> bytes | None:
    ev = _good(r, n)
    ev["timestamp"] = r.choice(_BAD_TS)
    return orjson.dumps(ev)


def _bad_category(r: random.Random, n: int) -> bytes | None:
    ev = _good(r, n)
    ev["category"] = r.choice(["", "c" * 65, 7, ["c"], "nul\x00byte"])
    return orjson.dumps(ev)


def _bad_properties(r: random.Random, n: int) -> bytes | None:
    ev = _good(r, n)
    ev["properties"] = r.choice([[1], "x", {f"k{j}": j for j in range(40)}, 5])
    return orjson.dumps(ev)


def _oversize(r: random.Random, n: int) -> bytes | None:
    ev = _good(r, n)
    ev["properties"] = {"pad": "y" * (MAX_EVENT_BYTES + r.randrange(1, 4096))}
    return orjson.dumps(ev)


def _invalid_utf8(r: random.Random, n: int) -> bytes | None:
    raw = orjson.dumps(_good(r, n))
    return raw.replace(b'"u', b'"\xff\xfe', 1)


def _non_finite(r: random.Random, n: int) -> bytes | None:
    raw = orjson.dumps(_good(r, n))
    ts = raw.index(b'"timestamp":') + len(b'"timestamp":')
    end = raw.index(b",", ts)
    return raw[:ts] + r.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400"]) + raw[end:]


def _deep(r: random.Random, n: int) -> bytes | None:
    depth = r.randrange(600, 3000)
    return b"[" * depth + b"]" * depth


def _no_value(r: random.Random, n: int) -> bytes | None:
    return None


def _bit_flip(r: random.Random, n: int) -> bytes | None:
    raw = bytearray(orjson.dumps(_good(r, n)))
    for _ in range(r.randrange(1, 4)):
        raw[r.randrange(len(raw))] ^= 1 << r.randrange(8)
    return bytes(raw)


FAMILIES: dict[str, Callable[[random.Random, int], bytes | None]] = {
    "random_bytes": _random_bytes, "truncated_json": _truncated, "not_an_object": _not_object,
    "missing_field": _missing, "unknown_field": _unknown_field, "bad_id": _bad_id,
    "bad_type": _bad_type, "bad_timestamp": _bad_timestamp, "bad_category": _bad_category,
    "bad_properties": _bad_properties, "oversize": _oversize, "invalid_utf8": _invalid_utf8,
    "non_finite_number": _non_finite, "deep_nesting": _deep, "no_value": _no_value,
    "bit_flip": _bit_flip,
}


def is_rejected(value: bytes | None, weights: dict[str, float]) -> bool:
    """True when the worker dead-letters ``value``: invalid, or a type with no weight."""
    try:
        e = fast_validate(value, frozenset(weights) | {TOMBSTONE_TYPE})
    except InvalidEventError:
        return True
    return e.type != TOMBSTONE_TYPE and e.type not in weights


def bad_events(n: int, seed: int, weights: dict[str, float]) -> Iterator[BadEvent]:
    """``n`` rejected events, cycling through :data:`FAMILIES`; keys are random user ids or None."""
    r = random.Random(seed)
    names = list(FAMILIES)
    made = 0
    tries = 0
    while made < n:
        family = names[tries % len(names)]
        tries += 1
        value = FAMILIES[family](r, tries)
        if not is_rejected(value, weights):
            continue  # a bit flip or random bytes that happen to be valid: not a bad event
        # Kafka needs a key or a value: a record with neither cannot be produced at all.
        key = None if r.random() < 0.2 and value is not None else f"u{r.randrange(50)}".encode()
        made += 1
        yield BadEvent(family, key, value)
