"""Calls by (enterprise, linkedid): the domain :class:`~callbridge.domain.call.Call`, stored whole.

The domain call lives in ``calls.model`` (its ``to_dict``); the other columns are a summary of
it for queries and the admin pages, rewritten on every save, and ``integration_id``, where call
tracking sends the call's commands. :meth:`CallRepository.lock` holds the row until the
transaction ends (an upsert, which row-locks on PostgreSQL; SQLite's write lock is already held
by ``BEGIN IMMEDIATE``), creating an empty row first for a new call, so two transactions never
both believe they hold a new call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from callbridge.domain.call import Call
from callbridge.domain.ports import SavedCall, StoredCall
from callbridge.storage.models import Call as CallRow
from callbridge.storage.repositories.base import Repository
from callbridge.storage.types import utcnow

_calls = cast(Table, CallRow.__table__)
#: The calls columns that :func:`summary_of` fills, in a fixed order (the bulk writers' too).
SUMMARY_COLUMNS = (
    "model",
    "state",
    "direction",
    "external_number",
    "line_number",
    "ringing",
    "answered_by",
    "bitrix24_call_id",
    "crm_entity_type",
    "crm_entity_id",
    "started_at",
    "answered_at",
    "ended_at",
    "status_code",
    "talk_seconds",
    "recording",
)
#: The calls columns that call tracking's :meth:`CallRepository.save_many` writes, in order:
#: the summary, and the integration the call's commands go to.
SAVED_COLUMNS = (*SUMMARY_COLUMNS, "integration_id")
# One UPDATE for many calls (executemany): the bulk path of call tracking.
_UPDATE_SAVED = (
    update(_calls)
    .where(_calls.c.id == bindparam("row_id"))
    .values({name: bindparam(name) for name in (*SAVED_COLUMNS, "updated_at")})
)


@functools.cache
def _lock_many_statement(dialect: str) -> Any:
    # Built once: constructing an INSERT … RETURNING costs more than running it.
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_calls)
    return insert.on_conflict_do_update(
        index_elements=["enterprise_id", "linkedid"],
        set_={"updated_at": insert.excluded.updated_at},
    ).returning(
        _calls.c.id,
        _calls.c.enterprise_id,
        _calls.c.linkedid,
        _calls.c.model,
        _calls.c.integration_id,
    )


class CallRepository(Repository[CallRow]):
    """Queries on ``calls``; implements the domain's ``CallRepository`` port."""

    model = CallRow

    def __init__(self, session: AsyncSession) -> None:
        super().__init__(session)
        # Rows locked by get(), so save() does not look them up again.
        self._locked: dict[tuple[int, str], CallRow] = {}

    async def load_locked(self, enterprise_id: int, linkedid: str) -> Call | None:
        """The stored call, locked until the transaction ends; None if nothing is known yet."""
        row = await self.lock(enterprise_id, linkedid)
        return Call.from_dict(row.model) if row.model else None

    async def lock(self, enterprise_id: int, linkedid: str) -> CallRow:
        """The call's row, locked until the transaction ends; created (empty) if missing."""
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        now = utcnow()
        insert = dialect_insert(CallRow).values(
            enterprise_id=enterprise_id,
            linkedid=linkedid,
            model={},
            ringing={},
            created_at=now,
            updated_at=now,
        )
        # One round trip creates or locks: the conflicting row is updated, which locks it on
        # PostgreSQL like FOR UPDATE. A concurrent creator waits on the unique key for the
        # winner's commit, then updates (and returns) the committed row.
        statement = (
            insert.on_conflict_do_update(
                index_elements=["enterprise_id", "linkedid"],
                set_={"updated_at": insert.excluded.updated_at},
            )
            .returning(CallRow)
            # The row may be in the identity map from before the lock: read it afresh.
            .execution_options(populate_existing=True)
        )
        row = (await self.session.execute(statement)).scalar_one()
        self._locked[(enterprise_id, linkedid)] = row
        return row

    async def save(self, enterprise_id: int, call: Call) -> int:
        """Write the call and its summary columns (the row must be locked by this session)."""
        row = self._locked.get((enterprise_id, call.call_id))
        if row is None:
            row = await self.lock(enterprise_id, call.call_id)
        _summarise(row, call)
        await self.session.flush()
        return row.id

    async def lock_many(self, keys: Sequence[tuple[int, str]]) -> dict[tuple[int, str], StoredCall]:
        """Like :meth:`lock` for many calls in one statement: each call as stored.

        Rows are locked in the order of ``keys`` (give them sorted: two transactions that lock
        in the same order cannot deadlock). Core, not the ORM: nothing enters the identity map.
        """
        if not keys:
            return {}
        now = utcnow()
        rows = await self.session.execute(
            _lock_many_statement(self.dialect),
            [
                {
                    "enterprise_id": enterprise_id,
                    "linkedid": linkedid,
                    "model": {},
                    "ringing": {},
                    "created_at": now,
                    "updated_at": now,
                }
                for enterprise_id, linkedid in dict.fromkeys(keys)
            ],
        )
        return {
            (row.enterprise_id, row.linkedid): StoredCall(
                row.id,
                Call.from_dict(row.model) if row.model else None,
                row.integration_id,
            )
            for row in rows
        }

    async def save_many(self, calls: Sequence[SavedCall]) -> None:
        """Write calls (row id, call, integration) and their summaries in one statement.

        The rows must be locked first (:meth:`lock_many`).
        """
        if not calls:
            return
        now = utcnow()
        params = [
            {"row_id": row_id, **saved_values(call, integration_id), "updated_at": now}
            for row_id, call, integration_id in calls
        ]
        await self.session.execute(_UPDATE_SAVED, params)
        # A row this session loaded earlier must not go on showing the old values (the intake
        # writer's sessions load none: skip the look-ups, they cost more than the UPDATE).
        identity_map = self.session.sync_session.identity_map
        if not identity_map:
            return
        for values in params:
            key = self.session.sync_session.identity_key(CallRow, values["row_id"])
            row = identity_map.get(key)
            if row is not None:
                for name in (*SAVED_COLUMNS, "updated_at"):
                    set_committed_value(row, name, values[name])

    async def by_linkedid(self, enterprise_id: int, linkedid: str) -> CallRow | None:
        """The call's row without locking it (for reading)."""
        return await self.one_or_none(
            self.select().where(
                CallRow.enterprise_id == enterprise_id, CallRow.linkedid == linkedid
            )
        )


