"""models.foldin: the low-rank (Woodbury) batched fold-in against the exact dense solve.

Tolerance: every user vector within a relative (2-norm) error of 1e-8 of
``np.linalg.solve(YᵀY + λI + Y_uᵀ diag(c − 1) Y_u, Y_uᵀ c)`` in float64. Both solves are
backward stable on these well-conditioned systems (errors seen are 1e-16 to 1e-12), so 1e-8
leaves room for BLAS differences and still catches any wrong term (those show at 1e-3 and up).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.modelformat import pack_factors
from driftrec.models.factors import fold_in
from driftrec.models.foldin import (
    bucket_width,
    fold_in_basis,
    fold_in_direct,
    fold_in_lowrank,
    fold_in_many,
)
from driftrec.streams.published import unpack_factors

RTOL = 1e-8
F64 = np.ndarray


def _model(k: int, n_items: int, seed: int, decay: bool = False,
           reg: float = 0.1) -> tuple[F64, F64, F64, F64, float]:
    rng = np.random.default_rng(seed)
    Y = rng.normal(0, 0.3, (n_items, k))
    if decay:  # a spectrum falling 100x across the factors, as trained factors have
        Y *= np.geomspace(1.0, 0.01, k)
    Yz = np.vstack([Y, np.zeros((1, k))])
    YtY = Y.T @ Y
    Zz = fold_in_basis(Yz, YtY, reg)
    assert Zz is not None
    return Y, Yz, YtY, Zz, reg


def _dense(Y: F64, YtY: F64, rows: np.ndarray, conf: np.ndarray, reg: float) -> F64:
    Yu = Y[rows]
    A = YtY + reg * np.eye(Y.shape[1]) + (Yu * (conf - 1.0)[:, None]).T @ Yu
    return np.linalg.solve(A, Yu.T @ conf)


def _assert_close(got: F64, want: F64) -> None:
    err = np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)
    assert np.all(err <= RTOL), f"max relative error {err.max():.3g} > {RTOL}"


def _users(rng: np.random.Generator, sizes: list[int], n_items: int, scale: str) -> tuple[list, list]:
    rows, confs = [], []
    for n in sizes:
        rows.append(rng.choice(n_items, size=n, replace=False).astype(np.intp))
        if scale == "tiny":
            c = 2.0 * rng.uniform(0.5, 2.0, n) * 1e-6  # c ≈ 0: c − 1 ≈ −1
        elif scale == "large":
            c = rng.uniform(0.5, 2.0, n) * 1e4
        elif scale == "near_one":
            c = 1.0 + rng.uniform(-1e-6, 1e-6, n)
        else:  # decayed weights times alpha: on both sides of 1
            c = 2.0 * rng.lognormal(-0.5, 1.5, n)
        confs.append(c)
    return rows, confs


@settings(max_examples=40, deadline=None)
@given(k=st.sampled_from([8, 32, 128]),
       sizes=st.lists(st.integers(1, 60), min_size=1, max_size=12),
       scale=st.sampled_from(["tiny", "large", "near_one", "mixed"]),
       decay=st.booleans(),
       reg=st.sampled_from([0.1, 20.0]),
       seed=st.integers(0, 2**16))
def test_fold_in_many_matches_the_dense_solve(k: int, sizes: list[int], scale: str, decay: bool,
                                              reg: float, seed: int) -> None:
    n_items = 4 * k + 64
    Y, Yz, YtY, Zz, reg = _model(k, n_items, seed, decay, reg)
    rows, confs = _users(np.random.default_rng(seed + 1), sizes, n_items, scale)
    got = fold_in_many(Yz, YtY, rows, confs, reg, Zz)
    want = np.array([_dense(Y, YtY, r, c, reg) for r, c in zip(rows, confs, strict=True)])
    _assert_close(got, want)
    _assert_close(fold_in_direct(Yz, YtY, rows, confs, reg), want)


@pytest.mark.parametrize("k", [8, 32, 128])
def test_lowrank_every_size_up_to_60_with_padding_and_duplicate_widths(k: int) -> None:
    n_items = 600
    Y, Yz, YtY, Zz, reg = _model(k, n_items, seed=k)
    rng = np.random.default_rng(3)
    sizes = [n for n in range(1, 61) for _ in range(2)]  # two users of every size
    rows, confs = _users(rng, sizes, n_items, "mixed")
    want = np.array([_dense(Y, YtY, r, c, reg) for r, c in zip(rows, confs, strict=True)])
    # The low-rank solve on its own, every user padded to 64 (even k <= n, where it is slower).
    _assert_close(fold_in_lowrank(Yz, Zz, rows, confs, 64), want)
    _assert_close(fold_in_many(Yz, YtY, rows, confs, reg, Zz), want)
    _assert_close(fold_in_many(Yz, YtY, rows, confs, reg), want)  # no Zz: all direct


def test_a_users_vector_does_not_depend_on_the_other_users_of_the_call() -> None:
    k, n_items = 32, 400
    _, Yz, YtY, Zz, reg = _model(k, n_items, seed=5)
    rng = np.random.default_rng(6)
    rows, confs = _users(rng, [3, 1, 7, 40, 3, 12, 60, 2], n_items, "mixed")
    together = fold_in_many(Yz, YtY, rows, confs, reg, Zz)
    for u in range(len(rows)):
        alone = fold_in_many(Yz, YtY, rows[u : u + 1], confs[u : u + 1], reg, Zz)
        # In other company, in another order: the same padded width, the same arithmetic.
        others = [v for v in range(len(rows)) if v != u][::-1] + [u]
        mixed = fold_in_many(Yz, YtY, [rows[v] for v in others], [confs[v] for v in others], reg, Zz)
        np.testing.assert_allclose(together[u], alone[0], rtol=1e-12, atol=0)
        np.testing.assert_allclose(mixed[-1], alone[0], rtol=1e-12, atol=0)


def test_padding_rows_add_nothing() -> None:
    k, n_items = 16, 200
    _, Yz, YtY, Zz, reg = _model(k, n_items, seed=8)
    rows, confs = _users(np.random.default_rng(9), [3], n_items, "mixed")
    at = {w: fold_in_lowrank(Yz, Zz, rows, confs, w)[0] for w in (3, 4, 8, 32)}
    for w in (4, 8, 32):
        np.testing.assert_allclose(at[w], at[3], rtol=1e-12)


def test_matches_models_factors_fold_in() -> None:
    k, n_items = 32, 300
    Y, Yz, YtY, Zz, reg = _model(k, n_items, seed=10)
    rows, confs = _users(np.random.default_rng(11), [1, 5, 20], n_items, "mixed")
    got = fold_in_many(Yz, YtY, rows, confs, reg, Zz)
    for u, (r, c) in enumerate(zip(rows, confs, strict=True)):
        _assert_close(got[u], fold_in(Y, YtY, r, c, reg))


def test_bucket_width_is_the_next_power_of_two() -> None:
    assert [bucket_width(n) for n in (0, 1, 2, 3, 4, 5, 33, 64, 65)] == [1, 1, 2, 4, 4, 8, 64, 64, 128]


def test_basis_is_none_when_the_system_is_singular() -> None:
    Y = np.zeros((5, 4))
    Y[:, 0] = 1.0  # rank 1: YᵀY singular without regularisation
    assert fold_in_basis(Y, Y.T @ Y, 0.0) is None
    Z = fold_in_basis(Y, Y.T @ Y, 0.5)
    assert Z is not None
    np.testing.assert_allclose(Z @ (Y.T @ Y + 0.5 * np.eye(4)), Y, atol=1e-12)


def test_published_factors_carry_the_basis() -> None:
    rng = np.random.default_rng(12)
    ids = [f"m{j}" for j in range(50)]
    m = unpack_factors("v1", pack_factors(ids, rng.normal(0, 0.5, (50, 8)), alpha=2.0,
                                          regularization=0.3), 0.1)
    assert m.Zz is not None and m.Zz.shape == m.Yz.shape
    np.testing.assert_allclose(m.Zz @ (m.YtY + 0.3 * np.eye(8)), m.Yz, atol=1e-12)
    assert not m.Zz[-1].any()  # the padding row stays zero
    # [Yz | Zz] side by side, for the one-gather fold-in.
    assert m.YZz is not None and m.YZz.flags.c_contiguous
    np.testing.assert_array_equal(m.YZz, np.hstack([m.Yz, m.Zz]))


@pytest.mark.parametrize("k", [8, 128])
def test_one_gather_of_yz_and_zz_side_by_side_gives_the_same_vectors(k: int) -> None:
    Y, Yz, YtY, Zz, reg = _model(k, 400, seed=k)
    rng = np.random.default_rng(5)
    rows, confs = _users(rng, [1, 2, 3, 5, 9, 17, 33, 50], 400, "mixed")
    YZz = np.ascontiguousarray(np.hstack([Yz, Zz]))
    # Same arithmetic on strided views: equal up to BLAS kernel rounding.
    np.testing.assert_allclose(fold_in_many(Yz, YtY, rows, confs, reg, Zz, YZz),
                               fold_in_many(Yz, YtY, rows, confs, reg, Zz), rtol=1e-12, atol=1e-15)
    want = np.stack([_dense(Y, YtY, r, c, reg) for r, c in zip(rows, confs, strict=True)])
    _assert_close(fold_in_many(Yz, YtY, rows, confs, reg, Zz, YZz), want)
