"""Loaders that turn public interaction logs into time-sorted driftrec click events.

Every loader returns an :class:`EventLog`: iterate it for event dicts valid for
:func:`driftrec.events.validate_event`, sorted by event time, with deterministic
``event_id`` values (``"<dataset>:<data row number>"``) so that a replay is idempotent;
``EventLog.stats`` counts the rows read, kept and dropped (by reason). See docs/datasets.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from driftrec.datasets.base import (
    DatasetError,
    EventLog,
    LoadStats,
    first_line,
    shared_datasets_dir,
)
from driftrec.datasets.generic import generic_columns, load_generic_csv
from driftrec.datasets.movielens import ML100K_LINE, load_movielens
from driftrec.datasets.retail import NON_PRODUCT_CODES, load_online_retail, load_retailrocket

__all__ = [
    "DatasetError",
    "LoadStats",
    "EventLog",
    "NON_PRODUCT_CODES",
    "detect_layout",
    "load_any",
    "load_movielens",
    "load_online_retail",
    "load_retailrocket",
    "load_generic_csv",
    "shared_datasets_dir",
]

logger = logging.getLogger(__name__)

_LOADERS: dict[str, Callable[..., EventLog]] = {
    "movielens": load_movielens, "online_retail": load_online_retail,
    "retailrocket": load_retailrocket, "generic": load_generic_csv,
}
_KNOWN_FILES = ("ratings.csv", "u.data", "online_retail.csv", "events.csv")


def detect_layout(path: str | Path) -> tuple[str, Path]:
    """Name the layout of a data file (or of the known file inside a folder) from its first
    line: ``movielens``, ``online_retail``, ``retailrocket`` or ``generic``."""
    p = Path(path)
    if p.is_dir():
        found = [p / n for n in _KNOWN_FILES if (p / n).is_file()]
        if len(found) != 1:
            raise DatasetError(f"{p}: expected exactly one of {_KNOWN_FILES}, found {found}")
        p = found[0]
    first = first_line(p)
    header = [h.strip() for h in first.split(",")]
    if first.startswith("userId,movieId,rating,timestamp") or ML100K_LINE.match(first):
        return "movielens", p
    if "StockCode" in header and ({"InvoiceNo", "Invoice"} & set(header)):
        return "online_retail", p
    if header[:4] == ["timestamp", "visitorid", "event", "itemid"]:
        return "retailrocket", p
    if {"user", "item", "type", "timestamp"} <= set(generic_columns(header)):
        return "generic", p
    raise DatasetError(f"{p}: unknown layout (first line {first[:80]!r}); known: {list(_LOADERS)}")


def load_any(path: str | Path, **options: Any) -> EventLog:
    """Detect the layout of ``path`` and load it; ``options`` go to that loader."""
    layout, p = detect_layout(path)
    return _LOADERS[layout](p, **options)
