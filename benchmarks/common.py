"""What every benchmark shares: the checkout's paths, where results go, what a result was measured on.

Run a benchmark as ``python benchmarks/<name>.py`` from any directory: Python puts
``benchmarks/`` first on ``sys.path``, so ``import common`` finds this module, and importing it
puts the checkout's root there too, for ``tools/`` (the chaos harness and the machine/commit
helpers, which are not installed with driftrec).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "RESULTS", "machine", "commit", "cpu_jitter", "free_port", "portable"]

logger = logging.getLogger(__name__)

#: The checkout the benchmark runs from.
ROOT = Path(__file__).resolve().parents[1]
#: Where each benchmark writes its result file (benchmarks/README.md lists them).
RESULTS = ROOT / "benchmarks" / "results"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.benchinfo import commit, cpu_jitter, machine  # noqa: E402  (needs ROOT on sys.path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def portable(value: Any) -> Any:
    """``value`` (a result, nested dicts and lists) with every absolute path beside the checkout
    written relative to it (``../shared/datasets/...``, ``.driftrec-test/...``): a committed
    result names no folder of the machine that measured it."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable(v) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and value.startswith(str(ROOT.parent) + os.sep):
        return os.path.relpath(value, ROOT)
    return value


async def alternating_rounds(variants: Mapping[str, Callable[[], Awaitable[object]]], rounds: int,
                             per: int) -> dict[str, dict[str, list[float]]]:
    """Each variant run once per round, in turn (so a slow moment of the machine hits them all):
    wall and CPU microseconds per item (``per`` items a run) of every round, by variant."""
    out: dict[str, dict[str, list[float]]] = {v: {"wall_us": [], "cpu_us": []} for v in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            w, c = time.perf_counter(), time.process_time()
            await fn()
            out[name]["wall_us"].append((time.perf_counter() - w) / per * 1e6)
            out[name]["cpu_us"].append((time.process_time() - c) / per * 1e6)
    return out
