"""The storage side of the Bitrix24 dispatcher (``worker/dispatcher.py``).

What the dispatcher reads before a request (which portals have work, the ``CALL_ID`` of each leg
its commands name, the enterprise number that makes an ``EXTERNAL_CALL_ID`` unique) and writes
after it (the register's results into the call model, a ``bitrix24_calls`` row per leg, the
integration's status when its tokens are refused). Like every repository here it flushes and
never commits.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.storage.models import (
    Bitrix24Call,
    Bitrix24Integration,
    Enterprise,
    IntegrationStatus,
    Job,
)
from callbridge.storage.models import Call as CallRow
from callbridge.storage.models import JobStatus as JobStatusEnum
from callbridge.storage.types import utcnow


@dataclass(frozen=True)
class LegUpdate:
    """What one command taught us about a leg (only the fields it knows are set)."""

    call_row_id: int
    integration_id: int
    leg: int
    external_call_id: str
    bitrix24_call_id: str | None = None
    user_id: int | None = None
    status: str | None = None  # registered | finished
    status_code: str | None = None
    duration: int | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class CallContext:
    """Per call row: the known ``CALL_ID`` of each leg, and the enterprise's number."""

    call_ids: dict[tuple[int, int], str]
    enterprise_numbers: dict[int, str]


class DispatchRepository:
    """Queries the dispatcher makes, on the caller's session."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def portals_with_due_jobs(self, kind: str, now: datetime) -> list[int]:
        """Active integrations with a due, queued job of ``kind`` (paused ones are left out)."""
        statement = (
            select(Job.integration_id)
            .join(Bitrix24Integration, Bitrix24Integration.id == Job.integration_id)
            .where(
                Job.status == JobStatusEnum.QUEUED.value,
                Job.kind == kind,
                Job.run_after <= now,
                Bitrix24Integration.status == IntegrationStatus.ACTIVE.value,
            )
            .distinct()
        )
        return sorted(row for row in (await self.session.scalars(statement)).all() if row)

    async def active_integrations(self) -> list[Bitrix24Integration]:
        """Every active integration, by id."""
        statement = (
            select(Bitrix24Integration)
            .where(Bitrix24Integration.status == IntegrationStatus.ACTIVE.value)
            .order_by(Bitrix24Integration.id)
        )
        return list((await self.session.scalars(statement)).all())

    async def integration(self, integration_id: int) -> Bitrix24Integration | None:
        """The integration row (read afresh: another process may have changed its status)."""
        return await self.session.get(Bitrix24Integration, integration_id, populate_existing=True)

    @staticmethod
    def is_active(integration_id: int) -> ColumnElement[bool]:
        """A condition for another statement: the integration exists and is active."""
        return exists().where(
            Bitrix24Integration.id == integration_id,
            Bitrix24Integration.status == IntegrationStatus.ACTIVE.value,
        )

    async def call_context(self, call_row_ids: Collection[int]) -> CallContext:
        """The known ``CALL_ID`` of each leg (by calls.id, leg) and the enterprise numbers."""
        if not call_row_ids:
            return CallContext({}, {})
        rows = await self.session.execute(
            select(CallRow.id, CallRow.model, Enterprise.number)
            .join(Enterprise, Enterprise.id == CallRow.enterprise_id)
            .where(CallRow.id.in_(sorted(call_row_ids)))
        )
        found: dict[tuple[int, int], str] = {}
        numbers: dict[int, str] = {}
        for row_id, model, number in rows:
            numbers[row_id] = number
            for leg in (model or {}).get("legs", []):
                call_id = leg.get("bitrix24_call_id")
                if call_id:
                    found[(row_id, int(leg["number"]))] = str(call_id)
        return CallContext(found, numbers)

    async def save_legs(self, updates: Iterable[LegUpdate]) -> None:
        """Create or update the ``bitrix24_calls`` row of each leg (the call must be locked)."""
        updates = list(updates)
        rows: dict[tuple[int, int], Bitrix24Call] = {}
        if updates:
            # One query for every leg of the request, not one per command.
            found = await self.session.scalars(
                select(Bitrix24Call).where(
                    Bitrix24Call.call_id.in_(sorted({u.call_row_id for u in updates}))
                )
            )
            rows = {(row.call_id, row.leg): row for row in found}
        for update in updates:
            key = (update.call_row_id, update.leg)
            row = rows.get(key)
            if row is None:
                row = Bitrix24Call(
                    call_id=update.call_row_id,
                    integration_id=update.integration_id,
                    leg=update.leg,
                    external_call_id=update.external_call_id,
                    status="pending",
                    duration=0,
                )
                self.session.add(row)
            rows[key] = row
            values: dict[str, Any] = {
                "bitrix24_call_id": update.bitrix24_call_id,
                "user_id": update.user_id,
                "status_code": update.status_code,
                "duration": update.duration,
                "finished_at": update.finished_at,
            }
            for name, value in values.items():
                if value is not None:
                    setattr(row, name, value)
            # A late "registered" (a retried register) must not undo "finished".
            if update.status is not None and row.status != "finished":
                row.status = update.status
            row.updated_at = utcnow()
        await self.session.flush()

    async def pause_integration(self, integration_id: int, status: str, reason: str) -> bool:
        """Set a live integration's status (needs_reauth, portal_deleted); False if it was not."""
        row = await self.integration(integration_id)
        if row is None or row.status != IntegrationStatus.ACTIVE.value:
            return False
        row.status, row.status_reason = status, reason[:2000]
        await self.session.flush()
        return True
