"""The shared parts of the data-set loaders: the sorted event log, its stats, file helpers."""

from __future__ import annotations

import csv
import gzip
import itertools
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from driftrec.errors import DriftrecError

__all__ = [
    "DatasetError", "LoadStats", "EventLog", "open_text", "first_line", "find_file", "data_rows",
]

logger = logging.getLogger(__name__)

# Mirrors the id rule of driftrec.events: a row whose id breaks it is dropped here, counted,
# rather than dead-lettered later by the worker.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:@/+\-]{1,128}$")
_MAX_TS = 4102444800.0  # 2100-01-01, the schema's upper bound


class DatasetError(DriftrecError):
    """A data-set file is missing or has a layout no loader understands."""

    http_status = 400


@dataclass
class LoadStats:
    """What a loader read, kept and dropped (with the reason for each dropped row)."""

    dataset: str
    path: str
    rows_read: int = 0
    events: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in self.dropped.most_common()) or "none"
        return (f"{self.dataset} ({self.path}): {self.events} events from {self.rows_read} rows;"
                f" dropped {self.rows_dropped} ({reasons})")


class EventLog:
    """The time-sorted events of one data set. Iterate it for event dicts (built lazily).

    Ties in event time keep file order. ``event_id`` is ``"<dataset>:<data row number>"``
    (1-based, header not counted), so replaying a file publishes the same ids again.
    """

    def __init__(self, dataset: str, path: Path, extra_keys: tuple[str, ...] = ()) -> None:
        self.dataset = dataset
        self.stats = LoadStats(dataset=dataset, path=str(path))
        self._extra_keys = extra_keys
        self._rows: list[tuple[float, int, str, str, str, str | None, str | None, tuple | None]] = []
        self._intern: dict[str, str] = {}

    def add(self, row: int, ts: float, user: str, item: str, kind: str,
            category: str | None = None, session: str | None = None,
            extra: tuple | None = None) -> None:
        """Keep one row (for loaders), or count why not. Repeated ids share one string."""
        if not (_SAFE_ID.match(user) and _SAFE_ID.match(item)):
            self.stats.dropped["bad_id"] += 1
            return
        if not (math.isfinite(ts) and 0.0 <= ts <= _MAX_TS):
            self.stats.dropped["bad_timestamp"] += 1
            return
        intern = self._intern
        if session is not None:
            session = intern.setdefault(session, session) if _SAFE_ID.match(session) else None
        user = intern.setdefault(user, user)
        item = intern.setdefault(item, item)
        self._rows.append((ts, row, user, item, kind, category, session, extra))

    def finish(self) -> EventLog:
        """Sort by (event time, row number) and log the stats; loaders call it last."""
        self._rows.sort()  # (ts, row) is unique, so tuple order never looks further
        self._intern = {}
        self.stats.events = len(self._rows)
        logger.info("%s", self.stats.summary())
        return self

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        prefix, keys = self.dataset, self._extra_keys
        for ts, row, user, item, kind, category, session, extra in self._rows:
            ev: dict[str, Any] = {"event_id": f"{prefix}:{row}", "user_id": user,
                                  "item_id": item, "type": kind, "timestamp": ts}
            if session is not None:
                ev["session_id"] = session
            if category is not None:
                ev["category"] = category
            if extra is not None:
                ev["properties"] = {k: v for k, v in zip(keys, extra, strict=True) if v is not None}
            yield ev


# --- file helpers --------------------------------------------------------------------------
def open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    """Open a data file (plain or .gz) as text; undecodable bytes never stop a replay."""
    if not path.is_file():
        raise DatasetError(f"no such data file: {path}")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, errors="replace", newline="")
    return open(path, encoding=encoding, errors="replace", newline="")


def first_line(path: Path) -> str:
    """The first line of a data file, without BOM or line end (for layout detection)."""
    with open_text(path) as f:
        return f.readline().lstrip("\ufeff").rstrip("\r\n")


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists, else None."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def data_rows(f: IO[str], delimiter: str, max_rows: int | None) -> Iterable[list[str]]:
    """CSV rows after the header, at most ``max_rows`` of them when given."""
    reader = csv.reader(f, delimiter=delimiter)
    return reader if max_rows is None else itertools.islice(reader, max_rows)


def shared_datasets_dir() -> Path:
    """Where the real data sets live: ``$DRIFTREC_DATASETS``, else ``../shared/datasets`` beside the checkout.

    The folder is returned even when it does not exist, so callers can name it in their error.
    """
    import os

    env = os.environ.get("DRIFTREC_DATASETS")
    if env:
        return Path(env)
    candidates = [Path(__file__).resolve().parents[2].parent / "shared" / "datasets",
                  Path.cwd().parent / "shared" / "datasets"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]
