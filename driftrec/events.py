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
from typing import Any

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
]

#: The event types the shop sends out of the box; settings may add more (with weights).
DEFAULT_EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "purchase")
#: Internal type written by ``DELETE /v1/users/{id}``: the worker forgets the user in stream order.
TOMBSTONE_TYPE = "forget_user"
#: A message larger than this is rejected before JSON parsing (dead-lettered as oversize).
MAX_EVENT_BYTES = 16 * 1024

_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+\-]{1,128}$")
_MIN_TS = 0.0  # 1970
_MAX_TS = 4102444800.0  # 2100-01-01


def _check_id(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{name} must be a string or integer")
    text = str(value)
    if not _ID_RE.match(text):
        raise ValueError(
            f"{name} must be 1-128 characters of letters, digits and ._:@/+- (got {text[:40]!r})"
        )
    return text


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
        if v == "":
            return v  # only legal for tombstones; checked in validate_event
        return _check_id(v, "item_id")

    @field_validator("session_id", "request_id", mode="before")
    @classmethod
    def _opt_ids(cls, v: Any, info: Any) -> str | None:
        return None if v is None else _check_id(v, info.field_name)

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, str) or not 1 <= len(v) <= 64 or "\x00" in v:
            raise ValueError("category must be a string of 1-64 characters")
        return v

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> str:
        if not isinstance(v, str) or not re.match(r"^[a-z_]{1,32}$", v):
            raise ValueError("type must be a lower-case word such as view, add_to_cart, purchase")
        return v

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError("timestamp must be Unix seconds, milliseconds or an ISO-8601 string")
        if isinstance(v, str):
            try:
                dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"timestamp {v[:40]!r} is not ISO-8601") from None
            if dt.tzinfo is None:
                raise ValueError("timestamp string must carry a time zone (e.g. Z or +00:00)")
            ts = dt.timestamp()
        elif isinstance(v, int | float):
            ts = float(v)
            if math.isfinite(ts) and ts > 1e11:  # milliseconds
                ts /= 1000.0
        else:
            raise ValueError("timestamp must be Unix seconds, milliseconds or an ISO-8601 string")
        if not math.isfinite(ts) or not _MIN_TS <= ts <= _MAX_TS:
            raise ValueError("timestamp is out of range (1970..2100)")
        return ts

    @field_validator("properties", mode="before")
    @classmethod
    def _props(cls, v: Any) -> dict[str, Any] | None:
        if v is None:
            return None
        if not isinstance(v, dict) or len(v) > 32:
            raise ValueError("properties must be an object of at most 32 keys")
        return v


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
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "field required"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        raise InvalidEventError(f"{field}: {msg}", field=field) from None
    if event.type == TOMBSTONE_TYPE:
        return event
    if event.type not in allowed_types:
        raise InvalidEventError(
            f"type: unknown event type {event.type!r} (known: {', '.join(sorted(allowed_types))})",
            field="type",
        )
    if not event.item_id:
        raise InvalidEventError("item_id: must not be empty", field="item_id")
    return event


def parse_event(
    raw: bytes, allowed_types: tuple[str, ...] | frozenset[str] = DEFAULT_EVENT_TYPES
) -> ClickEvent:
    """Decode and validate one raw Kafka message value."""
    if raw is None:
        raise InvalidEventError("message has no value", field=None)
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEventError(f"event is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEventError(f"not valid JSON: {exc}") from None
    return validate_event(data, allowed_types)


def encode_event(event: ClickEvent) -> bytes:
    """Serialise an event for the clicks topic (omits unset optional fields)."""
    return orjson.dumps(event.model_dump(exclude_none=True))
