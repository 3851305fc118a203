"""Approximate candidate retrieval for the reader: HNSW indexes (usearch) over a published model.

An exact top-n scan streams a whole matrix from memory on every request (``n_rows × width × 4``
bytes), so its cost grows with the catalogue. An HNSW graph (Malkov & Yashunin 2018) finds the
rows with the largest inner product or cosine in a number of distance computations that grows
about with the logarithm of the rows. The reader uses it as a candidate generator only: it asks
for ``overfetch × n`` rows, re-scores those exactly from the same float32 arrays the exact scan
reads, and keeps the top ``n``. The scores the blend sees are therefore the exact ones; only the
candidate *set* is approximate (an item the graph search misses is missing from the list).

An index keeps its own copy of the rows in ``bf16`` by default (``reader_ann_dtype``): half the
bytes of the float32 rows for each distance the graph walk computes, which made the three
per-request searches 0.72x as costly on ``driftrec train``'s model here with the same recall
(docs/experiments.md); the exact re-score still reads the float32 arrays. With ``f32`` the index
reads the published arrays in place (usearch's ``copy=False``) and adds only its graph, about
``connectivity × 8`` bytes per row.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from usearch.index import Index

from driftrec.settings import Settings

__all__ = ["AnnConfig", "AnnIndex", "ann_config", "top_of"]

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
Rows = npt.NDArray[np.int64]


@dataclass(frozen=True)
class AnnConfig:
    """How the reader builds and searches its indexes (the ``reader_ann_*`` settings).

    Parameters
    ----------
    min_rows : int
        A matrix with fewer rows is scanned exactly: its scan costs less than a graph search.
    overfetch : float
        Candidates fetched per wanted row (``ceil(overfetch × n)``), re-scored exactly.
    expansion : int
        HNSW search breadth (``ef``); usearch searches with ``max(expansion, candidates)``.
    connectivity : int
        HNSW graph degree (``M``), fixed when an index is built.
    expansion_add : int
        HNSW build breadth (``efConstruction``).
    threads : int
        Threads one index build uses (the search always uses the calling thread).
    dtype : {"bf16", "f16", "f32"}
        Scalar type of the rows the graph walk compares; only the candidate set depends on it.
    """

    min_rows: int = 5000
    overfetch: float = 2.0
    expansion: int = 32
    connectivity: int = 16
    expansion_add: int = 128
    threads: int = 1
    dtype: Literal["bf16", "f16", "f32"] = "bf16"

    def fetch(self, n: int) -> int:
        """Candidates to fetch for ``n`` wanted rows."""
        return max(n, math.ceil(self.overfetch * n))


class AnnIndex:
    """An HNSW index over the rows of one float32 matrix; a search returns candidate row numbers.

    Parameters
    ----------
    vectors : ndarray of float32, shape (n_rows, d)
        C-contiguous rows; the index reads them in place, so they must not change while it lives
        (it holds a reference).
    metric : {"ip", "cos"}
        Inner product or cosine; the candidates are the rows with the largest ones.
    config : AnnConfig
        Graph and build parameters.
    """

    _vectors: F32 | None

    def __init__(self, vectors: F32, metric: Literal["ip", "cos"], config: AnnConfig) -> None:
        if vectors.dtype != np.float32 or vectors.ndim != 2 or not vectors.flags.c_contiguous:
            raise ValueError("an index needs a C-contiguous 2-D float32 array")
        started = time.perf_counter()
        in_place = config.dtype == "f32"
        # In place, usearch keeps pointers into these rows (copy=False); else it converts a copy.
        self._vectors = vectors if in_place else None
        self._index = Index(ndim=int(vectors.shape[1]), metric=metric, dtype=config.dtype,
                            connectivity=config.connectivity, expansion_add=config.expansion_add,
                            expansion_search=config.expansion)
        self._index.add(np.arange(vectors.shape[0], dtype=np.uint64), vectors, copy=not in_place,
                        threads=config.threads)
        self.rows = int(vectors.shape[0])
        self.metric = metric
        self.build_s = time.perf_counter() - started

    @classmethod
    def open(cls, path: Path, expansion: int | None = None) -> AnnIndex:
        """An index saved by :meth:`save`, memory-mapped read-only (graph and vectors): processes
        that open the same file share one copy of it (:mod:`driftrec.online.shared_model`).

        ``expansion`` is the search breadth (``AnnConfig.expansion``): the file does not keep it,
        and a restored index searches with usearch's default (64) otherwise, twice the default
        ``reader_ann_expansion`` the process that built it searched with."""
        self = cls.__new__(cls)
        started = time.perf_counter()
        index = Index.restore(str(path), view=True)
        if index is None:
            raise ValueError(f"{path}: not a usearch index")
        if expansion is not None:
            index.expansion_search = expansion  # type: ignore[misc]  # the stub says read-only; usearch sets it
        self._index = index
        self._vectors = None  # the file holds the vectors too
        self.rows = int(index.size)
        self.metric = "ip" if str(index.metric).endswith(".IP") else "cos"
        self.build_s = time.perf_counter() - started
        return self

    def save(self, path: Path) -> None:
        """Write the graph and its vectors to ``path`` (for :meth:`open`)."""
        self._index.save(str(path))

    @property
    def memory_bytes(self) -> int:
        """Bytes the index holds: graph and levels, plus its copy of the rows unless ``f32``."""
        return int(self._index.memory_usage)

    def candidates(self, query: F32, count: int) -> Rows:
        """Row numbers of (about) the ``count`` rows nearest ``query``, best first."""
        found = self._index.search(np.asarray(query, dtype=np.float32), count, threads=1)
        return found.keys.astype(np.int64)


def ann_config(settings: Settings) -> AnnConfig | None:
    """The reader's index configuration, or None when ``reader_ann`` is off (exact scans)."""
    if not settings.reader_ann:
        return None
    return AnnConfig(min_rows=settings.reader_ann_min_rows, overfetch=settings.reader_ann_overfetch,
                     expansion=settings.reader_ann_expansion, threads=settings.reader_ann_build_threads,
                     dtype=settings.reader_ann_dtype)


def top_of(scores: F32, n: int) -> npt.NDArray[np.intp]:
    """Positions of the ``n`` largest ``scores``, largest first (ties: lowest position first
    among those ``argpartition`` keeps), as the reader's exact scan orders them."""
    m = scores.shape[0]
    if m == 0 or n <= 0:
        return np.empty(0, dtype=np.intp)
    part = np.argpartition(scores, m - n)[m - n:] if n < m else np.arange(m)
    return part[np.argsort(-scores[part], kind="stable")]
