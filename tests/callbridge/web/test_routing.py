"""``GET /pbx/{enterprise}/responsible`` against the emulator: extension, 404, 401, cache."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from callbridge.directory import ResponsibleFinder, sync_integration_users
from callbridge.storage.models import Enterprise
from callbridge.storage.repositories import IntegrationRepository
from callbridge.web.errors import install_error_handlers
from callbridge.web.routing import router
from tests.callbridge.crm.bitrix24.harness import CALLBRIDGE, Harness, harness, with_state

TOKEN = "dialplan-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Env:
    h: Harness
    http: httpx.AsyncClient
    app: FastAPI

    async def ask(self, phone: str, **params: str) -> httpx.Response:
        return await self.http.get(
            "/pbx/100/responsible", params={"phone": phone, **params}, headers=AUTH
        )

    async def searches(self) -> int:
        return len(await self.h.requests("telephony.externalCall.searchCrmEntities"))


@pytest.fixture
async def env(fresh_database_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    async with harness(fresh_database_url, tmp_path) as h:
        integration = await h.install_for(
            Enterprise(number="100", webhook_secret_enc=h.box.encrypt(TOKEN))
        )
        await sync_integration_users(h.portals, integration.id)
        app = FastAPI()
        install_error_handlers(app)
        app.include_router(router)
        state = {
            "settings": h.settings,
            "session_factory": h.session_factory,
            "secret_box": h.box,
            "bitrix24_portals": h.portals,
        }
        transport = httpx.ASGITransport(app=with_state(app, state))
        async with httpx.AsyncClient(transport=transport, base_url=CALLBRIDGE) as http:
            yield Env(h, http, app)


class TestResponsible:
    async def test_known_number_gives_the_managers_extension(self, env: Env) -> None:
        # Contact 1 (+7 495 123-45-67) belongs to user 2, extension 102.
        for spelling in ("+7 (495) 123-45-67", "84951234567", "74951234567"):
            response = await env.ask(spelling)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["extension"] == "102"
            assert body["user_id"] == 2
            assert body["crm_entity_type"] == "CONTACT"
        assert await env.searches() == 1  # one number, three spellings, one search

    async def test_text_format_for_dialplans(self, env: Env) -> None:
        response = await env.ask("84951234567", format="text")
        assert response.status_code == 200
        assert response.text == "102"
        unknown = await env.ask("+7 999 000-00-00", format="text")
        assert unknown.status_code == 404
        assert unknown.text == ""

    async def test_unknown_number_is_404_with_a_reason(self, env: Env) -> None:
        response = await env.ask("+7 999 000-00-00")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "unknown_number"

    async def test_cached_second_call_does_not_ask_bitrix24(self, env: Env) -> None:
        assert (await env.ask("+7 999 000-00-00")).status_code == 404
        assert (await env.ask("89990000000")).status_code == 404
        assert (await env.ask("+79031112233")).status_code == 200
        assert (await env.ask("+79031112233")).status_code == 200
        assert await env.searches() == 2

    async def test_bad_credentials_are_401(self, env: Env) -> None:
        response = await env.http.get(
            "/pbx/100/responsible",
            params={"phone": "84951234567"},
            headers={"Authorization": "Bearer wrong"},
        )
        assert response.status_code == 401
        unknown = await env.http.get(
            "/pbx/999/responsible", params={"phone": "84951234567"}, headers=AUTH
        )
        assert unknown.status_code == 401
        assert await env.searches() == 0

    async def test_not_a_phone_number_is_422(self, env: Env) -> None:
        response = await env.ask("hello")
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_phone"

    async def test_responsible_without_extension_is_404(self, env: Env) -> None:
        async with env.h.session_factory() as session, session.begin():
            row = await IntegrationRepository(session, env.h.box).by_member_id(
                env.h.emulator.portal.member_id
            )
            assert row is not None
            row.settings = {**row.settings, "extension_users": {"103": 1}}
        # Contact 2 (+79031112233) belongs to user 3, whose 103 now reaches user 1.
        response = await env.ask("+79031112233")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "no_extension"

    async def test_slow_portal_is_time_boxed(self, env: Env) -> None:
        env.app.state.responsible_finder = ResponsibleFinder(env.h.portals, timeout_seconds=0.2)
        faults = {"latency_mode": "fixed", "latency_ms": 1500}
        (await env.h.emulator_http.put("/_emulator/faults", json=faults)).raise_for_status()
        started = time.perf_counter()
        response = await env.ask("+7 999 000-00-01")
        assert time.perf_counter() - started < 1.0
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "crm_timeout"
