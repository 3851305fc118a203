"""BM25 and TF-IDF re-weighting of a users x items matrix, refittable on new user rows."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from driftrec.errors import ModelError

__all__ = ["WEIGHTINGS", "Weighting"]

logger = logging.getLogger(__name__)

#: Weighting kinds and the integer codes they travel under in exported arrays.
WEIGHTINGS: dict[str, int] = {"none": 0, "bm25": 1, "bm25_item": 2, "tfidf": 3}


@dataclass(frozen=True)
class Weighting:
    """A fitted re-weighting of interaction weights.

    Two orientations of BM25 are offered because they down-weight different things:

    * ``bm25`` treats each **user** as a document and items as terms: an item's idf is
      ``log(n_users) - log1p(users_who_have_it)`` (popular items count less) and a user's row is
      length-normalised against the mean user (heavy users count less per item).
    * ``bm25_item`` treats each **item** as a document and users as terms, which is what
      implicit's examples do when they call ``bm25_weight`` on an items x users matrix: a user's
      idf is ``log(n_items) - log1p(items_they_have)`` and an item's column is
      length-normalised against the mean item (popular items count less per user).
    * ``tfidf`` is ``sqrt(x) * idf(item)`` with users as documents.

    For a weight ``x`` BM25 gives ``x (K1 + 1) / (K1 * norm + x) * idf``. Idf is floored at
    ``1e-3`` so that on tiny catalogues an item everybody has keeps a (small) positive weight.

    Everything a new user's row needs (item idf, item length norms, mean length) is kept, so
    :meth:`apply` weights a live history exactly as training rows were weighted.
    """

    kind: str = "none"
    k1: float = 100.0
    b: float = 0.8
    n_users: int = 0
    n_items: int = 0
    item_idf: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    item_norm: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    mean_user_length: float = 1.0

    @classmethod
    def fit(cls, kind: str, x: sp.csr_matrix, *, k1: float = 100.0, b: float = 0.8) -> Weighting:
        """Learn the collection statistics of ``x`` (users x items)."""
        if kind not in WEIGHTINGS:
            raise ModelError(f"unknown weighting {kind!r}; choose from {sorted(WEIGHTINGS)}")
        n_users, n_items = x.shape
        x = sp.csr_matrix(x)
        df = np.bincount(x.indices, minlength=n_items).astype(np.float64)
        idf = np.maximum(np.log(max(n_users, 1)) - np.log1p(df), 1e-3)
        item_len = np.asarray(x.sum(axis=0)).ravel().astype(np.float64)
        mean_item = item_len.mean() if item_len.size else 1.0
        item_norm = (1.0 - b) + b * item_len / (mean_item if mean_item > 0 else 1.0)
        user_len = np.asarray(x.sum(axis=1)).ravel()
        return cls(
            kind=kind,
            k1=float(k1),
            b=float(b),
            n_users=int(n_users),
            n_items=int(n_items),
            item_idf=idf.astype(np.float32),
            item_norm=item_norm.astype(np.float32),
            mean_user_length=float(user_len.mean())
            if user_len.size and user_len.mean() > 0
            else 1.0,
        )

    def apply(self, rows: sp.csr_matrix) -> sp.csr_matrix:
        """Re-weight user rows (training rows or live histories) with the fitted statistics."""
        out = sp.csr_matrix(rows, dtype=np.float32, copy=True)
        if self.kind == "none":
            return out
        if out.shape[1] != self.n_items:
            raise ModelError(f"rows have {out.shape[1]} items, weighting was fit on {self.n_items}")
        x = out.data.astype(np.float64)
        cols = out.indices
        row_of = np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))
        if self.kind == "bm25":
            length = np.asarray(out.sum(axis=1)).ravel().astype(np.float64)
            norm = (1.0 - self.b) + self.b * length / self.mean_user_length
            w = x * (self.k1 + 1.0) / (self.k1 * norm[row_of] + x) * self.item_idf[cols]
        elif self.kind == "bm25_item":
            nnz = np.diff(out.indptr).astype(np.float64)
            user_idf = np.maximum(np.log(max(self.n_items, 1)) - np.log1p(nnz), 1e-3)
            w = x * (self.k1 + 1.0) / (self.k1 * self.item_norm[cols] + x) * user_idf[row_of]
        else:  # tfidf
            w = np.sqrt(np.maximum(x, 0.0)) * self.item_idf[cols]
        out.data = w.astype(np.float32)
        return out

    def to_arrays(self, prefix: str = "weighting") -> dict[str, np.ndarray]:
        """Plain arrays for a model export."""
        return {
            f"{prefix}_kind": np.asarray([WEIGHTINGS[self.kind]], np.int32),
            f"{prefix}_params": np.asarray([self.k1, self.b, self.mean_user_length], np.float64),
            f"{prefix}_dims": np.asarray([self.n_users, self.n_items], np.int64),
            f"{prefix}_item_idf": np.asarray(self.item_idf, np.float32),
            f"{prefix}_item_norm": np.asarray(self.item_norm, np.float32),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "weighting") -> Weighting:
        """Inverse of :meth:`to_arrays`."""
        try:
            code = int(arrays[f"{prefix}_kind"][0])
            k1, b, mean_len = (float(v) for v in arrays[f"{prefix}_params"])
            n_users, n_items = (int(v) for v in arrays[f"{prefix}_dims"])
            kind = {v: k for k, v in WEIGHTINGS.items()}[code]
            return cls(
                kind=kind,
                k1=k1,
                b=b,
                n_users=n_users,
                n_items=n_items,
                item_idf=np.asarray(arrays[f"{prefix}_item_idf"], np.float32),
                item_norm=np.asarray(arrays[f"{prefix}_item_norm"], np.float32),
                mean_user_length=mean_len,
            )
        except KeyError as exc:
            raise ModelError(f"exported arrays lack weighting field {exc.args[0]!r}") from exc
