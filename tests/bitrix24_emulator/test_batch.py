"""``batch``: up to 50 commands, halt, $result references, per-command errors, empty maps as []."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import httpx
from tests.bitrix24_emulator.conftest import WEBHOOK, Installed, call


async def test_results_errors_totals(client: httpx.AsyncClient, installed: Installed) -> None:
    response = await call(
        client,
        "batch",
        installed.access_token,
        cmd={
            "line": "telephony.externalLine.add?NUMBER=74950000001&NAME=Main",
            "users": "user.get?FILTER[UF_PHONE_INNER]=101",
            "bad": "telephony.externalLine.add?NUMBER=",
            "nope": "no.such.method",
        },
    )
    assert response.status_code == 200
    body = response.json()["result"]
    assert body["result"]["line"] == {"ID": 1}
    assert body["result"]["users"][0]["ID"] == "1"
    assert body["result_total"] == {"users": 1}
    assert body["result_error"] == {
        "bad": {"error": "ERROR_CORE", "error_description": "NUMBER should not be empty"},
        "nope": {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"},
    }
    assert body["result_next"] == []
    assert set(body["result_time"]) == {"line", "users"}
    assert "operating" not in body["result_time"]["line"]


async def test_empty_maps_are_arrays(client: httpx.AsyncClient, installed: Installed) -> None:
    body = (await call(client, "batch", installed.access_token, cmd={"a": "app.info"})).json()[
        "result"
    ]
    assert body["result_error"] == []
    assert body["result_total"] == []
    assert body["result_next"] == []


async def test_list_cmd_gives_list_results(client: httpx.AsyncClient, installed: Installed) -> None:
    body = (
        await call(client, "batch", installed.access_token, cmd=["app.info", "event.get"])
    ).json()["result"]
    assert isinstance(body["result"], list)
    assert body["result"][1] == []


async def test_halt_stops_at_first_error(client: httpx.AsyncClient, installed: Installed) -> None:
    body = (
        await call(
            client,
            "batch",
            installed.access_token,
            halt=1,
            cmd={
                "a": "telephony.externalLine.add?NUMBER=1",
                "b": "telephony.externalLine.add?NUMBER=1",
                "c": "telephony.externalLine.add?NUMBER=2",
            },
        )
    ).json()["result"]
    assert list(body["result"]) == ["a"]
    assert body["result_error"]["b"]["error_description"] == "Line already exists"
    lines = (await call(client, "telephony.externalLine.get", installed.access_token)).json()
    assert [line["NUMBER"] for line in lines["result"]] == ["1"]


async def test_without_halt_all_run(client: httpx.AsyncClient, installed: Installed) -> None:
    body = (
        await call(
            client,
            "batch",
            installed.access_token,
            halt=0,
            cmd={
                "a": "telephony.externalLine.add?NUMBER=1",
                "b": "telephony.externalLine.add?NUMBER=1",
                "c": "telephony.externalLine.add?NUMBER=2",
            },
        )
    ).json()["result"]
    assert list(body["result"]) == ["a", "c"]


async def test_result_references(client: httpx.AsyncClient, installed: Installed) -> None:
    body = (
        await call(
            client,
            "batch",
            installed.access_token,
            cmd={
                "reg": "telephony.externalCall.register?USER_PHONE_INNER=102"
                "&PHONE_NUMBER=%2B70001112233&TYPE=2",
                "show": "telephony.externalCall.show?CALL_ID=$result[reg][CALL_ID]&USER_ID[]=3",
                "users": "user.get?FILTER[UF_PHONE_INNER]=103",
                "notify": "im.notify?USER_ID=$result[users][0][ID]"
                "&MESSAGE=Call $result[reg][CALL_ID]",
            },
        )
    ).json()["result"]
    assert body["result_error"] == []
    assert body["result"]["show"] is True
    calls = (await client.get("/_emulator/calls")).json()
    assert calls[0]["cards_visible"] == [2, 3]
    notes = (await client.get("/_emulator/notifications")).json()
    assert notes[0]["USER_ID"] == 3
    assert notes[0]["MESSAGE"] == f"Call {body['result']['reg']['CALL_ID']}"


async def test_array_reference_expands(client: httpx.AsyncClient, installed: Installed) -> None:
    body = (
        await call(
            client,
            "batch",
            installed.access_token,
            cmd={
                "u": "user.get?ID=1",
                "reg": "telephony.externalCall.register?USER_ID=1&PHONE_NUMBER=1234567"
                "&TYPE=2&SHOW=0",
                "show": "telephony.externalCall.show?CALL_ID=$result[reg][CALL_ID]"
                "&USER_ID=$result[u][0][UF_DEPARTMENT]",
            },
        )
    ).json()["result"]
    assert body["result"]["show"] is True
    calls = (await client.get("/_emulator/calls")).json()
    assert calls[0]["cards_visible"] == [1]  # UF_DEPARTMENT [1] became USER_ID[0]=1


async def test_more_than_50_commands(client: httpx.AsyncClient, installed: Installed) -> None:
    response = await call(
        client, "batch", installed.access_token, cmd={str(i): "app.info" for i in range(51)}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "ERROR_BATCH_LENGTH_EXCEEDED"


async def test_exactly_50_commands(client: httpx.AsyncClient, installed: Installed) -> None:
    response = await call(
        client, "batch", installed.access_token, cmd={f"c{i}": "app.info" for i in range(50)}
    )
    assert response.status_code == 200
    assert len(response.json()["result"]["result"]) == 50


async def test_nested_batch_not_allowed(client: httpx.AsyncClient, installed: Installed) -> None:
    body = (
        await call(client, "batch", installed.access_token, cmd={"x": "batch?cmd[a]=app.info"})
    ).json()["result"]
    assert body["result_error"]["x"]["error"] == "ERROR_BATCH_METHOD_NOT_ALLOWED"


async def test_app_only_inside_webhook_batch(client: httpx.AsyncClient) -> None:
    body = (
        await client.post(
            f"{WEBHOOK}/batch.json",
            json={"cmd": {"a": "telephony.externalLine.get", "b": "user.get?ID=2"}},
        )
    ).json()["result"]
    assert body["result_error"]["a"]["error"] == "WRONG_AUTH_TYPE"
    assert body["result"]["b"][0]["ID"] == "2"


async def test_double_encoded_query_string(client: httpx.AsyncClient, installed: Installed) -> None:
    inner = "im.notify?" + urlencode({"USER_ID": "2", "MESSAGE": "a&b=c"})
    query = urlencode({"auth": installed.access_token, "cmd[n]": inner})
    assert "%2526" in query  # the & inside the value is double-encoded
    body = (await client.get(f"/rest/batch.json?{query}")).json()["result"]
    assert body["result_error"] == []
    notes = (await client.get("/_emulator/notifications")).json()
    assert notes[0]["MESSAGE"] == "a&b=c"


async def test_form_encoded_batch(client: httpx.AsyncClient, installed: Installed) -> None:
    content = (
        f"auth={installed.access_token}&halt=0&cmd[first]={quote('user.get?ID=3')}"
        f"&cmd[second]={quote('app.info')}"
    )
    response = await client.post(
        "/rest/batch",
        content=content,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    body = response.json()["result"]
    assert body["result"]["first"][0]["ID"] == "3"
    assert body["result"]["second"]["CODE"] == installed.client_id


async def test_list_next_in_batch(client: httpx.AsyncClient, installed: Installed) -> None:
    body = (
        await call(client, "batch", installed.access_token, cmd={"s": "voximplant.statistic.get"})
    ).json()["result"]
    assert body["result"]["s"] == []
    assert body["result_total"] == {"s": 0}
