"""``telephony.externalCall.*`` and ``telephony.externalLine.*`` conformance (spec §1)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from tests.bitrix24_emulator.conftest import WEBHOOK, Installed, call

from bitrix24_emulator.clock import FakeClock
from bitrix24_emulator.emulator import Emulator

PHONE = "+79001234567"  # not in the seed


async def register(client: httpx.AsyncClient, app: Installed, **params: Any) -> httpx.Response:
    body = {"USER_PHONE_INNER": "101", "PHONE_NUMBER": PHONE, "TYPE": 2} | params
    return await call(client, "telephony.externalCall.register", app.access_token, **body)


async def finish(
    client: httpx.AsyncClient, app: Installed, call_id: str, **params: Any
) -> httpx.Response:
    body = {"CALL_ID": call_id, "USER_ID": 1} | params
    return await call(client, "telephony.externalCall.finish", app.access_token, **body)


def error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"], body["error_description"]


class TestRegister:
    async def test_result_shape(
        self, client: httpx.AsyncClient, installed: Installed, clock: FakeClock
    ) -> None:
        response = await register(client, installed, PHONE_NUMBER="+7 (495) 123-45-67")
        assert response.status_code == 200
        result = response.json()["result"]
        assert result["CALL_ID"].startswith("externalCall.")
        _, hex_part, ts = result["CALL_ID"].split(".")
        assert len(hex_part) == 32
        assert ts == str(int(clock.now()))
        assert result == {
            "CALL_ID": result["CALL_ID"],
            "CRM_CREATED_LEAD": None,
            "CRM_CREATED_ENTITIES": [],
            "CRM_ENTITY_TYPE": "CONTACT",
            "CRM_ENTITY_ID": 1,
        }

    @pytest.mark.parametrize(
        ("params", "description"),
        [
            ({"USER_PHONE_INNER": None}, "USER_ID or USER_PHONE_INNER should be set"),
            ({"USER_PHONE_INNER": "999"}, "User is not found or is not active"),
            ({"USER_PHONE_INNER": "104"}, "User is not found or is not active"),
            ({"USER_PHONE_INNER": None, "USER_ID": 4}, "User is not found or is not active"),
            ({"TYPE": 6}, "Unknown TYPE"),
            ({"TYPE": "x"}, "Unknown TYPE"),
            ({"PHONE_NUMBER": "call me"}, "Unsupported phone number format"),
            ({"PHONE_NUMBER": ""}, "Unsupported phone number format"),
            ({"CALL_START_DATE": "yesterday"}, "CALL_START_DATE should be in the ISO-8601 format"),
        ],
    )
    async def test_rejected(
        self,
        client: httpx.AsyncClient,
        installed: Installed,
        params: dict[str, Any],
        description: str,
    ) -> None:
        body = {"USER_PHONE_INNER": "101", "PHONE_NUMBER": PHONE, "TYPE": 2} | params
        body = {k: v for k, v in body.items() if v is not None}
        response = await call(
            client, "telephony.externalCall.register", installed.access_token, **body
        )
        assert error(response) == (400, "ERROR_CORE", description)

    @pytest.mark.parametrize("call_type", [1, 2, 3, 4, 5])
    async def test_all_types(
        self, client: httpx.AsyncClient, installed: Installed, call_type: int
    ) -> None:
        assert (await register(client, installed, TYPE=call_type)).status_code == 200

    async def test_start_date_with_offset(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        response = await register(client, installed, CALL_START_DATE="2026-03-07T10:20:30+03:00")
        assert response.status_code == 200

    async def test_crm_create_makes_a_lead(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        result = (await register(client, installed, CRM_CREATE=1, CRM_SOURCE="CALLBACK")).json()[
            "result"
        ]
        lead_id = result["CRM_CREATED_LEAD"]
        assert isinstance(lead_id, int)
        assert result["CRM_CREATED_ENTITIES"] == [{"ENTITY_TYPE": "LEAD", "ENTITY_ID": lead_id}]
        assert (result["CRM_ENTITY_TYPE"], result["CRM_ENTITY_ID"]) == ("LEAD", lead_id)
        lead = (await client.get(f"{WEBHOOK}/crm.lead.get", params={"id": lead_id})).json()[
            "result"
        ]
        assert lead["SOURCE_ID"] == "CALLBACK"
        assert lead["ASSIGNED_BY_ID"] == "1"
        assert [p["VALUE"] for p in lead["PHONE"]] == [PHONE]

    async def test_crm_create_off_links_nothing(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        result = (await register(client, installed)).json()["result"]
        assert result["CRM_CREATED_LEAD"] is None
        assert result["CRM_ENTITY_TYPE"] is None
        assert result["CRM_ENTITY_ID"] is None

    async def test_existing_entity_is_linked_not_created(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        result = (
            await register(client, installed, PHONE_NUMBER="89031112233", CRM_CREATE=1)
        ).json()["result"]
        assert result["CRM_CREATED_LEAD"] is None
        assert (result["CRM_ENTITY_TYPE"], result["CRM_ENTITY_ID"]) == ("CONTACT", 2)

    async def test_explicit_entity_wins(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        result = (
            await register(
                client,
                installed,
                PHONE_NUMBER="89031112233",
                CRM_ENTITY_TYPE="COMPANY",
                CRM_ENTITY_ID=1,
            )
        ).json()["result"]
        assert (result["CRM_ENTITY_TYPE"], result["CRM_ENTITY_ID"]) == ("COMPANY", 1)

    async def test_dedup_within_30_minutes(
        self, client: httpx.AsyncClient, installed: Installed, clock: FakeClock
    ) -> None:
        first = (await register(client, installed)).json()["result"]["CALL_ID"]
        clock.advance(29 * 60)
        again = (await register(client, installed, CRM_ENTITY_ID=5)).json()["result"]["CALL_ID"]
        assert again == first
        other_line = (await register(client, installed, LINE_NUMBER="1")).json()["result"][
            "CALL_ID"
        ]
        assert other_line != first
        other_ext = (await register(client, installed, EXTERNAL_CALL_ID="a")).json()["result"]
        assert other_ext["CALL_ID"] != first
        clock.advance(61)
        later = (await register(client, installed)).json()["result"]["CALL_ID"]
        assert later != first

    async def test_unique_external_call_id_avoids_dedup(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        a = (await register(client, installed, EXTERNAL_CALL_ID="1.1")).json()["result"]["CALL_ID"]
        b = (await register(client, installed, EXTERNAL_CALL_ID="1.2")).json()["result"]["CALL_ID"]
        assert a != b

    async def test_show_default_and_off(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        await register(client, installed, EXTERNAL_CALL_ID="a")
        await register(client, installed, EXTERNAL_CALL_ID="b", SHOW=0)
        calls = (await client.get("/_emulator/calls")).json()
        assert [c["cards_visible"] for c in calls] == [[1], []]


class TestFinish:
    async def test_statistics_record(
        self, client: httpx.AsyncClient, installed: Installed, emu: Emulator
    ) -> None:
        call_id = (
            await register(
                client,
                installed,
                PHONE_NUMBER="+74951234567",
                LINE_NUMBER="74950000001",
                EXTERNAL_CALL_ID="u1",
            )
        ).json()["result"]["CALL_ID"]
        response = await finish(
            client,
            installed,
            call_id,
            DURATION=95,
            COST=1.5,
            COST_CURRENCY="RUB",
            VOTE=5,
            ADD_TO_CHAT=0,
        )
        assert response.status_code == 200
        result = response.json()["result"]
        app = emu.portal.apps.get(installed.client_id)
        assert app is not None
        assert result == {
            "ID": 1,
            "CALL_ID": call_id,
            "EXTERNAL_CALL_ID": "u1",
            "PORTAL_USER_ID": 1,
            "PHONE_NUMBER": "+74951234567",
            "PORTAL_NUMBER": "74950000001",
            "INCOMING": "2",
            "CALL_DURATION": 95,
            "CALL_START_DATE": {},
            "CALL_STATUS": 1,
            "CALL_VOTE": 5,
            "COST": 1.5,
            "COST_CURRENCY": "RUB",
            "CALL_FAILED_CODE": "200",
            "CALL_FAILED_REASON": "",
            "REST_APP_ID": str(app.id),
            "REST_APP_NAME": "callbridge",
            "CRM_ACTIVITY_ID": result["CRM_ACTIVITY_ID"],
            "COMMENT": None,
            "CRM_ENTITY_TYPE": "CONTACT",
            "CRM_ENTITY_ID": 1,
        }
        assert isinstance(result["CRM_ACTIVITY_ID"], int)
        activities = (await client.get(f"{WEBHOOK}/crm.activity.list")).json()["result"]
        assert any(int(a["ID"]) == result["CRM_ACTIVITY_ID"] for a in activities)

    @pytest.mark.parametrize(("duration", "code", "status"), [(0, "304", 0), (12, "200", 1)])
    async def test_default_status_code(
        self, client: httpx.AsyncClient, installed: Installed, duration: int, code: str, status: int
    ) -> None:
        call_id = (await register(client, installed)).json()["result"]["CALL_ID"]
        result = (await finish(client, installed, call_id, DURATION=duration)).json()["result"]
        assert (result["CALL_FAILED_CODE"], result["CALL_STATUS"]) == (code, status)

    async def test_explicit_status_code(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        call_id = (await register(client, installed)).json()["result"]["CALL_ID"]
        result = (await finish(client, installed, call_id, STATUS_CODE="603-S")).json()["result"]
        assert result["CALL_FAILED_CODE"] == "603-S"

    async def test_unregistered_call(self, client: httpx.AsyncClient, installed: Installed) -> None:
        response = await finish(client, installed, "externalCall.nope.1")
        assert error(response) == (
            400,
            "ERROR_CORE",
            "Call is not found (call should be registered prior to finishing",
        )

    async def test_call_id_must_be_a_string(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        response = await finish(client, installed, 5)  # type: ignore[arg-type]
        assert error(response) == (400, "INVALID_ARGUMENT", "CALL_ID must be a string")

    async def test_user_required(self, client: httpx.AsyncClient, installed: Installed) -> None:
        call_id = (await register(client, installed)).json()["result"]["CALL_ID"]
        response = await call(
            client, "telephony.externalCall.finish", installed.access_token, CALL_ID=call_id
        )
        assert error(response)[2] == "USER_ID or USER_PHONE_INNER should be set"

    async def test_inactive_user(self, client: httpx.AsyncClient, installed: Installed) -> None:
        call_id = (await register(client, installed)).json()["result"]["CALL_ID"]
        response = await finish(client, installed, call_id, USER_ID=4)
        assert error(response)[2] == "User is not found or is not active"

    async def test_second_finish_fails(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        call_id = (await register(client, installed)).json()["result"]["CALL_ID"]
        assert (await finish(client, installed, call_id, DURATION=3)).status_code == 200
        again = await finish(client, installed, call_id, DURATION=3)
        assert error(again)[2] == "Call is not found (call should be registered prior to finishing"

    async def test_second_finish_repeat_setting(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        await client.put("/_emulator/behaviour", json={"finish_twice": "repeat"})
        call_id = (await register(client, installed)).json()["result"]["CALL_ID"]
        first = (await finish(client, installed, call_id, DURATION=3)).json()["result"]
        assert (await finish(client, installed, call_id)).json()["result"] == first

    async def test_finish_closes_cards(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        call_id = (await register(client, installed)).json()["result"]["CALL_ID"]
        await call(
            client,
            "telephony.externalCall.show",
            installed.access_token,
            CALL_ID=call_id,
            USER_ID=[2, 3],
        )
        await finish(client, installed, call_id)
        summary = (await client.get(f"/_emulator/calls/{call_id}")).json()
        assert summary["state"] == "finished"
        assert summary["cards_visible"] == []
        assert summary["cards_hidden"] == [1, 2, 3]

    async def test_no_crm_object_no_activity(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        call_id = (await register(client, installed)).json()["result"]["CALL_ID"]
        result = (await finish(client, installed, call_id)).json()["result"]
        assert result["CRM_ACTIVITY_ID"] is None


class TestShowHide:
    async def test_show_hide_per_user(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        call_id = (await register(client, installed, SHOW=0)).json()["result"]["CALL_ID"]
        token = installed.access_token
        assert (await call(client, "telephony.externalCall.show", token, CALL_ID=call_id)).json()[
            "result"
        ] is True
        await call(client, "telephony.externalCall.show", token, CALL_ID=call_id, USER_ID=[2, 3])
        await call(client, "telephony.externalCall.hide", token, CALL_ID=call_id, USER_ID=2)
        summary = (await client.get(f"/_emulator/calls/{call_id}")).json()
        assert summary["cards_visible"] == [1, 3]
        assert summary["cards_shown"] == [1, 2, 3]
        assert summary["cards_hidden"] == [2]
        assert summary["state"] == "registered"  # hide never ends the call

    async def test_unknown_call_is_false(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        for method in ("show", "hide"):
            r = await call(
                client, f"telephony.externalCall.{method}", installed.access_token, CALL_ID="x"
            )
            assert r.status_code == 200
            assert r.json()["result"] is False

    async def test_webhook_setting(self, client: httpx.AsyncClient) -> None:
        await client.put("/_emulator/behaviour", json={"show_hide_allow_webhook": False})
        r = await client.post(f"{WEBHOOK}/telephony.externalCall.hide", json={"CALL_ID": "x"})
        assert r.status_code == 403


class TestAttachRecord:
    async def _finished(self, client: httpx.AsyncClient, app: Installed) -> str:
        call_id: str = (await register(client, app)).json()["result"]["CALL_ID"]
        await finish(client, app, call_id, DURATION=10)
        return call_id

    async def test_base64(self, client: httpx.AsyncClient, installed: Installed) -> None:
        call_id = await self._finished(client, installed)
        content = base64.b64encode(b"RIFF....WAVE").decode()
        r = await call(
            client,
            "telephony.externalCall.attachRecord",
            installed.access_token,
            CALL_ID=call_id,
            FILENAME="rec.wav",
            FILE_CONTENT=content,
        )
        assert r.status_code == 200
        file_id = r.json()["result"]["FILE_ID"]
        assert (await client.get(f"/_emulator/files/{file_id}")).content == b"RIFF....WAVE"
        stats = (await client.get(f"{WEBHOOK}/voximplant.statistic.get")).json()["result"]
        assert stats[0]["RECORD_FILE_ID"] == file_id

    async def test_second_attach_replaces(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        call_id = await self._finished(client, installed)
        ids = []
        for data in (b"one", b"two"):
            r = await call(
                client,
                "telephony.externalCall.attachRecord",
                installed.access_token,
                CALL_ID=call_id,
                FILENAME="r.mp3",
                FILE_CONTENT=base64.b64encode(data).decode(),
            )
            ids.append(r.json()["result"]["FILE_ID"])
        summary = (await client.get(f"/_emulator/calls/{call_id}")).json()
        assert summary["record_file_id"] == ids[1]
        assert summary["records"] == ids

    async def test_upload_url(self, client: httpx.AsyncClient, installed: Installed) -> None:
        call_id = await self._finished(client, installed)
        r = await call(
            client,
            "telephony.externalCall.attachRecord",
            installed.access_token,
            CALL_ID=call_id,
            FILENAME="big.mp3",
        )
        result = r.json()["result"]
        assert result["fieldName"] == "file"
        assert result["uploadUrl"].startswith("http://portal.test/rest/upload.json?auth=")
        assert "token=telephony%7C" in result["uploadUrl"]
        upload = await client.post(result["uploadUrl"], files={"file": ("big.mp3", b"ID3data")})
        assert upload.status_code == 200
        file_id = upload.json()["result"]["FILE_ID"]
        assert (await client.get(f"/_emulator/files/{file_id}")).content == b"ID3data"
        reused = await client.post(result["uploadUrl"], files={"file": ("big.mp3", b"x")})
        assert reused.status_code == 400

    async def test_file_content_null_means_upload(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        call_id = await self._finished(client, installed)
        r = await call(
            client,
            "telephony.externalCall.attachRecord",
            installed.access_token,
            CALL_ID=call_id,
            FILENAME="a.wav",
            FILE_CONTENT=None,
        )
        assert "uploadUrl" in r.json()["result"]

    async def test_before_finish(self, client: httpx.AsyncClient, installed: Installed) -> None:
        call_id = (await register(client, installed)).json()["result"]["CALL_ID"]
        r = await call(
            client,
            "telephony.externalCall.attachRecord",
            installed.access_token,
            CALL_ID=call_id,
            FILENAME="a.wav",
            FILE_CONTENT="AAAA",
        )
        assert error(r) == (
            400,
            "ERROR_CORE",
            "Call is not found in the statistic table. Looks like it is not finished yet.",
        )

    @pytest.mark.parametrize(
        ("params", "description"),
        [
            (
                {},
                "Required parameters are not set. "
                "Request should contain or URL or FILENAME parameter",
            ),
            (
                {"FILENAME": "a.ogg", "FILE_CONTENT": "AAAA"},
                "Wrong file extension. Only wav and mp3 are allowed",
            ),
            (
                {"FILENAME": "a.wav", "FILE_CONTENT": "not base64!"},
                "File content is not properly encoded. Base64 encoding is expected.",
            ),
            ({"FILENAME": "a.wav", "FILE_CONTENT": ""}, "File content is empty."),
        ],
    )
    async def test_rejected(
        self,
        client: httpx.AsyncClient,
        installed: Installed,
        params: dict[str, Any],
        description: str,
    ) -> None:
        call_id = await self._finished(client, installed)
        r = await call(
            client,
            "telephony.externalCall.attachRecord",
            installed.access_token,
            CALL_ID=call_id,
            **params,
        )
        assert error(r) == (400, "ERROR_CORE", description)

    async def test_record_url(
        self, client: httpx.AsyncClient, installed: Installed, receiver
    ) -> None:  # type: ignore[no-untyped-def]
        call_id = await self._finished(client, installed)
        r = await call(
            client,
            "telephony.externalCall.attachRecord",
            installed.access_token,
            CALL_ID=call_id,
            RECORD_URL="http://app.test/records/r1.mp3",
        )
        assert r.status_code == 200
        assert "FILE_ID" in r.json()["result"]
        receiver.status = 404
        r = await call(
            client,
            "telephony.externalCall.attachRecord",
            installed.access_token,
            CALL_ID=call_id,
            RECORD_URL="http://app.test/records/r2.mp3",
        )
        assert error(r)[2] == "Server returns HTTP error code 404"


class TestSearchCrmEntities:
    async def test_found_with_responsible(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        r = await call(
            client,
            "telephony.externalCall.searchCrmEntities",
            installed.access_token,
            PHONE_NUMBER="+7 903 111-22-33",
        )
        result = r.json()["result"]
        assert result[0]["CRM_ENTITY_TYPE"] == "CONTACT"
        assert result[0]["CRM_ENTITY_ID"] == 2
        assert result[0]["ASSIGNED_BY_ID"] == 3
        assert result[0]["NAME"]
        assigned = result[0]["ASSIGNED_BY"]
        assert assigned["ID"] == "3"
        assert assigned["USER_PHONE_INNER"] == "103"
        assert set(assigned) == {
            "ID",
            "TIMEMAN_STATUS",
            "USER_PHONE_INNER",
            "WORK_PHONE",
            "PERSONAL_PHONE",
            "PERSONAL_MOBILE",
        }

    async def test_nothing_found(self, client: httpx.AsyncClient, installed: Installed) -> None:
        r = await call(
            client,
            "telephony.externalCall.searchCrmEntities",
            installed.access_token,
            PHONE_NUMBER=PHONE,
        )
        assert r.json()["result"] == []

    async def test_phone_required(self, client: httpx.AsyncClient, installed: Installed) -> None:
        r = await call(client, "telephony.externalCall.searchCrmEntities", installed.access_token)
        assert error(r) == (400, "ERROR_CORE", "PHONE_NUMBER is empty")


class TestExternalLines:
    async def test_lifecycle(self, client: httpx.AsyncClient, installed: Installed) -> None:
        t = installed.access_token
        added = await call(
            client, "telephony.externalLine.add", t, NUMBER="74950000001", NAME="Main"
        )
        assert added.json()["result"] == {"ID": 1}
        dup = await call(client, "telephony.externalLine.add", t, NUMBER="74950000001")
        assert error(dup)[2] == "Line already exists"
        got = (await call(client, "telephony.externalLine.get", t)).json()["result"]
        assert got == [{"NUMBER": "74950000001", "NAME": "Main", "CRM_AUTO_CREATE": "Y"}]
        updated = await call(
            client, "telephony.externalLine.update", t, NUMBER="74950000001", CRM_AUTO_CREATE="N"
        )
        assert updated.json()["result"] == {"ID": "1"}
        nothing = await call(client, "telephony.externalLine.update", t, NUMBER="74950000001")
        assert error(nothing)[2] == "There are no fields to update"
        missing = await call(client, "telephony.externalLine.update", t, NUMBER="1", NAME="x")
        assert error(missing)[2] == "Could not find line with number 1"
        deleted = await call(client, "telephony.externalLine.delete", t, NUMBER="74950000001")
        assert deleted.json()["result"] == []
        assert (await call(client, "telephony.externalLine.get", t)).json()["result"] == []

    async def test_number_required(self, client: httpx.AsyncClient, installed: Installed) -> None:
        r = await call(client, "telephony.externalLine.add", installed.access_token, NAME="x")
        assert error(r) == (400, "ERROR_CORE", "NUMBER should not be empty")

    async def test_auto_create_off_blocks_outgoing_lead(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        t = installed.access_token
        await call(client, "telephony.externalLine.add", t, NUMBER="200", CRM_AUTO_CREATE="N")
        out = (await register(client, installed, TYPE=1, LINE_NUMBER="200", CRM_CREATE=1)).json()[
            "result"
        ]
        assert out["CRM_CREATED_LEAD"] is None
        inbound = (
            await register(client, installed, TYPE=2, LINE_NUMBER="200", CRM_CREATE=1)
        ).json()["result"]
        assert inbound["CRM_CREATED_LEAD"] is not None
