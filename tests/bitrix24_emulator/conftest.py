"""Shared fixtures: an emulator on a fake clock, an HTTP client over ASGI, a receiver for events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from fastapi import FastAPI

from bitrix24_emulator.app import create_app
from bitrix24_emulator.clock import FakeClock
from bitrix24_emulator.config import EmulatorConfig
from bitrix24_emulator.emulator import Emulator

BASE_URL = "http://portal.test"
HANDLER = "http://app.test/bitrix24/handler"
EVENTS = "http://app.test/bitrix24/events"


@dataclass
class Receiver:
    """The app side of deliveries: records each POST and answers ``status``."""

    status: int = 200
    requests: list[httpx.Request] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """The MockTransport handler."""
        self.requests.append(request)
        return httpx.Response(self.status, text="OK")

    def forms(self, path: str | None = None) -> list[dict[str, str]]:
        """Bodies as flat ``{bracket key: value}`` dicts."""
        return [
            dict(parse_qsl(r.content.decode(), keep_blank_values=True))
            for r in self.requests
            if path is None or r.url.path == path
        ]


@dataclass
class Installed:
    """An installed app and its first tokens."""

    client_id: str
    client_secret: str
    access_token: str
    refresh_token: str
    application_token: str


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def outgoing(receiver: Receiver) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver.handle)) as client:
        yield client


@pytest.fixture
def make_app(clock: FakeClock, outgoing: httpx.AsyncClient) -> Callable[..., FastAPI]:
    def build(**overrides: Any) -> FastAPI:
        config = EmulatorConfig(clock=clock, http_client=outgoing, **overrides)
        return create_app(config)

    return build


@pytest.fixture
def app(make_app: Callable[..., FastAPI]) -> FastAPI:
    return make_app()


@pytest.fixture
def emu(app: FastAPI) -> Emulator:
    emulator: Emulator = app.state.emulator
    return emulator


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as c:
        yield c


async def install_app(
    client: httpx.AsyncClient, *, scopes: list[str] | None = None, **extra: Any
) -> Installed:
    """Register and install an app through the control API."""
    body: dict[str, Any] = {"handler_url": HANDLER, **extra}
    if scopes is not None:
        body["scopes"] = scopes
    registered = (await client.post("/_emulator/apps", json=body)).json()
    installed = (await client.post(f"/_emulator/apps/{registered['client_id']}/install")).json()
    return Installed(
        registered["client_id"],
        registered["client_secret"],
        installed["access_token"],
        installed["refresh_token"],
        installed["app"]["application_token"],
    )


@pytest.fixture
async def installed(client: httpx.AsyncClient) -> Installed:
    return await install_app(client)


async def call(
    client: httpx.AsyncClient, method: str, token: str | None, **params: Any
) -> httpx.Response:
    """POST a JSON REST call with ``auth`` in the body."""
    body = dict(params)
    if token is not None:
        body["auth"] = token
    return await client.post(f"/rest/{method}.json", json=body)


WEBHOOK = "/rest/1/emulatorhook0001"
