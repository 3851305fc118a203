"""``driftrec serve`` with the compiled front (``reader_native``): two processes on one port.

The front (``online/native``, the ``driftrec-reader`` binary) listens on the reader's port and
ranks the plain recommendation request itself; the Python reader (one or ``--workers`` processes)
listens on a loopback port and answers everything else, the front passing those requests on.
Both read the same settings: this module resolves them once and hands the front the part it
needs as JSON, so a default cannot differ between the two. The front maps the model versions
the Python reader builds into ``reader_model_dir`` (a fresh folder under ``/dev/shm`` when unset);
until a version is built there, the front passes its requests to the Python reader, whose first
one starts the build.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from driftrec.errors import DriftrecError
from driftrec.models.blend import SOURCES
from driftrec.online.processes import reader_processes
from driftrec.settings import Settings

__all__ = ["native_binary", "unsupported", "front_config", "serve_native"]

logger = logging.getLogger(__name__)

#: Longest the Python reader may take to open its port before the front starts anyway.
_UPSTREAM_WAIT_S = 60.0


def native_binary(settings: Settings) -> Path | None:
    """The ``driftrec-reader`` binary: ``reader_native_bin`` (which must exist), else the one next
    to this Python (``make install`` puts it there), else one on PATH; None when there is none."""
    if settings.reader_native_bin:
        path = Path(settings.reader_native_bin)
        if not path.is_file():
            raise DriftrecError(f"reader_native_bin: no file at {path}")
        return path
    beside = Path(sys.executable).parent / "driftrec-reader"
    if beside.is_file():
        return beside
    found = shutil.which("driftrec-reader")
    return Path(found) if found is not None else None


def unsupported(settings: Settings) -> str | None:
    """Why the front cannot serve with these settings (None: it can). It speaks to one Redis
    node over plain TCP or a unix socket; a Redis Cluster or TLS URL is the Python reader's."""
    scheme = settings.redis.split("://", 1)[0].lower()
    if scheme not in ("redis", "unix"):
        return f"{scheme}:// Redis URLs (a single node over redis:// or unix:// only)"
    return None


def front_config(settings: Settings, listen: str, upstream: str, model_dir: str) -> dict[str, Any]:
    """The settings the front reads, resolved here (``online/native/src/config.rs``)."""
    from driftrec.online.app import configured_weights

    weights = configured_weights(settings)
    s = settings
    return {
        "listen": listen, "upstream": upstream, "redis_url": s.redis, "key_prefix": s.key_prefix,
        "model_dir": model_dir, "threads": reader_processes(s.reader_native_threads),
        "weights": {name: getattr(weights, name) for name in SOURCES},
        "half_life_s": s.half_life_s, "history_len": s.history_len, "neighbours_read": s.neighbours_read,
        "similarity_shrinkage": s.similarity_shrinkage, "similarity_alpha": s.similarity_alpha,
        "reader_recent_items": s.reader_recent_items, "reader_recent_order": s.reader_recent_order,
        "reader_recent_position_decay": s.reader_recent_position_decay,
        "reader_session_gap_s": s.reader_session_gap_s,
        "reader_outside_session_weight": s.reader_outside_session_weight,
        "reader_similar_users": s.reader_similar_users, "reader_snapshot_items": s.reader_snapshot_items,
        "reader_snapshot_interval_s": s.reader_snapshot_interval_s, "reader_max_in_flight": s.reader_max_in_flight,
        "reader_deadline_s": s.reader_deadline_s, "reader_cache_ttl_s": s.reader_cache_ttl_s,
        "reader_cache_rows": s.reader_cache_rows,
        "ann_overfetch": s.reader_ann_overfetch, "ann_expansion": s.reader_ann_expansion,
        "ann_min_rows": s.reader_ann_min_rows, "ann_enabled": s.reader_ann,
        "experiments_file": s.experiments_file is not None,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)


def serve_native(settings: Settings, binary: Path, host: str, port: int, workers: int) -> int:
    """Run the Python reader on a loopback port and the front (``binary``) on ``host:port``
    until either stops or a signal arrives; returns the exit status."""
    own_models = None
    model_dir = settings.reader_model_dir
    if not model_dir:
        memory = Path("/dev/shm")
        own_models = tempfile.mkdtemp(prefix="driftrec-reader-models-", dir=memory if memory.is_dir() else None)
        model_dir = own_models
    upstream = _free_port()
    env = {**os.environ, "DRIFTREC_READER_NATIVE": "false", "DRIFTREC_READER_MODEL_DIR": model_dir}
    cli = Path(sys.executable).parent / "driftrec"
    python_cmd = ([str(cli)] if cli.is_file() else [sys.executable, "-m", "driftrec.cli"])
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.NamedTemporaryFile("w", prefix="driftrec-reader-", suffix=".json", delete=False) as fh:
        json.dump(front_config(settings, f"{host}:{port}", f"127.0.0.1:{upstream}", model_dir), fh)
        config = fh.name

    def stop(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        py = subprocess.Popen([*python_cmd, "serve", "--host", "127.0.0.1", "--port", str(upstream),
                               "--workers", str(workers)], env=env)
        procs.append(py)
        _wait_port(upstream, py, _UPSTREAM_WAIT_S)
        if py.poll() is not None:
            return py.returncode or 1
        front = subprocess.Popen([str(binary), config])
        procs.append(front)
        logger.info("reader on %s:%d: compiled front (%s), Python reader on 127.0.0.1:%d, models in %s",
                    host, port, binary, upstream, model_dir)
        while all(p.poll() is None for p in procs):
            time.sleep(0.2)
        failed = next(p for p in procs if p.poll() is not None)
        stop(signal.SIGTERM, None)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        return failed.returncode or 0
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        os.unlink(config)
        if own_models is not None:
            shutil.rmtree(own_models, ignore_errors=True)
