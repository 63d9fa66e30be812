"""Every case of the call model end to end: PBX webhook → worker → the emulated portal.

The environment of ``test_calls_e2e`` (callbridge and the emulator in-process over ASGI, on
SQLite and PostgreSQL), with a PBX that serves recordings over HTTP. Each test posts what an
Asterisk dialplan would, lets the dispatcher (and, for notifications, the worker) run, and reads
the outcome through the emulator's inspection API. Expected values follow
``bitrix24-api.md`` §1.1 (``TYPE``), §1.2 (``STATUS_CODE``; the suggested Asterisk mapping) and
§1.4 (``attachRecord`` after ``finish``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from callbridge.services.call_tracking import BITRIX24_COMMAND_JOB, NOTIFY_MISSED_JOB
from callbridge.storage.models import Bitrix24Call, Bitrix24User, JobStatus
from callbridge.storage.repositories import IntegrationRepository
from callbridge.worker.directory import PortalsHolder, notify_missed_handler
from callbridge.worker.registry import JobRegistry
from callbridge.worker.worker import Worker
from tests.e2e.test_calls_e2e import (
    ENTERPRISE,
    KNOWN_CALLER,
    TOKEN,
    Env,
    environment,
    ev,
    inbound_answered,
)

PBX_HOST = "pbx.test"
LINE = "4951110101"
UNKNOWN_CALLER = "84997770011"
KNOWN_E164 = "+74951234567"  # contact 1, Анна Соколова, responsible user 2 (extension 102)
#: A WAV header and a little silence: what MixMonitor leaves behind.
WAV = b"RIFF$\x00\x00\x00WAVEfmt " + bytes(28)


class PbxFiles:
    """The PBX's web server for recordings (what a ``RECORD_URL`` points at)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fetched: list[str] = []
        self.app = Starlette(routes=[Route("/{path:path}", self._serve)])

    async def _serve(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        self.fetched.append(path)
        content = self.files.get(path)
        if content is None:
            return Response(status_code=404)
        return Response(content, media_type="audio/wav")

    def url(self, path: str) -> str:
        return f"http://{PBX_HOST}{path}"


class Cases:
    """The environment plus the PBX's files and the helpers every case uses."""

    def __init__(self, env: Env, pbx: PbxFiles, monitor: Path) -> None:
        self.env = env
        self.pbx = pbx
        #: The PBX's MixMonitor directory, as callbridge sees it (``recordings_dirs``).
        self.monitor = monitor

    async def configure(self, **settings: Any) -> None:
        """Change the integration's settings, before the first event.

        The app reads changed settings within its routing cache's lifetime (seconds); the
        tests do not wait for that: they drop the routing read at start.
        """
        async with self.env.h.session_factory() as session, session.begin():
            repo = IntegrationRepository(session, self.env.h.box)
            row = await repo.by_member_id(self.env.h.emulator.portal.member_id)
            assert row is not None
            row.settings = {**(row.settings or {}), **settings}
        self.env.h.intake.routing_cache.clear()

    async def post(self, *events: dict[str, Any]) -> None:
        await self.env.post(*events)

    async def settle(self) -> None:
        await self.env.settle()

    async def call(self, leg_id: str) -> dict[str, Any]:
        """The portal's call of one leg (``<linkedid>-<leg>``), with its statistics row."""
        summary = (await self.env.calls())[leg_id]
        response = await self.env.h.emulator_http.get(f"/_emulator/calls/{summary['CALL_ID']}")
        response.raise_for_status()
        return dict(response.json())

    async def portal(self, what: str) -> list[dict[str, Any]]:
        response = await self.env.h.emulator_http.get(f"/_emulator/{what}")
        response.raise_for_status()
        return list(response.json())

    async def commands(self, linkedid: str, kind: str | None = None) -> list[dict[str, Any]]:
        """The Bitrix24 commands queued for a call, in order (``kind`` alone if given)."""
        return [
            job.payload["command"]
            for job in await self.env.jobs()
            if job.kind == BITRIX24_COMMAND_JOB
            and job.payload.get("linkedid") == linkedid
            and kind in (None, job.payload["command"]["kind"])
        ]

    async def kinds(self, linkedid: str) -> list[str]:
        return await self.env.command_kinds(linkedid)

    async def routing(self, phone: str, **params: str) -> httpx.Response:
        return await self.env.h.callbridge_http.get(
            f"/pbx/{ENTERPRISE}/responsible",
            params={"phone": phone, **params},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )


@pytest.fixture
async def cases(fresh_database_url: str, tmp_path: Path) -> AsyncIterator[Cases]:
    pbx = PbxFiles()
    mounts = {f"all://{PBX_HOST}": httpx.ASGITransport(app=pbx.app)}
    monitor = tmp_path / "monitor"
    monitor.mkdir()
    async with environment(
        fresh_database_url,
        tmp_path,
        portal_mounts=mounts,
        settings_overrides={"recordings_dirs": [monitor], "recording_inline_max_bytes": 1024},
    ) as env:
        yield Cases(env, pbx, monitor)


def started(
    linkedid: str,
    *,
    direction: str = "inbound",
    number: str = KNOWN_CALLER,
    line: str = LINE,
    extension: str | None = None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {"direction": direction, "external_number": number, "line": line}
    if extension is not None:
        fields["extension"] = extension
    return ev("call.started", linkedid, 1, 0, **fields)


def picked_up(linkedid: str, phone: str, /, *, at: float = 5, **start: Any) -> list[dict[str, Any]]:
    """Events 1-3 of a call that starts, rings ``phone`` and is answered there."""
    return [
        started(linkedid, **start),
        ev("call.ringing", linkedid, 2, 1, extensions=[phone]),
        ev("call.answered", linkedid, 3, at, extension=phone),
    ]


def transferred(
    linkedid: str, n: int, at: float, kind: str, from_extension: str, **target: str
) -> dict[str, Any]:
    """A ``call.transferred`` event (``to_extension=`` or ``to_number=``)."""
    return ev(
        "call.transferred", linkedid, n, at, kind=kind, from_extension=from_extension, **target
    )


def card_moves(call: dict[str, Any]) -> list[tuple[str, int]]:
    """The show/hide requests a call's cards saw (not register's or finish's own)."""
    return [(e["action"], e["user_id"]) for e in call["card_log"] if e["by"] in ("show", "hide")]


def stat(call: dict[str, Any]) -> dict[str, Any]:
    statistic = call["statistic"]
    assert statistic is not None, "the call was not finished"
    return dict(statistic)


class TestInboundOutcomes:
    async def test_busy_employee_is_finished_486_with_the_reason(self, cases: Cases) -> None:
        linkedid = "1764160000.1"
        await cases.post(
            started(linkedid),
            ev("call.ringing", linkedid, 2, 1, extensions=["102"]),
            ev("call.leg_ended", linkedid, 3, 1, extension="102", disposition="BUSY"),
            ev("call.ended", linkedid, 4, 2, disposition="BUSY", hangup_cause=17),
        )
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        assert (call["state"], call["STATUS_CODE"], call["DURATION"]) == ("finished", "486", 0)
        assert stat(call)["CALL_FAILED_REASON"] == "Q.850 cause 17: user busy"
        assert stat(call)["CALL_STATUS"] == 0
        # The only employee it was offered to owns the failed call.
        assert stat(call)["PORTAL_USER_ID"] == 2
        assert call["cards_visible"] == []

    async def test_caller_who_gives_up_while_ringing_is_a_missed_call(self, cases: Cases) -> None:
        linkedid = "1764160000.2"
        await cases.post(
            started(linkedid),
            ev("call.ringing", linkedid, 2, 1, extensions=["101", "102"]),
            # Asterisk: the caller hangs up, DIALSTATUS=CANCEL, cause 16 on the caller's side.
            ev("call.ended", linkedid, 3, 12, disposition="CANCEL", hangup_cause=16),
        )
        await cases.settle()
        assert await cases.kinds(linkedid) == ["register", "show", "hide", "finish"]
        call = await cases.call(f"{linkedid}-0")
        assert (call["STATUS_CODE"], call["DURATION"]) == ("304", 0)
        assert card_moves(call) == [("show", 1), ("show", 2), ("hide", 1), ("hide", 2)]
        assert call["cards_visible"] == []
        # Nobody in particular missed a ring group's call: the default user has it.
        assert stat(call)["PORTAL_USER_ID"] == 1
        assert stat(call)["CALL_FAILED_REASON"] == ""

    async def test_missed_call_goes_to_the_responsible_user_when_one_is_set(
        self, cases: Cases
    ) -> None:
        await cases.configure(responsible_user_id=3)
        linkedid = "1764160000.3"
        await cases.post(
            started(linkedid),
            ev("call.ringing", linkedid, 2, 1, extensions=["101"]),
            ev("call.ended", linkedid, 3, 21, disposition="NOANSWER", hangup_cause=19),
        )
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        assert (call["STATUS_CODE"], stat(call)["PORTAL_USER_ID"], call["USER_ID"]) == (
            "304",
            3,
            3,
        )

    async def test_caller_who_hangs_up_in_the_ivr_is_missed_for_the_default_user(
        self, cases: Cases
    ) -> None:
        await cases.configure(default_user_id=3)
        linkedid = "1764160000.4"
        await cases.post(
            started(linkedid),
            # ${DIALSTATUS} is empty before Dial(): the hangup handler reports CANCEL.
            ev("call.ended", linkedid, 2, 9, disposition="CANCEL", hangup_cause=16),
        )
        await cases.settle()
        assert await cases.kinds(linkedid) == ["register", "finish"]
        call = await cases.call(f"{linkedid}-0")
        assert (call["STATUS_CODE"], call["DURATION"], stat(call)["PORTAL_USER_ID"]) == (
            "304",
            0,
            3,
        )
        assert call["card_log"] == []

    async def test_anonymous_caller_is_registered_without_a_lead(self, cases: Cases) -> None:
        await cases.configure(lead_creation="all")
        leads_before = await cases.portal("leads")
        linkedid = "1764160000.5"
        await cases.post(
            *picked_up(linkedid, "101", at=3, number=""),
            ev("call.ended", linkedid, 4, 13, disposition="ANSWER", talk_seconds=10),
        )
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        assert (call["PHONE_NUMBER"], call["STATUS_CODE"], call["DURATION"]) == ("0", "200", 10)
        assert await cases.portal("leads") == leads_before

    async def test_pickup_by_a_phone_that_did_not_ring_moves_the_card_to_it(
        self, cases: Cases
    ) -> None:
        linkedid = "1764160000.6"
        await cases.post(
            started(linkedid),
            ev("call.ringing", linkedid, 2, 1, extensions=["101"]),
            # 103 picks the call up (*8) from 101's phone.
            ev("call.answered", linkedid, 3, 6, extension="103"),
            ev("call.ended", linkedid, 4, 36, disposition="ANSWER", talk_seconds=30),
        )
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        assert card_moves(call) == [("show", 1), ("show", 3), ("hide", 1)]
        assert (call["STATUS_CODE"], call["DURATION"], stat(call)["PORTAL_USER_ID"]) == (
            "200",
            30,
            3,
        )

    @pytest.mark.parametrize(
        ("direction", "dial_status", "cause", "expected"),
        [
            ("inbound", "NOANSWER", 19, "304"),
            ("inbound", "BUSY", 17, "486"),
            ("inbound", "CANCEL", None, "304"),
            ("inbound", "CONGESTION", 34, "503"),
            ("inbound", "CHANUNAVAIL", 20, "480"),
            ("outbound", "NOANSWER", 19, "304"),
            ("outbound", "BUSY", 17, "486"),
            ("outbound", "BUSY", None, "486"),
            ("outbound", "CANCEL", None, "603-S"),
            ("outbound", "CONGESTION", None, "503"),
            ("outbound", "CHANUNAVAIL", None, "480"),
        ],
    )
    async def test_dial_status_becomes_the_spec_status_code(
        self, cases: Cases, direction: str, dial_status: str, cause: int | None, expected: str
    ) -> None:
        linkedid = "1764160001.1"
        outbound = direction == "outbound"
        first = started(linkedid, direction=direction, extension="103" if outbound else None)
        ringing = [] if outbound else [ev("call.ringing", linkedid, 2, 1, extensions=["103"])]
        ended = ev("call.ended", linkedid, 3, 15, disposition=dial_status)
        if cause is not None:
            ended["hangup_cause"] = cause
        await cases.post(first, *ringing, ended)
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        assert (call["state"], call["STATUS_CODE"], call["DURATION"]) == ("finished", expected, 0)
        assert call["TYPE"] == (1 if outbound else 2)
        assert stat(call)["PORTAL_USER_ID"] == 3


class TestQueue:
    async def test_members_ring_in_turn_and_the_card_follows_the_ringing_member(
        self, cases: Cases
    ) -> None:
        linkedid = "1764160100.1"
        await cases.post(
            started(linkedid),
            ev("call.ringing", linkedid, 2, 1, extensions=["101"]),
            ev("call.ringing", linkedid, 3, 16, extensions=["102"]),
            ev("call.leg_ended", linkedid, 4, 16, extension="101", disposition="NOANSWER"),
            ev("call.ringing", linkedid, 5, 31, extensions=["103"]),
            ev("call.leg_ended", linkedid, 6, 31, extension="102", disposition="NOANSWER"),
            ev("call.answered", linkedid, 7, 35, extension="103"),
            ev("call.ended", linkedid, 8, 95, disposition="ANSWER", talk_seconds=60),
        )
        await cases.settle()
        assert await cases.kinds(linkedid) == [
            "register",
            "show",
            "show",
            "hide",
            "show",
            "hide",
            "finish",
        ]
        call = await cases.call(f"{linkedid}-0")
        assert card_moves(call) == [
            ("show", 1),
            ("show", 2),
            ("hide", 1),
            ("show", 3),
            ("hide", 2),
        ]
        assert (call["STATUS_CODE"], call["DURATION"]) == ("200", 60)
        assert stat(call)["PORTAL_USER_ID"] == 3
        # One registration: the queue's members share the customer's one call.
        assert [c for c in (await cases.env.calls()) if c.startswith(linkedid)] == [f"{linkedid}-0"]


ANSWERED_ORDERS = {
    # Asterisk's order: the others' phones stop, the talker hangs up, the call ends.
    "others-then-talker": [
        ("leg", "101", "CANCEL", 65),
        ("leg", "103", "NOANSWER", 65),
        ("leg", "102", "ANSWER", 65),
        ("end", None, "NOANSWER", 65),
    ],
    # The talker first, a queue's late NOANSWER/CANCEL after it, and CANCEL for the call.
    "talker-first": [
        ("leg", "102", "ANSWER", 65),
        ("leg", "103", "NOANSWER", 65),
        ("leg", "101", "CANCEL", 66),
        ("end", None, "CANCEL", 66),
    ],
    # The end overtakes every leg; they arrive late.
    "end-first": [
        ("end", None, "CANCEL", 65),
        ("leg", "101", "CANCEL", 66),
        ("leg", "102", "ANSWER", 66),
        ("leg", "103", "NOANSWER", 66),
    ],
}


class TestAnsweredStaysAnswered:
    @pytest.mark.parametrize("order", sorted(ANSWERED_ORDERS))
    async def test_answered_call_is_never_finished_as_missed(
        self, cases: Cases, order: str
    ) -> None:
        linkedid = "1764160200.1"
        events = [
            started(linkedid),
            ev("call.ringing", linkedid, 2, 1, extensions=["101", "102", "103"]),
            ev("call.answered", linkedid, 3, 5, extension="102"),
        ]
        for n, (kind, extension, disposition, at) in enumerate(ANSWERED_ORDERS[order], start=4):
            if kind == "leg":
                events.append(
                    ev(
                        "call.leg_ended",
                        linkedid,
                        n,
                        at,
                        extension=extension,
                        disposition=disposition,
                    )
                )
            else:
                events.append(
                    ev("call.ended", linkedid, n, at, disposition=disposition, hangup_cause=16)
                )
        # One request per event, as a dialplan sends them.
        for event in events:
            await cases.post(event)
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        assert (call["STATUS_CODE"], call["DURATION"]) == ("200", 60)
        assert stat(call)["PORTAL_USER_ID"] == 2
        assert stat(call)["CALL_STATUS"] == 1
        assert (await cases.kinds(linkedid)).count("finish") == 1
        assert [j.status for j in await cases.env.jobs()] == [JobStatus.SUCCEEDED] * len(
            await cases.env.jobs()
        )


class TestTransfers:
    async def test_attended_transfer_splits_the_call_and_keeps_the_recording(
        self, cases: Cases
    ) -> None:
        linkedid = "1764160300.1"
        cases.pbx.files[f"/monitor/{linkedid}.wav"] = WAV
        await cases.post(
            *picked_up(linkedid, "101"),
            # 101 puts the customer on hold and consults 102, who answers; then 101 leaves.
            ev("call.ringing", linkedid, 4, 20, extensions=["102"]),
            transferred(linkedid, 5, 35, "attended", "101", to_extension="102"),
            ev("call.leg_ended", linkedid, 6, 35, extension="101", disposition="ANSWER"),
            ev("call.ended", linkedid, 7, 100, disposition="ANSWER", talk_seconds=95),
            ev("call.recording", linkedid, 8, 101, url=cases.pbx.url(f"/monitor/{linkedid}.wav")),
        )
        await cases.settle()
        first, second = await cases.call(f"{linkedid}-0"), await cases.call(f"{linkedid}-1")
        assert first["CALL_ID"] != second["CALL_ID"]
        assert (first["TYPE"], second["TYPE"]) == (2, 2)
        assert (first["STATUS_CODE"], first["DURATION"], stat(first)["PORTAL_USER_ID"]) == (
            "200",
            30,
            1,
        )
        assert (second["STATUS_CODE"], second["DURATION"], stat(second)["PORTAL_USER_ID"]) == (
            "200",
            65,
            2,
        )
        assert first["DURATION"] + second["DURATION"] == 95  # no second of the talk is lost
        assert 2 in second["cards_shown"]
        # The consultation never showed 102 the customer's card on the first leg.
        assert first["cards_shown"] == [1]
        # The one recording holds both conversations: each leg gets it, after its finish.
        for leg in (first, second):
            assert leg["record_file_id"] is not None
            file = await cases.env.h.emulator_http.get(f"/_emulator/files/{leg['record_file_id']}")
            assert file.content == WAV
        assert await cases.kinds(linkedid) == [
            "register",
            "show",
            "finish",
            "register",
            "finish",
            "attach_record",
            "attach_record",
        ]
        async with cases.env.h.session_factory() as session:
            legs = list(
                (await session.scalars(select(Bitrix24Call).order_by(Bitrix24Call.leg))).all()
            )
        assert [(leg.leg, leg.user_id, leg.duration, leg.status_code) for leg in legs] == [
            (0, 1, 30, "200"),
            (1, 2, 65, "200"),
        ]

    async def test_blind_transfer_nobody_answers_keeps_the_conversation_before_it(
        self, cases: Cases
    ) -> None:
        linkedid = "1764160300.2"
        await cases.post(
            *picked_up(linkedid, "101"),
            transferred(linkedid, 4, 45, "blind", "101", to_extension="103"),
            ev("call.ringing", linkedid, 5, 45, extensions=["103"]),
            ev("call.leg_ended", linkedid, 6, 65, extension="103", disposition="NOANSWER"),
            ev("call.ended", linkedid, 7, 65, disposition="NOANSWER", talk_seconds=40),
        )
        await cases.settle()
        first, second = await cases.call(f"{linkedid}-0"), await cases.call(f"{linkedid}-1")
        assert (first["STATUS_CODE"], first["DURATION"], stat(first)["PORTAL_USER_ID"]) == (
            "200",
            40,
            1,
        )
        assert (second["STATUS_CODE"], second["DURATION"], stat(second)["PORTAL_USER_ID"]) == (
            "304",
            0,
            3,
        )


class TestTransferOutside:
    async def test_blind_transfer_to_an_employees_mobile_is_that_employees_leg(
        self, cases: Cases
    ) -> None:
        async with cases.env.h.session_factory() as session, session.begin():
            integration = await cases.env.h.integration()
            assert integration is not None
            session.add(
                Bitrix24User(integration_id=integration.id, user_id=5, mobile="+79161234567")
            )
        cases.env.h.intake.routing_cache.clear()  # as Cases.configure does
        linkedid = "1764160350.1"
        await cases.post(
            *picked_up(linkedid, "101"),
            transferred(linkedid, 4, 25, "blind", "101", to_number="8 916 123-45-67"),
            ev("call.answered", linkedid, 5, 30),
            ev("call.ended", linkedid, 6, 90, disposition="ANSWER", talk_seconds=80),
        )
        await cases.settle()
        first, second = await cases.call(f"{linkedid}-0"), await cases.call(f"{linkedid}-1")
        assert (first["DURATION"], stat(first)["PORTAL_USER_ID"]) == (20, 1)
        assert (second["STATUS_CODE"], second["DURATION"], stat(second)["PORTAL_USER_ID"]) == (
            "200",
            60,
            5,
        )
        # The customer's number stays the call's number on the new leg.
        assert second["PHONE_NUMBER"] == KNOWN_E164

    async def test_blind_transfer_to_a_stranger_stays_with_the_employee(self, cases: Cases) -> None:
        linkedid = "1764160350.2"
        await cases.post(
            *picked_up(linkedid, "102"),
            transferred(linkedid, 4, 15, "blind", "102", to_number="84997770099"),
            ev("call.answered", linkedid, 5, 18),
            ev("call.ended", linkedid, 6, 48, disposition="ANSWER", talk_seconds=40),
        )
        await cases.settle()
        first, second = await cases.call(f"{linkedid}-0"), await cases.call(f"{linkedid}-1")
        assert (first["DURATION"], stat(first)["PORTAL_USER_ID"]) == (10, 2)
        assert (second["DURATION"], stat(second)["PORTAL_USER_ID"]) == (30, 2)


class TestOutboundAndInternal:
    async def test_internal_calls_are_ignored_by_default(self, cases: Cases) -> None:
        before = len(await cases.env.rest_requests())
        linkedid = "1764160400.1"
        await cases.post(
            *picked_up(
                linkedid, "102", at=3, direction="internal", number="102", line="", extension="101"
            ),
            ev("call.ended", linkedid, 4, 33, disposition="ANSWER", talk_seconds=30),
        )
        await cases.settle()
        assert await cases.kinds(linkedid) == []
        assert (await cases.env.rest_requests())[before:] == []
        assert not [c for c in await cases.env.calls() if c.startswith(linkedid)]

    async def test_internal_calls_are_registered_when_the_setting_is_off(
        self, cases: Cases
    ) -> None:
        await cases.configure(ignore_internal=False)
        linkedid = "1764160400.2"
        await cases.post(
            started(linkedid, direction="internal", number="102", line="", extension="101"),
            ev("call.answered", linkedid, 2, 3, extension="102"),
            ev("call.ended", linkedid, 3, 33, disposition="ANSWER", talk_seconds=30),
        )
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        # The employee who dialled owns it, as an outgoing call to the colleague's number.
        assert (call["TYPE"], call["USER_ID"], call["PHONE_NUMBER"]) == (1, 1, "102")
        assert (call["STATUS_CODE"], call["DURATION"]) == ("200", 30)

    async def test_outbound_answered_call_has_the_callers_card_and_talk_time(
        self, cases: Cases
    ) -> None:
        linkedid = "1764160400.3"
        await cases.post(
            started(linkedid, direction="outbound", number="+7 (495) 123-45-67", extension="102"),
            ev("call.answered", linkedid, 2, 9),
            ev("call.ended", linkedid, 3, 70, disposition="ANSWER", talk_seconds=61),
        )
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        assert (call["TYPE"], call["USER_ID"], call["PHONE_NUMBER"]) == (1, 2, KNOWN_E164)
        assert (call["STATUS_CODE"], call["DURATION"]) == ("200", 61)
        assert (call["CRM_ENTITY_TYPE"], call["CRM_ENTITY_ID"]) == ("CONTACT", 1)
        assert call["cards_shown"] == [2]


class TestClickToCall:
    async def test_unanswered_click_to_call_is_finished_for_the_clicking_user(
        self, cases: Cases
    ) -> None:
        response = await cases.env.h.emulator_http.post(
            "/_emulator/events/click-to-call",
            json={"user_id": 3, "phone_number": "+7 (812) 765-43-21"},
        )
        response.raise_for_status()
        clicked = next(
            c for c in (await cases.env.calls()).values() if c["origin"] == "click_to_call"
        )
        linkedid = "1764160450.1"
        await cases.post(
            ev(
                "call.started",
                linkedid,
                1,
                0,
                direction="outbound",
                external_number="88127654321",
                extension="103",
                bitrix24_call_id=clicked["CALL_ID"],
            ),
            ev("call.ended", linkedid, 2, 30, disposition="NOANSWER", hangup_cause=19),
        )
        await cases.settle()
        assert await cases.kinds(linkedid) == ["finish"]
        call = (await cases.env.calls())[clicked["CALL_ID"]]
        assert (call["state"], call["STATUS_CODE"], call["DURATION"]) == ("finished", "304", 0)
        assert call["USER_ID"] == 3
        assert not [c for c in await cases.env.calls() if c.startswith(linkedid)]


class TestDefaultUser:
    async def test_unknown_extension_answers_for_the_default_user(self, cases: Cases) -> None:
        await cases.configure(default_user_id=3)
        linkedid = "1764160500.1"
        await cases.post(
            *picked_up(linkedid, "150", at=4),
            ev("call.ended", linkedid, 4, 24, disposition="ANSWER", talk_seconds=20),
        )
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        assert (call["STATUS_CODE"], call["DURATION"], stat(call)["PORTAL_USER_ID"]) == (
            "200",
            20,
            3,
        )
        assert call["cards_shown"] == [3]

    async def test_unmapped_employee_dialling_out_is_the_default_user(self, cases: Cases) -> None:
        await cases.configure(default_user_id=3)
        async with cases.env.h.session_factory() as session, session.begin():
            integration = await cases.env.h.integration()
            assert integration is not None
            # A fired employee's extension stays in the directory, inactive.
            session.add(
                Bitrix24User(
                    integration_id=integration.id, user_id=4, extension="104", active=False
                )
            )
        linkedid = "1764160500.2"
        await cases.post(
            started(linkedid, direction="outbound", extension="104"),
            ev("call.answered", linkedid, 2, 3),
            ev("call.ended", linkedid, 3, 13, disposition="ANSWER", talk_seconds=10),
        )
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        assert (call["TYPE"], call["USER_ID"], stat(call)["PORTAL_USER_ID"]) == (1, 3, 3)
        assert (call["state"], call["STATUS_CODE"]) == ("finished", "200")


LEAD_MATRIX = [
    (setting, direction, setting in ("all", direction))
    for setting in ("never", "inbound", "outbound", "all")
    for direction in ("inbound", "outbound")
]


class TestLeads:
    @pytest.mark.parametrize(("setting", "direction", "creates"), LEAD_MATRIX)
    async def test_unknown_number_becomes_a_lead_per_setting(
        self, cases: Cases, setting: str, direction: str, creates: bool
    ) -> None:
        await cases.configure(lead_creation=setting, crm_sources={LINE: "ADVERTISING"})
        leads_before = await cases.portal("leads")
        linkedid = "1764160600.1"
        outbound = direction == "outbound"
        await cases.post(
            started(
                linkedid,
                direction=direction,
                number=UNKNOWN_CALLER,
                extension="102" if outbound else None,
            ),
            *([] if outbound else [ev("call.ringing", linkedid, 2, 1, extensions=["102"])]),
            ev("call.answered", linkedid, 3, 5, extension="102"),
            ev("call.ended", linkedid, 4, 35, disposition="ANSWER", talk_seconds=30),
        )
        await cases.settle()
        (register,) = await cases.commands(linkedid, "register")
        assert register["crm_create"] is creates
        call = await cases.call(f"{linkedid}-0")
        leads = await cases.portal("leads")
        if creates:
            (lead,) = leads[len(leads_before) :]
            assert call["CRM_CREATED_LEAD"] == int(lead["ID"])
            assert (call["CRM_ENTITY_TYPE"], call["CRM_ENTITY_ID"]) == ("LEAD", int(lead["ID"]))
            assert lead["SOURCE_ID"] == "ADVERTISING"
        else:
            assert leads == leads_before
            assert call["CRM_CREATED_LEAD"] is None
        assert (call["STATUS_CODE"], call["DURATION"]) == ("200", 30)

    async def test_crm_source_follows_the_line_the_call_came_in_on(self, cases: Cases) -> None:
        await cases.configure(
            lead_creation="all",
            lines=[
                {"number": "74951110101", "pbx_line": LINE, "crm_source": "ADVERTISING"},
                {"number": "74951110202", "pbx_line": "4951110202", "crm_source": "WEB"},
            ],
            default_crm_source="OTHER",
        )
        callers = {
            "4951110101": "84997770021",
            "4951110202": "84997770022",
            "4951110303": "84997770023",
        }
        for n, (line, caller) in enumerate(callers.items()):
            linkedid = f"1764160601.{n}"
            await cases.post(
                started(linkedid, number=caller, line=line),
                ev("call.ringing", linkedid, 2, 1, extensions=["101"]),
                ev("call.ended", linkedid, 3, 11, disposition="NOANSWER"),
            )
        await cases.settle()
        by_phone = {
            lead["PHONE"][0]["VALUE"]: lead["SOURCE_ID"] for lead in await cases.portal("leads")
        }
        assert by_phone["+74997770021"] == "ADVERTISING"
        assert by_phone["+74997770022"] == "WEB"
        assert by_phone["+74997770023"] == "OTHER"
        lines = {c["PHONE_NUMBER"]: c["LINE_NUMBER"] for c in (await cases.env.calls()).values()}
        assert lines == {
            "+74997770021": "74951110101",
            "+74997770022": "74951110202",
            "+74997770023": "4951110303",
        }


class TestFinishDetails:
    async def test_vote_and_cost_reach_the_finish(self, cases: Cases) -> None:
        linkedid = "1764160700.1"
        await cases.post(
            *picked_up(linkedid, "101"),
            # The employee hangs up first; the customer rates the call in the IVR afterwards.
            ev("call.leg_ended", linkedid, 4, 50, extension="101", disposition="ANSWER"),
            ev(
                "call.ended",
                linkedid,
                5,
                58,
                disposition="ANSWER",
                talk_seconds=45,
                vote="4",
                cost="1.25",
                cost_currency="rub",
            ),
        )
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        row = stat(call)
        assert (row["CALL_VOTE"], row["COST"], row["COST_CURRENCY"]) == (4, 1.25, "RUB")
        assert (call["DURATION"], row["PORTAL_USER_ID"]) == (45, 1)

    @pytest.mark.parametrize(("setting", "portal_default"), [(True, False), (False, True)])
    async def test_add_to_chat_is_always_explicit(
        self, cases: Cases, setting: bool, portal_default: bool
    ) -> None:
        # The portal's own default is the opposite of the setting: only an explicit flag wins.
        behaviour = await cases.env.h.emulator_http.put(
            "/_emulator/behaviour", json={"finish_add_to_chat_default": portal_default}
        )
        behaviour.raise_for_status()
        await cases.configure(add_to_chat=setting)
        linkedid = "1764160700.2"
        await cases.post(
            started(linkedid),
            ev("call.ringing", linkedid, 2, 1, extensions=["101"]),
            ev("call.ended", linkedid, 3, 11, disposition="NOANSWER"),
        )
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        assert call["added_to_chat"] is setting
        (finish,) = await cases.commands(linkedid, "finish")
        assert finish["add_to_chat"] is setting


class TestRecordings:
    async def test_recording_url_is_attached_after_the_finish(self, cases: Cases) -> None:
        linkedid = "1764160800.1"
        path = f"/monitor/{linkedid}.wav"
        cases.pbx.files[path] = WAV
        # MixMonitor's file is announced before the hangup handler reports the end.
        await cases.post(
            *picked_up(linkedid, "102", at=4),
            ev("call.recording", linkedid, 4, 30, url=cases.pbx.url(path)),
        )
        await cases.settle()
        assert await cases.kinds(linkedid) == ["register", "show"]
        await cases.post(ev("call.ended", linkedid, 5, 34, disposition="ANSWER", talk_seconds=30))
        await cases.settle()
        assert await cases.kinds(linkedid) == ["register", "show", "finish", "attach_record"]
        call = await cases.call(f"{linkedid}-0")
        assert call["state"] == "finished"
        assert cases.pbx.fetched == [path]
        file = await cases.env.h.emulator_http.get(f"/_emulator/files/{call['record_file_id']}")
        assert file.content == WAV
        (attach,) = await cases.commands(linkedid, "attach_record")
        assert (attach["url"], attach["filename"]) == (cases.pbx.url(path), f"{linkedid}-0.wav")

    async def test_an_employees_own_recording_goes_to_their_leg_only(self, cases: Cases) -> None:
        linkedid = "1764160800.2"
        cases.pbx.files["/monitor/part-102.mp3"] = b"ID3" + bytes(32)
        await cases.post(
            *picked_up(linkedid, "101"),
            transferred(linkedid, 4, 25, "attended", "101", to_extension="102"),
            ev("call.ended", linkedid, 5, 55, disposition="ANSWER", talk_seconds=50),
            ev(
                "call.recording",
                linkedid,
                6,
                56,
                url=cases.pbx.url("/monitor/part-102.mp3"),
                extension="102",
            ),
        )
        await cases.settle()
        first, second = await cases.call(f"{linkedid}-0"), await cases.call(f"{linkedid}-1")
        assert first["records"] == []
        assert second["record_file_id"] is not None
        file = await cases.env.h.emulator_http.get(f"/_emulator/files/{second['record_file_id']}")
        assert file.content == b"ID3" + bytes(32)

    @pytest.mark.parametrize(
        ("size", "mode"), [(200, "FILE_CONTENT"), (300_000, "uploadUrl")], ids=["base64", "upload"]
    )
    async def test_recording_on_the_pbx_is_uploaded_after_the_finish(
        self, cases: Cases, size: int, mode: str
    ) -> None:
        linkedid = "1764160800.3"
        content = WAV + bytes(range(256)) * (size // 256)
        (cases.monitor / f"{linkedid}.wav").write_bytes(content)
        await cases.post(
            *inbound_answered(linkedid),
            ev("call.recording", linkedid, 5, 60, path=str(cases.monitor / f"{linkedid}.wav")),
        )
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        assert call["record_file_id"] is not None
        file = await cases.env.h.emulator_http.get(f"/_emulator/files/{call['record_file_id']}")
        assert file.content == content
        assert all(j.status == JobStatus.SUCCEEDED for j in await cases.env.jobs())
        methods = [entry.method for entry in cases.env.h.api_log.entries]
        assert ("upload" in methods) == (mode == "uploadUrl")

    async def test_recording_outside_the_recordings_directories_is_refused(
        self, cases: Cases, tmp_path: Path
    ) -> None:
        linkedid = "1764160800.4"
        secret = tmp_path / "secret.wav"
        secret.write_bytes(WAV)
        await cases.post(
            *inbound_answered(linkedid),
            ev("call.recording", linkedid, 5, 60, path=f"{cases.monitor}/../secret.wav"),
        )
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        assert call["records"] == []
        (attach,) = [
            j
            for j in await cases.env.jobs()
            if j.payload.get("command", {}).get("kind") == "attach_record"
        ]
        assert attach.status == JobStatus.DEAD
        assert "outside the recordings directories" in (attach.last_error or "")


class TestMissedCallNotifications:
    async def _run_notifications(self, cases: Cases) -> list[Any]:
        """Run the worker's notification jobs until none is left; their jobs."""
        registry = JobRegistry()
        holder = PortalsHolder(
            cases.env.h.settings, cases.env.h.session_factory, portals=cases.env.h.portals
        )
        registry.register(NOTIFY_MISSED_JOB, notify_missed_handler(holder))
        worker = Worker(
            cases.env.h.session_factory, registry, kinds=[NOTIFY_MISSED_JOB], poll_interval=0.05
        )
        task = asyncio.create_task(worker.run())
        try:
            for _ in range(300):
                jobs = [j for j in await cases.env.jobs() if j.kind == NOTIFY_MISSED_JOB]
                if jobs and all(j.status == JobStatus.SUCCEEDED for j in jobs):
                    return jobs
                await asyncio.sleep(0.02)
            raise AssertionError(f"notifications not done: {[j.status for j in jobs]}")
        finally:
            worker.stop()
            await task

    async def _missed(self, cases: Cases, linkedid: str) -> None:
        await cases.post(
            started(linkedid),
            ev("call.ringing", linkedid, 2, 1, extensions=["101", "103"]),
            ev("call.ended", linkedid, 3, 25, disposition="NOANSWER", hangup_cause=19),
        )
        await cases.settle()

    async def test_missed_call_notifies_the_responsible_user(self, cases: Cases) -> None:
        await cases.configure(responsible_user_id=2, language="en")
        linkedid = "1764160900.1"
        await self._missed(cases, linkedid)
        (job,) = await self._run_notifications(cases)
        (note,) = await cases.portal("notifications")
        assert note["USER_ID"] == 2
        assert note["MESSAGE"] == f"Missed call from {KNOWN_E164} on line {LINE}"
        assert note["TAG"] == f"callbridge|missed|{job.payload['enterprise_id']}|{linkedid}"
        assert job.result == {"notification_id": note["ID"], "user_id": 2}
        call = await cases.call(f"{linkedid}-0")
        assert (call["STATUS_CODE"], stat(call)["PORTAL_USER_ID"]) == ("304", 2)

    async def test_no_notification_when_the_setting_is_off(self, cases: Cases) -> None:
        await cases.configure(notify_missed_calls=False)
        await self._missed(cases, "1764160900.2")
        (job,) = await self._run_notifications(cases)
        assert job.result == {"skipped": "notify_missed_calls is off"}
        assert await cases.portal("notifications") == []

    async def test_answered_call_notifies_nobody(self, cases: Cases) -> None:
        linkedid = "1764160900.3"
        await cases.post(
            started(linkedid),
            ev("call.ringing", linkedid, 2, 1, extensions=["101", "103"]),
            ev("call.answered", linkedid, 3, 4, extension="103"),
            ev("call.ended", linkedid, 4, 25, disposition="ANSWER", talk_seconds=21),
        )
        await cases.settle()
        assert [j for j in await cases.env.jobs() if j.kind == NOTIFY_MISSED_JOB] == []


SPELLINGS = ["+7 (495) 123-45-67", "84951234567", "74951234567", "8 (495) 123 45 67"]


class TestPhoneNumbers:
    @pytest.mark.parametrize("spelling", SPELLINGS)
    async def test_every_spelling_finds_the_same_contact(self, cases: Cases, spelling: str) -> None:
        await cases.configure(lead_creation="all")
        leads_before = await cases.portal("leads")
        linkedid = "1764161000.1"
        await cases.post(
            *picked_up(linkedid, "102", at=4, number=spelling),
            ev("call.ended", linkedid, 4, 14, disposition="ANSWER", talk_seconds=10),
        )
        await cases.settle()
        call = await cases.call(f"{linkedid}-0")
        assert call["PHONE_NUMBER"] == KNOWN_E164
        assert (call["CRM_ENTITY_TYPE"], call["CRM_ENTITY_ID"]) == ("CONTACT", 1)
        assert await cases.portal("leads") == leads_before  # known: no lead, whatever the spelling

        routed = await cases.routing(spelling, format="text")
        assert (routed.status_code, routed.text) == (200, "102")


class TestResponsibleRouting:
    async def test_known_number_routes_to_its_responsible_employee(self, cases: Cases) -> None:
        response = await cases.routing(KNOWN_CALLER)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "extension": "102",
            "user_id": 2,
            "crm_entity_type": "CONTACT",
            "crm_entity_id": 1,
            "name": "Анна Соколова",
        }
        searches = [
            r
            for r in await cases.env.rest_requests()
            if r["method"] == "telephony.externalCall.searchCrmEntities"
        ]
        assert [r["params"]["PHONE_NUMBER"] for r in searches] == [KNOWN_E164]

    async def test_a_company_number_routes_to_the_companys_responsible(self, cases: Cases) -> None:
        response = await cases.routing("8 495 987-65-43", format="text")
        assert (response.status_code, response.text) == (200, "102")

    async def test_unknown_number_is_404_and_empty_as_text(self, cases: Cases) -> None:
        response = await cases.routing(UNKNOWN_CALLER)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "unknown_number"
        text = await cases.routing(UNKNOWN_CALLER, format="text")
        assert (text.status_code, text.text) == (404, "")

    async def test_responsible_without_an_extension_is_404(self, cases: Cases) -> None:
        # Contact 2 belongs to user 3; without an extension nobody can be rung.
        async with cases.env.h.session_factory() as session, session.begin():
            for user in (await session.scalars(select(Bitrix24User))).all():
                if user.user_id == 3:
                    user.extension = None
        response = await cases.routing("+7 903 111-22-33")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "no_extension"

    async def test_bad_credentials_and_bad_numbers_are_refused(self, cases: Cases) -> None:
        wrong = await cases.env.h.callbridge_http.get(
            f"/pbx/{ENTERPRISE}/responsible",
            params={"phone": KNOWN_CALLER},
            headers={"Authorization": "Bearer wrong-token-0123456789"},
        )
        assert wrong.status_code == 401
        assert (await cases.routing("not a number")).status_code == 422
