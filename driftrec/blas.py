"""Caps the BLAS thread pools of a long-running process (the worker, the reader)."""

from __future__ import annotations

import logging

from threadpoolctl import threadpool_info, threadpool_limits

__all__ = ["limit_blas_threads", "blas_threads"]

logger = logging.getLogger(__name__)


def blas_threads() -> list[int]:
    """Thread count of every BLAS library loaded in this process (numpy's, scipy's, ...)."""
    return [int(p["num_threads"]) for p in threadpool_info() if p.get("user_api") == "blas"]


def limit_blas_threads(n: int) -> list[int]:
    """Cap every BLAS library loaded now at ``n`` threads, for the rest of the process.

    OpenBLAS starts one thread per core. The worker's and the reader's products and solves are
    small (one user, one micro-batch), so extra threads mostly spin, and they take the core the
    other process on the machine needs: a worker catching up was seen at 146% CPU, starving the
    reader. Only libraries already loaded are capped: call it after the imports that load them.

    Parameters
    ----------
    n : int
        Threads per BLAS library (the ``blas_threads`` setting).

    Returns
    -------
    list of int
        The thread counts of the BLAS pools after the call.
    """
    threadpool_limits(limits=n, user_api="blas")
    pools = blas_threads()
    logger.info("BLAS thread pools capped at %d (%d libraries)", n, len(pools))
    return pools
