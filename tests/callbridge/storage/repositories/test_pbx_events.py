"""The inbox stores each PBX event once."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.storage.models import Enterprise
from callbridge.storage.repositories import EnterpriseRepository, PbxEventRepository


async def _enterprise(session: AsyncSession) -> Enterprise:
    return await EnterpriseRepository(session).add(Enterprise(number="200"))


class TestPbxEventRepository:
    async def test_repeat_is_recognised(self, session: AsyncSession) -> None:
        enterprise = await _enterprise(session)
        events = PbxEventRepository(session)
        fields = {
            "enterprise_id": enterprise.id,
            "source": "webhook",
            "event_id": "e-1",
            "linkedid": "1700000000.1",
            "kind": "call.started",
            "payload": {"direction": "inbound"},
            "occurred_at": None,
        }
        first = await events.insert_new(**fields)
        second = await events.insert_new(**fields)
        assert first is not None
        assert second is None
        assert await events.count() == 1

    async def test_same_event_id_from_another_source_is_new(self, session: AsyncSession) -> None:
        enterprise = await _enterprise(session)
        events = PbxEventRepository(session)
        common = {"enterprise_id": enterprise.id, "event_id": "e-1", "linkedid": "1", "kind": "k"}
        assert await events.insert_new(source="webhook", payload={}, occurred_at=None, **common)
        assert await events.insert_new(source="ami:main", payload={}, occurred_at=None, **common)

    async def test_mark_handled(self, session: AsyncSession) -> None:
        enterprise = await _enterprise(session)
        events = PbxEventRepository(session)
        event_id = await events.insert_new(
            enterprise_id=enterprise.id,
            source="webhook",
            event_id="e-9",
            linkedid="1",
            kind="call.ended",
            payload={},
            occurred_at=None,
        )
        assert event_id is not None
        await events.mark_handled(event_id)
        event = await events.get(event_id)
        assert event is not None
        assert event.handled_at is not None
