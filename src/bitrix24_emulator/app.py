"""``create_app``: one ASGI app serving the OAuth server, portal REST, control API and live page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from bitrix24_emulator import __version__
from bitrix24_emulator.config import EmulatorConfig
from bitrix24_emulator.control import router
from bitrix24_emulator.emulator import Emulator
from bitrix24_emulator.faults import FaultKind

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


async def _send_fault(emu: Emulator, kind: FaultKind, scope: Scope, send: Send) -> None:
    """Answer (or fail) a request the way the chosen fault does."""
    emu.log_request(
        {
            "time": emu.clock.now(),
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
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    if kind == "timeout":
        await emu.clock.sleep(emu.faults.config.hang_seconds)
        # After the hang the connection is dropped without an answer.
        raise httpx.ReadTimeout("emulator: injected timeout, no response")
    # "reset": start a response and abort it, so a real server drops the connection mid-way
    # (and an ASGITransport client sees a transport error, like a real one would).
    start: Message = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
    }
    await send(start)
    raise httpx.ReadError("emulator: injected connection reset")


class EmulatorApp(FastAPI):
    """FastAPI for the control API and docs; REST and OAuth bypass its routing (speed)."""

    emulator: Emulator
    rest: RestHandler
    oauth: OAuthServer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve ``/rest/`` and ``/oauth/`` directly, everything else through FastAPI."""
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/rest/"):
                endpoint = self.rest.handle
            elif path.rstrip("/") == "/oauth/token":
                endpoint = self.oauth.token
            elif path.rstrip("/") == "/oauth/authorize":
                endpoint = self.oauth.authorize
            else:
                await super().__call__(scope, receive, send)
                return
            emu = self.emulator
            if emu.faults.applies(path):
                decision = emu.faults.decide(emu.clock.now())
                if decision.delay:
                    await emu.clock.sleep(decision.delay)
                if decision.kind is not None:
                    await _send_fault(emu, decision.kind, scope, send)
                    return
            if scope["method"] not in ("GET", "POST"):
                response: Response = Response(status_code=405, headers={"Allow": "GET, POST"})
            else:
                response = await endpoint(Request(scope, receive))
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


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

    app = EmulatorApp(
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
    app.emulator, app.rest, app.oauth = emu, rest, oauth
    app.include_router(router)
    app.router.routes.append(Route("/", index, methods=["GET"], include_in_schema=False))
    return app
