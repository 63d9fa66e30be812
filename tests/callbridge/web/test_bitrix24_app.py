"""The Bitrix24 app routes against the emulator: install, events, OAuth connect, link codes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select, text

from callbridge.crm.bitrix24.encoding import encode_form
from callbridge.storage.models import (
    Bitrix24Integration,
    Enterprise,
    IntegrationStatus,
    Job,
    JobStatus,
)
from tests.callbridge.crm.bitrix24.harness import CALLBRIDGE, CLIENT_ID, Harness, harness


@pytest.fixture
async def h(fresh_database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(fresh_database_url, tmp_path) as both:
        await both.register_app()
        yield both


async def raw_integration_rows(h: Harness) -> list[tuple[object, ...]]:
    async with h.session_factory() as session:
        result = await session.execute(text("SELECT * FROM bitrix24_integrations"))
        return [tuple(row) for row in result]


async def open_app(h: Harness, delivery: dict[str, object]) -> str:
    """The portal opens the app page again: the same install POST, as the frame sends it."""
    response = await h.callbridge_http.post(
        "/bitrix24/install",
        params=delivery["query"],  # type: ignore[arg-type]
        content=str(delivery["body"]),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    return response.text


async def jobs(h: Harness) -> list[Job]:
    async with h.session_factory() as session:
        return list((await session.scalars(select(Job).order_by(Job.id))).all())


class TestInstall:
    async def test_tokens_are_stored_encrypted(self, h: Harness) -> None:
        installed = await h.install()
        assert [d["status"] for d in installed["deliveries"]] == [200, 200]
        assert installed["deliveries"][0]["kind"] == "install"
        assert "BX24.installFinish()" in await open_app(h, installed["deliveries"][0])
        row = await h.integration()
        assert row is not None
        assert row.status == IntegrationStatus.ACTIVE
        assert row.client_endpoint == "http://portal.test/rest/"
        assert row.scope == "crm,telephony,user_basic,im"
        raw = repr(await raw_integration_rows(h))
        app_token = installed["app"]["application_token"]
        for secret in (installed["access_token"], installed["refresh_token"], app_token):
            assert secret not in raw
        async with h.session_factory() as session:
            from callbridge.storage.repositories import IntegrationRepository

            repo = IntegrationRepository(session, h.box)
            stored = await repo.by_member_id(row.member_id)
            assert stored is not None
            assert repo.access_token(stored) == installed["access_token"]
            assert repo.application_token(stored) == app_token

    async def test_setup_binds_events_to_our_url(self, h: Harness) -> None:
        await h.install()
        (app,) = (await h.emulator_http.get("/_emulator/apps")).json()
        bound = {(b["event"], b["handler"]) for b in app["bindings"]}
        assert bound == {
            (event, f"{CALLBRIDGE}/bitrix24/events")
            for event in ("ONEXTERNALCALLSTART", "ONEXTERNALCALLBACKSTART", "ONAPPUNINSTALL")
        }

    async def test_event_only_install_answers_200(self, h: Harness) -> None:
        await h.register_app(install_mode="event")
        installed = await h.install()
        (delivery,) = installed["deliveries"]
        assert delivery["status"] == 200
        assert await h.integration() is not None

    async def test_garbage_install_is_refused(self, h: Harness) -> None:
        response = await h.callbridge_http.post("/bitrix24/install", data={"member_id": "x"})
        assert response.status_code == 400
        assert await raw_integration_rows(h) == []

    async def test_forged_reinstall_changes_nothing(self, h: Harness) -> None:
        await h.install()
        before = await raw_integration_rows(h)
        row = await h.integration()
        assert row is not None
        forged = {
            "event": "ONAPPINSTALL",
            "auth": {
                "access_token": "forged-access",
                "refresh_token": "forged-refresh",
                "member_id": row.member_id,
                "client_endpoint": "http://evil.test/rest/",
                "application_token": "forged-app-token",
            },
        }
        response = await h.callbridge_http.post(
            "/bitrix24/install",
            content=encode_form(forged),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 401
        assert await raw_integration_rows(h) == before

    async def test_uninstall_then_reinstall(self, h: Harness) -> None:
        await h.install()
        response = await h.emulator_http.post(f"/_emulator/apps/{CLIENT_ID}/uninstall", json={})
        assert [d["status"] for d in response.json()["deliveries"]] == [200]
        row = await h.integration()
        assert row is not None
        assert row.status == IntegrationStatus.UNINSTALLED  # kept, not deleted
        await h.install()  # a new application_token; accepted because we were uninstalled
        row = await h.integration()
        assert row is not None
        assert row.status == IntegrationStatus.ACTIVE


class TestEvents:
    async def test_click_to_call_becomes_a_job(self, h: Harness) -> None:
        await h.install()
        response = await h.emulator_http.post(
            "/_emulator/events/click-to-call", json={"user_id": 1, "phone_number": "+74951234567"}
        )
        response.raise_for_status()
        await h.emulator.deliveries.wait_idle()
        (job,) = await jobs(h)
        assert job.kind == "bitrix24.click_to_call"
        assert job.payload["data"]["PHONE_NUMBER"] == "+74951234567"
        assert job.payload["data"]["CALL_ID"].startswith("externalCall.")
        assert "auth" not in job.payload  # tokens are not stored with the job

    @pytest.mark.parametrize("case", ["wrong_token", "unknown_member", "no_token"])
    async def test_forged_event_is_rejected_and_changes_nothing(
        self, h: Harness, case: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        await h.install()
        row = await h.integration()
        assert row is not None
        before = await raw_integration_rows(h)
        auth = {"member_id": row.member_id, "application_token": "not-the-token"}
        if case == "unknown_member":
            auth = {"member_id": "0" * 32, "application_token": "whatever"}
        elif case == "no_token":
            auth = {"member_id": row.member_id}
        for event in ("ONEXTERNALCALLSTART", "ONAPPUNINSTALL"):
            response = await h.callbridge_http.post(
                "/bitrix24/events",
                content=encode_form({"event": event, "data": {"CALL_ID": "x"}, "auth": auth}),
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            assert response.status_code == 401
        assert await raw_integration_rows(h) == before
        assert await jobs(h) == []
        assert "not-the-token" not in caplog.text

    async def test_uninstall_cancels_queued_jobs(self, h: Harness) -> None:
        await h.install()
        await h.emulator_http.post(
            "/_emulator/events/click-to-call", json={"user_id": 1, "phone_number": "+74951234567"}
        )
        await h.emulator.deliveries.wait_idle()
        await h.emulator_http.post(f"/_emulator/apps/{CLIENT_ID}/uninstall", json={})
        (job,) = await jobs(h)
        assert job.status == JobStatus.CANCELLED


class TestAuthorizationCode:
    async def test_connect_from_our_side(self, h: Harness) -> None:
        await h.install()
        start = await h.callbridge_http.get(
            "/bitrix24/oauth/start", params={"portal": "portal.test"}
        )
        assert start.status_code == 302
        authorize = start.headers["location"]
        assert authorize.startswith("https://portal.test/oauth/authorize/?client_id=")
        # The browser goes to the portal (the emulator), which redirects back with a code.
        portal = await h.emulator_http.get("/oauth/authorize/?" + urlsplit(authorize).query)
        assert portal.status_code == 302
        callback = urlsplit(portal.headers["location"])
        assert callback.path == "/bitrix24/oauth/callback"
        done = await h.callbridge_http.get(callback.path + "?" + callback.query)
        assert done.status_code == 200
        assert "connected" in done.text
        # The state is single use.
        again = await h.callbridge_http.get(callback.path + "?" + callback.query)
        assert again.status_code == 400
        assert parse_qs(callback.query)["state"]

    async def test_unknown_state_is_refused(self, h: Harness) -> None:
        response = await h.callbridge_http.get(
            "/bitrix24/oauth/callback", params={"code": "c", "state": "forged"}
        )
        assert response.status_code == 400
        assert [r for r in await h.requests("oauth.token")] == []


class TestLinkCode:
    async def test_admin_enters_the_operator_code(self, h: Harness) -> None:
        async with h.session_factory() as session, session.begin():
            session.add(Enterprise(number="100", name="Acme"))
        async with h.session_factory() as session, session.begin():
            code = await h.portals.create_link_code(session, "100")
        installed = await h.install()
        page = await open_app(h, installed["deliveries"][0])
        nonce = re.search(r"name='form' value='([^']+)'", page)
        assert nonce is not None
        wrong = await h.callbridge_http.post(
            "/bitrix24/link", data={"form": nonce.group(1), "code": "AAAA-AAAA"}
        )
        assert wrong.status_code == 400
        linked = await h.callbridge_http.post(
            "/bitrix24/link", data={"form": nonce.group(1), "code": code.lower()}
        )
        assert linked.status_code == 200, linked.text
        row = await h.integration()
        assert row is not None
        assert row.enterprise_id is not None
        reused = await h.callbridge_http.post(
            "/bitrix24/link", data={"form": nonce.group(1), "code": code}
        )
        assert reused.status_code == 400


async def test_integration_row_type() -> None:
    assert Bitrix24Integration.__tablename__ == "bitrix24_integrations"
