"""``driftrec serve --workers N``: N reader processes answering on one port.

A reader is one event loop: its per-request work (decoding Redis replies, the index searches,
the blend) runs on one core. More processes use more cores. uvicorn's supervisor binds the
socket once and starts ``N`` processes that accept from it (the kernel spreads connections
over them); each builds its own app from the environment's settings, as ``driftrec serve``
does, and restarts if it dies. They share nothing in memory: every answer is read from Redis,
and the first process to load a model version builds it into memory-backed files the others map
(:mod:`driftrec.online.shared_model`), so N processes hold one copy of the model. Their
Prometheus metrics meet in a folder (:mod:`driftrec.online.metrics`), so a scrape of the port
reports all of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from starlette.applications import Starlette

from driftrec.online.metrics import MULTIPROC_ENV
from driftrec.settings import Settings, load_settings

__all__ = ["reader_processes", "serve_processes", "process_app"]

logger = logging.getLogger(__name__)


def reader_processes(asked: int) -> int:
    """Processes to start for ``asked`` (0: one per core this process may run on)."""
    if asked < 0:
        raise ValueError(f"reader processes must be >= 0, got {asked}")
    if asked:
        return asked
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def process_app() -> Starlette:
    """One reader process's app (uvicorn calls this factory in each process it starts)."""
    from driftrec.online.app import create_app, tune_gc

    # A spawned process starts with no logging set up: log as `driftrec serve` does.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(load_settings())
    tune_gc()
    return app


def serve_processes(settings: Settings, host: str, port: int, workers: int) -> None:
    """Run ``workers`` reader processes on ``host:port`` until stopped (blocks)."""
    import uvicorn

    # Each start gets a fresh, empty metrics folder: files of an earlier run's processes would be
    # added to this run's counters.
    shared = Path(tempfile.mkdtemp(prefix="driftrec-reader-metrics-"))
    os.environ[MULTIPROC_ENV] = str(shared)
    # The processes build each model version once, in memory-backed files they all map.
    own_models = None
    if not settings.reader_model_dir:
        memory = Path("/dev/shm")
        own_models = Path(tempfile.mkdtemp(prefix="driftrec-reader-models-",
                                           dir=memory if memory.is_dir() else None))
        os.environ["DRIFTREC_READER_MODEL_DIR"] = str(own_models)
    logger.info("starting %d reader processes on %s:%d (metrics in %s, models in %s)", workers, host, port,
                shared, settings.reader_model_dir or own_models)
    try:
        uvicorn.run("driftrec.online.processes:process_app", factory=True, host=host, port=port,
                    workers=workers, log_level="warning", access_log=False)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        if own_models is not None:
            shutil.rmtree(own_models, ignore_errors=True)
