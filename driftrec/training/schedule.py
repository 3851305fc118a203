"""Retraining on a timer: ``driftrec train --every 1h``."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

from driftrec.errors import DriftrecError, InvalidRequestError

__all__ = ["parse_interval", "run_every"]

logger = logging.getLogger(__name__)

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_interval(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"15m"``, ``"1h"``, ``"1d"`` or ``"1h30m"``.

    Raises
    ------
    InvalidRequestError
        For anything else, or a non-positive interval.
    """
    t = text.strip().lower()
    try:
        seconds = float(t)
    except ValueError:
        parts = _PART.findall(t)
        if not parts or "".join(n + u for n, u in parts) != t:
            raise InvalidRequestError(f"interval {text!r}: use e.g. 30s, 15m, 1h, 1d or 1h30m") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0:
        raise InvalidRequestError(f"interval {text!r} must be positive")
    return seconds


def run_every(interval_s: float, job: Callable[[], object], stop: threading.Event, *,
              max_runs: int | None = None, clock: Callable[[], float] = time.monotonic) -> int:
    """Run ``job`` now and then every ``interval_s`` (start to start) until ``stop`` is set.

    A run that fails is logged and the schedule goes on: one bad hour (Kafka away, a gate
    error) must not stop the retraining service. A run longer than the interval is followed
    at once by the next. Returns the number of runs.
    """
    runs = 0
    while not stop.is_set():
        started = clock()
        try:
            job()
        except DriftrecError as exc:
            logger.error("training run failed: %s", exc)
        except Exception:
            logger.exception("training run crashed")
        runs += 1
        if max_runs is not None and runs >= max_runs:
            break
        wait = interval_s - (clock() - started)
        if wait > 0:
            logger.info("next training run in %.0fs", wait)
            stop.wait(wait)
    return runs
