"""The item catalogue's schema: one definition of an item and of a catalogue event, validated here only.

A catalogue event is one JSON object per Kafka message on the items topic (``driftrec.items``,
log-compacted, key = ``item_id``). An upsert replaces the item's whole record (PUT semantics,
not a merge)::

    {"op": "upsert", "item_id": "sku-1234", "title": "Trail shoe", "category": "shoes",
     "tags": ["running", "waterproof"], "price": 59.9, "available": true,
     "image_url": "https://shop.example/img/sku-1234.jpg", "properties": {"brand": "Acme"},
     "updated_at": 1764275000.0, "added_at": 1764000000.0}

A delete is ``{"op": "delete", "item_id": "sku-1234"}``. It is a record with a value, not a Kafka
tombstone (null value): compaction keeps the latest value of each key for ever, so a replay of the
topic from its start still knows the item was deleted, where a null tombstone is itself removed
after ``delete.retention.ms`` and the item's clicks would bring it back.

``op`` defaults to ``upsert``; ``available`` to true; every field but ``item_id`` is optional.
The worker, the reader's HTTP endpoints and ``driftrec items import`` all call
:func:`validate_item_event`, so a bad record is refused with the same reason everywhere.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from driftrec.errors import InvalidEventError
from driftrec.events import _check_category, _check_id, _check_timestamp, invalid_event

__all__ = [
    "ItemEvent",
    "ItemInfo",
    "ItemFilter",
    "FIELDS",
    "MAX_ITEM_BYTES",
    "validate_item_event",
    "parse_item_event",
    "encode_item_event",
    "item_info",
    "stored_item_info",
    "read_item_file",
]

#: A catalogue message (or one stored record) larger than this is refused.
MAX_ITEM_BYTES = 16 * 1024
#: Item fields an answer may carry with ``fields=`` (besides item_id, score, reason, source).
FIELDS = ("title", "category", "tags", "price", "available", "image_url", "properties", "updated_at", "added_at")

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_URL_RE = re.compile(r"https?://[^\s\x00-\x1f\x7f]{1,2040}")
_MAX_PRICE = 1e12


def _check_title(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not 1 <= len(v) <= 500 or _CONTROL_RE.search(v):
        raise ValueError("title must be a string of 1-500 characters without control characters")
    return v


def _check_tags(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str) or not isinstance(v, list | tuple) or len(v) > 32:
        raise ValueError("tags must be a list of at most 32 strings")
    for tag in v:
        # A tag is matched whole (tag=...); commas would make a CSV cell ambiguous.
        if not isinstance(tag, str) or not 1 <= len(tag) <= 64 or _CONTROL_RE.search(tag) or "," in tag:
            raise ValueError("each tag must be 1-64 characters without commas or control characters")
    return tuple(dict.fromkeys(v))


def _check_price(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError("price must be a number")
    price = float(v)
    if not (math.isfinite(price) and 0 <= price <= _MAX_PRICE):
        raise ValueError(f"price must be a finite number between 0 and {_MAX_PRICE:g}")
    return price


def _check_available(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("available must be true or false")
    return v


def _check_url(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not _URL_RE.fullmatch(v):
        raise ValueError("image_url must be an http:// or https:// URL of at most 2,048 characters")
    return v


def _check_properties(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or len(v) > 32 or not all(isinstance(k, str) for k in v):
        raise ValueError("properties must be an object of at most 32 keys")
    return v


class ItemEvent(BaseModel):
    """One catalogue change. Immutable; build it with :func:`validate_item_event`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    op: Literal["upsert", "delete"] = Field(default="upsert", description="upsert (replace the record) or delete.")
    item_id: str = Field(description="Product id (SKU), as click events name it; the Kafka key.")
    title: str | None = Field(default=None, description="Display title.")
    category: str | None = Field(default=None, description="Category (the category filter uses it).")
    tags: tuple[str, ...] = Field(default=(), description="Labels the tag filter matches whole.")
    price: float | None = Field(default=None, description="Price, >= 0 (the price filters use it).")
    available: bool = Field(default=True, description="False: never recommended until true again.")
    image_url: str | None = Field(default=None, description="http(s) URL of the product image.")
    properties: dict[str, Any] | None = Field(default=None, description="Free-form extras.")
    updated_at: float | None = Field(default=None, description="When the shop changed it, Unix seconds.")
    added_at: float | None = Field(default=None, description=(
        "When the item entered the shop's catalogue, Unix seconds: the new-item source boosts it by "
        "its age from then (from updated_at when unset). Send it with every upsert (a record is replaced whole)."))

    @field_validator("*", mode="before")
    @classmethod
    def _checked(cls, v: Any, info: Any) -> Any:
        return _CHECKS[info.field_name](v)

    @property
    def hidden(self) -> bool:
        """True when readers must not show the item (deleted, or not available)."""
        return self.op == "delete" or not self.available


