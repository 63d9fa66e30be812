"""Call tracking queues one ``bitrix24.notify_missed`` job per missed inbound call."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.domain.events import Direction, Disposition
from callbridge.services.call_tracking import BITRIX24_COMMAND_JOB, NOTIFY_MISSED_JOB
from callbridge.storage.models import Job
from tests.callbridge.domain.factories import Pbx
from tests.callbridge.services.test_call_tracking import make_tenant, track


async def jobs(session: AsyncSession, kind: str) -> list[Job]:
    statement = select(Job).where(Job.kind == kind).order_by(Job.id)
    return list((await session.scalars(statement)).all())


class TestMissedCallNotification:
    async def test_missed_inbound_call_queues_one_notification_after_its_finish(
        self, session: AsyncSession
    ) -> None:
        tenant = await make_tenant(session)
        pbx = Pbx("1700000100.1")
        await track(session, tenant, pbx.started(0), pbx.ringing(1, "101"))
        await track(session, tenant, pbx.ended(20, Disposition.NO_ANSWER))
        (notify,) = await jobs(session, NOTIFY_MISSED_JOB)
        finish = [
            job
            for job in await jobs(session, BITRIX24_COMMAND_JOB)
            if job.payload["command"]["kind"] == "finish"
        ]
        assert notify.depends_on == finish[0].id
        assert notify.ordering_key is None  # never holds back the call's own jobs
        assert notify.integration_id == tenant.integration_id
        assert notify.payload["linkedid"] == pbx.call_id
        assert notify.payload["user_id"] == finish[0].payload["command"]["user_id"]
        assert notify.payload["phone_number"].startswith("+7")

    async def test_repeated_end_event_queues_nothing_more(self, session: AsyncSession) -> None:
        tenant = await make_tenant(session)
        pbx = Pbx("1700000101.1")
        ended = pbx.ended(20, Disposition.NO_ANSWER)
        await track(session, tenant, pbx.started(0), pbx.ringing(1, "101"), ended)
        await track(session, tenant, ended)
        assert len(await jobs(session, NOTIFY_MISSED_JOB)) == 1

    async def test_answered_call_is_not_notified(self, session: AsyncSession) -> None:
        tenant = await make_tenant(session)
        pbx = Pbx("1700000102.1")
        await track(
            session,
            tenant,
            pbx.started(0),
            pbx.ringing(1, "101"),
            pbx.answered(3, "101"),
            pbx.ended(30),
        )
        assert await jobs(session, NOTIFY_MISSED_JOB) == []

    async def test_unanswered_outbound_call_is_not_notified(self, session: AsyncSession) -> None:
        tenant = await make_tenant(session)
        pbx = Pbx("1700000103.1")
        await track(
            session,
            tenant,
            pbx.started(0, direction=Direction.OUTBOUND, extension="101"),
            pbx.ended(15, Disposition.NO_ANSWER),
        )
        assert await jobs(session, NOTIFY_MISSED_JOB) == []

    async def test_without_integration_nothing_is_queued(self, session: AsyncSession) -> None:
        tenant = await make_tenant(session, integration=False)
        pbx = Pbx("1700000104.1")
        await track(session, tenant, pbx.started(0), pbx.ended(9, Disposition.NO_ANSWER))
        assert await jobs(session, NOTIFY_MISSED_JOB) == []
