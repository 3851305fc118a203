"""What a benchmark result was measured on: the machine, its load, library versions and the commit."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["machine", "commit"]

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
