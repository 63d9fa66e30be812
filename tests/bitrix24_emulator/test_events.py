"""App installation and event delivery against a small receiver: exact form encoding and fields."""

from __future__ import annotations

from urllib.parse import parse_qs

import httpx
from tests.bitrix24_emulator.conftest import EVENTS, HANDLER, Installed, Receiver, call, install_app

from bitrix24_emulator.clock import FakeClock
from bitrix24_emulator.emulator import Emulator


class TestInstall:
    async def test_install_post_and_onappinstall(
        self, client: httpx.AsyncClient, receiver: Receiver, emu: Emulator, clock: FakeClock
    ) -> None:
        app = await install_app(client)
        assert [str(r.url.copy_with(query=None)) for r in receiver.requests] == [HANDLER, HANDLER]
        page, event = receiver.requests
        for request in (page, event):
            assert request.method == "POST"
            assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        query = {k: v[0] for k, v in parse_qs(page.url.query.decode()).items()}
        assert query.keys() == {"DOMAIN", "PROTOCOL", "LANG", "APP_SID"}
        assert query["DOMAIN"] == emu.portal.domain
        assert query["PROTOCOL"] == "0"
        form = receiver.forms()[0]
        assert form == {
            "AUTH_ID": app.access_token,
            "AUTH_EXPIRES": "3600",
            "REFRESH_ID": app.refresh_token,
            "SERVER_ENDPOINT": "http://portal.test/rest/",
            "APPLICATION_TOKEN": app.application_token,
            "APPLICATION_SCOPE": "crm,telephony,user_basic,im",
            "member_id": emu.portal.member_id,
            "status": "L",
            "PLACEMENT": "DEFAULT",
            "PLACEMENT_OPTIONS": "{}",
        }
        body = event.content.decode()
        assert body.startswith("event=ONAPPINSTALL&event_handler_id=")
        assert "auth%5Bapplication_token%5D=" + app.application_token in body
        fields = receiver.forms()[1]
        assert fields == {
            "event": "ONAPPINSTALL",
            "event_handler_id": fields["event_handler_id"],
            "data[VERSION]": "1",
            "data[ACTIVE]": "Y",
            "data[INSTALLED]": "Y",
            "data[LANGUAGE_ID]": "en",
            "ts": str(int(clock.now())),
            "auth[access_token]": app.access_token,
            "auth[expires]": str(int(clock.now()) + 3600),
            "auth[expires_in]": "3600",
            "auth[scope]": "crm,telephony,user_basic,im",
            "auth[domain]": emu.portal.domain,
            "auth[server_endpoint]": "http://portal.test/rest/",
            "auth[status]": "L",
            "auth[client_endpoint]": "http://portal.test/rest/",
            "auth[member_id]": emu.portal.member_id,
            "auth[user_id]": "1",
            "auth[refresh_token]": app.refresh_token,
            "auth[application_token]": app.application_token,
        }
        assert fields["event_handler_id"].isdigit()

    async def test_event_only_mode(self, client: httpx.AsyncClient, receiver: Receiver) -> None:
        await install_app(client, install_mode="event")
        assert [f["event"] for f in receiver.forms()] == ["ONAPPINSTALL"]

    async def test_ui_mode_waits_for_install_finish(
        self, client: httpx.AsyncClient, receiver: Receiver
    ) -> None:
        app = await install_app(client, install_mode="ui")
        assert len(receiver.requests) == 1
        info = (await call(client, "app.info", app.access_token)).json()["result"]
        assert info["INSTALLED"] is False
        await call(
            client, "event.bind", app.access_token, event="ONEXTERNALCALLSTART", handler=EVENTS
        )
        r = await client.post(
            "/_emulator/events/click-to-call",
            json={"user_id": 1, "phone_number": "+79001234567", "client_id": app.client_id},
        )
        assert r.json()["deliveries"] == []
        await client.post(f"/_emulator/apps/{app.client_id}/install-finish")
        info = (await call(client, "app.info", app.access_token)).json()["result"]
        assert info["INSTALLED"] is True

    async def test_failed_install_delivery_is_recorded_not_retried(
        self, client: httpx.AsyncClient, receiver: Receiver
    ) -> None:
        receiver.status = 500
        await install_app(client)
        assert len(receiver.requests) == 2
        log = (await client.get("/_emulator/deliveries")).json()
        assert [d["status"] for d in log] == [500, 500]
        assert log[0]["error"] == "HTTP 500"

    async def test_reinstall_changes_application_token(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        again = (await client.post(f"/_emulator/apps/{installed.client_id}/install")).json()
        assert again["app"]["application_token"] != installed.application_token


class TestBinding:
    async def test_bind_get_unbind(self, client: httpx.AsyncClient, installed: Installed) -> None:
        token = installed.access_token
        r = await call(client, "event.bind", token, event="onExternalCallStart", handler=EVENTS)
        assert r.json()["result"] is True
        dup = await call(client, "event.bind", token, event="ONEXTERNALCALLSTART", handler=EVENTS)
        assert dup.status_code == 400
        assert dup.json() == {
            "error": "ERROR_HANDLER_ALREADY_EXIST",
            "error_description": "Handler already exists!",
        }
        await call(client, "event.bind", token, event="ONAPPUNINSTALL", handler=EVENTS)
        got = (await call(client, "event.get", token)).json()["result"]
        assert got == [
            {"event": "ONEXTERNALCALLSTART", "handler": EVENTS, "auth_type": "0", "offline": 0},
            {"event": "ONAPPUNINSTALL", "handler": EVENTS, "auth_type": "0", "offline": 0},
        ]
        removed = await call(
            client, "event.unbind", token, event="ONEXTERNALCALLSTART", handler=EVENTS
        )
        assert removed.json()["result"] == {"count": 1}
        assert len((await call(client, "event.get", token)).json()["result"]) == 1

    async def test_unknown_event(self, client: httpx.AsyncClient, installed: Installed) -> None:
        r = await call(
            client, "event.bind", installed.access_token, event="ONNOTHING", handler=EVENTS
        )
        assert r.status_code == 400
        assert r.json() == {
            "error": "ERROR_EVENT_NOT_FOUND",
            "error_description": "Event not found",
        }

    async def test_auth_type_needs_admin(self, client: httpx.AsyncClient) -> None:
        app = await install_app(client)
        tokens = (
            await client.post(f"/_emulator/apps/{app.client_id}/tokens", json={"user_id": 2})
        ).json()
        r = await call(
            client,
            "event.bind",
            tokens["access_token"],
            event="ONEXTERNALCALLSTART",
            handler=EVENTS,
            auth_type=1,
        )
        assert r.status_code == 403
        assert r.json()["error"] == "ACCESS_DENIED"


class TestTelephonyEvents:
    async def _bind(self, client: httpx.AsyncClient, app: Installed, event: str) -> None:
        r = await call(client, "event.bind", app.access_token, event=event, handler=EVENTS)
        assert r.status_code == 200

    async def test_click_to_call(
        self,
        client: httpx.AsyncClient,
        installed: Installed,
        receiver: Receiver,
        emu: Emulator,
        clock: FakeClock,
    ) -> None:
        await self._bind(client, installed, "ONEXTERNALCALLSTART")
        receiver.requests.clear()
        result = (
            await client.post(
                "/_emulator/events/click-to-call",
                json={
                    "user_id": 2,
                    "phone_number": "8 916 555-12-34",
                    "line_number": "74950000001",
                },
            )
        ).json()
        call_id = result["CALL_ID"]
        assert call_id.startswith("externalCall.")
        forms = receiver.forms("/bitrix24/events")
        assert len(forms) == 1
        fields = forms[0]
        data = {k[5:-1]: v for k, v in fields.items() if k.startswith("data[")}
        assert data == {
            "PHONE_NUMBER": "8 916 555-12-34",
            "PHONE_NUMBER_INTERNATIONAL": "+79165551234",
            "EXTENSION": "",
            "USER_ID": "2",
            "CALL_LIST_ID": "0",
            "LINE_NUMBER": "74950000001",
            "IS_MOBILE": "0",
            "CALL_ID": call_id,
            "CRM_ENTITY_TYPE": "CONTACT",
            "CRM_ENTITY_ID": "1",
        }
        assert fields["event"] == "ONEXTERNALCALLSTART"
        assert fields["auth[application_token]"] == installed.application_token
        assert fields["auth[user_id]"] == "2"
        assert fields["auth[domain]"] == emu.portal.domain
        assert fields["ts"] == str(int(clock.now()))
        assert "auth[refresh_token]" in fields
        # The event's token works, and the call is registered: finish it without register.
        finish = await call(
            client,
            "telephony.externalCall.finish",
            fields["auth[access_token]"],
            CALL_ID=call_id,
            USER_ID=2,
            DURATION=10,
        )
        assert finish.status_code == 200
        assert finish.json()["result"]["INCOMING"] == "1"
        calls = (await client.get("/_emulator/calls")).json()
        assert calls[0]["origin"] == "click_to_call"
        assert calls[0]["cards_shown"] == [2]

    async def test_click_to_call_without_handler(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        r = await client.post(
            "/_emulator/events/click-to-call", json={"user_id": 1, "phone_number": "+79001234567"}
        )
        assert r.status_code == 409

    async def test_callback(
        self, client: httpx.AsyncClient, installed: Installed, receiver: Receiver
    ) -> None:
        await self._bind(client, installed, "ONEXTERNALCALLBACKSTART")
        receiver.requests.clear()
        await client.post(
            "/_emulator/events/callback",
            json={"phone_number": "+79031112233", "text": "Call me", "line_number": "100"},
        )
        fields = receiver.forms("/bitrix24/events")[0]
        data = {k[5:-1]: v for k, v in fields.items() if k.startswith("data[")}
        assert data == {
            "PHONE_NUMBER": "+79031112233",
            "TEXT": "Call me",
            "VOICE": "",
            "CRM_ENTITY_TYPE": "CONTACT",
            "CRM_ENTITY_ID": "2",
            "LINE_NUMBER": "100",
        }
        assert fields["auth[user_id]"] == "3"  # the contact's responsible

    async def test_uninstall_sends_onappuninstall_without_tokens(
        self, client: httpx.AsyncClient, installed: Installed, receiver: Receiver, emu: Emulator
    ) -> None:
        await self._bind(client, installed, "ONAPPUNINSTALL")
        receiver.requests.clear()
        await client.post(f"/_emulator/apps/{installed.client_id}/uninstall", json={"clean": True})
        fields = receiver.forms()[0]
        assert fields == {
            "event": "ONAPPUNINSTALL",
            "event_handler_id": fields["event_handler_id"],
            "data[LANGUAGE_ID]": "en",
            "data[CLEAN]": "1",
            "ts": fields["ts"],
            "auth[domain]": emu.portal.domain,
            "auth[server_endpoint]": "http://portal.test/rest/",
            "auth[client_endpoint]": "http://portal.test/rest/",
            "auth[member_id]": emu.portal.member_id,
            "auth[application_token]": installed.application_token,
        }

    async def test_voximplant_events_from_methods(
        self, client: httpx.AsyncClient, installed: Installed, receiver: Receiver, emu: Emulator
    ) -> None:
        await self._bind(client, installed, "ONVOXIMPLANTCALLINIT")
        await self._bind(client, installed, "ONVOXIMPLANTCALLEND")
        receiver.requests.clear()
        reg = await call(
            client,
            "telephony.externalCall.register",
            installed.access_token,
            USER_ID=1,
            PHONE_NUMBER="+79001234567",
            TYPE=2,
        )
        call_id = reg.json()["result"]["CALL_ID"]
        await call(
            client,
            "telephony.externalCall.finish",
            installed.access_token,
            CALL_ID=call_id,
            USER_ID=1,
            DURATION=5,
        )
        await emu.deliveries.wait_idle()
        forms = receiver.forms("/bitrix24/events")
        assert [f["event"] for f in forms] == ["ONVOXIMPLANTCALLINIT", "ONVOXIMPLANTCALLEND"]
        assert forms[0]["data[CALL_TYPE]"] == "2"
        assert forms[1]["data[CALL_DURATION]"] == "5"
        assert forms[1]["data[CALL_FAILED_CODE]"] == "200"

    async def test_failed_event_not_retried(
        self, client: httpx.AsyncClient, installed: Installed, receiver: Receiver
    ) -> None:
        await self._bind(client, installed, "ONEXTERNALCALLSTART")
        receiver.requests.clear()
        receiver.status = 503
        r = await client.post(
            "/_emulator/events/click-to-call", json={"user_id": 1, "phone_number": "+79001234567"}
        )
        assert [d["status"] for d in r.json()["deliveries"]] == [503]
        assert len(receiver.requests) == 1


async def test_real_receiver_over_asgi(client: httpx.AsyncClient, clock: FakeClock) -> None:
    """A tiny Starlette app as the handler, reached through ASGITransport."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from bitrix24_emulator.app import create_app
    from bitrix24_emulator.config import EmulatorConfig

    got: list[dict[str, str]] = []

    async def handler(request: Request) -> PlainTextResponse:
        form = await request.form()
        got.append({k: str(v) for k, v in form.items()})
        return PlainTextResponse("ok")

    receiver_app = Starlette(routes=[Route("/h", handler, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver_app)) as out:
        emulator_app = create_app(EmulatorConfig(clock=clock, http_client=out))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=emulator_app), base_url="http://e"
        ) as c:
            r = await c.post(
                "/_emulator/apps", json={"handler_url": "http://r/h", "install_mode": "event"}
            )
            await c.post(f"/_emulator/apps/{r.json()['client_id']}/install")
    assert got[0]["event"] == "ONAPPINSTALL"
    assert got[0]["auth[member_id]"]
