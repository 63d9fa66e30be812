"""The OAuth server: authorize redirect, code exchange, refresh rotation, reuse, expiry."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from tests.bitrix24_emulator.conftest import HANDLER, Installed, call

from bitrix24_emulator.clock import FakeClock
from bitrix24_emulator.emulator import Emulator

TOKEN_FIELDS = {
    "access_token",
    "client_endpoint",
    "domain",
    "expires",
    "expires_in",
    "member_id",
    "refresh_token",
    "scope",
    "server_endpoint",
    "status",
    "user_id",
}


async def _code(client: httpx.AsyncClient, app: Installed, state: str = "xyz") -> dict[str, str]:
    response = await client.get(
        "/oauth/authorize/", params={"client_id": app.client_id, "state": state}
    )
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(HANDLER + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def _token(client: httpx.AsyncClient, **params: str) -> httpx.Response:
    return await client.get("/oauth/token/", params=params)


class TestAuthorize:
    async def test_redirect_carries_the_documented_fields(
        self, client: httpx.AsyncClient, installed: Installed, emu: Emulator
    ) -> None:
        query = await _code(client, installed)
        assert set(query) == {"code", "state", "domain", "member_id", "scope", "server_domain"}
        assert query["state"] == "xyz"
        assert query["domain"] == emu.portal.domain
        assert query["member_id"] == emu.portal.member_id
        assert query["scope"] == "crm,telephony,user_basic,im"
        assert query["server_domain"] == "portal.test"

    async def test_unknown_app_gets_portal_error_page(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/oauth/authorize/", params={"client_id": "local.nope"})
        assert response.status_code == 400
        assert "location" not in response.headers


class TestCodeExchange:
    async def test_authorization_code_grant(
        self, client: httpx.AsyncClient, installed: Installed, emu: Emulator, clock: FakeClock
    ) -> None:
        code = (await _code(client, installed))["code"]
        response = await _token(
            client,
            grant_type="authorization_code",
            client_id=installed.client_id,
            client_secret=installed.client_secret,
            code=code,
        )
        assert response.status_code == 200
        body = response.json()
        assert set(body) == TOKEN_FIELDS
        assert body["domain"] == "portal.test"  # the OAuth server, not the portal
        assert body["client_endpoint"] == "http://portal.test/rest/"
        assert body["server_endpoint"] == "http://portal.test/rest/"
        assert body["member_id"] == emu.portal.member_id
        assert body["expires_in"] == 3600
        assert body["expires"] == int(clock.now()) + 3600
        assert body["user_id"] == 1
        assert body["status"] == "L"
        assert (await call(client, "app.info", body["access_token"])).status_code == 200

    async def test_code_is_single_use(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        code = (await _code(client, installed))["code"]
        params = {
            "grant_type": "authorization_code",
            "client_id": installed.client_id,
            "client_secret": installed.client_secret,
            "code": code,
        }
        assert (await _token(client, **params)).status_code == 200
        again = await _token(client, **params)
        assert again.status_code == 400
        assert again.json()["error"] == "invalid_grant"

    async def test_code_expires_after_30_s(
        self, client: httpx.AsyncClient, installed: Installed, clock: FakeClock
    ) -> None:
        code = (await _code(client, installed))["code"]
        clock.advance(30)
        response = await _token(
            client,
            grant_type="authorization_code",
            client_id=installed.client_id,
            client_secret=installed.client_secret,
            code=code,
        )
        assert response.json()["error"] == "invalid_grant"

    async def test_wrong_secret(self, client: httpx.AsyncClient, installed: Installed) -> None:
        response = await _token(
            client,
            grant_type="refresh_token",
            client_id=installed.client_id,
            client_secret="wrong",
            refresh_token=installed.refresh_token,
        )
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_client"

    async def test_missing_refresh_token(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        response = await _token(
            client,
            grant_type="refresh_token",
            client_id=installed.client_id,
            client_secret=installed.client_secret,
        )
        assert response.status_code == 400
        assert response.json() == {
            "error": "invalid_request",
            "error_description": 'No "refresh_token" parameter found',
        }


class TestRefresh:
    async def _refresh(
        self, client: httpx.AsyncClient, app: Installed, token: str
    ) -> httpx.Response:
        return await _token(
            client,
            grant_type="refresh_token",
            client_id=app.client_id,
            client_secret=app.client_secret,
            refresh_token=token,
        )

    async def test_rotation(self, client: httpx.AsyncClient, installed: Installed) -> None:
        first = await self._refresh(client, installed, installed.refresh_token)
        assert first.status_code == 200
        body = first.json()
        assert set(body) == TOKEN_FIELDS
        assert body["refresh_token"] != installed.refresh_token
        assert body["access_token"] != installed.access_token
        second = await self._refresh(client, installed, body["refresh_token"])
        assert second.status_code == 200

    async def test_used_refresh_token_is_rejected(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        assert (await self._refresh(client, installed, installed.refresh_token)).status_code == 200
        reused = await self._refresh(client, installed, installed.refresh_token)
        assert reused.status_code == 400
        assert reused.json()["error"] == "invalid_grant"

    async def test_refresh_after_expiry_restores_access(
        self, client: httpx.AsyncClient, installed: Installed, clock: FakeClock
    ) -> None:
        clock.advance(7200)
        expired = await call(client, "app.info", installed.access_token)
        assert expired.json()["error"] == "expired_token"
        new = (await self._refresh(client, installed, installed.refresh_token)).json()
        assert (await call(client, "app.info", new["access_token"])).status_code == 200

    async def test_refresh_token_expires_after_180_days(
        self, client: httpx.AsyncClient, installed: Installed, clock: FakeClock
    ) -> None:
        clock.advance(180 * 86400)
        response = await self._refresh(client, installed, installed.refresh_token)
        assert response.json()["error"] == "invalid_grant"

    async def test_reuse_allowed_when_configured(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        await client.put("/_emulator/behaviour", json={"refresh_token_single_use": False})
        assert (await self._refresh(client, installed, installed.refresh_token)).status_code == 200
        assert (await self._refresh(client, installed, installed.refresh_token)).status_code == 200

    async def test_old_access_token_dies_when_configured(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        await client.put("/_emulator/behaviour", json={"revoke_access_on_refresh": True})
        await self._refresh(client, installed, installed.refresh_token)
        response = await call(client, "app.info", installed.access_token)
        assert response.status_code == 401

    @pytest.mark.parametrize("method", ["GET", "POST"])
    async def test_post_form_also_accepted(
        self, client: httpx.AsyncClient, installed: Installed, method: str
    ) -> None:
        params = {
            "grant_type": "refresh_token",
            "client_id": installed.client_id,
            "client_secret": installed.client_secret,
            "refresh_token": installed.refresh_token,
        }
        if method == "GET":
            response = await client.get("/oauth/token", params=params)
        else:
            response = await client.post("/oauth/token/", data=params)
        assert response.status_code == 200

    async def test_forced_expiry(self, client: httpx.AsyncClient, installed: Installed) -> None:
        expired = (await client.post("/_emulator/faults/expire-tokens", json={})).json()
        assert expired["expired"] >= 1
        response = await call(client, "app.info", installed.access_token)
        assert response.json()["error"] == "expired_token"
