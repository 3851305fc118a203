"""Batched implicit-ALS fold-in: many users against one model, by a direct or a low-rank solve.

Both give :func:`driftrec.models.factors.fold_in` for every user (up to rounding) and the result for a
user depends on that user's rows and confidences only, never on the other users of the call.

With ``A0 = YᵀY + λI`` and a user's distinct rows ``Y_u`` (n × k) and confidences ``c``::

    x_u = (A0 + Y_uᵀ D Y_u)⁻¹ Y_uᵀ c,    D = diag(c − 1)

* **direct**: form and solve the k × k system, O(n k² + k³) per user.
* **low-rank** (Woodbury): with ``Z = Y A0⁻¹`` computed once per model (:func:`fold_in_basis`),
  ``g = Z_uᵀ c``, ``s = √|c − 1|``, ``σ = sign(c − 1)`` (+1 where ``c = 1``) and the symmetric
  n × n matrix ``K = diag(s) Y_u Z_uᵀ diag(s)``::

      x_u = g − Z_uᵀ diag(s) (diag(σ) + K)⁻¹ diag(s) Y_u g

  O(n² k + n³) per user. ``c − 1`` is negative for confidences below 1 (a decayed weight times
  ``alpha``), hence the signs; ``diag(σ) + K`` is then indefinite but invertible exactly when
  the k × k system is (its determinant is ``±det(A)/det(A0)``). A padding row (the zero row of
  ``Yz``, ``s = 0``, ``σ = 1``) gives an identity row and column with a zero right-hand side:
  it adds exactly nothing, so users of similar size are solved together in padded buckets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy.linalg

__all__ = ["fold_in_basis", "fold_in_direct", "fold_in_lowrank", "fold_in_many", "bucket_width"]

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
Rows = Sequence[npt.NDArray[np.intp]]
Confs = Sequence[F64]


def fold_in_basis(Y: npt.ArrayLike, YtY: npt.ArrayLike, reg: float) -> F64 | None:
    """``Z = Y (YᵀY + λI)⁻¹``, the per-model part of :func:`fold_in_lowrank`.

    Parameters
    ----------
    Y : array_like, shape (n_items, k)
        Item factors; pass ``Yz`` (zero row appended) to get ``Zz`` (its last row is zero too).
    YtY : array_like, shape (k, k)
        Gram matrix of the model's item factors (without any padding row).
    reg : float
        L2 regularisation λ.

    Returns
    -------
    ndarray, shape (n_items, k), or None
        None when ``YᵀY + λI`` is not numerically positive definite (``λ = 0`` on a
        rank-deficient model): callers then use :func:`fold_in_direct`.
    """
    G = np.asarray(YtY, dtype=np.float64)
    A0 = G + reg * np.eye(G.shape[0])
    try:
        factor = scipy.linalg.cho_factor(A0, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        logger.warning("YtY + reg*I is not positive definite (reg=%g): low-rank fold-in off", reg)
        return None
    Z = scipy.linalg.cho_solve(factor, np.asarray(Y, dtype=np.float64).T, check_finite=False).T
    return np.ascontiguousarray(Z)


def _pad(Yz: F64, rows: Rows, confs: Confs, width: int) -> tuple[npt.NDArray[np.intp], F64]:
    """Row indexes and confidences padded to ``width`` with the zero row and confidence 0."""
    idx = np.full((len(rows), width), Yz.shape[0] - 1, dtype=np.intp)
    conf = np.zeros((len(rows), width))
    for u, (r, c) in enumerate(zip(rows, confs, strict=True)):
        idx[u, : len(r)] = r
        conf[u, : len(r)] = c
    return idx, conf


def fold_in_direct(Yz: F64, YtY: F64, rows: Rows, confs: Confs, reg: float) -> F64:
    """:func:`driftrec.models.factors.fold_in` for many users, one stacked k × k solve (the reference).

    Parameters
    ----------
    Yz : ndarray, shape (n_items + 1, k)
        Item factors with a zero row appended; padding indexes that row and adds nothing.
    YtY : ndarray, shape (k, k)
        ``Y.T @ Y``.
    rows, confs : sequences of 1-d arrays
        Per user: distinct item rows and their (positive) confidences.
    reg : float
        L2 regularisation λ.

    Returns
    -------
    ndarray, shape (len(rows), k)
    """
    n_users, k = len(rows), Yz.shape[1]
    if n_users == 0:
        return np.zeros((0, k))
    idx, conf = _pad(Yz, rows, confs, max(len(r) for r in rows))
    Yu = Yz[idx]  # (U, n, k); padded rows are zero
    A = (Yu * (conf - 1.0)[:, :, None]).transpose(0, 2, 1) @ Yu
    A += YtY + reg * np.eye(k)
    b = np.einsum("unk,un->uk", Yu, np.where(conf > 0, conf, 0.0))
    return np.linalg.solve(A, b[:, :, None])[:, :, 0]


def fold_in_lowrank(Yz: F64, Zz: F64, rows: Rows, confs: Confs, width: int, YZz: F64 | None = None) -> F64:
    """The same users as :func:`fold_in_direct`, by the Woodbury identity (module docstring).

    Parameters
    ----------
    Yz : ndarray, shape (n_items + 1, k)
        Item factors with a zero row appended.
    Zz : ndarray, shape (n_items + 1, k)
        :func:`fold_in_basis` of ``Yz`` for the model's ``YtY`` and λ.
    rows, confs : sequences of 1-d arrays
        Per user: distinct item rows and their (positive) confidences.
    width : int
        Padded width, at least every user's row count. Pass the same width for a user
        whatever its company (:func:`bucket_width`): the result then does not depend on it.
    YZz : ndarray, shape (n_items + 1, 2k), optional
        ``[Yz | Zz]`` side by side (C order): one gather fetches a user's rows of both, a
        third of the cost of two (the gather was the costliest step of the worker's fold-in).

    Returns
    -------
    ndarray, shape (len(rows), k)
    """
    k = Yz.shape[1]
    if not rows:
        return np.zeros((0, k))
    idx, conf = _pad(Yz, rows, confs, width)
    d = np.where(conf > 0, conf - 1.0, 0.0)  # padding: 0
    s = np.sqrt(np.abs(d))
    if YZz is not None:
        YZu = YZz[idx]  # (U, w, 2k)
        Yu, Zu = YZu[:, :, :k], YZu[:, :, k:]
    else:
        Yu, Zu = Yz[idx], Zz[idx]  # (U, w, k)
    g = (conf[:, None, :] @ Zu)[:, 0, :]  # A0⁻¹ Y_uᵀ c
    K = Yu @ Zu.transpose(0, 2, 1)  # Y_u A0⁻¹ Y_uᵀ, symmetric PSD
    K *= s[:, :, None]
    K *= s[:, None, :]
    diag = np.einsum("uii->ui", K)  # a writable view of the diagonals
    diag += np.where(d < 0, -1.0, 1.0)
    r = s * (Yu @ g[:, :, None])[:, :, 0]
    t = np.linalg.solve(K, r[:, :, None])  # (U, w, 1)
    return g - ((s[:, :, None] * t).transpose(0, 2, 1) @ Zu)[:, 0, :]


def bucket_width(n: int) -> int:
    """Padded width of a user with ``n`` rows: the next power of two."""
    return 1 << max(n - 1, 0).bit_length()


def fold_in_many(Yz: F64, YtY: F64, rows: Rows, confs: Confs, reg: float,
                 Zz: F64 | None = None, YZz: F64 | None = None) -> F64:
    """Fold many users in: low-rank where it is cheaper, else direct.

    Users are grouped by :func:`bucket_width`; a bucket narrower than ``k`` takes
    :func:`fold_in_lowrank` (when ``Zz`` is given), the rest :func:`fold_in_direct`.

    Parameters
    ----------
    Yz, YtY, rows, confs, reg
        As for :func:`fold_in_direct`.
    Zz : ndarray, shape (n_items + 1, k), optional
        :func:`fold_in_basis` of ``Yz``; None solves every user directly.
    YZz : ndarray, shape (n_items + 1, 2k), optional
        ``[Yz | Zz]`` side by side, for the low-rank gather (:func:`fold_in_lowrank`).

    Returns
    -------
    ndarray, shape (len(rows), k)
    """
    n_users, k = len(rows), Yz.shape[1]
    if Zz is None or n_users == 0:
        return fold_in_direct(Yz, YtY, rows, confs, reg)
    out = np.empty((n_users, k))
    buckets: dict[int, list[int]] = {}
    for u, r in enumerate(rows):
        buckets.setdefault(bucket_width(len(r)), []).append(u)
    direct: list[int] = []
    for width, members in sorted(buckets.items()):
        if width >= k:
            direct.extend(members)
            continue
        out[members] = fold_in_lowrank(Yz, Zz, [rows[u] for u in members],
                                       [confs[u] for u in members], width, YZz)
    if direct:
        out[direct] = fold_in_direct(Yz, YtY, [rows[u] for u in direct],
                                     [confs[u] for u in direct], reg)
    return out
