"""The click-event schema: the one contract with the shop's site, validated here and only here.

Example event (JSON, one Kafka message on the clicks topic, keyed by ``user_id``)::

    {
      "event_id": "5f1c2a7e-8d2b-4b8e-9a53-0c2a1d7c9e11",
      "user_id": "u42",
      "item_id": "sku-1234",
      "type": "add_to_cart",
      "timestamp": 1764275000.123,
      "session_id": "s-9",
      "request_id": "r-77",
      "category": "shoes",
      "properties": {"price": 59.9}
    }

``timestamp`` is event time: Unix seconds (int or float), Unix milliseconds (detected by
magnitude) or an ISO-8601 string with a time zone. It is normalised to float seconds.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from driftrec.errors import InvalidEventError

__all__ = [
    "ClickEvent",
    "DEFAULT_EVENT_TYPES",
    "TOMBSTONE_TYPE",
    "MAX_EVENT_BYTES",
    "parse_event",
    "validate_event",
    "encode_event",
    "EventFields",
    "check_fields",
    "fast_validate",
]

#: The event types the shop sends out of the box; settings may add more (with weights).
DEFAULT_EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "purchase")
#: Internal type written by ``DELETE /v1/users/{id}``: the worker forgets the user in stream order.
TOMBSTONE_TYPE = "forget_user"
#: A message larger than this is rejected before JSON parsing (dead-lettered as oversize).
MAX_EVENT_BYTES = 16 * 1024

_ID_RE = re.compile(r"[A-Za-z0-9._:@/+\-]{1,128}")
_TYPE_RE = re.compile(r"[a-z_]{1,32}")
_MIN_TS = 0.0  # 1970
_MAX_TS = 4102444800.0  # 2100-01-01

# The field checks below are the one definition of a valid event: the pydantic model calls them,
# and so does the fast path the worker uses (:func:`fast_validate`). Each raises ValueError.


def _check_id(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{name} must be a string or integer")
    text = str(value)
    if not _ID_RE.fullmatch(text):  # fullmatch: "$" would let a trailing newline through
        raise ValueError(
            f"{name} must be 1-128 characters of letters, digits and ._:@/+- (got {text[:40]!r})"
        )
    return text


def _check_item(v: Any) -> str:
    if v == "":
        return v  # only legal for tombstones; checked in validate_event
    return _check_id(v, "item_id")


def _check_opt_id(v: Any, name: str) -> str | None:
    return None if v is None else _check_id(v, name)


def _check_category(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not 1 <= len(v) <= 64 or "\x00" in v:
        raise ValueError("category must be a string of 1-64 characters")
    return v


def _check_type(v: Any) -> str:
    if not isinstance(v, str) or not _TYPE_RE.fullmatch(v):
        raise ValueError("type must be a lower-case word such as view, add_to_cart, purchase")
    return v


def _check_timestamp(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("timestamp must be Unix seconds, milliseconds or an ISO-8601 string")
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"timestamp {v[:40]!r} is not ISO-8601") from None
        if dt.tzinfo is None:
            raise ValueError("timestamp string must carry a time zone (e.g. Z or +00:00)")
        try:
            ts = dt.timestamp()
        except (OverflowError, OSError, ValueError):
            raise ValueError("timestamp is out of range (1970..2100)") from None
    elif isinstance(v, int | float):
        try:
            ts = float(v)
        except OverflowError:
            raise ValueError("timestamp is out of range (1970..2100)") from None
        if math.isfinite(ts) and ts > 1e11:  # milliseconds
            ts /= 1000.0
    else:
        raise ValueError("timestamp must be Unix seconds, milliseconds or an ISO-8601 string")
    if not math.isfinite(ts) or not _MIN_TS <= ts <= _MAX_TS:
        raise ValueError("timestamp is out of range (1970..2100)")
    return ts


def _check_props(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or len(v) > 32:
        raise ValueError("properties must be an object of at most 32 keys")
    return v


class ClickEvent(BaseModel):
    """One click-stream event. Immutable; build it with :func:`validate_event`."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    event_id: str = Field(description="Globally unique id; the deduplication key.")
    user_id: str = Field(description="Shopper id; the Kafka partitioning key.")
    item_id: str = Field(description="Product id (SKU). Empty only for forget_user tombstones.")
    type: str = Field(description="view | add_to_cart | purchase (extensible by settings).")
    timestamp: float = Field(description="Event time, Unix seconds.")
    session_id: str | None = Field(default=None, description="Browser session id.")
    request_id: str | None = Field(
        default=None, description="Id of the recommendation response that led to this click."
    )
    category: str | None = Field(default=None, description="Product category, for trending.")
    properties: dict[str, Any] | None = Field(default=None, description="Free-form extras.")

    @field_validator("event_id", "user_id", mode="before")
    @classmethod
    def _ids(cls, v: Any, info: Any) -> str:
        return _check_id(v, info.field_name)

    @field_validator("item_id", mode="before")
    @classmethod
    def _item(cls, v: Any) -> str:
        return _check_item(v)

    @field_validator("session_id", "request_id", mode="before")
    @classmethod
    def _opt_ids(cls, v: Any, info: Any) -> str | None:
        return _check_opt_id(v, info.field_name)

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, v: Any) -> str | None:
        return _check_category(v)

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> str:
        return _check_type(v)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, v: Any) -> float:
        return _check_timestamp(v)

    @field_validator("properties", mode="before")
    @classmethod
    def _props(cls, v: Any) -> dict[str, Any] | None:
        return _check_props(v)


