"""Calls end to end: PBX webhook → call tracking → dispatcher → the emulated portal.

Everything runs in-process over ASGI on both databases: the emulator installs the app into
callbridge, the PBX posts call events to ``/pbx/{enterprise}/events``, the dispatcher (and the
recording uploads' worker) send the jobs to the emulator, and the outcome is read through the
emulator's inspection API.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from callbridge.domain.commands import split_portal_external_call_id
from callbridge.services.call_tracking import BITRIX24_COMMAND_JOB, BITRIX24_UPLOAD_JOB
from callbridge.storage.job_queue import list_jobs
from callbridge.storage.models import (
    Bitrix24Call,
    Bitrix24Integration,
    Bitrix24User,
    Enterprise,
    IntegrationStatus,
    Job,
    JobStatus,
)
from callbridge.storage.models import Call as CallRow
from callbridge.storage.repositories import IntegrationRepository
from callbridge.web import bitrix24_app, pbx, routing
from callbridge.worker.dispatcher import Dispatcher
from callbridge.worker.uploads import upload_worker
from callbridge.worker.worker import Worker
from tests.callbridge.crm.bitrix24.harness import Harness, harness

ENTERPRISE = "100"
TOKEN = "pbx-token-0123456789abcdef"
T0 = datetime.fromisoformat("2026-11-26T10:00:00+03:00")
KNOWN_CALLER = "84951234567"  # contact 1 of the emulator's seed
#: Extensions of the seed's active users 1..3.
USERS = {"101": 1, "102": 2, "103": 3}


@dataclass
class Env:
    """Both sides, the enterprise's PBX credentials, a running dispatcher and uploads' worker."""

    h: Harness
    dispatcher: Dispatcher
    uploads: Worker | None = None

    async def post(self, *events: dict[str, Any]) -> None:
        """The PBX reports events (one request)."""
        response = await self.h.callbridge_http.post(
            f"/pbx/{ENTERPRISE}/events",
            json=list(events),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert response.status_code == 202, response.text

    async def settle(self, seconds: float = 15.0) -> None:
        """Wait until every command and recording upload job is finished."""

        async def idle() -> None:
            while True:
                await self.dispatcher.wait_idle()
                async with self.h.session_factory() as session:
                    busy = [
                        await list_jobs(session, status=status, kind=BITRIX24_UPLOAD_JOB, limit=1)
                        for status in ("queued", "running")
                    ]
                if not any(busy):
                    # An upload that just finished may have unblocked a command of its call.
                    await self.dispatcher.wait_idle()
                    return
                if self.uploads is not None:
                    self.uploads.wake()
                await asyncio.sleep(0.02)

        await asyncio.wait_for(idle(), seconds)

    async def calls(self) -> dict[str, dict[str, Any]]:
        """The portal's calls by leg id, ``<linkedid>-<leg>`` (click-to-call ones by CALL_ID).

        Bitrix24 sees ``<enterprise number>/<linkedid>-<leg>``; the number is left out here.
        """
        response = await self.h.emulator_http.get("/_emulator/calls")
        return {
            split_portal_external_call_id(c["EXTERNAL_CALL_ID"])[1]
            if c["EXTERNAL_CALL_ID"]
            else c["CALL_ID"]: c
            for c in response.json()
        }

    async def jobs(self) -> list[Job]:
        async with self.h.session_factory() as session:
            return list((await session.scalars(select(Job).order_by(Job.id))).all())

    async def command_kinds(self, linkedid: str) -> list[str]:
        return [
            job.payload["command"]["kind"]
            for job in await self.jobs()
            # A missed inbound call also queues its notification, which is no command.
            if job.kind in (BITRIX24_COMMAND_JOB, BITRIX24_UPLOAD_JOB)
            and job.payload.get("linkedid") == linkedid
        ]

    async def rest_requests(self) -> list[dict[str, Any]]:
        """REST requests the portal received (not the OAuth ones)."""
        return [
            r
            for r in await self.h.requests()
            if r.get("method") and not str(r.get("method")).startswith("oauth")
        ]

    async def wait_for_jobs(self, done: Callable[[list[Job]], bool], seconds: float = 15.0) -> None:
        """Wait until the jobs are as ``done`` wants them."""
        for _ in range(int(seconds / 0.05)):
            if done(await self.jobs()):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"jobs never settled: {[(j.id, j.status) for j in await self.jobs()]}")

    async def add_fired_user(self) -> str:
        """Give an extension to the seed's user 4, who was fired; return the extension.

        Bitrix24 refuses to register a call for a fired user.
        """
        async with self.h.session_factory() as session, session.begin():
            integration = await self.h.integration()
            assert integration is not None
            session.add(Bitrix24User(integration_id=integration.id, user_id=4, extension="104"))
        self.h.intake.routing_cache.clear()  # not waiting for the routing to be read anew
        return "104"

    async def revoke_tokens(self) -> None:
        """The portal's stored tokens stop working; the ones held in memory are forgotten."""
        async with self.h.session_factory() as session, session.begin():
            repo = IntegrationRepository(session, self.h.box)
            row = await repo.by_member_id(self.h.emulator.portal.member_id)
            assert row is not None
            await repo.set_tokens(
                row,
                access_token="revoked",
                refresh_token="revoked",
                expires_at=row.expires_at or datetime.now(UTC) + timedelta(hours=1),
            )
        self.h.portals._credentials.clear()  # as a restarted process would load them


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def ev(type_: str, linkedid: str, n: int, seconds: float, **fields: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "call_id": linkedid,
        "event_id": f"{linkedid}-{n}",
        "timestamp": at(seconds),
        **fields,
    }


