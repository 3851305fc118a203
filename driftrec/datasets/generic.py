"""Generic ``user,item,type,timestamp`` CSV files as click events."""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from driftrec.datasets.base import DatasetError, EventLog, data_rows, open_text
from driftrec.events import DEFAULT_EVENT_TYPES

__all__ = ["load_generic_csv", "generic_columns"]

logger = logging.getLogger(__name__)

_TYPE_ALIASES = {
    "view": "view", "click": "view", "pageview": "view", "detail": "view",
    "add_to_cart": "add_to_cart", "addtocart": "add_to_cart", "add-to-cart": "add_to_cart",
    "cart": "add_to_cart", "purchase": "purchase", "transaction": "purchase", "buy": "purchase",
    "order": "purchase",
}

_GENERIC_COLUMNS = {
    "user": ("user", "user_id", "userid"), "item": ("item", "item_id", "itemid"),
    "type": ("type", "event", "event_type"), "timestamp": ("timestamp", "ts", "time"),
    "category": ("category",), "session": ("session_id", "session"),
}


def generic_columns(header: list[str]) -> dict[str, int]:
    """Column index of each known field (user, item, type, timestamp, category, session)."""
    names = [h.strip().lower() for h in header]
    # reversed: a later write wins in the comprehension, so the first-listed alias is preferred
    return {key: names.index(a) for key, aliases in _GENERIC_COLUMNS.items()
            for a in reversed(aliases) if a in names}


def _parse_time(text: str, assume_tz: ZoneInfo | None) -> float:
    """Unix seconds or milliseconds (by magnitude, as in the event schema) or ISO-8601."""
    text = text.strip()
    try:
        ts = float(text)
        return ts / 1000.0 if ts > 1e11 else ts
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        if assume_tz is None:
            raise ValueError("timestamp has no time zone")
        dt = dt.replace(tzinfo=assume_tz)
    return dt.timestamp()


def load_generic_csv(path: str | Path, *, max_rows: int | None = None,
                     allowed_types: Iterable[str] = DEFAULT_EVENT_TYPES,
                     assume_tz: str | None = None, dataset: str | None = None) -> EventLog:
    """A CSV with header ``user,item,type,timestamp`` (any order) and optional ``category``
    and ``session_id`` columns.

    ``timestamp`` is Unix seconds, Unix milliseconds or ISO-8601; an ISO time without a zone
    is dropped (``bad_timestamp``) unless ``assume_tz`` names one (e.g. ``"UTC"``). Common
    type spellings (addtocart, transaction, ...) are mapped to the schema's; types outside
    ``allowed_types`` are dropped (``unknown_type``). The id prefix defaults to the file stem.
    """
    p = Path(path)
    tz = ZoneInfo(assume_tz) if assume_tz else None
    allowed = frozenset(allowed_types)
    name = dataset or re.sub(r"[^A-Za-z0-9._\-]", "-", p.name.split(".")[0]) or "csv"
    log = EventLog(name, p)
    with open_text(p) as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if header:
            header[0] = header[0].lstrip("\ufeff")
        col = generic_columns(header)
        missing = [k for k in ("user", "item", "type", "timestamp") if k not in col]
        if missing:
            raise DatasetError(f"{p}: header lacks {missing} (got {header[:8]})")
        u_c, i_c, k_c, t_c = col["user"], col["item"], col["type"], col["timestamp"]
        c_c, s_c = col.get("category"), col.get("session")
        for n, row in enumerate(data_rows(f, ",", max_rows), start=1):
            log.stats.rows_read += 1
            if len(row) != len(header):
                log.stats.dropped["bad_row"] += 1
                continue
            raw = row[k_c].strip().lower()
            kind = _TYPE_ALIASES.get(raw, raw)
            if kind not in allowed:
                log.stats.dropped["unknown_type"] += 1
                continue
            try:
                ts = _parse_time(row[t_c], tz)
            except ValueError:
                log.stats.dropped["bad_timestamp"] += 1
                continue
            category = (row[c_c].strip()[:64] or None) if c_c is not None else None
            session = (row[s_c].strip() or None) if s_c is not None else None
            log.add(n, ts, row[u_c].strip(), row[i_c].strip(), kind, category, session)
    return log.finish()
