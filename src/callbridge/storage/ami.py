"""The storage side of AMI listeners: their status rows, the open calls they own, their lock.

One listener per PBX across processes (DESIGN.md §5): on PostgreSQL a process holds a
session-level advisory lock on a connection of its own for as long as its listener runs. The
lock goes away with the connection, so a process that dies (or loses the database) frees the
PBX for a standby at once, without any lease to expire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import exists, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.storage.models import AmiStatus, Call, Enterprise, PbxEvent
from callbridge.storage.repositories.base import Repository
from callbridge.storage.types import utcnow

__all__ = [
    "ADVISORY_LOCK_CLASS",
    "STATUS_STALE_AFTER",
    "AmiStatusRepository",
    "OpenCallRow",
    "StatusUpdate",
    "advisory_lock_key",
    "advisory_unlock",
    "lock_connection_alive",
    "try_advisory_lock",
]

#: First half of the two-int advisory lock key of every AMI listener ("CBAM"); the second half
#: is the enterprise id. Two-int keys show up readably in ``pg_locks`` (classid, objid).
ADVISORY_LOCK_CLASS: Final = 0x4342414D
_INT4_MASK: Final = 0x7FFFFFFF
_OPEN_STATES: Final = ("new", "active")
#: A running listener rewrites its status row every few seconds; a row older than this (and not
#: ``stopped``) belongs to a process that is gone, whatever state it last wrote.
STATUS_STALE_AFTER: Final = timedelta(seconds=60)


@dataclass(frozen=True)
class StatusUpdate:
    """One listener status report, as stored."""

    state: str
    pbx: str
    holder: str
    last_error: str | None
    reconnects: int
    events_in: int
    last_event_at: datetime | None
    since: datetime
    #: Only while connected: the PBX's time up to which its events are all stored.
    heartbeat_at: datetime | None = None


@dataclass(frozen=True)
class OpenCallRow:
    """A call the database still has open: its linkedid and whether anyone answered."""

    linkedid: str
    answered: bool
    #: The time of its last event from this source (the PBX's clock), if any was timed.
    last_seen: datetime | None = None


class AmiStatusRepository(Repository[AmiStatus]):
    """Queries on ``ami_status`` and on what the AMI supervisor reads."""

    model = AmiStatus

    async def report(self, enterprise_id: int, update: StatusUpdate) -> None:
        """Insert or replace the enterprise's status row."""
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        values = {
            "state": update.state,
            "pbx": update.pbx[:255],
            "holder": update.holder[:128],
            "last_error": update.last_error,
            "reconnects": update.reconnects,
            "events_in": update.events_in,
            "last_event_at": update.last_event_at,
            "since": update.since,
            "updated_at": utcnow(),
        }
        if update.heartbeat_at is not None:
            # Otherwise the last one stays: a standby that is still connecting must read it.
            values["heartbeat_at"] = update.heartbeat_at
            values["heartbeat_pbx"] = update.pbx[:255]
        insert = dialect_insert(AmiStatus).values(enterprise_id=enterprise_id, **values)
        await self.session.execute(
            insert.on_conflict_do_update(index_elements=["enterprise_id"], set_=values)
        )

    async def by_enterprise(self) -> dict[int, AmiStatus]:
        """Every status row, by enterprise id."""
        return {row.enterprise_id: row for row in await self.all(self.select())}

    async def with_ami_url(self) -> Sequence[Enterprise]:
        """Active enterprises that have an AMI URL, by id."""
        statement = (
            select(Enterprise)
            .where(Enterprise.active.is_(True), Enterprise.ami_url_enc.is_not(None))
            .order_by(Enterprise.id)
        )
        return (await self.session.scalars(statement)).all()

    async def heartbeat(self, enterprise_id: int, pbx: str) -> datetime | None:
        """The enterprise's last heartbeat stored while connected to ``pbx`` (host:port)."""
        statement = select(AmiStatus.heartbeat_at).where(
            AmiStatus.enterprise_id == enterprise_id, AmiStatus.heartbeat_pbx == pbx[:255]
        )
        heartbeat: datetime | None = await self.session.scalar(statement)
        return heartbeat

    async def open_calls(self, enterprise_id: int, source: str) -> list[OpenCallRow]:
        """Calls still open that this AMI source reported events for."""
        reported = exists().where(
            PbxEvent.enterprise_id == Call.enterprise_id,
            PbxEvent.linkedid == Call.linkedid,
            PbxEvent.source == source,
        )
        last_seen = (
            select(func.max(PbxEvent.occurred_at))
            .where(
                PbxEvent.enterprise_id == Call.enterprise_id,
                PbxEvent.linkedid == Call.linkedid,
                PbxEvent.source == source,
            )
            .scalar_subquery()
        )
        statement = select(Call.linkedid, Call.answered_at, last_seen).where(
            Call.enterprise_id == enterprise_id, Call.state.in_(_OPEN_STATES), reported
        )
        rows = (await self.session.execute(statement)).all()
        return [
            OpenCallRow(linkedid, answered_at is not None, seen)
            for linkedid, answered_at, seen in rows
        ]


def advisory_lock_key(enterprise_id: int) -> tuple[int, int]:
    """The (classid, objid) advisory lock key of an enterprise's AMI listener."""
    return ADVISORY_LOCK_CLASS, enterprise_id & _INT4_MASK


async def try_advisory_lock(connection: AsyncConnection, key: tuple[int, int]) -> bool:
    """Take a session-level advisory lock if free; True if this connection holds it now."""
    result = await connection.execute(select(func.pg_try_advisory_lock(key[0], key[1])))
    return bool(result.scalar_one())


async def advisory_unlock(connection: AsyncConnection, key: tuple[int, int]) -> None:
    """Release a session-level advisory lock this connection holds."""
    await connection.execute(select(func.pg_advisory_unlock(key[0], key[1])))


async def lock_connection_alive(connection: AsyncConnection) -> None:
    """Round-trip on the lock's connection; raises if it is gone (and the lock with it)."""
    await connection.execute(text("SELECT 1"))
