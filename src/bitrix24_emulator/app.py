"""``create_app``: one ASGI app serving the OAuth server, portal REST, control API and live page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bitrix24_emulator import __version__
from bitrix24_emulator.config import EmulatorConfig
from bitrix24_emulator.control import router
from bitrix24_emulator.emulator import Emulator

# Importing the method modules registers their handlers.
from bitrix24_emulator.methods import crm as _crm  # noqa: F401
from bitrix24_emulator.methods import events as _events  # noqa: F401
from bitrix24_emulator.methods import system as _system  # noqa: F401
from bitrix24_emulator.methods import telephony as _telephony  # noqa: F401
from bitrix24_emulator.methods import users as _users  # noqa: F401
from bitrix24_emulator.oauth import OAuthServer
from bitrix24_emulator.rest import RestHandler
from bitrix24_emulator.ui import index

_ERROR_BODIES = {
    "500": b'{"error":"INTERNAL_SERVER_ERROR","error_description":"Internal server error"}',
    "502": b"<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>",
    "503": b"<html><head><title>503 Service Temporarily Unavailable</title></head>"
    b"<body>503 Service Temporarily Unavailable</body></html>",
}


class FaultMiddleware:
    """Applies injected faults to REST and OAuth requests before they reach the portal."""

    def __init__(self, app: ASGIApp, emu: Emulator) -> None:
        self.app = app
        self.emu = emu

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Delay, fail, drop or pass the request."""
        if scope["type"] != "http" or not self.emu.faults.applies(scope["path"]):
            await self.app(scope, receive, send)
            return
        decision = self.emu.faults.decide(self.emu.clock.now())
        if decision.delay:
            await self.emu.clock.sleep(decision.delay)
        kind = decision.kind
        if kind is None:
            await self.app(scope, receive, send)
            return
        self.emu.log_request(
            {
                "time": self.emu.clock.now(),
                "http_method": scope.get("method"),
                "path": scope["path"],
                "method": f"fault:{kind}",
                "params": None,
                "auth_kind": None,
                "client_id": None,
                "user_id": None,
                "status": int(kind) if kind.isdigit() else 0,
                "error": f"injected {kind}",
                "duration_ms": 0.0,
            }
        )
        if kind in _ERROR_BODIES:
            body = _ERROR_BODIES[kind]
            ctype = b"application/json" if kind == "500" else b"text/html"
            await send(
                {
                    "type": "http.response.start",
                    "status": int(kind),
                    "headers": [
                        (b"content-type", ctype),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if kind == "timeout":
            await self.emu.clock.sleep(self.emu.faults.config.hang_seconds)
            # After the hang the connection is dropped without an answer.
            raise httpx.ReadTimeout("emulator: injected timeout, no response")
        # "reset": start a response and abort it, so a real server drops the connection mid-way.
        start: Message = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
        }
        await send(start)
        raise httpx.ReadError("emulator: injected connection reset")


def create_app(
    config: EmulatorConfig | None = None, *, emulator: Emulator | None = None
) -> FastAPI:
    """The emulator as an ASGI app; ``app.state.emulator`` is the :class:`Emulator` behind it."""
    emu = emulator or Emulator(config or EmulatorConfig())
    rest = RestHandler(emu)
    oauth = OAuthServer(emu)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await emu.aclose()

    app = FastAPI(
        title="Bitrix24 emulator",
        version=__version__,
        description="Control and inspection API of the Bitrix24 emulator. The portal REST API "
        "(/rest/...) and the OAuth server (/oauth/...) follow Bitrix24's own documentation.",
        openapi_url="/_emulator/openapi.json",
        docs_url="/_emulator/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.emulator = emu
    app.include_router(router)
    # Plain Starlette routes for the hot paths: no FastAPI dependency resolution per request.
    routes: list[Any] = [
        Route("/rest/{path:path}", rest.handle, methods=["GET", "POST"], include_in_schema=False),
        Route("/oauth/authorize/", oauth.authorize, methods=["GET"], include_in_schema=False),
        Route("/oauth/authorize", oauth.authorize, methods=["GET"], include_in_schema=False),
        Route("/oauth/token/", oauth.token, methods=["GET", "POST"], include_in_schema=False),
        Route("/oauth/token", oauth.token, methods=["GET", "POST"], include_in_schema=False),
        Route("/", index, methods=["GET"], include_in_schema=False),
    ]
    app.router.routes.extend(routes)
    app.add_middleware(FaultMiddleware, emu=emu)
    return app
