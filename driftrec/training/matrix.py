"""The users x items training matrix: the stream's event weights and forward decay, read at one time."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from driftrec.errors import ModelError
from driftrec.models.decay import DecayPolicy
from driftrec.training.clicklog import ClickLog

__all__ = ["Interactions", "build_interactions", "MIN_WEIGHT"]

logger = logging.getLogger(__name__)

#: Cells whose decayed weight falls below this are dropped: one view 20 half-lives old
#: (weight ~1e-6) is no evidence any more, and cosine-normalised models (item-kNN, SVD) would
#: otherwise blow such dust back up to full strength.
MIN_WEIGHT = 1e-6


@dataclass(frozen=True)
class Interactions:
    """A decayed users x items weight matrix and the ids of its rows and columns.

    ``matrix[u, i] = Σ_e w(type_e) · exp(−λ (until − t_e))`` over the events of user ``u`` on
    item ``i`` up to ``until``: what the worker's ``P:{u:U}:w`` ZSET holds for the pair at
    event time ``until`` (before its ``history_len`` cap), so batch and online paths see the
    same weights.
    """

    matrix: sp.csr_matrix
    user_ids: list[str]
    item_ids: list[str]
    until: float
    events: int

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))

    def describe(self) -> str:
        n_u, n_i = self.shape
        nnz = int(self.matrix.nnz)
        mb = (self.matrix.data.nbytes + self.matrix.indices.nbytes + self.matrix.indptr.nbytes) / 1e6
        density = nnz / (n_u * n_i) if n_u and n_i else 0.0
        return (f"{self.events} events -> {n_u} users x {n_i} items, {nnz} non-zeros "
                f"(density {density:.2e}, {mb:.1f} MB CSR)")


def build_interactions(log: ClickLog, policy: DecayPolicy, *, until: float | None = None,
                       min_weight: float = MIN_WEIGHT) -> Interactions:
    """Sum each (user, item)'s event weights decayed to ``until`` (default: the log's last event).

    Parameters
    ----------
    log : ClickLog
        Accepted events; ``log.weights`` already holds each event type's weight.
    policy : DecayPolicy
        The stream's decay (``half_life_s``); the rate ``λ = ln 2 / half_life_s``.
    until : float, optional
        Event time the weights are read at; events after it are an error.
    min_weight : float
        Cells below this decayed weight are dropped (see :data:`MIN_WEIGHT`).

    Raises
    ------
    ModelError
        When the log is empty or no cell keeps a weight of at least ``min_weight``.
    """
    if not len(log):
        raise ModelError(f"{log.stats.source}: the click log holds no accepted events; nothing to train on")
    t_end = log.last_event_time if until is None else float(until)
    if float(log.times.max()) > t_end:
        raise ModelError(f"events after the decay time {t_end} cannot be decayed to it")
    # Backward form exp(−λ (T − t)) in float64: the forward scores the worker stores, read at T.
    w = log.weights * np.exp(-policy.rate * (t_end - log.times))
    shape = (len(log.user_ids), len(log.item_ids))
    m = sp.csr_matrix((w, (log.users, log.items)), shape=shape, dtype=np.float64)
    m.sum_duplicates()
    m.data[m.data < min_weight] = 0.0
    m.eliminate_zeros()
    if m.nnz == 0:
        raise ModelError(f"{log.stats.source}: every interaction decayed below {min_weight} "
                         f"(half-life {policy.half_life_s:.0f}s); nothing to train on")
    rows = np.flatnonzero(np.diff(m.indptr) > 0)
    cols = np.flatnonzero(np.bincount(m.indices, minlength=shape[1]) > 0)
    m = m[rows][:, cols].tocsr()
    m.sort_indices()
    return Interactions(
        matrix=sp.csr_matrix(m, dtype=np.float32), user_ids=[log.user_ids[r] for r in rows.tolist()],
        item_ids=[log.item_ids[c] for c in cols.tolist()], until=t_end, events=len(log))

