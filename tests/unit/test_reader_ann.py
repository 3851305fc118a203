"""The reader's HNSW candidate retrieval: recall against the exact scans on a model trained as
``driftrec train`` trains it, exact re-scores, and the exact path wherever no index serves."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from driftrec.modelformat import MODEL_PARTS
from driftrec.models.batch import create_model
from driftrec.models.decay import DecayPolicy
from driftrec.online.ann import AnnConfig, ann_config
from driftrec.online.model_cache import ModelCache, PublishedModel, build_model
from driftrec.settings import load_settings
from driftrec.simulator import ShopSimulator
from driftrec.training.clicklog import events_to_log
from driftrec.training.matrix import build_interactions
from driftrec.training.publish import npy, pack_models
from driftrec.training.runner import DEFAULT_PARAMS
from tests.unit.test_reader_model import parts as tiny_parts

S = load_settings()
N = 50
Pairs = list[tuple[str, float]]
History = list[tuple[str, float]]


class Trained:
    """One ALS model (``driftrec train``'s defaults: 128 factors) on a simulated shop of 10,000
    items, with a random 256-wide TF layer, loaded exactly and with the default indexes."""

    def __init__(self) -> None:
        sim = ShopSimulator(n_users=20_000, n_items=10_000, n_categories=20, seed=1)
        events = list(itertools.islice(sim.events(200_000), 200_000))
        data = build_interactions(events_to_log(events, S), DecayPolicy(S.half_life_s))
        als = create_model("als", **DEFAULT_PARAMS["als"]).fit(data.matrix, seed=0)
        raw = pack_models({"als": als}, data.item_ids, user_ids=data.user_ids, manifest={})
        n_items = len(data.item_ids)
        width = DEFAULT_PARAMS["tf"]["hidden"][0]
        rng = np.random.default_rng(2)
        tf = {"tf_layer0_weight": npy(rng.normal(0, 0.05, (n_items, width)).astype(np.float32)),
              "tf_layer0_bias": npy(np.zeros(width, np.float32)),
              "tf_layer1_weight": npy(rng.normal(0, 0.1, (width, n_items)).astype(np.float32)),
              "tf_layer1_bias": npy(rng.normal(0, 0.5, n_items).astype(np.float32))}
        head: dict[str, bytes | None] = {p: raw.get(p) for p in MODEL_PARTS}
        head["tf_n_layers"] = npy(np.array([2], np.int32))
        self.head, self.tf = head, dict[str, bytes | None](tf)
        self.config = ann_config(S)
        assert self.config is not None
        kw = {"default_reg": S.fold_in_regularization, "pool_size": S.reader_similar_users_pool}
        self.exact = build_model("v", head, self.tf, **kw)
        self.ann = build_model("v", head, self.tf, **kw, scan_items=S.reader_scan_items, ann=self.config)
        m = data.matrix.tocsr()
        self.users: list[tuple[str, History]] = []
        for r in np.random.default_rng(3).choice(m.shape[0], 200, replace=False).tolist():
            lo, hi = m.indptr[r], m.indptr[r + 1]
            hist = [(data.item_ids[j], float(w)) for j, w in zip(m.indices[lo:hi].tolist(), m.data[lo:hi].tolist(), strict=True)]
            self.users.append((data.user_ids[r], hist))
        self.items = [data.item_ids[j] for j in rng.choice(n_items, 200, replace=False).tolist()]


@pytest.fixture(scope="module")
def trained() -> Trained:
    return Trained()


def recall(got: Sequence[Pairs], truth: Sequence[Pairs]) -> float:
    shares = [len({i for i, _ in g} & {i for i, _ in t}) / len(t) for g, t in zip(got, truth, strict=True) if t]
    assert len(shares) > len(truth) // 2
    return float(np.mean(shares))


def answers(m: PublishedModel, t: Trained, source: str) -> list[Pairs]:
    out: list[Pairs] = []
    for user, hist in t.users:
        u = m.user_vector(None, None, user, hist)
        assert u is not None
        if source == "user_vector":
            out.append(m.score(u, None, N)[0])
        elif source == "tf":
            out.append(m.score(None, m.tf_hidden_state(hist), N)[1])
        else:
            out.append(m.nearest_users(u, user, N))
    return out


def test_the_defaults_index_every_matrix_of_a_trained_model(trained: Trained) -> None:
    m = trained.ann
    stats = m.index_stats()
    assert set(stats) == {"user_vector", "tf", "similar_users", "similar_items"}
    assert stats["user_vector"]["rows"] == len(m.item_ids) and m.scan_rows is None
    assert stats["similar_users"]["rows"] == len(m.pool_ids) == S.reader_similar_users_pool
    # The output layer is held once, in the TF index's rows; the re-score reads a view of them.
    assert m.tf_out is not None and not m.tf_out.flags.owndata


@pytest.mark.parametrize("source", ["user_vector", "tf", "similar_users"])
def test_recall_at_50_of_each_index_against_the_exact_scan(trained: Trained, source: str) -> None:
    assert recall(answers(trained.ann, trained, source), answers(trained.exact, trained, source)) >= 0.95


def test_an_f32_index_reads_the_published_rows_in_place_with_the_same_recall(trained: Trained) -> None:
    """``reader_ann_dtype = "f32"``: no copy of the rows (the bf16 default holds one at half their
    size), and the same recall; the re-scored scores are the exact ones either way."""
    assert trained.config is not None and trained.config.dtype == "bf16"
    kw = {"default_reg": S.fold_in_regularization, "pool_size": S.reader_similar_users_pool}
    f32 = build_model("v", trained.head, trained.tf, **kw, ann=AnnConfig(**{**trained.config.__dict__, "dtype": "f32"}))
    rows_bytes = trained.ann.scan_Y.nbytes
    assert trained.ann.index_stats()["user_vector"]["memory_bytes"] >= f32.index_stats()["user_vector"]["memory_bytes"] \
        + rows_bytes // 2
    for source in ("user_vector", "tf", "similar_users"):
        assert recall(answers(f32, trained, source), answers(trained.exact, trained, source)) >= 0.95
    u = trained.exact.user_vector(None, None, *trained.users[0])
    assert u is not None
    exact = dict(trained.exact.score(u, None, N)[0])
    assert all(exact[i] == s for i, s in trained.ann.score(u, None, N)[0] if i in exact)


def test_recall_at_50_of_similar_items(trained: Trained) -> None:
    got = [trained.ann.item_neighbours(i, N) for i in trained.items]
    assert recall(got, [trained.exact.item_neighbours(i, N) for i in trained.items]) >= 0.95


def test_rescored_scores_are_the_exact_scores(trained: Trained) -> None:
    ex, ann = trained.exact, trained.ann
    n_items = len(ex.item_ids)
    for user, hist in trained.users[:40]:
        u = ex.user_vector(None, None, user, hist)
        h = ex.tf_hidden_state(hist)
        assert u is not None and h is not None
        every = dict(ex.score(u, None, n_items)[0])
        vec, tf = ann.score(u, h, N)
        assert vec and all(s == every[i] for i, s in vec)
        logits = ex.tf_out @ h  # type: ignore[operator]
        logits += ex.tf_out_bias  # type: ignore[operator]
        floor = float(logits[ex.item_index[tf[-1][0]]])
        assert all(s == float(logits[ex.item_index[i]]) - floor + 1e-6 for i, s in tf)
        pool = dict(ex.nearest_users(u, "nobody", len(ex.pool_ids)))
        assert all(s == pool[v] for v, s in ann.nearest_users(u, user, N))
    for item in trained.items[:40]:
        every = dict(ex.item_neighbours(item, n_items))
        assert all(s == every[i] for i, s in ann.item_neighbours(item, 20))


def test_as_many_candidates_as_rows_is_the_exact_scan(trained: Trained) -> None:
    """Past the index's rows a search would be a scan: the exact path answers, bit for bit."""
    greedy = copy.copy(trained.ann)  # the same indexes, searched for 1,000 candidates per row wanted
    greedy.ann = AnnConfig(overfetch=1000.0)
    assert greedy.index_stats()
    for user, hist in trained.users[:10]:
        args = (None, None, user, hist, N, 5)
        assert greedy.sources(*args) == trained.exact.sources(*args)
    assert greedy.item_neighbours(trained.items[0], 20) == trained.exact.item_neighbours(trained.items[0], 20)


def test_a_tiny_model_is_scanned_exactly() -> None:
    p, t = tiny_parts(n_items=60)
    exact = build_model("v1", p, t, default_reg=0.1, pool_size=1000)
    tiny = build_model("v1", p, t, default_reg=0.1, pool_size=1000, scan_items=15, ann=AnnConfig())
    assert tiny.index_stats() == {} and tiny.scan_rows is not None  # below min_rows: the scan pool stays
    pooled = build_model("v1", p, t, default_reg=0.1, pool_size=1000, scan_items=15)
    whole = build_model("v1", p, t, default_reg=0.1, pool_size=1000, ann=AnnConfig())
    for user, hist in (("u3", [("i3", 1.0), ("i9", 2.0)]), ("new", [("i50", 1.0)])):
        args = (None, None, user, hist, 12, 4)
        assert tiny.sources(*args) == pooled.sources(*args)
        assert whole.sources(*args) == exact.sources(*args)
    assert whole.item_neighbours("i7", 6) == exact.item_neighbours("i7", 6)


def test_an_indexed_catalogue_is_searched_whole() -> None:
    p, t = tiny_parts(n_items=60, n_users=30)
    m = build_model("v1", p, t, default_reg=0.1, pool_size=1000, scan_items=15, ann=AnnConfig(min_rows=50))
    assert m.scan_rows is None and set(m.index_stats()) == {"user_vector", "tf", "similar_items"}  # 30 users: exact
    exact = build_model("v1", p, t, default_reg=0.1, pool_size=1000)
    u = exact.user_factors[2]  # type: ignore[index]
    # 60 items, 3 candidates per wanted item: at n = 5 the graph of a tiny catalogue finds them all.
    assert m.score(u, None, 5)[0] == exact.score(u, None, 5)[0]
    assert m.nearest_users(u, "u2", 3) == exact.nearest_users(u, "u2", 3)


def test_the_switch_and_the_settings() -> None:
    assert ann_config(S.model_copy(update={"reader_ann": False})) is None
    c = ann_config(S.model_copy(update={"reader_ann_min_rows": 10, "reader_ann_overfetch": 2.0,
                                        "reader_ann_expansion": 40, "reader_ann_build_threads": 2,
                                        "reader_ann_dtype": "f16"}))
    assert c == AnnConfig(min_rows=10, overfetch=2.0, expansion=40, threads=2, dtype="f16")
    assert c.fetch(7) == 14 and AnnConfig(overfetch=1.5).fetch(3) == 5


def test_the_cache_builds_the_indexes_off_the_loop() -> None:
    p, t = tiny_parts(n_items=300, n_users=300)
    published = {**p, **t}

    async def read_parts(version: str, names: Sequence[str]) -> dict[str, bytes | None]:
        return {n: published.get(n) for n in names}

    async def scenario() -> PublishedModel:
        cache = ModelCache(read_parts, default_reg=0.1, pool_size=1000, ann=AnnConfig(min_rows=100))
        return await cache.load("v1")

    m = asyncio.run(scenario())
    assert set(m.index_stats()) == {"user_vector", "tf", "similar_users", "similar_items"}
