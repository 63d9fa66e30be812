"""The FastAPI application: ``create_app(settings)``.

Long-lived resources (the database engine and session factory, the shared ``httpx.AsyncClient``,
the secret box and, in all-in-one mode, the worker) are built in the lifespan, never at import
time, and handed to routes through the aliases in :mod:`callbridge.web.deps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TypedDict

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import ASGIApp

from callbridge import __version__
from callbridge.config import Settings
from callbridge.logging import get_logger
from callbridge.portals import Portals, running_portals
from callbridge.storage.call_tracking import RoutingCache
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.probe import safe_url
from callbridge.web import bitrix24_app, health, metrics, pbx, routing
from callbridge.web.background import WorkerFactory, WorkerRunner
from callbridge.web.errors import install_error_handlers
from callbridge.web.intake import CredentialCache, IntakeWriter

logger = get_logger(__name__)

DESCRIPTION = """\
callbridge connects Asterisk PBXs to Bitrix24 CRM: call cards, call registration and
statuses, leads, recordings and click-to-call, for many PBX customers and many portals.

Every error response has the same shape: `{"error": {"code": "...", "message": "..."}}`.
"""

# Connecting should be quick; a slow Bitrix24 answer gets the full budget.
_CONNECT_TIMEOUT_SECONDS = 5.0


class State(TypedDict):
    """What the lifespan builds; routes read it through :mod:`callbridge.web.deps`."""

    settings: Settings
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    http_client: httpx.AsyncClient
    secret_box: SecretBox
    bitrix24_portals: Portals
    worker: WorkerRunner | None
    pbx_intake: IntakeWriter
    pbx_credentials: CredentialCache


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one outbound HTTP client, with explicit timeouts and a User-Agent."""
    timeout = httpx.Timeout(
        settings.http_timeout_seconds,
        connect=min(_CONNECT_TIMEOUT_SECONDS, settings.http_timeout_seconds),
    )
    return httpx.AsyncClient(
        timeout=timeout,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        headers={"User-Agent": f"callbridge/{__version__}"},
        follow_redirects=False,
    )


class _App(FastAPI):
    """The FastAPI app, with the PBX webhook's fast path in front of its whole stack."""

    def build_middleware_stack(self) -> ASGIApp:
        """FastAPI's stack behind :class:`~callbridge.web.pbx.WebhookFastPath`.

        Outermost, so a webhook request served there skips every layer of it; whatever it does
        not answer goes through them all, error handling included.
        """
        return pbx.WebhookFastPath(super().build_middleware_stack())


async def _warm_up(intake: IntakeWriter, credentials: CredentialCache) -> None:
    """Read the webhook enterprises' credentials and routings; a failure only costs time."""
    started = time.perf_counter()
    try:
        count = await intake.warm_up(credentials)
    except Exception as err:  # noqa: BLE001 - requests read what they need themselves
        logger.warning("webhook enterprises not read at start", error=repr(err))
        return
    elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    logger.info("webhook enterprises read at start", enterprises=count, elapsed_ms=elapsed_ms)


async def _finished(task: asyncio.Task[None], *, within: float = 5.0) -> None:
    """Let a short start-up task end before the engine goes; cancel it if it takes too long.

    Cancelled at once, a task can leave a database call running on aiosqlite's thread that
    reports back to an event loop that has closed meanwhile.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await asyncio.shield(task)
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings, *, worker_factory: WorkerFactory | None = None) -> FastAPI:
    """The web app; with ``worker_factory`` it also runs the worker (all-in-one mode)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        async with contextlib.AsyncExitStack() as stack:
            engine = create_engine(settings.effective_database_url)
            stack.push_async_callback(engine.dispose)
            http_client = create_http_client(settings)
            stack.push_async_callback(http_client.aclose)
            session_factory = create_session_factory(engine)
            secret_box = SecretBox(settings.fernet_keys())
            portals = await stack.enter_async_context(
                running_portals(settings, session_factory, http_client, secret_box)
            )

            intake = IntakeWriter(session_factory, secret_box, RoutingCache())
            stack.push_async_callback(intake.close)
            credentials = CredentialCache()
            # In the background: the app answers (and reads what it lacks) meanwhile.
            warming = asyncio.create_task(_warm_up(intake, credentials), name="callbridge-warm-up")
            stack.push_async_callback(_finished, warming)

            runner: WorkerRunner | None = None
            if worker_factory is not None:
                runner = WorkerRunner(
                    worker_factory(settings, session_factory, engine),
                    shutdown_timeout=settings.worker_shutdown_timeout_seconds,
                )
                runner.start()
                stack.push_async_callback(runner.stop)

            logger.info(
                "callbridge web app started",
                version=__version__,
                database=safe_url(settings.effective_database_url),
                worker="in-process" if runner is not None else "separate",
            )
            yield State(
                settings=settings,
                engine=engine,
                session_factory=session_factory,
                http_client=http_client,
                secret_box=secret_box,
                bitrix24_portals=portals,
                worker=runner,
                pbx_intake=intake,
                pbx_credentials=credentials,
            )
            logger.info("callbridge web app stopping")

    app = _App(
        title="callbridge",
        summary="Asterisk ↔ Bitrix24 telephony bridge",
        description=DESCRIPTION,
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(pbx.router)
    app.include_router(bitrix24_app.router)
    app.include_router(routing.router)
    return app