def outbound_started(
    linkedid: str, *, extension: str, number: str = KNOWN_CALLER
) -> dict[str, Any]:
    """An employee at ``extension`` calls ``number``."""
    return ev(
        "call.started",
        linkedid,
        1,
        0,
        direction="outbound",
        external_number=number,
        extension=extension,
    )


def inbound_answered(linkedid: str, *, caller: str = KNOWN_CALLER, talk: int = 42) -> list[Any]:
    return [
        ev(
            "call.started",
            linkedid,
            1,
            0,
            direction="inbound",
            external_number=caller,
            line="4951110101",
        ),
        ev("call.ringing", linkedid, 2, 1, extensions=["101"]),
        ev("call.answered", linkedid, 3, 5, extension="101"),
        ev(
            "call.ended",
            linkedid,
            4,
            5 + talk,
            disposition="answered",
            hangup_cause=16,
            talk_seconds=talk,
        ),
    ]


@asynccontextmanager
async def environment(
    database_url: str,
    var_dir: Path,
    *,
    batching: bool = True,
    portal_mounts: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    wrap_transport: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] | None = None,
    settings_overrides: Mapping[str, Any] | None = None,
    poll_interval: float = 0.05,
    integration_settings: Mapping[str, Any] | None = None,
) -> AsyncIterator[Env]:
    """The harness of the client tests, with the PBX webhook and routing routes mounted too.

    ``portal_mounts`` give the portal other hosts to reach (e.g. a PBX serving ``RECORD_URL``s);
    ``wrap_transport`` wraps the transport callbridge reaches the portal through (to lose an
    answer, say); ``settings_overrides`` change callbridge's settings, ``integration_settings``
    the portal integration's (its ``rate_plan``, say); ``poll_interval`` is the
    dispatcher's and the uploads worker's (short, so that tests see retries soon; benchmarks
    pass the default, as in production, where commits wake the dispatcher and an idle
    uploads worker costs no claim transaction every 50 ms).
    """
    async with harness(
        database_url,
        var_dir,
        routers=(bitrix24_app.router, pbx.router, routing.router),
        portal_mounts=portal_mounts,
        wrap_transport=wrap_transport,
        settings_overrides={
            "worker_poll_interval_seconds": poll_interval,
            **dict(settings_overrides or {}),
        },
    ) as h:
        settings, session_factory, portals, box = h.settings, h.session_factory, h.portals, h.box
        dispatcher = Dispatcher(
            settings,
            session_factory,
            portals=portals,
            poll_interval=poll_interval,
            batching=batching,
        )
        # As build_worker runs them: on the dispatcher's Portals (one rate budget).
        uploads = upload_worker(settings, session_factory, portals, poll_interval=poll_interval)
        task: asyncio.Task[None] | None = None
        uploading: asyncio.Task[None] | None = None
        try:
            integration = await h.install_for(
                Enterprise(number=ENTERPRISE, webhook_secret_enc=box.encrypt(TOKEN)),
                {
                    "default_user_id": 1,
                    "lead_creation": "inbound",
                    **dict(integration_settings or {}),
                },
            )
            async with session_factory() as session, session.begin():
                for extension, user in USERS.items():
                    session.add(
                        Bitrix24User(
                            integration_id=integration.id, user_id=user, extension=extension
                        )
                    )
            # The bridge starts once configured: the app's start-up reads, then the worker.
            await h.intake.warm_up(h.credentials)
            task = asyncio.create_task(dispatcher.run())
            uploading = asyncio.create_task(uploads.run())
            yield Env(h, dispatcher, uploads)
        finally:
            for running in (task, uploading):
                if running is not None:
                    running.cancel()
                    await asyncio.gather(running, return_exceptions=True)


