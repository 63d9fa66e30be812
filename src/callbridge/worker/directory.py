"""The worker's part of users and CRM: the users-sync side task and ``bitrix24.notify_missed``.

:func:`register_directory_jobs` (before the worker is built: it claims the kinds registered
then) and :func:`user_sync_task` (a side task) wire both into a worker. They share one
:class:`PortalsHolder`: a :class:`~callbridge.portals.Portals` (HTTP pool, credentials, rate
budget) made on first use and closed when the users-sync side task stops, on shutdown.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge import __version__
from callbridge.config import Settings
from callbridge.directory import (
    NOTIFY_MISSED_JOB,
    USER_SYNC_INTERVAL,
    notify_missed_call,
    run_user_sync,
)
from callbridge.portals import Portals
from callbridge.storage.crypto import SecretBox
from callbridge.worker.registry import Handler, JobContext, JobRegistry

__all__ = [
    "USER_SYNC_TASK",
    "PortalsHolder",
    "notify_missed_handler",
    "register_directory_jobs",
    "user_sync_task",
]

USER_SYNC_TASK = "users-sync"


class PortalsHolder:
    """One :class:`Portals` for the worker process, made when first needed."""

    def __init__(
        self,
        settings: Settings,
        session_factory: async_sessionmaker[AsyncSession],
        portals: Portals | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self._portals = portals
        self._http: httpx.AsyncClient | None = None

    def get(self) -> Portals:
        """The process's portals (opening the HTTP pool on first use)."""
        if self._portals is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.http_timeout_seconds, connect=5.0),
                follow_redirects=False,
                headers={"User-Agent": f"callbridge/{__version__}"},
            )
            self._portals = Portals(
                self.settings,
                self.session_factory,
                self._http,
                SecretBox(self.settings.fernet_keys()),
            )
        return self._portals

    async def aclose(self) -> None:
        """Close the HTTP pool this holder opened (a given Portals is its owner's to close)."""
        http, self._http = self._http, None
        if http is not None:
            self._portals = None
            await http.aclose()


def notify_missed_handler(holder: PortalsHolder) -> Handler:
    """The ``bitrix24.notify_missed`` handler: ``im.notify`` to the call's responsible user."""

    async def notify_missed(job: JobContext) -> dict[str, Any] | None:
        # job.session stays unused: on SQLite its connection is the only one.
        return await notify_missed_call(holder.get(), job.integration_id, job.payload)

    return notify_missed


def user_sync_task(
    holder: PortalsHolder,
    *,
    interval: timedelta = USER_SYNC_INTERVAL,
    check_every: float = 30.0,
) -> Any:
    """A side-task factory: sync due portals' users until the worker stops."""

    async def users_sync() -> None:
        try:
            await run_user_sync(holder.get(), interval=interval, check_every=check_every)
        finally:
            await holder.aclose()

    return users_sync


def register_directory_jobs(
    registry: JobRegistry,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
) -> PortalsHolder:
    """Register ``bitrix24.notify_missed``; the holder to give :func:`user_sync_task` too."""
    holder = PortalsHolder(settings, session_factory)
    if NOTIFY_MISSED_JOB not in registry:
        registry.register(NOTIFY_MISSED_JOB, notify_missed_handler(holder))
    return holder