def validate_event(
    data: Any, allowed_types: tuple[str, ...] | frozenset[str] = DEFAULT_EVENT_TYPES
) -> ClickEvent:
    """Validate a decoded JSON object as a :class:`ClickEvent`.

    Raises
    ------
    InvalidEventError
        With a reason that names the first offending field.
    """
    if not isinstance(data, dict):
        raise InvalidEventError("event must be a JSON object", field=None)
    try:
        event = ClickEvent.model_validate(data)
    except ValidationError as exc:
        raise invalid_event(exc) from None
    _check_type_and_item(event.type, event.item_id, allowed_types)
    return event


def invalid_event(exc: ValidationError, *, literal: str | None = None) -> InvalidEventError:
    """The first error of a schema's validation as one reason naming its field (``literal``: the
    message for a value outside a fixed set, e.g. a catalogue event's ``op``)."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or None
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "field required"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "literal_error" and literal is not None:
        msg = literal
    return InvalidEventError(f"{field}: {msg}", field=field)


def _check_type_and_item(type_: str, item_id: str, allowed_types: tuple[str, ...] | frozenset[str]) -> None:
    """The rules both validators share: a known type, and an item unless it is a tombstone."""
    if type_ == TOMBSTONE_TYPE:
        return
    if type_ not in allowed_types:
        raise InvalidEventError(
            f"type: unknown event type {type_!r} (known: {', '.join(sorted(allowed_types))})",
            field="type",
        )
    if not item_id:
        raise InvalidEventError("item_id: must not be empty", field="item_id")


def parse_event(
    raw: bytes, allowed_types: tuple[str, ...] | frozenset[str] = DEFAULT_EVENT_TYPES
) -> ClickEvent:
    """Decode and validate one raw Kafka message value."""
    return validate_event(_decode(raw), allowed_types)


def _decode(raw: bytes | None) -> Any:
    """The JSON value of one raw message: present, within the size limit, valid JSON."""
    if raw is None:
        raise InvalidEventError("message has no value", field=None)
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEventError(f"event is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEventError(f"not valid JSON: {exc}") from None


def encode_event(event: ClickEvent) -> bytes:
    """Serialise an event for the clicks topic (omits unset optional fields)."""
    return orjson.dumps(event.model_dump(exclude_none=True))


# --- the fast path ----------------------------------------------------------------------------
# The worker validates tens of thousands of events a second; building a pydantic model costs
# ~30 us each on a small machine. The fast path runs the same field checks in the same order
# and gives the same decisions and reasons (tests/unit/test_processor_fast_validate.py holds it
# to that, with hypothesis),
# but returns a plain tuple.


class EventFields(NamedTuple):
    """A validated event's fields, as :class:`ClickEvent` would hold them."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    timestamp: float
    session_id: str | None
    request_id: str | None
    category: str | None
    properties: dict[str, Any] | None


