"""driftrec processes (worker, reader) as children that can be killed, restarted and measured."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from driftrec.settings import Settings
from tools.benchinfo import commit, machine

__all__ = ["Child", "rss_mb", "wait_http", "machine", "commit", "ROOT"]

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def tree_pids(pid: int) -> list[int]:
    """``pid`` and every process below it (children, their children, ...), parents first."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out


def tree_rss_mb(pid: int) -> float | None:
    """Summed resident set size of ``pid`` and every process below it, in MiB (None once ``pid``
    is gone): ``driftrec serve`` is a launcher with the compiled front and the Python reader as
    its children. Pages two of them share (the memory-mapped model) count once per process."""
    sizes = [rss_mb(p) for p in tree_pids(pid)]
    if sizes[0] is None:
        return None
    return sum(x for x in sizes if x is not None)


class Child:
    """One ``driftrec <args>`` process, its settings passed through the environment.

    ``restarts`` counts the processes started under this name; every start appends to ``log``.
    It runs in ``cwd`` (default: the log's folder).
    """

    def __init__(self, settings: Settings, args: list[str], log: Path, *,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.settings = settings
        self.args = args
        self.log = log
        self.cwd = cwd or log.parent
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.unexpected_exits: list[int] = []
        log.parent.mkdir(parents=True, exist_ok=True)

    def start(self) -> Child:
        env = dict(os.environ)
        env.update(self.settings.to_env())
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log, "ab") as out:
            out.write(f"\n==== start {self.starts} of {' '.join(self.args)} at {time.time():.3f}\n".encode())
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
            self.proc = subprocess.Popen([sys.executable, "-m", "driftrec.cli", *self.args], cwd=self.cwd,
                                         env=env, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> bool:
        """True while alive; records an exit nobody asked for (once) and returns False."""
        if self.proc is None:
            return False
        code = self.proc.poll()
        if code is None:
            return True
        if not getattr(self.proc, "_driftrec_seen", False):
            self.proc._driftrec_seen = True  # type: ignore[attr-defined]
            self.unexpected_exits.append(code)
            logger.warning("%s exited by itself with %s", self.args[0], code)
        return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc._driftrec_seen = True  # type: ignore[attr-defined]
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        self.proc._driftrec_seen = True  # type: ignore[attr-defined]
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def count_in_log(self, needle: str) -> int:
        return self.log.read_text(errors="replace").count(needle) if self.log.exists() else 0


def wait_http(url: str, timeout: float, child: Child | None = None) -> None:
    """Wait until ``url`` answers 200 (fails early when ``child`` dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.args[0]} died:\n{child.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s\n{child.tail() if child else ''}")


