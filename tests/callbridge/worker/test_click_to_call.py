"""Click-to-call end to end: the emulator's ONEXTERNALCALLSTART → our job → an AMI Originate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from callbridge.pbx.ami.replay import AmiReplayServer
from callbridge.storage.models import Enterprise, Job
from callbridge.storage.repositories import IntegrationRepository
from callbridge.worker.click_to_call import (
    CALLBACK_JOB,
    CLICK_TO_CALL_JOB,
    handle_phone_request,
    register_click_to_call_jobs,
)
from callbridge.worker.directory import PortalsHolder
from callbridge.worker.registry import JobContext, JobRegistry
from tests.callbridge.crm.bitrix24.harness import Harness, harness

NUMBER = "+74951234567"


@dataclass
class Setup:
    h: Harness
    ami: AmiReplayServer


async def _link(h: Harness, ami_url: str | None, **settings: Any) -> None:
    async with h.session_factory() as session:
        enterprise = Enterprise(
            number="100",
            name="Demo",
            ami_url_enc=h.box.encrypt(ami_url) if ami_url else None,
            settings={},
        )
        session.add(enterprise)
        await session.flush()
        repo = IntegrationRepository(session, h.box)
        row = await repo.by_member_id(h.emulator.portal.member_id)
        assert row is not None
        row.enterprise_id = enterprise.id
        # Employee 1 answers on extension 101 (a manual override; the users sync is not run).
        row.settings = {**(row.settings or {}), "extension_users": {"101": 1}} | settings
        await session.commit()


@pytest.fixture
async def ami() -> AsyncIterator[AmiReplayServer]:
    server = AmiReplayServer([], speed=0, gap=0)
    await server.start("127.0.0.1", 0)
    yield server
    await server.close()


@pytest.fixture
async def s(fresh_database_url: str, tmp_path: Path, ami: AmiReplayServer) -> AsyncIterator[Setup]:
    async with harness(fresh_database_url, tmp_path) as h:
        await h.register_app()
        await h.install()
        await _link(h, f"ami://crm:crm-secret@127.0.0.1:{ami.port}")
        yield Setup(h, ami)


async def click(h: Harness, user_id: int = 1) -> dict[str, Any]:
    response = await h.emulator_http.post(
        "/_emulator/events/click-to-call", json={"user_id": user_id, "phone_number": NUMBER}
    )
    response.raise_for_status()
    await h.emulator.deliveries.wait_idle()
    return response.json()  # type: ignore[no-any-return]


async def jobs(h: Harness) -> list[Job]:
    async with h.session_factory() as session:
        return list((await session.scalars(select(Job).order_by(Job.id))).all())


async def run(h: Harness, job: Job) -> dict[str, Any]:
    return await handle_phone_request(h.portals, job.id, job.kind, job.integration_id, job.payload)


async def emulator_call(h: Harness, call_id: str) -> dict[str, Any]:
    response = await h.emulator_http.get(f"/_emulator/calls/{call_id}")
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


async def notifications(h: Harness) -> list[dict[str, Any]]:
    response = await h.emulator_http.get("/_emulator/notifications")
    return response.json()  # type: ignore[no-any-return]


class TestClickToCall:
    async def test_one_originate_rings_the_extension_then_dials_the_number(self, s: Setup) -> None:
        clicked = await click(s.h)
        (job,) = await jobs(s.h)
        result = await run(s.h, job)
        assert result["originated"] == "101"
        (originate,) = s.ami.originates
        assert originate["Channel"] == "PJSIP/101"
        assert originate["Exten"] == NUMBER
        assert originate["Context"] == "from-internal"
        assert originate["Async"] == "true"
        assert originate.getall("Variable") == [f"CALLBRIDGE_B24_CALL_ID={clicked['CALL_ID']}"]
        assert (await emulator_call(s.h, clicked["CALL_ID"]))["state"] == "registered"

    async def test_the_registered_handler_runs_it(self, s: Setup) -> None:
        await click(s.h)
        registry = JobRegistry()
        register_click_to_call_jobs(
            registry, PortalsHolder(s.h.settings, s.h.session_factory, s.h.portals)
        )
        assert {CLICK_TO_CALL_JOB, CALLBACK_JOB} <= registry.kinds
        (job,) = await jobs(s.h)
        async with s.h.session_factory() as session:
            context = JobContext(
                id=job.id,
                kind=job.kind,
                payload=job.payload,
                attempts=1,
                max_attempts=5,
                session=session,
                worker="test",
                integration_id=job.integration_id,
            )
            result = await registry.get(job.kind)(context)
        assert result is not None
        assert result["originated"] == "101"
        assert len(s.ami.originates) == 1

    async def test_a_repeat_within_5_s_sends_no_second_originate(self, s: Setup) -> None:
        await click(s.h)
        await click(s.h)  # a double click: a new CALL_ID, same user and number
        first, second = await jobs(s.h)
        assert "originated" in await run(s.h, first)
        assert (await run(s.h, second))["dropped"].startswith("repeat")
        assert len(s.ami.originates) == 1

    async def test_a_rerun_of_the_same_job_never_originates_again(self, s: Setup) -> None:
        await click(s.h)
        (job,) = await jobs(s.h)
        await run(s.h, job)
        (job,) = await jobs(s.h)  # as a retry after a crash would read it
        assert "skipped" in await run(s.h, job)
        assert len(s.ami.originates) == 1

    async def test_an_ami_error_finishes_the_call_and_tells_the_employee(self, s: Setup) -> None:
        s.ami.originate_mode = "failure"
        clicked = await click(s.h)
        (job,) = await jobs(s.h)
        result = await run(s.h, job)
        assert result["failed"] == "refused"
        assert result["errors"] == []
        assert len(s.ami.originates) == 1
        call = await emulator_call(s.h, clicked["CALL_ID"])
        assert call["state"] == "finished"
        assert call["STATUS_CODE"] == "603-S"
        (note,) = await notifications(s.h)
        assert note["USER_ID"] == 1
        assert note["MESSAGE"].startswith("Не удалось позвонить")  # noqa: RUF001

    async def test_an_unknown_extension_fails_without_an_originate(self, s: Setup) -> None:
        assert s.h.emulator.portal.users.is_active(2)
        clicked = await click(s.h, user_id=2)
        (job,) = await jobs(s.h)
        assert (await run(s.h, job))["failed"] == "unknown_extension"
        assert s.ami.originates == []
        call = await emulator_call(s.h, clicked["CALL_ID"])
        assert call["STATUS_CODE"] == "OTHER"

    async def test_a_stale_event_is_dropped(
        self, s: Setup, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await click(s.h)
        (job,) = await jobs(s.h)
        late = datetime.now(UTC) + timedelta(seconds=31)
        result = await handle_phone_request(
            s.h.portals, job.id, job.kind, job.integration_id, job.payload, now=late
        )
        assert result["dropped"].startswith("stale")
        assert s.ami.originates == []
        assert "dropped: stale" in caplog.text + capsys.readouterr().out


class TestCallback:
    async def test_rings_the_responsible_user_as_a_callback(self, s: Setup) -> None:
        response = await s.h.emulator_http.post(
            "/_emulator/events/callback", json={"phone_number": NUMBER}
        )
        response.raise_for_status()
        await s.h.emulator.deliveries.wait_idle()
        (job,) = await jobs(s.h)
        assert job.kind == CALLBACK_JOB
        result = await run(s.h, job)
        assert result["originated"] == "101"  # nobody owns the number: the default user, 1
        (originate,) = s.ami.originates
        assert originate["Channel"] == "PJSIP/101"
        assert originate.getall("Variable") == ["CALLBRIDGE_CALLBACK=1"]


class TestNoAmi:
    async def test_no_ami_configured_fails_in_english(
        self, fresh_database_url: str, tmp_path: Path
    ) -> None:
        async with harness(fresh_database_url, tmp_path) as h:
            await h.register_app()
            await h.install()
            await _link(h, None, language="en")
            clicked = await click(h)
            (job,) = await jobs(h)
            assert (await run(h, job))["failed"] == "no_ami"
            call = await emulator_call(h, clicked["CALL_ID"])
            assert call["state"] == "finished"
            (note,) = await notifications(h)
            assert note["MESSAGE"].startswith("Could not call")
