"""The emulator and a callbridge app with the Bitrix24 router, wired to each other over ASGI.

The emulator POSTs installs and events to callbridge through an ``ASGITransport``; callbridge's
outbound client reaches the emulator (portal and OAuth server at ``http://portal.test``) the same
way. Nothing listens on a port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet
from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from bitrix24_emulator.app import create_app
from bitrix24_emulator.config import EmulatorConfig
from bitrix24_emulator.emulator import Emulator
from bitrix24_emulator.limits import LeakyBucket, RateLimiter
from callbridge.config import Settings
from callbridge.crm.bitrix24.api_log import MemoryApiLog
from callbridge.portals import Portals
from callbridge.storage.call_tracking import RoutingCache
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import Bitrix24Integration, Enterprise
from callbridge.storage.repositories import IntegrationRepository
from callbridge.web.bitrix24_app import router
from callbridge.web.errors import install_error_handlers
from callbridge.web.intake import CredentialCache, IntakeWriter
from callbridge.web.pbx import WebhookFastPath

PORTAL = "http://portal.test"
CALLBRIDGE = "http://callbridge.test"
CLIENT_ID = "local.callbridge.0001"
CLIENT_SECRET = "emulator-client-secret"


def with_state(app: ASGIApp, state: Mapping[str, Any]) -> ASGIApp:
    """The app with a lifespan state, as a server that ran the lifespan would give it."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "state": dict(state)}
        await app(scope, receive, send)

    return asgi


@dataclass
class Harness:
    """Both sides, plus handles to look inside."""

    emulator: Emulator
    emulator_http: httpx.AsyncClient  # to the emulator (control API too)
    callbridge_http: httpx.AsyncClient  # to callbridge's routes
    portals: Portals
    session_factory: async_sessionmaker[AsyncSession]
    box: SecretBox
    settings: Settings
    api_log: MemoryApiLog
    engine: AsyncEngine
    intake: IntakeWriter  # the webhook's, with the app's caches
    credentials: CredentialCache

    async def register_app(self, **fields: Any) -> dict[str, Any]:
        """Register callbridge as an app on the portal."""
        body = {
            "handler_url": f"{CALLBRIDGE}/bitrix24/install",
            "redirect_uri": f"{CALLBRIDGE}/bitrix24/oauth/callback",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scopes": ["crm", "telephony", "user_basic", "im"],
        } | fields
        response = await self.emulator_http.post("/_emulator/apps", json=body)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    async def install(self) -> dict[str, Any]:
        """The admin installs the app; the emulator POSTs to callbridge."""
        response = await self.emulator_http.post(f"/_emulator/apps/{CLIENT_ID}/install")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    async def install_for(
        self, enterprise: Enterprise, settings: dict[str, Any] | None = None
    ) -> Bitrix24Integration:
        """Register and install the app, then link the portal to the new ``enterprise``.

        ``settings`` replace the integration's settings (kept as installed when None).
        """
        await self.register_app()
        await self.install()
        async with self.session_factory() as session, session.begin():
            session.add(enterprise)
            await session.flush()
            row = await IntegrationRepository(session, self.box).by_member_id(
                self.emulator.portal.member_id
            )
            assert row is not None
            row.enterprise_id = enterprise.id
            if settings is not None:
                row.settings = settings
        return row

    async def integration(self) -> Bitrix24Integration | None:
        """The stored integration of the emulated portal."""
        async with self.session_factory() as session:
            repo = IntegrationRepository(session, self.box)
            return await repo.by_member_id(self.emulator.portal.member_id)

    async def requests(self, method: str | None = None) -> list[dict[str, Any]]:
        """What the emulator received."""
        params = {"limit": 10_000} | ({"method": method} if method else {})
        response = await self.emulator_http.get("/_emulator/requests", params=params)
        return response.json()  # type: ignore[no-any-return]


