"""The worker and the reader cap the BLAS thread pools at the ``blas_threads`` setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

import driftrec.models.foldin  # noqa: F401  (loads scipy's BLAS too, as the worker does)
from driftrec.blas import blas_threads, limit_blas_threads
from driftrec.settings import Settings


def _settings(tmp_path: Path, n: int) -> Settings:
    # Services on ports nothing listens on: building the apps connects to nothing.
    return Settings(redis_url="redis://127.0.0.1:9/0", kafka_bootstrap_servers="127.0.0.1:9",
                    home=tmp_path, blas_threads=n)


def test_helper_caps_every_loaded_blas() -> None:
    with threadpool_limits(limits=3, user_api="blas"):  # restores the process' pools on exit
        assert set(blas_threads()) == {3}
        assert limit_blas_threads(2) == blas_threads()
        assert len(blas_threads()) >= 2 and set(blas_threads()) == {2}  # numpy's and scipy's


@pytest.mark.parametrize("n", [1, 2])
def test_reader_app_caps_blas_threads(tmp_path: Path, n: int) -> None:
    from driftrec.online.app import create_app

    with threadpool_limits(limits=3, user_api="blas"):
        create_app(_settings(tmp_path, n), refresh_snapshot=False)
        assert blas_threads() and set(blas_threads()) == {n}


def test_worker_caps_blas_threads(tmp_path: Path) -> None:
    from driftrec.streams.agents import build_worker
    from driftrec.streams.app import create_app

    s = _settings(tmp_path, 1)
    with threadpool_limits(limits=3, user_api="blas"):
        build_worker(create_app(s), s)
        assert blas_threads() and set(blas_threads()) == {1}


def test_setting_binds_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().blas_threads == 1
    monkeypatch.setenv("DRIFTREC_BLAS_THREADS", "4")
    assert Settings().blas_threads == 4
    monkeypatch.setenv("DRIFTREC_BLAS_THREADS", "0")
    with pytest.raises(ValueError):
        Settings()
