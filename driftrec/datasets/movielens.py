"""MovieLens ratings (ml-latest, ml-latest-small, ml-100k) as click events."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

from driftrec.datasets.base import (
    DatasetError,
    EventLog,
    data_rows,
    find_file,
    first_line,
    open_text,
)

__all__ = ["load_movielens", "ML100K_LINE"]

logger = logging.getLogger(__name__)

ML100K_LINE = re.compile(r"^\d+\t\d+\t\d+(\.\d+)?\t\d+\s*$")
_ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


def _movielens_genres(ratings: Path) -> dict[str, str]:
    """movieId -> first genre, from movies.csv (ml-latest*) or u.item (ml-100k) next door."""
    genres: dict[str, str] = {}
    movies = find_file(ratings.parent, "movies.csv")
    if movies is not None:
        with open_text(movies) as f:
            reader = csv.reader(f)
            next(reader, None)
            for row in reader:
                if len(row) >= 3 and row[2] and row[2] != "(no genres listed)":
                    genres[row[0]] = row[2].split("|")[0][:64]
        return genres
    items = find_file(ratings.parent, "u.item")
    if items is not None:
        with open_text(items, encoding="latin-1") as f:
            for line in f:
                parts = line.rstrip("\r\n").split("|")
                flags = parts[5:5 + len(_ML100K_GENRES)]
                # flag 0 is "unknown": prefer a real genre when the movie has one
                hit = [g for g, flag in zip(_ML100K_GENRES, flags, strict=False) if flag == "1"]
                real = [g for g in hit if g != "unknown"]
                if real:
                    genres[parts[0]] = real[0]
    return genres


def load_movielens(path: str | Path, *, max_rows: int | None = None, purchase_at: float = 4.5,
                   cart_at: float = 3.5, dataset: str | None = None) -> EventLog:
    """MovieLens ratings as click events.

    Reads ``ratings.csv`` (ml-latest / ml-latest-small: header ``userId,movieId,rating,
    timestamp``) or ml-100k's ``u.data`` (tab-separated, no header). A rating becomes a
    ``purchase`` when ``>= purchase_at``, an ``add_to_cart`` when ``>= cart_at``, otherwise a
    ``view``; the rating itself goes to ``properties.rating``. The category is the movie's
    first genre from ``movies.csv`` (or ``u.item``) next to the ratings file, when present.
    ``path`` may be the folder that holds the ratings file.
    """
    p = Path(path)
    if p.is_dir():
        found = find_file(p, "ratings.csv") or find_file(p, "u.data")
        if found is None:
            raise DatasetError(f"no ratings.csv or u.data in {p}")
        p = found
    first = first_line(p)
    tabbed = bool(ML100K_LINE.match(first))
    if not tabbed and not first.startswith("userId,movieId,rating,timestamp"):
        raise DatasetError(f"{p}: not a MovieLens ratings file (first line {first[:60]!r})")
    log = EventLog(dataset or ("ml100k" if tabbed else "movielens"), p, ("rating",))
    genres = _movielens_genres(p)
    with open_text(p) as f:
        if not tabbed:
            f.readline()
        for n, row in enumerate(data_rows(f, "\t" if tabbed else ",", max_rows), start=1):
            log.stats.rows_read += 1
            try:
                user, movie, rating, ts = row[0], row[1], float(row[2]), float(row[3])
            except (IndexError, ValueError):
                log.stats.dropped["bad_row"] += 1
                continue
            kind = "purchase" if rating >= purchase_at else "add_to_cart" if rating >= cart_at else "view"
            log.add(n, ts, user, movie, kind, genres.get(movie), None, (rating,))
    return log.finish()