_FIELD_CHECKS: tuple[tuple[str, Any, bool], ...] = (
    ("event_id", lambda v: _check_id(v, "event_id"), True),
    ("user_id", lambda v: _check_id(v, "user_id"), True),
    ("item_id", _check_item, True),
    ("type", _check_type, True),
    ("timestamp", _check_timestamp, True),
    ("session_id", lambda v: _check_opt_id(v, "session_id"), False),
    ("request_id", lambda v: _check_opt_id(v, "request_id"), False),
    ("category", _check_category, False),
    ("properties", _check_props, False),
)
_KNOWN_FIELDS = frozenset(name for name, _, _ in _FIELD_CHECKS)
assert tuple(ClickEvent.model_fields) == tuple(name for name, _, _ in _FIELD_CHECKS)


# Ids, the type and the optional ids of a common event, joined by newlines (a character no id
# may hold), matched in one go. Anything this shortcut does not accept takes the field-by-field
# path, which then finds the first problem exactly as pydantic would.
_COMMON_RE = re.compile(r"(?:[A-Za-z0-9._:@/+\-]{1,128}\n){3}[a-z_]{1,32}(?:\n[A-Za-z0-9._:@/+\-]{1,128}){2}")
_new_fields = tuple.__new__


def check_fields(
    data: Any, allowed_types: tuple[str, ...] | frozenset[str] = DEFAULT_EVENT_TYPES
) -> EventFields:
    """:func:`validate_event` without pydantic: same checks, same reasons, a tuple back."""
    if type(data) is dict:
        g = data.get
        ts: Any = g("timestamp")
        eid, uid, iid, typ = g("event_id"), g("user_id"), g("item_id"), g("type")
        sid, rid, cat = g("session_id"), g("request_id"), g("category")
        tt = type(ts)
        if (
            type(eid) is str and type(uid) is str and type(iid) is str and type(typ) is str
            and (tt is float or tt is int) and _MIN_TS <= ts <= _MAX_TS  # seconds, not ms
            and (sid is None or type(sid) is str) and (rid is None or type(rid) is str)
            and (cat is None or (type(cat) is str and 0 < len(cat) <= 64 and "\x00" not in cat))
            and g("properties") is None and typ in allowed_types and typ != TOMBSTONE_TYPE
            and _COMMON_RE.fullmatch(
                f"{eid}\n{uid}\n{iid}\n{typ}\n{'x' if sid is None else sid}\n{'x' if rid is None else rid}"
            )
            and _KNOWN_FIELDS.issuperset(data)
        ):
            return _new_fields(EventFields, (eid, uid, iid, typ, float(ts), sid, rid, cat, None))
    return _check_fields_slowly(data, allowed_types)


def _check_fields_slowly(
    data: Any, allowed_types: tuple[str, ...] | frozenset[str]
) -> EventFields:
    if not isinstance(data, dict):
        raise InvalidEventError("event must be a JSON object", field=None)
    values: list[Any] = []
    for name, check, required in _FIELD_CHECKS:
        if name in data:
            try:
                values.append(check(data[name]))
            except ValueError as exc:
                raise InvalidEventError(f"{name}: {exc}", field=name) from None
        elif required:
            raise InvalidEventError(f"{name}: field required", field=name)
        else:
            values.append(None)
    if not _KNOWN_FIELDS.issuperset(data):
        extra = next(k for k in data if k not in _KNOWN_FIELDS)
        raise InvalidEventError(f"{extra}: unknown field", field=extra)
    event = EventFields(*values)
    _check_type_and_item(event.type, event.item_id, allowed_types)
    return event


def fast_validate(
    raw: bytes | None, allowed_types: tuple[str, ...] | frozenset[str] = DEFAULT_EVENT_TYPES
) -> EventFields:
    """:func:`parse_event` without pydantic (the worker's hot path)."""
    return check_fields(_decode(raw), allowed_types)
