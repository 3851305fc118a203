"""Model versions shared through memory-mapped files (online/shared_model.py): the mapped model
answers exactly as the one built in memory, is built once however many processes ask, and maps
its arrays read-only instead of copying them."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from driftrec.online.ann import AnnConfig
from driftrec.online.model_cache import PublishedModel, build_model
from driftrec.online.shared_model import SharedModels
from tests.unit.test_reader_model import parts

pytestmark = pytest.mark.integration

CASES = {
    # every matrix indexed (min_rows below the catalogue and the user pool)
    "indexed": {"ann": AnnConfig(min_rows=20)},
    # exact scans over a scan pool of the 15 largest-norm items
    "scan pool": {"scan_items": 15},
    # exact scans over everything
    "exact": {},
}


def built(**kw: object) -> PublishedModel:
    p, t = parts(n_items=60, n_users=40)
    return build_model("v1", p, t, default_reg=0.1, pool_size=1000, **kw)  # type: ignore[arg-type]


def answers(m: PublishedModel) -> list[object]:
    out: list[object] = []
    for user, hist in (("u3", [("i3", 1.0), ("i9", 2.0)]), ("new", [("i50", 1.0), ("i2", 0.5)]), ("u39", [])):
        out.append(m.sources(None, None, user, hist, 12, 4))
    out += [m.item_neighbours(i, 6) for i in ("i7", "i0", "nope")]
    return out


@pytest.mark.parametrize("case", CASES)
def test_the_mapped_model_answers_as_the_built_one(tmp_path: Path, case: str) -> None:
    kw = CASES[case]
    shared = SharedModels(tmp_path)
    calls = []

    def build() -> PublishedModel:
        calls.append(1)
        return built(**kw)

    first = shared.load("v1", build)
    second = shared.load("v1", build)
    assert len(calls) == 1  # built once, then mapped
    reference = built(**kw)
    assert answers(first) == answers(reference) == answers(second)
    assert first.index_stats().keys() == reference.index_stats().keys()
    # Mapped, not copied: the big arrays are read-only views of the files.
    assert isinstance(first.Y, np.memmap) and not first.Y.flags.writeable
    assert isinstance(first.scan_Y, np.memmap)


def test_a_version_built_elsewhere_is_opened_without_building(tmp_path: Path) -> None:
    SharedModels(tmp_path).load("v1", lambda: built(ann=AnnConfig(min_rows=20)))
    other = SharedModels(tmp_path)  # another process's view of the folder
    m = other.opened("v1")
    assert m is not None and answers(m) == answers(built(ann=AnnConfig(min_rows=20)))
    assert other.opened("v2") is None


def test_a_mapped_index_searches_as_broadly_as_the_built_one(tmp_path: Path) -> None:
    # The index file does not keep the search breadth: a mapped index must get the version's
    # reader_ann_expansion back, not usearch's default of 64 (twice the work per search).
    config = AnnConfig(min_rows=20, expansion=24)
    SharedModels(tmp_path).load("v1", lambda: built(ann=config))
    m = SharedModels(tmp_path).opened("v1")
    assert m is not None
    indexes = [ix for ix in (m.ann_vec, m.ann_tf, m.ann_users, m.ann_items) if ix is not None]
    assert indexes and {ix._index.expansion_search for ix in indexes} == {24}


def test_a_new_version_replaces_the_old_folder(tmp_path: Path) -> None:
    shared = SharedModels(tmp_path)
    old = shared.load("v1", lambda: built())
    p, t = parts(seed=5, n_items=60, n_users=40)
    shared.load("v2", lambda: build_model("v2", p, t, default_reg=0.1, pool_size=1000))
    assert shared.opened("v1") is None and shared.opened("v2") is not None
    # A process still serving v1 keeps answering from its mappings.
    assert answers(old) == answers(built())


def _load_in_child(root: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    import time

    def slow_build() -> PublishedModel:
        time.sleep(0.5)  # long enough for every process to be waiting on the lock
        out.put("built")
        return built(ann=AnnConfig(min_rows=20))

    m = SharedModels(Path(root)).load("v1", slow_build)
    out.put(("answers", repr(answers(m))))


def test_processes_asking_at_once_build_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_load_in_child, args=(str(tmp_path), q)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [q.get(timeout=120) for _ in range(4)]
    for p in procs:
        p.join(60)
    assert got.count("built") == 1
    results = {a[1] for a in got if isinstance(a, tuple)}
    assert results == {repr(answers(built(ann=AnnConfig(min_rows=20))))}
