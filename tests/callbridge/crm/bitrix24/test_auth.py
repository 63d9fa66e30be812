"""Installs, events, the OAuth server, single-flight refresh and post-install setup."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from callbridge.crm.bitrix24 import errors as e
from callbridge.crm.bitrix24.auth import (
    BOUND_EVENTS,
    InstallRejected,
    OAuthCredentials,
    OAuthServer,
    application_token_matches,
    hash_code,
    installation_from_event,
    new_link_code,
    normalise_link_code,
    parse_event,
    parse_install_post,
    setup_portal,
)
from callbridge.crm.bitrix24.client import BatchResult
from callbridge.crm.bitrix24.encoding import decode_form
from tests.callbridge.crm.bitrix24.fakes import MemoryTokenStore, Tokens

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class TestInstallPost:
    def test_fields(self) -> None:
        form = {
            "AUTH_ID": "a1",
            "AUTH_EXPIRES": "3600",
            "REFRESH_ID": "r1",
            "SERVER_ENDPOINT": "https://oauth.bitrix.info/rest/",
            "APPLICATION_TOKEN": "app-tok",
            "APPLICATION_SCOPE": "crm,telephony",
            "member_id": "m1",
            "status": "L",
            "PLACEMENT": "DEFAULT",
        }
        query = {"DOMAIN": "b24-x.bitrix24.ru", "PROTOCOL": "1", "APP_SID": "sid"}
        installation = parse_install_post(form, query, now=NOW)
        grant = installation.grant
        assert installation.source == "install_post"
        assert (grant.access_token, grant.refresh_token, grant.member_id) == ("a1", "r1", "m1")
        assert grant.client_endpoint == "https://b24-x.bitrix24.ru/rest/"
        assert grant.expires_at == NOW + timedelta(hours=1)
        assert grant.application_token == "app-tok"
        assert grant.scope == "crm,telephony"

    def test_http_portal(self) -> None:
        installation = parse_install_post(
            {"AUTH_ID": "a", "REFRESH_ID": "r", "member_id": "m"},
            {"DOMAIN": "127.0.0.1:8090", "PROTOCOL": "0"},
        )
        assert installation.grant.client_endpoint == "http://127.0.0.1:8090/rest/"

    def test_missing_tokens(self) -> None:
        with pytest.raises(InstallRejected, match="AUTH_ID"):
            parse_install_post({"member_id": "m"}, {"DOMAIN": "x"})


class TestEvents:
    BODY = (
        "event=ONAPPINSTALL&event_handler_id=3&data%5BVERSION%5D=1&data%5BLANGUAGE_ID%5D=ru"
        "&ts=1764158400&auth%5Baccess_token%5D=a2&auth%5Bexpires%5D=1764162000"
        "&auth%5Bexpires_in%5D=3600&auth%5Bscope%5D=crm%2Ctelephony"
        "&auth%5Bdomain%5D=b24-x.bitrix24.ru&auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth."
        "bitrix.info%2Frest%2F&auth%5Bstatus%5D=L&auth%5Bclient_endpoint%5D=https%3A%2F%2Fb24-x."
        "bitrix24.ru%2Frest%2F&auth%5Bmember_id%5D=m1&auth%5Brefresh_token%5D=r2"
        "&auth%5Bapplication_token%5D=app-tok&auth%5Buser_id%5D=1"
    )

    def test_onappinstall(self) -> None:
        event = parse_event(decode_form(self.BODY))
        assert event.event == "ONAPPINSTALL"
        assert event.member_id == "m1"
        assert event.application_token == "app-tok"
        grant = installation_from_event(event).grant
        assert (grant.access_token, grant.refresh_token) == ("a2", "r2")
        assert grant.expires_at == datetime.fromtimestamp(1764162000, UTC)
        assert grant.domain == "b24-x.bitrix24.ru"
        assert grant.user_id == 1

    def test_uninstall_is_not_an_install(self) -> None:
        event = parse_event({"event": "onappuninstall", "auth": {"member_id": "m1"}})
        assert event.event == "ONAPPUNINSTALL"
        with pytest.raises(InstallRejected):
            installation_from_event(event)

    @pytest.mark.parametrize(
        ("stored", "given", "ok"),
        [("t", "t", True), ("t", "u", False), (None, "t", False), ("t", "", False)],
    )
    def test_token_comparison(self, stored: str | None, given: str, ok: bool) -> None:
        assert application_token_matches(stored, given) is ok


class TestCodes:
    def test_link_codes_are_typable(self) -> None:
        code = new_link_code()
        assert len(code) == 9
        assert code[4] == "-"
        assert normalise_link_code(code.lower().replace("-", " ")) == code
        assert hash_code(code) != hash_code(new_link_code())


def token_server(answers: list[httpx.Response]) -> tuple[OAuthServer, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OAuthServer(http, "local.app", "s3cret", "https://oauth.test"), seen


def grant_body(access: str = "a2", refresh: str = "r2") -> dict[str, Any]:
    return {
        "access_token": access,
        "refresh_token": refresh,
        "expires": 1764162000,
        "expires_in": 3600,
        "domain": "oauth.test",
        "client_endpoint": "https://b24-x.bitrix24.ru/rest/",
        "server_endpoint": "https://oauth.test/rest/",
        "member_id": "m1",
        "scope": "crm",
        "status": "L",
        "user_id": 1,
    }


class TestOAuthServer:
    async def test_refresh_is_a_get_with_credentials(self) -> None:
        oauth, seen = token_server([httpx.Response(200, json=grant_body())])
        grant = await oauth.refresh("r1")
        (request,) = seen
        assert request.method == "GET"
        assert request.url.path == "/oauth/token/"
        assert dict(request.url.params) == {
            "client_id": "local.app",
            "client_secret": "s3cret",
            "grant_type": "refresh_token",
            "refresh_token": "r1",
        }
        # ``domain`` is the OAuth server; the portal comes from client_endpoint.
        assert grant.domain == "b24-x.bitrix24.ru"
        assert grant.access_token == "a2"
        assert grant.refresh_token == "r2"

    async def test_invalid_grant(self) -> None:
        oauth, _ = token_server(
            [httpx.Response(400, json={"error": "invalid_grant", "error_description": "x"})]
        )
        with pytest.raises(e.RefreshRejected):
            await oauth.refresh("used")

    async def test_wrong_client_with_http_200(self) -> None:
        oauth, _ = token_server([httpx.Response(200, json={"error": "wrong_client"})])
        with pytest.raises(e.RefreshRejected):
            await oauth.exchange_code("c")

    async def test_server_failure_is_retryable(self) -> None:
        oauth, _ = token_server([httpx.Response(502, text="bad gateway")])
        with pytest.raises(e.ServerError):
            await oauth.refresh("r")

    def test_trusts_only_known_servers(self) -> None:
        oauth, _ = token_server([])
        assert oauth.trusts("https://oauth.bitrix.info/rest/")
        assert oauth.trusts("oauth.test")
        assert not oauth.trusts("https://evil.example/rest/")

    def test_authorize_url(self) -> None:
        oauth, _ = token_server([])
        assert oauth.authorize_url("b24-x.bitrix24.ru", "st") == (
            "https://b24-x.bitrix24.ru/oauth/authorize/?client_id=local.app&state=st"
        )


class TestSingleFlightRefresh:
    async def test_twenty_concurrent_callers_one_refresh(self) -> None:
        store = MemoryTokenStore(Tokens("a1", "r1"))
        gate = asyncio.Event()
        presented: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            presented.append(request.url.params["refresh_token"])
            return httpx.Response(200, json=grant_body("a2", "r2"))

        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        credentials = OAuthCredentials(
            store, OAuthServer(http, "c", "s", "https://oauth.test"), key="m1"
        )

        async def caller() -> str | None:
            token = await credentials.access_token()
            await gate.wait()
            await credentials.refresh(token)
            return await credentials.access_token()

        tasks = [asyncio.create_task(caller()) for _ in range(20)]
        await asyncio.sleep(0)
        gate.set()
        assert set(await asyncio.gather(*tasks)) == {"a2"}
        assert presented == ["r1"]

    async def test_another_process_refreshed_first(self) -> None:
        store = MemoryTokenStore(Tokens("a1", "r1"))
        http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
        credentials = OAuthCredentials(store, OAuthServer(http, "c", "s"), key="m1")
        assert await credentials.access_token() == "a1"
        store.tokens = Tokens("a9", "r9")  # written by another process
        await credentials.refresh("a1")
        assert await credentials.access_token() == "a9"

    async def test_rejected_refresh_marks_reauth(self) -> None:
        store = MemoryTokenStore(Tokens("a1", "r1"))
        http = httpx.AsyncClient(
            transport=httpx.MockTransport(
                lambda r: httpx.Response(400, json={"error": "invalid_grant"})
            )
        )
        credentials = OAuthCredentials(store, OAuthServer(http, "c", "s"), key="m1")
        with pytest.raises(e.RefreshRejected):
            await credentials.refresh("a1")
        assert store.needs_reauth is not None
        assert store.tokens == Tokens("a1", "r1")


class FakeBatchClient:
    def __init__(self, errors: dict[str, e.Bitrix24Error]) -> None:
        self.errors = errors
        self.commands: dict[str, Any] = {}

    async def batch(self, commands: dict[str, Any]) -> BatchResult:
        self.commands = commands
        return BatchResult(
            results={k: True for k in commands if k not in self.errors}, errors=self.errors
        )


class TestSetup:
    async def test_binds_events_and_adds_lines(self) -> None:
        client = FakeBatchClient(
            {
                "bind_onappuninstall": e.InvalidRequest(
                    code="ERROR_HANDLER_ALREADY_EXIST", description="Handler already exists!"
                ),
                "line_1": e.InvalidRequest(code="ERROR_CORE", description="DB error"),
            }
        )
        report = await setup_portal(
            client,
            "https://cb.test/bitrix24/events",
            [{"number": "74951112233"}, {"number": "78120000000", "name": "SPb"}],
        )
        assert [c[0] for c in client.commands.values()] == ["event.bind"] * 3 + [
            "telephony.externalLine.add"
        ] * 2
        assert {c[1]["event"] for c in list(client.commands.values())[:3]} == set(BOUND_EVENTS)
        assert report.bound == list(BOUND_EVENTS)
        assert report.lines == ["74951112233"]
        assert list(report.errors) == ["line_1"]
