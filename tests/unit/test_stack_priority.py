"""The local stack's Redis CPU priority (setting ``local_redis_priority``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from driftrec.settings import Settings
from driftrec.stack.local import priority_of, raise_priority


@pytest.fixture
def child() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _may_raise() -> bool:
    """Whether this process may raise a thread to real time (root or CAP_SYS_NICE)."""
    probe = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        os.sched_setscheduler(probe.pid, os.SCHED_FIFO, os.sched_param(1))
        return True
    except OSError:
        return False
    finally:
        probe.kill()
        probe.wait()


def test_the_default_leaves_redis_to_the_scheduler() -> None:
    # Real time bounds Redis' stalls but cost the worker and the reader on two shared cores
    # (docs/write-path.md): it is an operator's choice, not the default.
    assert Settings().local_redis_priority == "normal"


def test_realtime_runs_the_thread_under_fifo_and_forks_reset(child: int) -> None:
    got = raise_priority(child, "realtime")
    if not _may_raise():
        assert got == "normal" and priority_of(child) == _inherited()
        return
    assert got == "SCHED_FIFO 10"
    assert priority_of(child) == "SCHED_FIFO 10"
    # A fork of it (Redis' snapshot or AOF rewrite child) must not inherit real time.
    assert os.sched_getscheduler(child) == os.SCHED_FIFO | os.SCHED_RESET_ON_FORK


def test_high_is_a_negative_nice(child: int) -> None:
    got = raise_priority(child, "high")
    if _may_raise():
        assert got == "nice -10" and priority_of(child) == "nice -10"
    else:
        assert got == "normal"


def _inherited() -> str:
    """What ``priority_of`` says of a child left alone: the niceness it was started with, the
    suite's own (``nice make test``)."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    return f"nice {nice}" if nice else "normal"


def test_normal_leaves_the_thread_alone(child: int) -> None:
    assert raise_priority(child, "normal") == "normal"
    assert priority_of(child) == _inherited()


def test_refused_priority_warns_and_reports_normal(child: int, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with caplog.at_level(logging.WARNING, logger="driftrec.stack.local"):
        assert raise_priority(child, "realtime") == "normal"
    assert "could not raise the local Redis' CPU priority" in caplog.text
    assert priority_of(child) == _inherited()


def test_priority_of_a_dead_process_is_none() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert priority_of(proc.pid) is None