def callbridge_settings(database_url: str, var_dir: Path, **overrides: Any) -> Settings:
    """Settings pointing at the emulator as the OAuth server."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "var_dir": var_dir,
        "encryption_keys": Fernet.generate_key().decode(),
        "bitrix24_client_id": CLIENT_ID,
        "bitrix24_client_secret": CLIENT_SECRET,
        "bitrix24_oauth_server_url": PORTAL,
        "public_base_url": CALLBRIDGE,
    }
    return Settings(**(values | overrides))


@asynccontextmanager
async def harness(
    database_url: str,
    var_dir: Path,
    config: EmulatorConfig | None = None,
    *,
    routers: Sequence[APIRouter] = (router,),
    portal_mounts: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    wrap_transport: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] | None = None,
    settings_overrides: Mapping[str, Any] | None = None,
) -> AsyncIterator[Harness]:
    """Start both sides on one database.

    ``routers`` are callbridge's routes the emulator reaches (the Bitrix24 app's by default);
    ``portal_mounts`` give the portal other hosts to reach (e.g. a PBX serving ``RECORD_URL``s);
    ``wrap_transport`` wraps the transport callbridge reaches the portal through (to lose an
    answer, say); ``settings_overrides`` change callbridge's settings.
    """
    settings = callbridge_settings(database_url, var_dir, **dict(settings_overrides or {}))
    engine = create_engine(database_url)
    session_factory = create_session_factory(engine)
    box = SecretBox(settings.fernet_keys())
    callbridge_app = FastAPI()
    for routes in routers:
        callbridge_app.include_router(routes)
    # The webhook's fast path in front of the routes and the app's error answers, as in the
    # app callbridge serves.
    callbridge_app.add_middleware(WebhookFastPath)
    install_error_handlers(callbridge_app)
    holder: dict[str, Any] = {}
    to_callbridge = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=with_state(callbridge_app, holder)),
        base_url=CALLBRIDGE,
        mounts=dict(portal_mounts or {}),
    )
    config = config or EmulatorConfig()
    config.base_url = config.base_url or PORTAL
    config.domain = config.domain or "portal.test"
    config.http_client = to_callbridge
    emulator_app = create_app(config)
    transport: httpx.AsyncBaseTransport = httpx.ASGITransport(app=emulator_app)
    if wrap_transport is not None:
        transport = wrap_transport(transport)
    to_emulator = httpx.AsyncClient(transport=transport, base_url=PORTAL)
    api_log = MemoryApiLog()
    portals = Portals(settings, session_factory, to_emulator, box, api_log=api_log)
    intake = IntakeWriter(session_factory, box, RoutingCache())
    credentials = CredentialCache()
    holder.update(
        settings=settings,
        session_factory=session_factory,
        http_client=to_emulator,
        secret_box=box,
        bitrix24_portals=portals,
        pbx_intake=intake,
        pbx_credentials=credentials,
    )
    try:
        yield Harness(
            emulator_app.state.emulator,
            to_emulator,
            to_callbridge,
            portals,
            session_factory,
            box,
            settings,
            api_log,
            engine,
            intake,
            credentials,
        )
    finally:
        await intake.close()
        await to_callbridge.aclose()
        await to_emulator.aclose()
        await engine.dispose()


@asynccontextmanager
async def installed_harness(database_url: str, var_dir: Path) -> AsyncIterator[Harness]:
    """A :func:`harness` whose Bitrix24 app is registered and installed on the portal."""
    async with harness(database_url, var_dir) as both:
        await both.register_app()
        await both.install()
        yield both


class ScaledRateLimiter(RateLimiter):
    """The emulator's leaky bucket with any size and drain (the plans are fixed to 50/2, 250/5)."""

    def __init__(self, capacity: int, rate: float) -> None:
        super().__init__("standard")
        self.capacity = capacity
        self.drain = rate

    def allow(self, key: str, now: float) -> bool:
        """Count a request in a bucket of our size."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = LeakyBucket(self.capacity, self.drain)
        return bucket.try_acquire(now)
