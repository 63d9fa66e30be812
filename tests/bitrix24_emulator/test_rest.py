"""The REST endpoint: URLs, encodings, envelopes, auth errors, scopes and app-only methods."""

from __future__ import annotations

import httpx
import pytest
from tests.bitrix24_emulator.conftest import WEBHOOK, Installed, call, install_app

from bitrix24_emulator.clock import FakeClock


class TestEnvelope:
    async def test_success_has_result_and_time(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        response = await call(client, "app.info", installed.access_token)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"result", "time"}
        time = body["time"]
        assert {"start", "finish", "duration", "processing", "date_start", "date_finish"} <= set(
            time
        )
        assert {"operating", "operating_reset_at"} <= set(time)
        assert time["date_start"].endswith("+03:00")
        assert isinstance(time["operating_reset_at"], int)

    async def test_list_has_total_and_next(self, client: httpx.AsyncClient) -> None:
        body = (await client.get(f"{WEBHOOK}/user.get.json")).json()
        assert body["total"] == len(body["result"])
        assert "next" not in body

    async def test_unknown_method_is_404(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        response = await call(client, "no.such.method", installed.access_token)
        assert response.status_code == 404
        assert response.json() == {
            "error": "ERROR_METHOD_NOT_FOUND",
            "error_description": "Method not found!",
        }


class TestUrlsAndEncodings:
    @pytest.mark.parametrize("path", ["app.info.json", "app.info", "APP.INFO.json", "App.Info"])
    async def test_suffix_optional_and_case_insensitive(
        self, client: httpx.AsyncClient, installed: Installed, path: str
    ) -> None:
        response = await client.get(f"/rest/{path}", params={"auth": installed.access_token})
        assert response.status_code == 200, response.text
        assert response.json()["result"]["CODE"] == installed.client_id

    async def test_form_body_with_brackets(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        response = await client.post(
            "/rest/telephony.externalCall.register.json",
            content=(
                f"auth={installed.access_token}&USER_PHONE_INNER=101&PHONE_NUMBER=%2B79990001122"
                "&TYPE=2&SHOW=0"
            ),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200, response.text
        call_id = response.json()["result"]["CALL_ID"]
        shown = await client.post(
            "/rest/telephony.externalCall.show",
            content=f"auth={installed.access_token}&CALL_ID={call_id}&USER_ID[0]=2&USER_ID[1]=3",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert shown.json()["result"] is True
        calls = (await client.get("/_emulator/calls")).json()
        assert calls[0]["cards_visible"] == [2, 3]

    async def test_json_body_and_query_auth(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        response = await client.post(
            f"/rest/im.notify?auth={installed.access_token}",
            json={"USER_ID": 2, "MESSAGE": "hello"},
        )
        assert response.status_code == 200
        assert isinstance(response.json()["result"], int)

    async def test_get_query(self, client: httpx.AsyncClient, installed: Installed) -> None:
        response = await client.get(
            "/rest/im.notify.json",
            params={"auth": installed.access_token, "USER_ID": "2", "MESSAGE": "x"},
        )
        assert response.status_code == 200

    async def test_malformed_json(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/rest/app.info", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["error"] == "INVALID_REQUEST"

    async def test_multipart_body(self, client: httpx.AsyncClient, installed: Installed) -> None:
        response = await client.post(
            "/rest/im.notify",
            data={"auth": installed.access_token, "USER_ID": "2", "MESSAGE": "m"},
            files={"dummy": ("a.txt", b"x")},
        )
        assert response.status_code == 200


class TestAuth:
    async def test_missing_auth(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/rest/app.info.json", json={})
        assert response.status_code == 401
        assert response.json() == {
            "error": "NO_AUTH_FOUND",
            "error_description": "Wrong authorization data",
        }

    async def test_garbage_token(self, client: httpx.AsyncClient) -> None:
        response = await call(client, "app.info", "deadbeef")
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"

    async def test_expired_token(
        self, client: httpx.AsyncClient, installed: Installed, clock: FakeClock
    ) -> None:
        clock.advance(3600)
        response = await call(client, "app.info", installed.access_token)
        assert response.status_code == 401
        assert response.json() == {
            "error": "expired_token",
            "error_description": "The access token provided has expired.",
        }

    async def test_token_lifetime_configurable(self, make_app, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
        app = make_app(access_token_lifetime=60)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://p"
        ) as c:
            inst = await install_app(c)
            clock.advance(59)
            assert (await call(c, "app.info", inst.access_token)).status_code == 200
            clock.advance(1)
            assert (await call(c, "app.info", inst.access_token)).status_code == 401

    async def test_webhook_bad_code(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/rest/1/wrongcode/user.get.json")
        assert response.status_code == 401
        assert response.json()["error"] == "NO_AUTH_FOUND"

    async def test_uninstalled_app_token(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        await client.post(f"/_emulator/apps/{installed.client_id}/uninstall")
        response = await call(client, "app.info", installed.access_token)
        assert response.status_code == 401


class TestAppOnlyAndScopes:
    @pytest.mark.parametrize(
        "method",
        [
            "telephony.externalCall.register",
            "telephony.externalCall.finish",
            "telephony.externalLine.add",
            "telephony.externalLine.get",
            "event.bind",
            "event.get",
        ],
    )
    async def test_webhook_gets_wrong_auth_type(
        self, client: httpx.AsyncClient, method: str
    ) -> None:
        response = await client.post(f"{WEBHOOK}/{method}.json", json={})
        assert response.status_code == 403
        assert response.json() == {
            "error": "WRONG_AUTH_TYPE",
            "error_description": "Current authorization type is denied for this method",
        }

    async def test_webhook_may_read(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            f"{WEBHOOK}/telephony.externalCall.searchCrmEntities",
            json={"PHONE_NUMBER": "+74951002030"},
        )
        assert response.status_code == 200
        assert [r["CRM_ENTITY_TYPE"] for r in response.json()["result"]] == [
            "CONTACT",
            "COMPANY",
            "LEAD",
        ]

    async def test_insufficient_scope(self, client: httpx.AsyncClient) -> None:
        app = await install_app(client, scopes=["crm"])
        response = await call(client, "im.notify", app.access_token, USER_ID=1, MESSAGE="x")
        assert response.status_code == 403
        assert response.json()["error"] == "insufficient_scope"

    async def test_user_basic_grants_user_get(self, client: httpx.AsyncClient) -> None:
        app = await install_app(client, scopes=["user_basic"])
        response = await call(client, "user.get", app.access_token)
        assert response.status_code == 200

    async def test_basic_methods_need_no_scope(self, client: httpx.AsyncClient) -> None:
        app = await install_app(client, scopes=[])
        assert (await call(client, "app.info", app.access_token)).status_code == 200


class TestRequestLog:
    async def test_tokens_are_redacted(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        await client.post(
            f"/rest/im.notify?auth={installed.access_token}",
            json={"USER_ID": 1, "MESSAGE": "hi", "auth": installed.access_token},
        )
        entries = (await client.get("/_emulator/requests", params={"method": "im.notify"})).json()
        assert entries[-1]["params"] == {"USER_ID": 1, "MESSAGE": "hi"}
        assert entries[-1]["auth_kind"] == "oauth"
        assert entries[-1]["status"] == 200
        assert installed.access_token not in str(entries)
