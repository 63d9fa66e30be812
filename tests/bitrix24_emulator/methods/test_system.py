"""``app.info``, ``im.notify`` and ``voximplant.statistic.get``."""

from __future__ import annotations

import httpx
import pytest
from tests.bitrix24_emulator.conftest import WEBHOOK, Installed, call


class TestAppInfo:
    async def test_fields(self, client: httpx.AsyncClient, installed: Installed) -> None:
        result = (await call(client, "app.info", installed.access_token)).json()["result"]
        assert set(result) == {
            "ID",
            "CODE",
            "VERSION",
            "STATUS",
            "INSTALLED",
            "PAYMENT_EXPIRED",
            "DAYS",
            "LANGUAGE_ID",
            "LICENSE",
            "LICENSE_TYPE",
            "LICENSE_FAMILY",
        }
        assert result["INSTALLED"] is True
        assert result["STATUS"] == "L"
        assert result["LICENSE"] == "ru_basic"


class TestImNotify:
    async def test_sends(self, client: httpx.AsyncClient, installed: Installed) -> None:
        r = await call(
            client, "im.notify", installed.access_token, USER_ID=2, MESSAGE=" Missed call "
        )
        assert isinstance(r.json()["result"], int)
        notes = (await client.get("/_emulator/notifications")).json()
        assert notes[0]["MESSAGE"] == "Missed call"
        assert notes[0]["TYPE"] == "USER"

    @pytest.mark.parametrize(
        ("params", "code"),
        [({"MESSAGE": "x"}, "USER_ID_EMPTY"), ({"USER_ID": 1, "MESSAGE": "  "}, "MESSAGE_EMPTY")],
    )
    async def test_rejected(
        self, client: httpx.AsyncClient, installed: Installed, params: dict[str, object], code: str
    ) -> None:
        r = await call(client, "im.notify", installed.access_token, **params)
        assert r.status_code == 400
        assert r.json()["error"] == code

    async def test_tag_replaces(self, client: httpx.AsyncClient, installed: Installed) -> None:
        for text in ("one", "two"):
            await call(
                client, "im.notify", installed.access_token, USER_ID=1, MESSAGE=text, TAG="t"
            )
        notes = (await client.get("/_emulator/notifications")).json()
        assert [n["MESSAGE"] for n in notes] == ["two"]

    async def test_unknown_user_is_false(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        r = await call(client, "im.notify", installed.access_token, USER_ID=99, MESSAGE="x")
        assert r.json()["result"] is False


class TestStatistic:
    async def _calls(self, client: httpx.AsyncClient, app: Installed, n: int) -> None:
        cmds = {}
        for i in range(n):
            cmds[f"r{i}"] = (
                f"telephony.externalCall.register?USER_ID=1&PHONE_NUMBER=7900000{i:04d}&TYPE=2"
            )
            cmds[f"f{i}"] = (
                f"telephony.externalCall.finish?CALL_ID=$result[r{i}][CALL_ID]&USER_ID=1&DURATION={i}"
            )
        items = list(cmds.items())
        for start in range(0, len(items), 50):
            r = await call(client, "batch", app.access_token, cmd=dict(items[start : start + 50]))
            assert r.json()["result"]["result_error"] == []

    async def test_pagination_and_strings(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        await self._calls(client, installed, 55)
        page = (await client.get(f"{WEBHOOK}/voximplant.statistic.get")).json()
        assert page["total"] == 55
        assert page["next"] == 50
        assert len(page["result"]) == 50
        row = page["result"][3]
        assert row["CALL_DURATION"] == "3"
        assert row["CALL_TYPE"] == "2"
        assert row["COST"] == "0.0000"
        assert row["CALL_CATEGORY"] == "external"
        second = (
            await client.get(f"{WEBHOOK}/voximplant.statistic.get", params={"start": 50})
        ).json()
        assert len(second["result"]) == 5
        assert "next" not in second

    async def test_filter_and_sort(self, client: httpx.AsyncClient, installed: Installed) -> None:
        await self._calls(client, installed, 10)
        r = await client.post(
            f"{WEBHOOK}/voximplant.statistic.get",
            json={"FILTER": {">=CALL_DURATION": 7}, "SORT": "CALL_DURATION", "ORDER": "DESC"},
        )
        assert [row["CALL_DURATION"] for row in r.json()["result"]] == ["9", "8", "7"]
        r = await client.get(
            f"{WEBHOOK}/voximplant.statistic.get.json?FILTER[PHONE_NUMBER]=79000000004"
        )
        assert [row["CALL_DURATION"] for row in r.json()["result"]] == ["4"]
