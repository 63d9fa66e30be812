"""The PBX event inbox: each event is stored once, whatever the PBX repeats."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from callbridge.storage.models import PbxEvent
from callbridge.storage.repositories.base import Repository
from callbridge.storage.types import utcnow


class PbxEventRepository(Repository[PbxEvent]):
    """Queries on ``pbx_events``."""

    model = PbxEvent

    async def insert_new(
        self,
        *,
        enterprise_id: int,
        source: str,
        event_id: str,
        linkedid: str,
        kind: str,
        payload: dict[str, Any],
        occurred_at: datetime | None,
    ) -> int | None:
        """Insert the event unless it is already stored; its id if new, None for a repeat.

        One statement with ON CONFLICT DO NOTHING, so concurrent deliveries of one event
        cannot both win, on either engine.
        """
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        statement = (
            dialect_insert(PbxEvent)
            .values(
                enterprise_id=enterprise_id,
                source=source,
                event_id=event_id,
                linkedid=linkedid,
                kind=kind,
                payload=payload,
                occurred_at=occurred_at,
                received_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["enterprise_id", "source", "event_id"])
            .returning(PbxEvent.id)
        )
        result = await self.session.execute(statement)
        return result.scalar_one_or_none()

    async def mark_handled(self, event_id: int, when: datetime | None = None) -> None:
        """Record that the event was applied."""
        event = await self.get(event_id)
        if event is not None:
            event.handled_at = when or utcnow()
            await self.session.flush()
