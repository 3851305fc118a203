"""Parsing and validation of path and query parameters: bad input becomes a 400, never a crash."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping

from driftrec.catalogue import FIELDS, ItemFilter
from driftrec.errors import InvalidRequestError

__all__ = [
    "ID_PATTERN",
    "check_id",
    "int_param",
    "float_param",
    "id_list_param",
    "category_param",
    "reject_unknown",
    "fields_param",
    "item_filter_param",
]

logger = logging.getLogger(__name__)

#: Ids as :mod:`driftrec.events` accepts them: no braces, spaces or ``*``, so an id can never
#: change which Redis key (or hash slot) a request touches.
ID_PATTERN = r"^[A-Za-z0-9._:@/+\-]{1,128}$"
_ID_RE = re.compile(ID_PATTERN)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_MAX_LIST = 100


def check_id(value: str, name: str) -> str:
    """Return ``value`` if it is a valid id, else raise a 400 naming the parameter."""
    if not _ID_RE.match(value):
        raise InvalidRequestError(f"{name}: must be 1-128 characters of letters, digits and ._:@/+-")
    return value


def _one(query: Mapping[str, str], name: str) -> str | None:
    raw = query.get(name)
    if raw is None:
        return None
    if len(raw) > 4096:
        raise InvalidRequestError(f"{name}: too long")
    return raw


def int_param(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within ``[lo, hi]``."""
    raw = _one(query, name)
    if raw is None:
        return default
    if not re.fullmatch(r"[+-]?\d{1,9}", raw.strip()):
        raise InvalidRequestError(f"{name}: must be an integer between {lo} and {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise InvalidRequestError(f"{name}: must be between {lo} and {hi}")
    return value


def float_param(query: Mapping[str, str], name: str, lo: float, hi: float) -> float | None:
    """A finite float query parameter within ``[lo, hi]``, or None when absent."""
    raw = _one(query, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequestError(f"{name}: must be a number") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise InvalidRequestError(f"{name}: must be a finite number between {lo} and {hi}")
    return value


def id_list_param(query: Mapping[str, str], name: str, limit: int = _MAX_LIST) -> list[str]:
    """A comma-separated list of ids (``exclude=a,b``); empty entries are ignored."""
    raw = _one(query, name)
    if raw is None:
        return []
    out = [check_id(part, name) for part in raw.split(",") if part]
    if len(out) > limit:
        raise InvalidRequestError(f"{name}: at most {limit} ids")
    return list(dict.fromkeys(out))


def category_param(query: Mapping[str, str], name: str = "category") -> str | None:
    """A category as :class:`driftrec.events.ClickEvent` accepts it, checked like an id."""
    raw = _one(query, name)
    if raw is None:
        return None
    # A category is only ever the tail of P:{g}:trend:<C>, after the {g} hash tag, so any text
    # stays inside that key family; control characters are refused as events refuse NUL.
    if not 1 <= len(raw) <= 64 or _CONTROL_RE.search(raw):
        raise InvalidRequestError(f"{name}: must be 1-64 characters without control characters")
    return raw


def reject_unknown(query: Mapping[str, str], allowed: frozenset[str]) -> None:
    """Unknown query parameters are a 400: a typo must not silently change nothing."""
    for key in query:
        if key not in allowed:
            raise InvalidRequestError(f"unknown query parameter {key[:40]!r}")


def fields_param(query: Mapping[str, str]) -> tuple[str, ...]:
    """``fields=title,price,image_url``: catalogue fields each answered item carries."""
    raw = _one(query, "fields")
    if raw is None:
        return ()
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    for name in names:
        if name not in FIELDS:
            raise InvalidRequestError(f"fields: {name[:40]!r} is not one of {', '.join(FIELDS)}")
    return names


def item_filter_param(query: Mapping[str, str]) -> ItemFilter:
    """``tag=``, ``price_min=``, ``price_max=``: the catalogue rules an answered item must pass."""
    tag = category_param(query, "tag")
    lo = float_param(query, "price_min", 0.0, 1e12)
    hi = float_param(query, "price_max", 0.0, 1e12)
    if lo is not None and hi is not None and lo > hi:
        raise InvalidRequestError("price_min: must not be above price_max")
    return ItemFilter(tag=tag, price_min=lo, price_max=hi)