_CHECKS: dict[str, Any] = {
    "op": lambda v: v,
    "item_id": lambda v: _check_id(v, "item_id"),
    "title": _check_title,
    "category": _check_category,
    "tags": _check_tags,
    "price": _check_price,
    "available": _check_available,
    "image_url": _check_url,
    "properties": _check_properties,
    "updated_at": lambda v: None if v is None else _check_timestamp(v),
    "added_at": lambda v: None if v is None else _check_timestamp(v),
}
_DELETE_FIELDS = frozenset({"op", "item_id", "updated_at"})


def validate_item_event(data: Any, item_id: str | None = None) -> ItemEvent:
    """Validate a decoded JSON object as an :class:`ItemEvent`.

    ``item_id`` (the URL's id, or the Kafka key) fills a missing ``item_id`` and must equal a
    given one.

    Raises
    ------
    InvalidEventError
        With a reason that names the first offending field.
    """
    if not isinstance(data, dict):
        raise InvalidEventError("item must be a JSON object", field=None)
    if item_id is not None:
        given = data.get("item_id")
        if given is None:
            data = {**data, "item_id": item_id}
        elif str(given) != item_id:
            raise InvalidEventError(f"item_id: {str(given)[:40]!r} differs from {item_id[:40]!r} it was sent under",
                                    field="item_id")
    if data.get("op") == "delete":
        extra = sorted(set(data) - _DELETE_FIELDS)
        if extra:
            raise InvalidEventError(f"{extra[0]}: a delete carries only item_id (and updated_at)", field=extra[0])
    try:
        event = ItemEvent.model_validate(data)
    except ValidationError as exc:
        raise invalid_event(exc, literal="must be upsert or delete") from None
    if len(encode_item_event(event)) > MAX_ITEM_BYTES:
        raise InvalidEventError(f"item is over {MAX_ITEM_BYTES} bytes encoded", field=None)
    return event


def parse_item_event(raw: bytes | None, key: bytes | None = None) -> ItemEvent:
    """Decode and validate one raw message of the items topic; its key must be the item id."""
    if raw is None:
        raise InvalidEventError("message has no value (deletes are {\"op\": \"delete\"} records)", field=None)
    if len(raw) > MAX_ITEM_BYTES:
        raise InvalidEventError(f"item is {len(raw)} bytes; the limit is {MAX_ITEM_BYTES}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEventError(f"not valid JSON: {exc}") from None
    want = None
    if key is not None:
        want = key.decode("utf-8", "replace")
        if isinstance(data, dict) and "item_id" not in data:
            raise InvalidEventError("item_id: field required", field="item_id")
    return validate_item_event(data, want)


def encode_item_event(event: ItemEvent) -> bytes:
    """The message value (and the stored record): unset optional fields left out."""
    data = event.model_dump(exclude_none=True, exclude_defaults=False)
    if not data.get("tags"):
        data.pop("tags", None)
    if event.op == "delete":
        data = {k: v for k, v in data.items() if k in _DELETE_FIELDS}
    return orjson.dumps(data)


@dataclass(frozen=True, slots=True)
class ItemInfo:
    """What a reader keeps in memory of one catalogue record."""

    title: str | None
    category: str | None
    tags: frozenset[str]
    price: float | None
    available: bool
    image_url: str | None
    properties: dict[str, Any] | None
    updated_at: float | None
    deleted: bool = False
    added_at: float | None = None

    @property
    def hidden(self) -> bool:
        return self.deleted or not self.available

    def fields(self, names: Iterable[str]) -> dict[str, Any]:
        """The ``fields=`` of an answer's item (tags as a sorted list)."""
        out: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name)
            out[name] = sorted(value) if name == "tags" else value
        return out


def item_info(record: bytes | str) -> ItemInfo:
    """A stored record (the JSON :func:`encode_item_event` wrote) as :class:`ItemInfo`.

    Raises
    ------
    InvalidEventError
        When the record does not validate (the reader then hides nothing and logs it).
    """
    raw = record.encode("utf-8", "surrogateescape") if isinstance(record, str) else record
    event = parse_item_event(raw)
    deleted = event.op == "delete"
    return ItemInfo(event.title, event.category, frozenset(event.tags), event.price,
                    event.available and not deleted, event.image_url, event.properties, event.updated_at,
                    deleted, event.added_at)


