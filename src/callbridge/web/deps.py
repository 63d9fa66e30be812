"""Dependencies for routes, as ``Annotated`` aliases: ``session: SessionDep``.

Each reads a resource the lifespan built (see :class:`callbridge.web.app.State`); nothing here
connects or opens anything at import time. Tests override one dependency at a time.

The getters are ``async def`` although they never await: FastAPI runs a plain ``def``
dependency in its thread pool, a thread hop (and a wait for the GIL) on every request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, cast

import httpx
from fastapi import Depends, Request
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callbridge.config import Settings
from callbridge.domain.errors import StorageError
from callbridge.storage.call_tracking import RoutingCache
from callbridge.storage.crypto import SecretBox
from callbridge.web.background import WorkerRunner
from callbridge.web.intake import CredentialCache, IntakeWriter


async def get_settings(request: Request) -> Settings:
    """The application's settings."""
    return cast(Settings, request.state.settings)


async def get_engine(request: Request) -> AsyncEngine:
    """The database engine."""
    return cast(AsyncEngine, request.state.engine)


async def get_http_client(request: Request) -> httpx.AsyncClient:
    """The shared outbound HTTP client (one connection pool for the process)."""
    return cast(httpx.AsyncClient, request.state.http_client)


async def get_secret_box(request: Request) -> SecretBox:
    """Encrypts and decrypts secrets at rest."""
    return cast(SecretBox, request.state.secret_box)


async def get_session_factory(request: Request) -> async_sessionmaker[AsyncSession]:
    """The session factory, for routes that run their own short transactions."""
    return cast(async_sessionmaker[AsyncSession], request.state.session_factory)


async def get_intake_writer(request: Request) -> IntakeWriter:
    """The process's group-commit writer of PBX webhook events.

    From the lifespan state; an app whose state was put together by hand (tests, embedders)
    gets one made on first use, as :func:`callbridge.web.bitrix24_app.get_portals` does.
    """
    writer = getattr(request.state, "pbx_intake", None)
    if writer is None:
        writer = getattr(request.app.state, "pbx_intake", None)
    if writer is None:
        writer = IntakeWriter(
            request.state.session_factory, request.state.secret_box, RoutingCache()
        )
        request.app.state.pbx_intake = writer
    return cast(IntakeWriter, writer)


async def get_credential_cache(request: Request) -> CredentialCache:
    """The process's cache of enterprises' webhook secrets (made on first use if need be)."""
    cache = getattr(request.state, "pbx_credentials", None)
    if cache is None:
        cache = getattr(request.app.state, "pbx_credentials", None)
    if cache is None:
        cache = CredentialCache()
        request.app.state.pbx_credentials = cache
    return cast(CredentialCache, cache)


async def get_worker_runner(request: Request) -> WorkerRunner | None:
    """The in-process worker, when the app runs all-in-one."""
    return cast(WorkerRunner | None, request.state.worker)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for one request: committed when the route succeeds, rolled back otherwise.

    The commit belongs here, at the edge; repositories only flush. The dependency is declared
    with ``scope="function"`` so the commit happens *before* the response is sent: a client
    that got a 2xx knows its data is stored.
    """
    factory = cast(async_sessionmaker[AsyncSession], request.state.session_factory)
    async with factory() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        try:
            await session.commit()
        except (OperationalError, InterfaceError, OSError) as err:
            raise StorageError("the database is unavailable; try again later") from err


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
HttpClientDep = Annotated[httpx.AsyncClient, Depends(get_http_client)]
SecretBoxDep = Annotated[SecretBox, Depends(get_secret_box)]
WorkerRunnerDep = Annotated[WorkerRunner | None, Depends(get_worker_runner)]
SessionFactoryDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_session_factory)]
IntakeWriterDep = Annotated[IntakeWriter, Depends(get_intake_writer)]
CredentialCacheDep = Annotated[CredentialCache, Depends(get_credential_cache)]
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
