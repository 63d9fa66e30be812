"""Run the worker as a task inside the web process (all-in-one mode), and watch it.

The web layer does not import the worker package (they are sibling layers): the CLI hands in a
factory, and this module only needs the two methods every worker has.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callbridge.config import Settings
from callbridge.logging import get_logger

logger = get_logger(__name__)

# Time beyond the worker's own shutdown timeout before its task is cancelled.
_STOP_GRACE_SECONDS = 5.0


class BackgroundWorker(Protocol):
    """What the web app needs from a worker."""

    async def run(self) -> None:
        """Process jobs until stopped."""

    def stop(self) -> None:
        """Ask the worker to finish its current jobs and return from :meth:`run`."""


WorkerFactory = Callable[
    [Settings, async_sessionmaker[AsyncSession], AsyncEngine], BackgroundWorker
]


class WorkerRunner:
    """Owns the worker's task: starts it, notices if it dies, stops it gracefully."""

    def __init__(self, worker: BackgroundWorker, *, shutdown_timeout: float) -> None:
        self._worker = worker
        self._shutdown_timeout = shutdown_timeout
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.failure: str | None = None

    @property
    def alive(self) -> bool:
        """Whether the worker is running (or was stopped on purpose)."""
        return self.failure is None

    def start(self) -> None:
        """Start the worker as a named task."""
        self._task = asyncio.create_task(self._run(), name="callbridge-worker")

    async def _run(self) -> None:
        try:
            await self._worker.run()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.failure = f"{type(err).__name__}: {err}"
            logger.critical(
                "worker crashed: jobs are not delivered until callbridge restarts",
                exc_info=True,
            )
            return
        if not self._stopping:
            self.failure = "the worker returned without being asked to stop"
            logger.critical("worker stopped: jobs are not delivered until callbridge restarts")

    async def stop(self) -> None:
        """Ask the worker to stop and wait for it; cancel it if it does not stop in time."""
        self._stopping = True
        task = self._task
        if task is None or task.done():
            return
        self._worker.stop()
        timeout = self._shutdown_timeout + _STOP_GRACE_SECONDS
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            logger.error("worker did not stop in time; cancelling it", timeout_seconds=timeout)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