def stored_item_info(record: bytes | str) -> ItemInfo:
    """:func:`item_info` of a record the worker stored, without validating it again: the worker
    wrote what :func:`encode_item_event` made of a validated event, so a plain decode of those
    fields is enough (~4x cheaper: readers decode every change, and a whole catalogue at start).
    Anything unexpected falls back to :func:`item_info`, which validates and raises."""
    try:
        d = orjson.loads(record)
        op, tags, price = d.get("op", "upsert"), d.get("tags", ()), d.get("price")
        props = d.get("properties")
        if (op not in ("upsert", "delete") or not isinstance(tags, list) or not isinstance(d.get("available", True), bool)
                or (price is not None and not isinstance(price, float | int))
                or (props is not None and not isinstance(props, dict))):
            return item_info(record)
        deleted = op == "delete"
        return ItemInfo(d.get("title"), d.get("category"), frozenset(tags),
                        float(price) if price is not None else None,
                        bool(d.get("available", True)) and not deleted, d.get("image_url"), props,
                        d.get("updated_at"), deleted, d.get("added_at"))
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return item_info(record)


@dataclass(frozen=True, slots=True)
class ItemFilter:
    """Per-request business rules: an item must match every rule given.

    ``category`` is matched against the catalogue's category; ``tag`` is one tag the item must
    carry; the price bounds are inclusive. An item the catalogue does not know passes a
    category rule only through its click category (the caller's business) and never passes a
    tag or price rule: nothing says it matches.
    """

    tag: str | None = None
    price_min: float | None = None
    price_max: float | None = None

    @property
    def active(self) -> bool:
        return self.tag is not None or self.price_min is not None or self.price_max is not None

    def matches(self, info: ItemInfo | None) -> bool:
        if not self.active:
            return True
        if info is None:
            return False
        if self.tag is not None and self.tag not in info.tags:
            return False
        if self.price_min is not None or self.price_max is not None:
            if info.price is None:
                return False
            if self.price_min is not None and info.price < self.price_min:
                return False
            if self.price_max is not None and info.price > self.price_max:
                return False
        return True


# --- files (driftrec items import) ----------------------------------------------------------

_CSV_LISTS = frozenset({"tags"})
_CSV_NUMBERS = frozenset({"price", "updated_at", "added_at"})


def _csv_row(row: Mapping[str, str | None]) -> dict[str, Any]:
    """One CSV row as an item object: empty cells are absent, ``tags`` split on ``|``,
    ``available`` true/false/1/0/yes/no, numbers parsed, ``properties`` JSON and any other
    column a property."""
    out: dict[str, Any] = {}
    props: dict[str, Any] = {}
    for name, cell in row.items():
        if name is None or cell is None or cell == "":
            continue
        name = name.strip()
        if name in _CSV_LISTS:
            out[name] = [t.strip() for t in cell.split("|") if t.strip()]
        elif name in _CSV_NUMBERS:
            try:
                out[name] = float(cell)
            except ValueError:
                out[name] = cell  # validation names the field
        elif name == "available":
            low = cell.strip().lower()
            out[name] = True if low in ("true", "1", "yes") else False if low in ("false", "0", "no") else cell
        elif name == "properties":
            try:
                out[name] = orjson.loads(cell)
            except orjson.JSONDecodeError:
                out[name] = cell
        elif name in ItemEvent.model_fields:
            out[name] = cell
        else:
            props[name] = cell
    if props:
        out["properties"] = {**props, **(out["properties"] if isinstance(out.get("properties"), dict) else {})}
    return out


def read_item_file(text: str | io.TextIOBase, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """Rows of a JSON-lines or CSV catalogue file: ``(line number, object)``, or ``(line, reason)``
    for a line that is not JSON. ``fmt`` is ``jsonl`` or ``csv`` (default: CSV when the first
    non-blank character is not ``{``)."""
    source = io.StringIO(text) if isinstance(text, str) else text
    head = source.read(4096)
    if fmt is None:
        fmt = "jsonl" if head.lstrip().startswith("{") else "csv"
    stream = _lines(head, source)
    if fmt == "jsonl":
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                yield n, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield n, f"not valid JSON: {exc}"
    elif fmt == "csv":
        reader = csv.DictReader(stream)
        for row in reader:
            yield reader.line_num, _csv_row(row)
    else:
        raise ValueError(f"format must be jsonl or csv, not {fmt!r}")


def _lines(head: str, rest: Any) -> Iterator[str]:
    buf = head
    while True:
        nl = buf.find("\n")
        if nl >= 0:
            yield buf[: nl + 1]
            buf = buf[nl + 1:]
            continue
        more = rest.read(65536)
        if not more:
            if buf:
                yield buf
            return
        buf += more
