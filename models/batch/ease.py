"""EASE (Steck 2019): a closed-form item-item linear autoencoder with a zero diagonal."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Self

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from driftrec.errors import ModelError
from driftrec.models.batch.base import BatchModel, as_interactions, csr_from_arrays, csr_to_arrays

__all__ = ["EASEModel", "ease_weights"]

logger = logging.getLogger(__name__)


def ease_weights(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE's item-item weights from a Gram matrix.

    Minimising ``‖X − XB‖²_F + λ‖B‖²_F`` subject to ``diag(B) = 0`` has the closed form
    ``B = I − P · diagMat(1 / diag(P))`` with ``P = (XᵀX + λI)⁻¹``, i.e.
    ``B_ij = −P_ij / P_jj`` off the diagonal and ``B_jj = 0``.

    Parameters
    ----------
    gram : np.ndarray
        ``XᵀX`` (``a x a``); overwritten.
    lam : float
        L2 penalty ``λ`` (> 0 keeps ``XᵀX + λI`` invertible).

    Returns
    -------
    np.ndarray
        ``(a, a)`` float32 ``B``.
    """
    n = gram.shape[0]
    gram[np.diag_indices(n)] += lam
    p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
    b = p / (-np.diag(p))[None, :]
    b[np.diag_indices(n)] = 0.0
    return b.astype(np.float32)


class EASEModel(BatchModel):
    """EASE: ``score(u, ·) = xᵤ B`` with ``B`` from :func:`ease_weights`.

    ``B`` is dense, so its cost is ``O(a³)`` time and ``O(a²)`` memory in the number ``a`` of
    modelled items. Items seen by fewer than ``min_item_count`` training users are left out of
    ``B`` (they are never recommended and do not contribute to scores); on MovieLens this
    drops the long tail of single-rating films that a top-10 list never reaches anyway.

    Parameters
    ----------
    lam : float
        L2 penalty ``λ`` on ``B``.
    min_item_count : int
        Minimum number of training users for an item to be modelled.
    """

    name = "ease"

    def __init__(self, lam: float = 500.0, min_item_count: int = 1) -> None:
        super().__init__()
        if lam <= 0 or min_item_count < 1:
            raise ModelError("EASE needs lam > 0 and min_item_count >= 1")
        self.lam = lam
        self.min_item_count = min_item_count
        self.active_items = np.zeros(0, np.int64)
        self.weights = np.zeros((0, 0), np.float32)
        self.history = sp.csr_matrix((0, 0), dtype=np.float32)

    def params(self) -> dict[str, Any]:
        return {"lam": self.lam, "min_item_count": self.min_item_count}

    def fit(self, interactions: sp.csr_matrix, *, seed: int = 0, progress: bool = False) -> Self:
        x = as_interactions(interactions)
        counts = np.bincount(x.indices, minlength=x.shape[1])
        active = np.flatnonzero(counts >= self.min_item_count)
        if active.size == 0:
            raise ModelError(f"no item has >= {self.min_item_count} users; lower min_item_count")
        xa = x[:, active].astype(np.float64)
        t0 = time.perf_counter()
        gram = np.asarray((xa.T @ xa).todense())
        self.weights = ease_weights(gram, self.lam)
        logger.info(
            "EASE: %d of %d items, solved in %.1fs",
            active.size,
            x.shape[1],
            time.perf_counter() - t0,
        )
        self.active_items = active.astype(np.int64)
        self.history = x
        self.n_users, self.n_items = x.shape
        return self

    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        h = sp.csr_matrix(history, dtype=np.float32)[:, self.active_items]
        out = np.full((h.shape[0], self.n_items), -np.inf, np.float32)
        out[:, self.active_items] = np.asarray(h @ self.weights)
        return out

    def _score_users(self, user_rows: np.ndarray) -> np.ndarray:
        return self._score_history(self.history[user_rows])

    def _export(self) -> dict[str, np.ndarray]:
        return {
            "weights": self.weights,
            "active_items": self.active_items,
            "ease_params": np.asarray([self.lam, self.min_item_count], np.float64),
            **csr_to_arrays("history", self.history),
        }

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        lam, min_count = (float(v) for v in arrays["ease_params"])
        model = cls(lam=lam, min_item_count=int(min_count))
        model.weights = np.asarray(arrays["weights"], np.float32)
        model.active_items = np.asarray(arrays["active_items"], np.int64)
        model.history = csr_from_arrays("history", arrays)
        return model
