"""What a benchmark result was measured on: the machine, its load, library versions and the commit."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["machine", "commit", "cpu_jitter"]

logger = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parents[1]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(modules: Iterable[str] = ()) -> dict[str, Any]:
    """CPU, cores, platform, Python, the load average now, and the versions of ``modules``."""
    out: dict[str, Any] = {"cpu": _cpu(), "cores": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "load_avg": list(os.getloadavg())}
    for mod in modules:
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def commit(root: Path = _ROOT) -> str:
    """``git rev-parse HEAD`` of the checkout, ``-dirty`` when tracked files differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _unit(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def cpu_jitter(seconds: float = 5.0, unit_iterations: int = 20_000) -> dict[str, Any]:
    """How steady this machine runs one fixed piece of Python, measured for ``seconds``.

    The same loop (about 1 ms) runs back to back; its durations' percentiles show what the
    machine alone adds to a latency tail. On a shared VM the slowest runs take many times the
    median with no page fault, context switch or steal time the guest can see.
    """
    durations: list[float] = []
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        _unit(unit_iterations)
        t1 = time.perf_counter()
        durations.append(t1 - t0)
        if t1 > end:
            break
    durations.sort()
    n = len(durations)

    def pct(q: float) -> float:
        return round(durations[min(n - 1, int(q * n))] * 1e3, 3)

    p50 = pct(0.5)
    return {"runs": n, "p50_ms": p50, "p99_ms": pct(0.99), "p999_ms": pct(0.999),
            "max_ms": round(durations[-1] * 1e3, 3), "p99_over_p50": round(pct(0.99) / p50, 2) if p50 else None}
