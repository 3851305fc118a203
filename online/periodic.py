"""A reader component refreshed in the background on a timer, that keeps its last good state when
a refresh fails (the trending snapshot, the catalogue view)."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod

__all__ = ["Periodic"]

logger = logging.getLogger(__name__)


class Periodic(ABC):
    """Subclasses set ``interval_s`` and implement :meth:`refresh`; the app's lifespan runs
    :meth:`run` as a task and ends it with :meth:`stop`."""

    interval_s: float
    failures: int = 0
    _running: bool = False

    @abstractmethod
    async def refresh(self) -> object:
        """One refresh (its result, if any, is the subclass's; :meth:`run` ignores it)."""

    async def run(self) -> None:
        """Refresh until :meth:`stop`; a failed refresh (Redis down) keeps the last state."""
        self._running = True
        while self._running:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                logger.debug("%s refresh failed: %s", type(self).__name__, exc)
                # redis-py can turn a cancellation that lands mid-read into a connection error;
                # a task asked to stop must stop all the same.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
            await asyncio.sleep(self.interval_s)

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop the :meth:`run` task and wait for it (bounded)."""
        self._running = False
        task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), 2.0)
        except (TimeoutError, asyncio.CancelledError):
            pass
        except Exception as exc:  # it was stopping anyway
            logger.debug("%s task ended with %s", type(self).__name__, exc)
