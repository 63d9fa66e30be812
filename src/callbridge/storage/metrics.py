"""What ``/metrics`` reports, read from the database in a few aggregate queries.

The web app and the worker may be different processes (and there may be many of each), so the
numbers come from the tables every process writes, not from in-process counters: the job queue,
the AMI listeners' status rows, the integrations, the Bitrix24 request log and the open calls.
Each query is an aggregate over an indexed filter, so a scrape costs the same however long the
history grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.domain.call import CallState
from callbridge.storage.ami import STATUS_STALE_AFTER
from callbridge.storage.models import (
    AmiStatus,
    ApiCall,
    Bitrix24Integration,
    Call,
    Enterprise,
    Job,
    JobStatus,
)

__all__ = [
    "PENDING_JOB_STATUSES",
    "AmiLine",
    "ApiCallCount",
    "IntegrationLine",
    "JobCount",
    "MetricsRepository",
    "MetricsSnapshot",
]

#: Job statuses counted: the ones an operator acts on. Finished jobs are history (purged).
PENDING_JOB_STATUSES: Final = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DEAD)
_OPEN_CALL_STATES: Final = (CallState.NEW.value, CallState.ACTIVE.value)


@dataclass(frozen=True)
class JobCount:
    """Jobs of one kind in one status, and when the oldest of them was created."""

    kind: str
    status: str
    count: int
    oldest_created_at: datetime


@dataclass(frozen=True)
class AmiLine:
    """An enterprise's AMI listener as its status row tells it (``state`` None: no row yet)."""

    enterprise: str
    configured: bool
    state: str | None
    stale: bool
    last_event_at: datetime | None
    reconnects: int
    events_in: int


@dataclass(frozen=True)
class IntegrationLine:
    """One Bitrix24 integration and its lifecycle status."""

    domain: str
    member_id: str
    enterprise: str | None
    status: str


@dataclass(frozen=True)
class ApiCallCount:
    """Bitrix24 requests of one method with one outcome (``error`` empty: it succeeded)."""

    method: str
    error: str
    count: int
    duration_seconds: float


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything one scrape reports, read at ``now``."""

    now: datetime
    jobs: list[JobCount]
    ami: list[AmiLine]
    integrations: list[IntegrationLine]
    api_window: timedelta
    api_calls: list[ApiCallCount]
    calls_in_progress: dict[str, int]


class MetricsRepository:
    """The aggregate queries behind ``/metrics``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def snapshot(self, now: datetime, api_window: timedelta) -> MetricsSnapshot:
        """Read every metric; Bitrix24 requests are those started within ``api_window``."""
        return MetricsSnapshot(
            now=now,
            jobs=await self.jobs(),
            ami=await self.ami(now),
            integrations=await self.integrations(),
            api_window=api_window,
            api_calls=await self.api_calls(now - api_window),
            calls_in_progress=await self.calls_in_progress(),
        )

    async def jobs(self) -> list[JobCount]:
        """Queued, running and dead jobs by kind and status."""
        statement = (
            select(Job.kind, Job.status, func.count(), func.min(Job.created_at))
            .where(Job.status.in_([status.value for status in PENDING_JOB_STATUSES]))
            .group_by(Job.kind, Job.status)
            .order_by(Job.kind, Job.status)
        )
        rows = (await self.session.execute(statement)).all()
        return [JobCount(kind, status, int(count), oldest) for kind, status, count, oldest in rows]

    async def ami(self, now: datetime) -> list[AmiLine]:
        """Every enterprise that has an AMI URL or a listener status row."""
        statement = (
            select(
                Enterprise.number,
                Enterprise.ami_url_enc.is_not(None) & Enterprise.active.is_(True),
                AmiStatus.state,
                AmiStatus.updated_at,
                AmiStatus.last_event_at,
                AmiStatus.reconnects,
                AmiStatus.events_in,
            )
            .outerjoin(AmiStatus, AmiStatus.enterprise_id == Enterprise.id)
            .where(or_(Enterprise.ami_url_enc.is_not(None), AmiStatus.enterprise_id.is_not(None)))
            .order_by(Enterprise.number)
        )
        lines = []
        for number, configured, state, updated_at, last_event_at, reconnects, events in (
            await self.session.execute(statement)
        ).all():
            stale = (
                state is not None
                and state != "stopped"
                and updated_at is not None
                and now - updated_at > STATUS_STALE_AFTER
            )
            lines.append(
                AmiLine(
                    enterprise=number,
                    configured=bool(configured),
                    state=state,
                    stale=stale,
                    last_event_at=last_event_at,
                    reconnects=int(reconnects or 0),
                    events_in=int(events or 0),
                )
            )
        return lines

    async def integrations(self) -> list[IntegrationLine]:
        """Every Bitrix24 integration with its enterprise's number."""
        statement = (
            select(
                Bitrix24Integration.domain,
                Bitrix24Integration.member_id,
                Enterprise.number,
                Bitrix24Integration.status,
            )
            .outerjoin(Enterprise, Enterprise.id == Bitrix24Integration.enterprise_id)
            .order_by(Bitrix24Integration.domain, Bitrix24Integration.member_id)
        )
        rows = (await self.session.execute(statement)).all()
        return [IntegrationLine(*row) for row in rows]

    async def api_calls(self, since: datetime) -> list[ApiCallCount]:
        """Bitrix24 requests started since ``since`` by method and outcome."""
        statement = (
            select(
                ApiCall.method,
                ApiCall.error_code,
                ApiCall.http_status,
                func.count(),
                func.coalesce(func.sum(ApiCall.duration_ms), 0.0),
            )
            .where(ApiCall.started_at >= since)
            .group_by(ApiCall.method, ApiCall.error_code, ApiCall.http_status)
        )
        merged: dict[tuple[str, str], tuple[int, float]] = {}
        for method, error_code, http_status, count, duration_ms in (
            await self.session.execute(statement)
        ).all():
            key = (method, _outcome(error_code, http_status))
            previous_count, previous_ms = merged.get(key, (0, 0.0))
            merged[key] = (previous_count + int(count), previous_ms + float(duration_ms))
        return [
            ApiCallCount(method, error, count, duration_ms / 1000)
            for (method, error), (count, duration_ms) in sorted(merged.items())
        ]

    async def calls_in_progress(self) -> dict[str, int]:
        """Open calls (not yet ended) by enterprise number."""
        statement = (
            select(Enterprise.number, func.count())
            .select_from(Call)
            .join(Enterprise, Enterprise.id == Call.enterprise_id)
            .where(Call.state.in_(_OPEN_CALL_STATES))
            .group_by(Enterprise.number)
        )
        rows = (await self.session.execute(statement)).all()
        return {number: int(count) for number, count in rows}


def _outcome(error_code: str | None, http_status: int | None) -> str:
    """Bitrix24's error code; ``HTTP_<status>`` for a failure without one; empty for success."""
    if error_code:
        return error_code
    if http_status is not None and http_status >= 400:
        return f"HTTP_{http_status}"
    return ""