def _summarise(row: CallRow, call: Call) -> None:
    for name, value in summary_of(call).items():
        setattr(row, name, value)


def saved_values(call: Call, integration_id: int | None) -> dict[str, Any]:
    """The :data:`SAVED_COLUMNS` of a call whose commands go to ``integration_id``."""
    return {**summary_of(call), "integration_id": integration_id}


def summary_of(call: Call) -> dict[str, Any]:
    """The row's columns for a call: its model and the summary of it for queries."""
    last = call.legs[-1] if call.legs else None
    first = call.legs[0] if call.legs else None
    recording = call.recordings[0] if call.recordings else None
    return {
        "model": call.to_dict(),
        "state": call.state.value,
        "direction": call.direction.value if call.direction is not None else "unknown",
        "external_number": (call.phone_number or call.external_number)[:64],
        "line_number": call.line[:64],
        "ringing": dict(last.ringing) if last is not None else {},
        "answered_by": call.answered_by,
        "bitrix24_call_id": first.bitrix24_call_id if first is not None else None,
        "crm_entity_type": first.crm_entity_type if first is not None else None,
        "crm_entity_id": first.crm_entity_id if first is not None else None,
        "started_at": call.started_at,
        "answered_at": next((leg.answered_at for leg in call.legs if leg.answered), None),
        "ended_at": call.ended_at,
        "status_code": call.status_code,
        "talk_seconds": call.talk_seconds,
        "recording": (recording.url or recording.path) if recording is not None else None,
    }
