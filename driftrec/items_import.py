"""``driftrec items import FILE``: a JSON-lines or CSV catalogue file, validated, to the items topic."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftrec.catalogue import read_item_file, validate_item_event
from driftrec.errors import InvalidEventError
from driftrec.publisher import ItemPublisher, SendPace
from driftrec.settings import Settings

__all__ = ["ImportReport", "import_items", "count_rows", "publish_items", "movielens_items", "simulator_items"]

logger = logging.getLogger(__name__)


@dataclass
class ImportReport:
    sent: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def count_rows(path: Path) -> int:
    """Lines of the file, less a CSV header: the progress bar's total (blank lines included)."""
    with path.open("rb") as f:
        n = sum(1 for _ in f)
        f.seek(0)
        first = f.read(1)
    return n if first == b"{" else max(n - 1, 0)


async def _import(settings: Settings, path: Path, fmt: str | None, progress: Any, rate: float | None) -> ImportReport:
    report = ImportReport()
    pace = SendPace(rate, progress)
    async with ItemPublisher(settings) as pub:
        with path.open(encoding="utf-8", newline="") as f:
            for line, row in read_item_file(f, fmt):
                if isinstance(row, str):
                    report.rejected.append((line, row))
                else:
                    try:
                        await pub.send(validate_item_event(row))
                        report.sent += 1
                    except InvalidEventError as exc:
                        report.rejected.append((line, exc.reason))
                await pace.step(report.sent)
        await pub.flush()
    report.seconds = time.monotonic() - pace.started
    return report


def import_items(settings: Settings, path: Path, *, fmt: str | None = None, progress: Any = None,
                 rate: float | None = None) -> ImportReport:
    """Publish every valid item of ``path`` (upserts, or ``{"op": "delete"}`` rows) to the items
    topic, keyed by item id; invalid rows are reported with their line and reason, not sent."""
    return asyncio.run(_import(settings, path, fmt, progress, rate))


def publish_items(settings: Settings, rows: Iterable[Mapping[str, Any]]) -> ImportReport:
    """Validate and publish item objects (an iterable of dicts) to the items topic."""

    async def run() -> ImportReport:
        report = ImportReport()
        started = time.monotonic()
        async with ItemPublisher(settings) as pub:
            for k, row in enumerate(rows):
                try:
                    await pub.send(validate_item_event(dict(row)))
                    report.sent += 1
                except InvalidEventError as exc:
                    report.rejected.append((k, exc.reason))
            await pub.flush()
        report.seconds = time.monotonic() - started
        return report

    return asyncio.run(run())


def movielens_items(movies_csv: Path) -> Iterator[dict[str, Any]]:
    """MovieLens ``movies.csv`` (movieId,title,genres) as catalogue items: the title, the first
    genre as category (what the clicks of ``driftrec replay`` carry) and every genre as a tag."""
    import csv

    with movies_csv.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            genres = [g[:64] for g in (row.get("genres") or "").split("|") if g and g != "(no genres listed)"]
            item: dict[str, Any] = {"item_id": row["movieId"], "title": (row.get("title") or row["movieId"])[:500]}
            if genres:
                item["category"] = genres[0]
                item["tags"] = genres[:32]
            yield item


def simulator_items(item_ids: Iterable[str], category_of: Any) -> Iterator[dict[str, Any]]:
    """Names and prices for the shop simulator's items (which have none): "<Category> item <n>",
    a price between 5 and 200 drawn from the id."""
    import zlib

    for item in item_ids:
        cat = category_of(item)
        h = zlib.crc32(item.encode())
        yield {"item_id": item, "title": f"{cat.capitalize()} item {item.lstrip('i')}", "category": cat,
               "price": round(5 + (h % 19500) / 100, 2)}
