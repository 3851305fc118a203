"""The reader's in-memory published model: parsing, one-product scoring, TF forward pass, reloads."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence

import numpy as np
import pytest

from driftrec.errors import ModelError
from driftrec.models.batch.tf_next import forward
from driftrec.models.factors import fold_in
from driftrec.online.model_cache import ModelCache, PublishedModel, build_model, decode_ids


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def parts(seed: int = 0, n_items: int = 40, n_users: int = 30, k: int = 6, tf: bool = True,
          hidden: Sequence[int] = (8, 5)) -> tuple[dict[str, bytes | None], dict[str, bytes | None]]:
    rng = np.random.default_rng(seed)
    p: dict[str, bytes | None] = {
        "item_ids": "\n".join(f"i{j}" for j in range(n_items)).encode(),
        "item_factors": npy(rng.normal(size=(n_items, k)).astype(np.float32)),
        "user_ids": "\n".join(f"u{j}" for j in range(n_users)).encode(),
        "user_factors": npy(rng.normal(size=(n_users, k)).astype(np.float32)),
        "alpha": npy(np.array([2.0])),
        "regularization": npy(np.array([0.3])),
    }
    t: dict[str, bytes | None] = {}
    if tf:
        dims = [n_items, *hidden, n_items]
        p["tf_n_layers"] = npy(np.array([len(dims) - 1], np.int32))
        for i in range(len(dims) - 1):
            t[f"tf_layer{i}_weight"] = npy(rng.normal(size=(dims[i], dims[i + 1])).astype(np.float32))
            t[f"tf_layer{i}_bias"] = npy(rng.normal(size=dims[i + 1]).astype(np.float32))
    return p, t


def model(**kw: object) -> PublishedModel:
    p, t = parts(**kw)  # type: ignore[arg-type]
    return build_model("v1", p, t, default_reg=0.1, pool_size=1000)


def test_vector_scores_are_the_top_of_y_u() -> None:
    m = model(tf=False)
    u = np.random.default_rng(1).normal(size=m.k).astype(np.float32)
    vec, tf = m.score(u, None, 5)
    full = m.Y @ u
    expect = [f"i{j}" for j in np.argsort(-full)[:5]]
    assert [i for i, _ in vec] == expect and tf == []
    assert vec[0][1] == pytest.approx(float(full.max()), rel=1e-5)


def test_tf_logits_match_the_numpy_forward_pass_of_the_trainer() -> None:
    m = model()
    p, t = parts()
    n_layers = int(np.load(io.BytesIO(p["tf_n_layers"] or b"")).ravel()[0])
    ws = [np.load(io.BytesIO(t[f"tf_layer{i}_weight"] or b"")) for i in range(n_layers)]
    bs = [np.load(io.BytesIO(t[f"tf_layer{i}_bias"] or b"")) for i in range(n_layers)]
    history = [("i3", 2.0), ("i17", 0.5), ("i30", 1.0), ("not-in-model", 9.0)]
    x = np.zeros((1, 40), np.float32)
    for item, w in history[:3]:
        x[0, int(item[1:])] = w
    logits = forward(x, ws, bs)[0]
    h = m.tf_hidden_state(history)
    u = np.ones(m.k, np.float32)
    vec, tf = m.score(u, h, 7)
    assert [i for i, _ in tf] == [f"i{j}" for j in np.argsort(-logits)[:7]]
    # Shifted to stay positive, differences kept.
    assert tf[0][1] - tf[1][1] == pytest.approx(float(np.sort(logits)[-1] - np.sort(logits)[-2]), abs=1e-4)
    assert all(s > 0 for _, s in tf)
    # Scoring both sources gives the same vector scores as Y @ u alone.
    assert [i for i, _ in vec] == [i for i, _ in m.score(u, None, 7)[0]]
    assert m.score(None, h, 7)[1] == tf


def test_user_vector_prefers_the_stored_one_then_batch_then_fold_in() -> None:
    m = model()
    stored = np.arange(m.k, dtype=np.float32)
    assert np.array_equal(m.user_vector(stored.tobytes(), "v1", "u3", []), stored)
    batch = m.user_vector(stored.tobytes(), "v0", "u3", [])  # stale version: the batch row
    assert batch is not None and np.array_equal(batch, m.user_factors[3])  # type: ignore[index]
    weights = [("i1", 3.0), ("i5", 1.0), ("zzz", 4.0)]
    folded = m.user_vector(None, None, "new-user", weights)
    expect = fold_in(m.Y, m.YtY, [1, 5], [2.0 * 3.0, 2.0 * 1.0], 0.3)
    assert folded is not None and np.allclose(folded, expect, atol=1e-5)
    assert m.user_vector(None, None, "new-user", [("zzz", 1.0)]) is None
    assert m.user_vector(b"\x00" * 3, "v1", "stranger", []) is None  # wrong length is ignored


def test_nearest_users_leave_the_user_out() -> None:
    m = model()
    u = m.user_factors[4].copy()  # type: ignore[index]
    near = m.nearest_users(u, "u4", 3)
    assert len(near) <= 3 and "u4" not in [v for v, _ in near]
    unit = m.user_factors / np.linalg.norm(m.user_factors, axis=1, keepdims=True)  # type: ignore[operator]
    sims = unit @ (u / np.linalg.norm(u))
    order = [f"u{j}" for j in np.argsort(-sims) if j != 4 and sims[j] > 0][:3]
    assert [v for v, _ in near] == order


def test_similar_items_by_factor_cosine() -> None:
    m = model(tf=False)
    sims = m.item_neighbours("i2", 4)
    assert "i2" not in [i for i, _ in sims] and len(sims) <= 4
    assert m.item_neighbours("unknown", 4) == []
    # Bit for bit the cosine of the whole catalogue's float32 factors.
    norms = np.sqrt((m.Y * m.Y).sum(axis=1))
    cos = ((m.Y @ m.Y[2]) / (norms * float(norms[2]) + 1e-12)).astype(np.float32)
    cos[2] = -np.inf
    order = np.argsort(-cos, kind="stable")[:4]
    assert sims == [(f"i{j}", float(cos[j])) for j in order if cos[j] > 0]


def test_a_scan_pool_covering_the_catalogue_is_the_catalogue_itself() -> None:
    p, t = parts()
    whole = build_model("v1", p, t, default_reg=0.1, pool_size=1000)
    pooled = build_model("v1", p, t, default_reg=0.1, pool_size=1000, scan_items=40)
    assert pooled.scan_rows is None and pooled.scan_Y is pooled.Y and pooled.scan_ids is pooled.item_ids
    rng = np.random.default_rng(3)
    for _ in range(5):
        u = rng.normal(size=whole.k).astype(np.float32)
        h = whole.tf_hidden_state([("i3", 1.0), ("i9", 2.0)])
        assert pooled.score(u, h, 12) == whole.score(u, h, 12)
        assert pooled.item_neighbours("i7", 6) == whole.item_neighbours("i7", 6)


def test_a_scan_pool_scans_the_items_with_the_largest_factor_norms() -> None:
    p, t = parts(n_items=60)
    whole = build_model("v1", p, t, default_reg=0.1, pool_size=1000)
    m = build_model("v1", p, t, default_reg=0.1, pool_size=1000, scan_items=15)
    norms = np.linalg.norm(whole.Y, axis=1)
    pool = {f"i{j}" for j in np.argsort(-norms)[:15]}
    assert set(m.scan_ids) == pool and len(m.scan_ids) == 15
    assert m.scan_rows is not None and list(m.scan_rows) == sorted(m.scan_rows)
    assert m.has_tf and m.tf_out is None  # only the pool's rows of the output layer are kept
    rng = np.random.default_rng(4)
    h = whole.tf_hidden_state([("i3", 1.0), ("i50", 2.0)])
    logits = whole.tf_out @ h + whole.tf_out_bias  # type: ignore[operator]
    for _ in range(10):
        u = rng.normal(size=m.k).astype(np.float32)
        vec, tf = m.score(u, h, 5)
        # The pool's own top 5, with the scores the whole catalogue gives those items.
        full = whole.Y @ u
        in_pool = sorted(pool, key=lambda i: -full[int(i[1:])])[:5]
        assert [i for i, _ in vec] == in_pool
        assert [s for _, s in vec] == pytest.approx([float(full[int(i[1:])]) for i in in_pool], rel=1e-5)
        assert [i for i, _ in tf] == sorted(pool, key=lambda i: -logits[int(i[1:])])[:5]
    # Folding a user in still uses every item's factors, not only the pool's.
    outside = next(f"i{j}" for j in range(60) if f"i{j}" not in pool)
    assert m.user_vector(None, None, "new", [(outside, 2.0)]) is not None
    np.testing.assert_array_equal(m.user_vector(None, None, "new", [(outside, 2.0)]),
                                  whole.user_vector(None, None, "new", [(outside, 2.0)]))
    # Similar items: the item may lie outside the pool; its neighbours come from the pool.
    for item in (outside, sorted(pool)[0]):
        sims = m.item_neighbours(item, 6)
        assert sims and {i for i, _ in sims} <= pool - {item}


def test_a_scan_pool_below_one_item_is_refused() -> None:
    p, t = parts()
    with pytest.raises(ModelError):
        build_model("v1", p, t, default_reg=0.1, pool_size=1000, scan_items=0)


@pytest.mark.parametrize("mutate", [
    lambda p, t: p.pop("item_factors"),
    lambda p, t: p.__setitem__("item_factors", b"garbage"),
    lambda p, t: p.__setitem__("item_factors", npy(np.full((40, 6), np.nan, np.float32))),
    lambda p, t: p.__setitem__("item_ids", b"a\nb"),
    lambda p, t: p.__setitem__("item_ids", "\n".join(["x"] * 40).encode()),
    lambda p, t: p.__setitem__("user_factors", npy(np.ones((3, 6), np.float32))),
    lambda p, t: t.pop("tf_layer1_bias"),
    lambda p, t: t.__setitem__("tf_layer0_weight", npy(np.ones((39, 8), np.float32))),
    lambda p, t: p.__setitem__("tf_n_layers", npy(np.array([99]))),
    lambda p, t: p.__setitem__("item_factors", npy(np.array(["a"] * 40))),
])
def test_corrupt_parts_are_model_errors(mutate) -> None:  # type: ignore[no-untyped-def]
    p, t = parts()
    mutate(p, t)
    with pytest.raises(ModelError):
        build_model("v", p, t, default_reg=0.1, pool_size=10)


def test_ids_as_npy_or_lines() -> None:
    assert decode_ids(b"a\nb", "x") == ["a", "b"]
    assert decode_ids(npy(np.array(["a", "b"])), "x") == ["a", "b"]


def test_cache_switches_versions_and_keeps_the_old_one_when_the_new_is_corrupt() -> None:
    published: dict[str, dict[str, bytes | None]] = {}
    for v, seed in (("v1", 1), ("v2", 2)):
        p, t = parts(seed=seed)
        published[v] = {**p, **t}
    published["bad"] = {**published["v1"], "item_factors": b"corrupt"}
    reads: list[str] = []

    async def read_parts(version: str, names: Sequence[str]) -> dict[str, bytes | None]:
        reads.append(version)
        return {n: published.get(version, {}).get(n) for n in names}

    async def scenario() -> None:
        cache = ModelCache(read_parts, default_reg=0.1, pool_size=100)
        assert cache.observe(None) is None
        assert cache.observe("v1") is None  # loading in the background: nothing served yet
        await cache.wait()
        assert cache.version == "v1"
        first = cache.model
        assert cache.observe("v2") is first  # the old one serves until the new one is ready
        await cache.wait()
        assert cache.version == "v2" and cache.loads == 2
        cache.observe("bad")
        await cache.wait()
        assert cache.version == "v2" and cache.failures == 1
        n = len(reads)
        cache.observe("bad")  # a failed version is not retried on every request
        await cache.wait()
        assert len(reads) == n

    asyncio.run(scenario())