@pytest.fixture
async def env(fresh_database_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    async with environment(fresh_database_url, tmp_path) as built:
        yield built


class TestInbound:
    async def test_answered_call_is_registered_shown_and_finished_in_one_request(
        self, env: Env
    ) -> None:
        before = len(await env.rest_requests())
        await env.post(*inbound_answered("1764151200.1"))
        await env.settle()

        call = (await env.calls())["1764151200.1-0"]
        assert call["TYPE"] == 2
        assert call["state"] == "finished"
        assert call["STATUS_CODE"] == "200"
        assert call["DURATION"] == 42
        assert call["USER_ID"] == 1
        assert call["CRM_ENTITY_TYPE"] == "CONTACT"
        assert 1 in call["cards_shown"]
        assert await env.command_kinds("1764151200.1") == ["register", "show", "finish"]
        # register, show and finish rode in one batch, the show and finish by reference.
        sent = (await env.rest_requests())[before:]
        assert [r["method"] for r in sent] == ["batch"]
        async with env.h.session_factory() as session:
            row = (await session.scalars(select(CallRow))).one()
            leg = (await session.scalars(select(Bitrix24Call))).one()
        assert row.bitrix24_call_id == call["CALL_ID"]
        assert row.model["legs"][0]["bitrix24_call_id"] == call["CALL_ID"]
        assert (row.crm_entity_type, row.crm_entity_id) == ("CONTACT", 1)
        assert (leg.bitrix24_call_id, leg.status, leg.status_code, leg.duration, leg.user_id) == (
            call["CALL_ID"],
            "finished",
            "200",
            42,
            1,
        )

    async def test_one_ready_command_goes_alone_and_at_once(self, env: Env) -> None:
        before = len(await env.rest_requests())
        await env.post(inbound_answered("1764151200.2")[0])
        await env.settle()
        sent = (await env.rest_requests())[before:]
        assert [r["method"] for r in sent] == ["telephony.externalCall.register"]

        await env.post(*inbound_answered("1764151200.2")[1:])
        await env.settle()
        call = (await env.calls())["1764151200.2-0"]
        assert (call["state"], call["STATUS_CODE"], call["DURATION"]) == ("finished", "200", 42)

    async def test_missed_call_is_finished_304(self, env: Env) -> None:
        linkedid = "1764151200.3"
        await env.post(
            ev("call.started", linkedid, 1, 0, direction="inbound", external_number=KNOWN_CALLER),
            ev("call.ringing", linkedid, 2, 1, extensions=["102"]),
            ev("call.leg_ended", linkedid, 3, 20, extension="102", disposition="no_answer"),
            ev("call.ended", linkedid, 4, 20, disposition="no_answer", hangup_cause=19),
        )
        await env.settle()
        call = (await env.calls())[f"{linkedid}-0"]
        assert (call["state"], call["STATUS_CODE"], call["DURATION"]) == ("finished", "304", 0)
        # The missed call belongs to the only employee it rang for.
        stats = (await env.h.emulator_http.get(f"/_emulator/calls/{call['CALL_ID']}")).json()
        assert stats["statistic"]["PORTAL_USER_ID"] == 2

    async def test_ring_group_one_show_for_all_one_hide_for_the_rest(self, env: Env) -> None:
        linkedid = "1764151200.4"
        await env.post(
            ev("call.started", linkedid, 1, 0, direction="inbound", external_number=KNOWN_CALLER),
            ev("call.ringing", linkedid, 2, 1, extensions=["101", "102", "103"]),
            ev("call.answered", linkedid, 3, 6, extension="102"),
            ev("call.ended", linkedid, 4, 66, disposition="answered", talk_seconds=60),
        )
        await env.settle()
        assert await env.command_kinds(linkedid) == ["register", "show", "hide", "finish"]
        jobs = [j for j in await env.jobs() if j.payload["linkedid"] == linkedid]
        assert jobs[1].payload["command"]["user_ids"] == [1, 2, 3]
        assert jobs[2].payload["command"]["user_ids"] == [1, 3]
        call = (await env.calls())[f"{linkedid}-0"]
        assert call["cards_shown"] == [1, 2, 3]
        assert {1, 3} <= set(call["cards_hidden"])
        assert (call["STATUS_CODE"], call["DURATION"]) == ("200", 60)
        stats = (await env.h.emulator_http.get(f"/_emulator/calls/{call['CALL_ID']}")).json()
        assert stats["statistic"]["PORTAL_USER_ID"] == 2

    async def test_unknown_caller_becomes_a_lead(self, env: Env) -> None:
        leads_before = (await env.h.emulator_http.get("/_emulator/leads")).json()
        await env.post(*inbound_answered("1764151200.5", caller="84997770011"))
        await env.settle()
        leads = (await env.h.emulator_http.get("/_emulator/leads")).json()
        assert len(leads) == len(leads_before) + 1
        call = (await env.calls())["1764151200.5-0"]
        assert call["CRM_CREATED_LEAD"] is not None
        assert call["CRM_ENTITY_TYPE"] == "LEAD"
        jobs = [j for j in await env.jobs() if j.payload["linkedid"] == "1764151200.5"]
        assert jobs[0].result is not None
        assert jobs[0].result["CRM_CREATED_LEAD"] == call["CRM_CREATED_LEAD"]
        async with env.h.session_factory() as session:
            row = (await session.scalars(select(CallRow))).one()
        assert (row.crm_entity_type, row.crm_entity_id) == ("LEAD", call["CRM_ENTITY_ID"])


class TestWakeUp:
    async def test_a_webhooks_register_goes_at_once_not_at_the_next_poll(
        self, fresh_database_url: str, tmp_path: Path
    ) -> None:
        # Polls 60 s apart: only the intake's word after its commit can make this quick.
        async with environment(fresh_database_url, tmp_path, poll_interval=60.0) as env:
            await asyncio.sleep(0.2)  # the dispatcher's first look-up, with nothing to find
            posted = time.monotonic()
            await env.post(inbound_answered("1764151250.1")[0])
            async with asyncio.timeout(5):
                # The portal is only seen over HTTP: nothing to wait on but its answer.
                while "1764151250.1-0" not in await env.calls():  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert time.monotonic() - posted < 5


class TestTransfers:
    async def test_blind_transfer_gives_each_employee_their_part(self, env: Env) -> None:
        linkedid = "1764151200.6"
        await env.post(
            ev("call.started", linkedid, 1, 0, direction="inbound", external_number=KNOWN_CALLER),
            ev("call.ringing", linkedid, 2, 1, extensions=["101"]),
            ev("call.answered", linkedid, 3, 5, extension="101"),
            ev(
                "call.transferred",
                linkedid,
                4,
                35,
                kind="blind",
                from_extension="101",
                to_extension="102",
            ),
            ev("call.ringing", linkedid, 5, 36, extensions=["102"]),
            ev("call.answered", linkedid, 6, 40, extension="102"),
            ev("call.ended", linkedid, 7, 100, disposition="answered", talk_seconds=90),
        )
        await env.settle()
        calls = await env.calls()
        first, second = calls[f"{linkedid}-0"], calls[f"{linkedid}-1"]
        assert first["CALL_ID"] != second["CALL_ID"]
        first_stats = (await env.h.emulator_http.get(f"/_emulator/calls/{first['CALL_ID']}")).json()
        second_stats = (
            await env.h.emulator_http.get(f"/_emulator/calls/{second['CALL_ID']}")
        ).json()
        assert (first["STATUS_CODE"], first["DURATION"]) == ("200", 30)
        assert first_stats["statistic"]["PORTAL_USER_ID"] == 1
        assert (second["STATUS_CODE"], second["DURATION"]) == ("200", 60)
        assert second_stats["statistic"]["PORTAL_USER_ID"] == 2
        async with env.h.session_factory() as session:
            legs = list(
                (await session.scalars(select(Bitrix24Call).order_by(Bitrix24Call.leg))).all()
            )
        assert [(leg.leg, leg.user_id, leg.duration, leg.status) for leg in legs] == [
            (0, 1, 30, "finished"),
            (1, 2, 60, "finished"),
        ]


class TestOutbound:
    async def test_outbound_from_a_desk_phone_is_type_1(self, env: Env) -> None:
        linkedid = "1764151200.7"
        await env.post(
            outbound_started(linkedid, extension="103"),
            ev("call.answered", linkedid, 2, 8),
            ev("call.ended", linkedid, 3, 28, disposition="answered", talk_seconds=20),
        )
        await env.settle()
        call = (await env.calls())[f"{linkedid}-0"]
        assert (call["TYPE"], call["USER_ID"]) == (1, 3)
        assert (call["state"], call["STATUS_CODE"], call["DURATION"]) == ("finished", "200", 20)

    async def test_click_to_call_leg_is_finished_never_registered(self, env: Env) -> None:
        response = await env.h.emulator_http.post(
            "/_emulator/events/click-to-call",
            json={"user_id": 2, "phone_number": KNOWN_CALLER},
        )
        response.raise_for_status()
        clicked = next(c for c in (await env.calls()).values() if c["origin"] == "click_to_call")
        before = len(await env.rest_requests())
        linkedid = "1764151200.8"
        await env.post(
            ev(
                "call.started",
                linkedid,
                1,
                0,
                direction="outbound",
                external_number=KNOWN_CALLER,
                extension="102",
                bitrix24_call_id=clicked["CALL_ID"],
            ),
            ev("call.answered", linkedid, 2, 4),
            ev("call.ended", linkedid, 3, 19, disposition="answered", talk_seconds=15),
        )
        await env.settle()
        assert await env.command_kinds(linkedid) == ["finish"]
        sent = (await env.rest_requests())[before:]
        assert [r["method"] for r in sent] == ["telephony.externalCall.finish"]
        call = (await env.calls())[clicked["CALL_ID"]]
        assert (call["state"], call["STATUS_CODE"], call["DURATION"]) == ("finished", "200", 15)


class TestBacklog:
    async def test_backlog_after_an_outage_drains_in_full_batches_without_503s(
        self, env: Env
    ) -> None:
        calls = 40
        faults = await env.h.emulator_http.put(
            "/_emulator/faults", json={"outage_seconds": 3600, "outage_kind": "503"}
        )
        faults.raise_for_status()
        for n in range(calls):
            await env.post(*inbound_answered(f"1764152000.{n}"))
        # The portal is down: the dispatcher tried, failed, and backs off.
        for _ in range(200):
            if env.dispatcher.requests:
                break
            await asyncio.sleep(0.02)
        assert env.dispatcher.requests >= 1
        commands = len(
            [j for j in await env.jobs() if j.payload["linkedid"].startswith("1764152000.")]
        )
        before = len(await env.rest_requests())
        (
            await env.h.emulator_http.put("/_emulator/faults", json={"clear": True})
        ).raise_for_status()
        await env.settle(30)

        after = (await env.rest_requests())[before:]
        ok = [r for r in after if r["status"] == 200]
        assert [r for r in after if r["status"] == 503] == []
        # A probe of one command first (the portal failed), then full batches.
        assert len(ok) <= math.ceil(commands / 50) + 2
        finished = [c for c in (await env.calls()).values() if c["state"] == "finished"]
        assert len(finished) == calls
        assert all(j.status == JobStatus.SUCCEEDED for j in await env.jobs())


class TestReauthorisation:
    async def test_refused_tokens_pause_the_portal_until_it_is_reconnected(self, env: Env) -> None:
        await env.revoke_tokens()
        await env.post(*inbound_answered("1764153000.1"))
        for _ in range(200):
            integration = await _integration(env)
            if integration.status == IntegrationStatus.NEEDS_REAUTH:
                break
            await asyncio.sleep(0.02)
        assert integration.status == IntegrationStatus.NEEDS_REAUTH
        assert integration.status_reason
        await asyncio.sleep(0.3)
        jobs = await env.jobs()
        assert {j.status for j in jobs} == {JobStatus.QUEUED}
        assert jobs[0].last_error is not None
        assert jobs[0].last_error.startswith("paused: needs re-authorisation")
        assert jobs[0].attempts == 0

        await env.h.install()  # the administrator reinstalls the app
        await env.settle()
        call = (await env.calls())["1764153000.1-0"]
        assert (call["state"], call["STATUS_CODE"]) == ("finished", "200")
        assert (await _integration(env)).status == IntegrationStatus.ACTIVE


async def _integration(env: Env) -> Bitrix24Integration:
    row = await env.h.integration()
    assert row is not None
    return row
