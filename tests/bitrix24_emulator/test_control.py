"""Control and inspection API, live page, OpenAPI, reset, CLI."""

from __future__ import annotations

import httpx
from tests.bitrix24_emulator.conftest import WEBHOOK, Installed, call

from bitrix24_emulator.__main__ import config_from_args, parser
from bitrix24_emulator.emulator import Emulator


async def test_openapi_describes_control_api(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/_emulator/openapi.json")).json()
    paths = set(spec["paths"])
    assert {"/_emulator/apps", "/_emulator/calls", "/_emulator/faults", "/_emulator/reset"} <= paths
    assert not any(p.startswith("/rest") for p in paths)


async def test_live_page(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert "/_emulator/" in page.text
    assert "setInterval" in page.text


async def test_leads_contacts_users(client: httpx.AsyncClient, installed: Installed) -> None:
    before = len((await client.get("/_emulator/leads")).json())
    await call(
        client,
        "telephony.externalCall.register",
        installed.access_token,
        USER_ID=1,
        PHONE_NUMBER="+79005550000",
        TYPE=2,
        CRM_CREATE=1,
    )
    leads = (await client.get("/_emulator/leads")).json()
    assert len(leads) == before + 1
    assert leads[-1]["PHONE"][0]["VALUE"] == "+79005550000"
    assert len((await client.get("/_emulator/contacts")).json()) >= 5
    assert len((await client.get("/_emulator/companies")).json()) >= 3
    assert len((await client.get("/_emulator/users")).json()) == 5


async def test_reset(client: httpx.AsyncClient, installed: Installed, emu: Emulator) -> None:
    await call(
        client,
        "telephony.externalCall.register",
        installed.access_token,
        USER_ID=1,
        PHONE_NUMBER="+79005550000",
        TYPE=2,
    )
    await client.post("/_emulator/reset", json={"keep_apps": True})
    assert (await client.get("/_emulator/calls")).json() == []
    assert (await client.get("/_emulator/requests")).json() == []
    assert (await call(client, "app.info", installed.access_token)).status_code == 200
    await client.post("/_emulator/reset")
    assert (await client.get("/_emulator/apps")).json() == []
    assert (await call(client, "app.info", installed.access_token)).status_code == 401


async def test_stats(client: httpx.AsyncClient) -> None:
    await client.get(f"{WEBHOOK}/app.info")
    await client.get(f"{WEBHOOK}/nope")
    stats = (await client.get("/_emulator/stats")).json()
    assert stats["requests_total"] == 2
    assert stats["by_status"] == {"200": 1, "404": 1}
    assert stats["rate_buckets"]


async def test_webhook_creation(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/_emulator/webhooks", json={"user_id": 2, "code": "abc", "scopes": ["user"]}
    )
    assert r.json()["url"].endswith("/rest/2/abc/")
    assert (await client.get("/rest/2/abc/user.get")).status_code == 200
    denied = await client.get("/rest/2/abc/im.notify", params={"USER_ID": 1, "MESSAGE": "x"})
    assert denied.status_code == 403
    assert "webhook token" in denied.json()["error_description"]


async def test_unknown_behaviour_rejected(client: httpx.AsyncClient) -> None:
    assert (await client.put("/_emulator/behaviour", json={"nope": 1})).status_code == 422


async def test_clock_advance(client: httpx.AsyncClient, emu: Emulator) -> None:
    before = emu.clock.now()
    await client.post("/_emulator/clock/advance", params={"seconds": 5})
    assert emu.clock.now() == before + 5


def test_cli_flags() -> None:
    args = parser().parse_args(
        [
            "--port",
            "9000",
            "--plan",
            "enterprise",
            "--domain",
            "b24-test.bitrix24.ru",
            "--latency-ms",
            "20",
            "--latency-dist",
            "uniform",
            "--error-rate",
            "0.1",
            "--error-kinds",
            "502,reset",
            "--outage-seconds",
            "5",
            "--no-rate-limit",
        ]
    )
    config = config_from_args(args)
    assert config.plan == "enterprise"
    assert config.domain == "b24-test.bitrix24.ru"
    assert config.base_url == "http://127.0.0.1:9000"
    assert config.faults.latency_mode == "uniform"
    assert config.faults.latency_max_ms == 40
    assert config.faults.error_kinds == ["502", "reset"]
    assert config.faults.outage_end is not None
    assert not config.rate_limit
    emu = Emulator(config)
    assert emu.portal.domain == "b24-test.bitrix24.ru"
    assert len(emu.portal.member_id) == 32
