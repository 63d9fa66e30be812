"""The AMI status row keeps the last heartbeat of a listener connected to the PBX it names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.storage.ami import AmiStatusRepository, StatusUpdate
from callbridge.storage.models import Enterprise
from callbridge.storage.repositories import EnterpriseRepository

PBX = "pbx.example:5038"
AT = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def _update(state: str, heartbeat: datetime | None, pbx: str = PBX) -> StatusUpdate:
    return StatusUpdate(
        state=state,
        pbx=pbx,
        holder="host:1:x",
        last_error=None,
        reconnects=0,
        events_in=0,
        last_event_at=None,
        since=AT,
        heartbeat_at=heartbeat,
    )


class TestHeartbeat:
    async def test_kept_through_reports_that_are_not_connected(self, session: AsyncSession) -> None:
        enterprise = await EnterpriseRepository(session).add(Enterprise(number="200"))
        statuses = AmiStatusRepository(session)
        assert await statuses.heartbeat(enterprise.id, PBX) is None
        await statuses.report(enterprise.id, _update("connecting", None))
        assert await statuses.heartbeat(enterprise.id, PBX) is None

        await statuses.report(enterprise.id, _update("connected", AT))
        await statuses.report(enterprise.id, _update("connected", AT + timedelta(seconds=5)))
        # The holder dies; a standby reports connecting (and a dead holder's row stays).
        await statuses.report(enterprise.id, _update("connecting", None))
        await statuses.report(enterprise.id, _update("disconnected", None))
        assert await statuses.heartbeat(enterprise.id, PBX) == AT + timedelta(seconds=5)
        rows = await statuses.by_enterprise()
        assert rows[enterprise.id].state == "disconnected"

    async def test_only_for_the_pbx_it_was_connected_to(self, session: AsyncSession) -> None:
        enterprise = await EnterpriseRepository(session).add(Enterprise(number="200"))
        other = await EnterpriseRepository(session).add(Enterprise(number="201"))
        statuses = AmiStatusRepository(session)
        await statuses.report(enterprise.id, _update("connected", AT))
        # The enterprise moved to another PBX: its clock and calls are not the old one's.
        await statuses.report(enterprise.id, _update("connecting", None, pbx="new.example:5038"))
        assert await statuses.heartbeat(enterprise.id, "new.example:5038") is None
        assert await statuses.heartbeat(enterprise.id, PBX) == AT
        assert await statuses.heartbeat(other.id, PBX) is None
        later = AT + timedelta(seconds=30)
        await statuses.report(enterprise.id, _update("connected", later, pbx="new.example:5038"))
        assert await statuses.heartbeat(enterprise.id, "new.example:5038") == later
        assert await statuses.heartbeat(enterprise.id, PBX) is None
