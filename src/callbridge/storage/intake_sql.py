"""Call tracking's storage for the webhook intake, on the database driver's own connection.

The PBX webhook's group transaction (:class:`callbridge.web.intake.IntakeWriter`) runs the
same few statements thousands of times a second: check the senders' secrets, lock the calls,
file the events, save the calls, queue their jobs. Through SQLAlchemy each statement cost more
CPU than the database spent on it (building parameters, processing binds and results, the
greenlet hops of the async adapters; measured with py-spy under ``benchmarks/ingest.py``), so
this module writes them as plain SQL on the driver connection the engine's pool hands out:

- SQLite: the statements run on the event loop's thread directly on the ``sqlite3``
  connection. Holding the write lock, they never wait for another connection, and each costs
  microseconds: less than the two thread hand-offs it would take to run it on the driver's
  thread. ``BEGIN IMMEDIATE`` runs there too when the lock is free (else on aiosqlite's
  thread, where it may wait). So does the commit, with the WAL's automatic checkpoint off for
  it (in WAL mode a commit then only appends to the WAL, and syncs nothing); one commit in
  every ``commits_between_checkpoints + 1`` runs on aiosqlite's thread with the checkpoint on,
  as every commit did, so the WAL is still checkpointed (which reads, writes and syncs the
  database file) off the event loop. The connection is the pool's, checked out for the
  transaction, so nothing else uses it meanwhile.
- PostgreSQL: each statement is one asyncpg round trip with array parameters (``unnest``), so
  a group of any size costs the same few prepared statements, and round trips are what a
  group costs: the secrets check, the calls' locks and the events' filing are one statement,
  the calls' update and the jobs' insert another, and when another group follows at once its
  ``BEGIN`` goes with this one's ``COMMIT`` (three round trips a group, not seven).

The rows written are the ones the SQLAlchemy ports (:mod:`callbridge.storage.call_tracking`)
write, column for column and in the same formats (``tests/callbridge/storage/test_intake_sql.py``
compares them), and the semantics are theirs: calls locked in key order, events filed once
(``ON CONFLICT DO NOTHING``), job ids ascending in enqueue order, ``NOTIFY`` once per
transaction that queued jobs.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callbridge.domain.call import Call
from callbridge.domain.errors import JobNotFoundError, StorageError
from callbridge.domain.events import Event, event_to_dict
from callbridge.domain.ports import (
    CallKey,
    CallRouting,
    InboxEntry,
    NewJob,
    SavedCall,
    StoredCall,
)
from callbridge.services.call_tracking import CallTrackingPorts
from callbridge.storage.job_queue import DEFAULT_MAX_ATTEMPTS, NOTIFY_CHANNEL
from callbridge.storage.job_signals import announce_committed
from callbridge.storage.models import JobStatus
from callbridge.storage.repositories.calls import SAVED_COLUMNS, saved_values
from callbridge.storage.types import utcnow

__all__ = ["Admission", "CallCache", "IntakeStore", "IntakeTransaction", "PreloadedRouting"]

#: A request to admit: (enterprise id, its webhook secret as stored, its events).
Admission = tuple[int, str, Sequence[Event]]

_QUEUED = JobStatus.QUEUED.value
# JSON columns hold the same documents as SQLAlchemy writes, in orjson's compact form:
# json.dumps and json.loads were a fifth of the intake's CPU.
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=_JSON_OPTIONS).decode()


_loads = orjson.loads
_CANCELLED = JobStatus.CANCELLED.value
# SQLite allows 32,766 parameters per statement: rows per multi-row INSERT stay well below.
_SQLITE_ROWS_PER_STATEMENT = 500
# What the driver raises when the database or the connection to it fails (not the data).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    OSError,
    sqlite3.OperationalError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
)


class PreloadedRouting:
    """A :class:`~callbridge.domain.ports.RoutingSource` of routings resolved beforehand."""

    def __init__(self, routings: Mapping[int, CallRouting]) -> None:
        self._routings = routings

    async def for_enterprise(self, enterprise_id: int) -> CallRouting:
        """The routing looked up before the transaction began."""
        return self._routings[enterprise_id]


#: A call's model before its first event (what creating the row writes).
_EMPTY_MODEL = "{}"
#: A locked call's row: (row id, enterprise id, linkedid, model as stored, integration id).
_LockedRow = tuple[int, int, str, str, int | None]


class CallCache:
    """Calls as the intake last committed them, decoded, with their models as stored.

    Decoding a call's model is a good part of applying an event to it, and the intake applies
    a call's events one after the other. A call is taken from here only when the model its
    locked row holds now is, text for text, the one remembered with it: a call that anything
    else wrote since (the AMI listener, the dispatcher's write-back, another process) is
    decoded afresh, and a transaction that fails put nothing back (a call is taken out when it
    is locked, and remembered again only once its transaction has committed).
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._calls: dict[CallKey, tuple[str, Call]] = {}

    def take(self, key: CallKey, stored: str) -> Call | None:
        """The call remembered for ``key``, if its model is ``stored``; forgotten either way."""
        entry = self._calls.pop(key, None)
        if entry is None or entry[0] != stored:
            return None
        return entry[1]

    def put(self, key: CallKey, stored: str, call: Call) -> None:
        """Remember a committed call and its model as stored."""
        self._calls.pop(key, None)
        if len(self._calls) >= self.size:
            # The oldest first: dicts keep insertion order.
            del self._calls[next(iter(self._calls))]
        self._calls[key] = (stored, call)


class IntakeTransaction:
    """One write transaction of the intake: the ports of call tracking, and the secrets check.

    Implements the :class:`~callbridge.domain.ports.EventInbox`,
    :class:`~callbridge.domain.ports.CallRepository` and
    :class:`~callbridge.domain.ports.JobQueue` ports (their bulk methods are the ones call
    tracking uses; the single ones go through them).
    """

    #: Jobs queued by this transaction (their status is known without asking the database).
    _queued: set[int]

    #: The driver's connection the transaction runs on (for the commit).
    driver: Any = None

    def __init__(self, calls: CallCache | None = None) -> None:
        self._queued = set()
        self.jobs_queued = False
        #: By job kind, the integrations whose jobs this transaction queued (told after commit).
        self.queued_for: dict[str, set[int | None]] = {}
        self._cache = calls if calls is not None else CallCache()
        # Each locked call by row id: its key, and its model as stored (the text) now.
        self._locked: dict[int, tuple[CallKey, str]] = {}
        self._handed_out: dict[int, Call] = {}

    def ports(self, routing: PreloadedRouting) -> CallTrackingPorts:
        """Call tracking's ports on this transaction."""
        return CallTrackingPorts(inbox=self, calls=self, jobs=self, routing=routing)

    async def active_webhook_secrets(self, ids: Collection[int]) -> dict[int, str]:
        """The stored (encrypted) webhook secret of each active enterprise among ``ids``."""
        raise NotImplementedError

    async def admit(self, requests: Sequence[Admission], source: str) -> list[bool]:
        """Whether each request's secret (as stored, encrypted) is still its enterprise's.

        ``requests`` are (enterprise id, stored secret, events) and ``source`` their inbox
        source. A transaction may also lock the calls the admitted events name and file the
        events now, in the same statement (PostgreSQL does, when every request is admitted):
        call tracking's :meth:`get_many` and :meth:`add_many` on exactly those calls and events
        then answer from it. A refused request has nothing of it stored.
        """
        current = await self.active_webhook_secrets({request[0] for request in requests})
        return [current.get(enterprise_id) == secret for enterprise_id, secret, _ in requests]

    async def flush(self) -> None:
        """Write what is still held back (before the commit)."""

    # -- EventInbox ----------------------------------------------------------------------------

    async def add(self, enterprise_id: int, source: str, event: Event) -> int | None:
        """Store the event, handled, unless stored before; 1 if new (not its row id)."""
        (new,) = await self.add_many([(enterprise_id, source, event)])
        return 1 if new else None

    async def add_many(self, entries: Sequence[InboxEntry]) -> list[bool]:
        """Store events, handled, in one statement; for each, whether it was new."""
        first: dict[tuple[int, str, str], int] = {}
        for index, (enterprise_id, source, event) in enumerate(entries):
            first.setdefault((enterprise_id, source, event.event_id), index)
        if not first:
            return []
        stored = await self._insert_events([entries[index] for index in first.values()], utcnow())
        new_at = {index for key, index in first.items() if key in stored}
        return [index in new_at for index in range(len(entries))]

    async def _insert_events(
        self, entries: Sequence[InboxEntry], now: datetime
    ) -> set[tuple[int, str, str]]:
        raise NotImplementedError

    # -- CallRepository ------------------------------------------------------------------------

    async def get(self, enterprise_id: int, linkedid: str) -> Call | None:
        """The stored call, locked until the transaction ends; None if new."""
        return (await self.get_many([(enterprise_id, linkedid)]))[(enterprise_id, linkedid)][1]

    async def save(self, enterprise_id: int, call: Call) -> int:
        """Write the call; its row id (the call is locked first, as ``get`` would)."""
        key = (enterprise_id, call.call_id)
        stored = (await self.get_many([key]))[key]
        await self.save_many([(stored.row_id, call, stored.integration_id)])
        return stored.row_id

    async def get_many(self, keys: Sequence[CallKey]) -> dict[CallKey, StoredCall]:
        """Each call as stored, locked (in ``keys`` order) until commit."""
        if not keys:
            return {}
        found: dict[CallKey, StoredCall] = {}
        for row_id, enterprise_id, linkedid, text, integration_id in await self._lock_calls(
            list(dict.fromkeys(keys)), utcnow()
        ):
            key = (enterprise_id, linkedid)
            call = self._cache.take(key, text)
            if call is None and text != _EMPTY_MODEL:
                call = Call.from_dict(_loads(text))
            if call is not None:
                self._handed_out[row_id] = call
            self._locked[row_id] = (key, text)
            found[key] = StoredCall(row_id, call, integration_id)
        return found

    async def _lock_calls(self, keys: Sequence[CallKey], now: datetime) -> Iterable[_LockedRow]:
        """Lock (or create) the rows (see :data:`_LockedRow`)."""
        raise NotImplementedError

    async def save_many(self, calls: Sequence[SavedCall]) -> None:
        """Write calls (row id, call, integration) and their saved columns in one statement."""
        if not calls:
            return
        stored = await self._update_calls(
            [
                (row_id, saved_values(call, integration_id))
                for row_id, call, integration_id in calls
            ],
            utcnow(),
        )
        self._saved(calls, stored)

    def _saved(self, calls: Sequence[SavedCall], stored: Mapping[int, str]) -> None:
        for row_id, call, _ in calls:
            if row_id in self._locked and row_id in stored:
                self._locked[row_id] = (self._locked[row_id][0], stored[row_id])
                self._handed_out[row_id] = call

    async def _update_calls(
        self, summaries: Sequence[tuple[int, dict[str, Any]]], now: datetime
    ) -> dict[int, str]:
        """Write the rows; each one's model as now stored (the text), by row id."""
        raise NotImplementedError

    def committed(self) -> None:
        """Remember the calls as committed, for the next transactions (see :class:`CallCache`)."""
        for row_id, call in self._handed_out.items():
            key, text = self._locked[row_id]
            self._cache.put(key, text, call)

    # -- JobQueue ------------------------------------------------------------------------------

    async def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        ordering_key: str | None = None,
        depends_on: int | None = None,
        integration_id: int | None = None,
        call_id: int | None = None,
    ) -> int:
        """Queue a job in this transaction; its id."""
        job = NewJob(kind, payload, ordering_key, depends_on, integration_id, call_id)
        (job_id,) = await self.enqueue_many([job])
        return job_id

    async def enqueue_many(self, jobs: Sequence[NewJob]) -> list[int]:
        """Queue jobs in one statement (ids ascend in the given order); their ids.

        As :meth:`callbridge.storage.job_queue.JobQueue.enqueue_many`: a job whose dependency
        is cancelled is cancelled too, a missing dependency raises
        :class:`~callbridge.domain.errors.JobNotFoundError`. A dependency queued by this
        transaction is known to be queued without asking.
        """
        if not jobs:
            return []
        asked = {j.depends_on for j in jobs if j.depends_on is not None} - self._queued
        statuses = await self._job_statuses(asked) if asked else {}
        missing = asked - set(statuses)
        if missing:
            raise JobNotFoundError(f"job {min(missing)} (the dependency) does not exist")
        cancelled = [
            job.depends_on is not None and statuses.get(job.depends_on) == _CANCELLED
            for job in jobs
        ]
        ids = await self._insert_jobs(jobs, cancelled, utcnow())
        self._queued.update(i for i, dead in zip(ids, cancelled, strict=True) if not dead)
        for job, dead in zip(jobs, cancelled, strict=True):
            if not dead:
                self.queued_for.setdefault(job.kind, set()).add(job.integration_id)
        self.jobs_queued = True
        return ids

    async def _job_statuses(self, ids: Collection[int]) -> dict[int, str]:
        raise NotImplementedError

    async def _insert_jobs(
        self, jobs: Sequence[NewJob], cancelled: Sequence[bool], now: datetime
    ) -> list[int]:
        raise NotImplementedError


def _job_row(job: NewJob, cancelled: bool) -> tuple[str, str | None, str | None]:
    """(status, finished?, last_error) of a new job: as ``JobQueue.enqueue_many`` sets them."""
    if cancelled:
        return _CANCELLED, "now", f"cancelled: dependency {job.depends_on} was cancelled"
    return _QUEUED, None, None


# -- SQLite ------------------------------------------------------------------------------------


_SQLITE_TIMES: dict[datetime, str] = {}


def _sqlite_time(value: datetime | None) -> str | None:
    # SQLAlchemy's storage format for DateTime on SQLite (naive UTC, always with microseconds):
    # the claim queries compare these strings, so the format must be exactly the same. A call's
    # times are written again with every event: remembered (a few thousand at most).
    if value is None:
        return None
    text = _SQLITE_TIMES.get(value)
    if text is None:
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware value")
        text = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        if len(_SQLITE_TIMES) >= 4096:
            _SQLITE_TIMES.clear()
        _SQLITE_TIMES[value] = text
    return text


def _placeholders(columns: int, rows: int) -> str:
    row = "(" + ",".join("?" * columns) + ")"
    return ",".join([row] * rows)


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _SQLITE_ROWS_PER_STATEMENT):
        yield items[start : start + _SQLITE_ROWS_PER_STATEMENT]


_SQLITE_CALL_COLUMNS = (
    "enterprise_id, linkedid, model, ringing, state, direction, external_number, line_number, "
    "talk_seconds, created_at, updated_at"
)
_SQLITE_EVENT_COLUMNS = (
    "enterprise_id, source, event_id, linkedid, kind, payload, occurred_at, received_at, handled_at"
)
_JOB_COLUMNS = (
    "kind, payload, status, ordering_key, depends_on, run_after, max_attempts, integration_id, "
    "call_id, attempts, created_at, updated_at, finished_at, last_error"
)
_JSON_SUMMARY = frozenset({"model", "ringing"})
_TIME_SUMMARY = frozenset({"started_at", "answered_at", "ended_at"})
# Each saved column, and how SQLite stores its value (None: as it is).
_SQLITE_SAVED_COLUMNS: tuple[tuple[str, Callable[[Any], Any] | None], ...] = tuple(
    (name, _dumps if name in _JSON_SUMMARY else _sqlite_time if name in _TIME_SUMMARY else None)
    for name in SAVED_COLUMNS
)
_SQLITE_UPDATE_CALL = (
    "UPDATE calls SET "
    + ", ".join(f"{name} = ?" for name in (*SAVED_COLUMNS, "updated_at"))
    + " WHERE id = ?"
)


class _SqliteTransaction(IntakeTransaction):
    """The intake's statements on the ``sqlite3`` connection itself (see the module docstring)."""

    def __init__(self, connection: sqlite3.Connection, calls: CallCache | None = None) -> None:
        super().__init__(calls)
        self._db = connection

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        cursor = self._db.execute(sql, params)
        try:
            return cursor.fetchall()
        finally:
            cursor.close()

    async def active_webhook_secrets(self, ids: Collection[int]) -> dict[int, str]:
        """The stored (encrypted) webhook secret of each active enterprise among ``ids``."""
        ids = list(ids)
        rows = self._rows(
            "SELECT id, webhook_secret_enc FROM enterprises WHERE active IS 1 AND id IN ("
            + ",".join("?" * len(ids))
            + ")",
            ids,
        )
        return {row_id: secret for row_id, secret in rows if secret}

    async def _insert_events(
        self, entries: Sequence[InboxEntry], now: datetime
    ) -> set[tuple[int, str, str]]:
        stamp = _sqlite_time(now)
        stored: set[tuple[int, str, str]] = set()
        for chunk in _chunks(entries):
            params: list[Any] = []
            for enterprise_id, source, event in chunk:
                params += (
                    enterprise_id,
                    source,
                    event.event_id,
                    event.call_id,
                    event.name,
                    _dumps(event_to_dict(event)),
                    _sqlite_time(event.timestamp),
                    stamp,
                    stamp,
                )
            rows = self._rows(
                f"INSERT INTO pbx_events ({_SQLITE_EVENT_COLUMNS}) VALUES "
                + _placeholders(9, len(chunk))
                + " ON CONFLICT (enterprise_id, source, event_id) DO NOTHING"
                " RETURNING enterprise_id, source, event_id",
                params,
            )
            stored.update((e, s, i) for e, s, i in rows)
        return stored

    async def _lock_calls(self, keys: Sequence[CallKey], now: datetime) -> Iterable[_LockedRow]:
        stamp = _sqlite_time(now)
        result = []
        for chunk in _chunks(keys):
            params: list[Any] = []
            for enterprise_id, linkedid in chunk:
                params += (enterprise_id, linkedid, "{}", "{}", "new", "inbound", "", "", 0)
                params += (stamp, stamp)
            # SQLite holds the write lock (BEGIN IMMEDIATE): the upsert only creates the
            # missing rows; the order of the keys matters on PostgreSQL.
            rows = self._rows(
                f"INSERT INTO calls ({_SQLITE_CALL_COLUMNS}) VALUES "
                + _placeholders(11, len(chunk))
                + " ON CONFLICT (enterprise_id, linkedid) DO UPDATE SET"
                " updated_at = excluded.updated_at"
                " RETURNING id, enterprise_id, linkedid, model, integration_id",
                params,
            )
            result += rows
        return result

    async def _update_calls(
        self, summaries: Sequence[tuple[int, dict[str, Any]]], now: datetime
    ) -> dict[int, str]:
        stamp = _sqlite_time(now)
        params = []
        models: dict[int, str] = {}
        for row_id, summary in summaries:
            values: list[Any] = [
                summary[name] if convert is None else convert(summary[name])
                for name, convert in _SQLITE_SAVED_COLUMNS
            ]
            values += (stamp, row_id)
            params.append(values)
            models[row_id] = values[0]
        self._db.executemany(_SQLITE_UPDATE_CALL, params).close()
        return models

    async def _job_statuses(self, ids: Collection[int]) -> dict[int, str]:
        ids = list(ids)
        rows = self._rows(
            "SELECT id, status FROM jobs WHERE id IN (" + ",".join("?" * len(ids)) + ")", ids
        )
        return dict(rows)

    async def _insert_jobs(
        self, jobs: Sequence[NewJob], cancelled: Sequence[bool], now: datetime
    ) -> list[int]:
        stamp = _sqlite_time(now)
        ids: list[int] = []
        pairs = list(zip(jobs, cancelled, strict=True))
        for chunk in _chunks(pairs):
            params: list[Any] = []
            for job, dead in chunk:
                status, finished, last_error = _job_row(job, dead)
                params += (
                    job.kind,
                    _dumps(dict(job.payload)),
                    status,
                    job.ordering_key,
                    job.depends_on,
                    stamp,
                    DEFAULT_MAX_ATTEMPTS,
                    job.integration_id,
                    job.call_id,
                    0,
                    stamp,
                    stamp,
                    stamp if finished else None,
                    last_error,
                )
            # One multi-row INSERT allocates its rowids in the VALUES order (the transaction
            # holds the write lock), so its ids, sorted, are in the jobs' order.
            rows = self._rows(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES "
                + _placeholders(14, len(chunk))
                + " RETURNING id",
                params,
            )
            ids += sorted(row_id for (row_id,) in rows)
        return ids


# -- PostgreSQL --------------------------------------------------------------------------------

# Every statement of the intake finds its rows by key. A plan cached while a table was small
# (a new database, before autovacuum's first ANALYZE) would go on scanning the whole table, dead
# row versions included, for each group: hundreds of microseconds of the server's CPU an event.
_PG_BEGIN = "BEGIN; SET LOCAL enable_seqscan = off"
_PG_SECRETS = (
    "SELECT id, webhook_secret_enc FROM enterprises WHERE active IS true AND id = ANY($1::bigint[])"
)
_PG_INSERT_EVENTS = """
INSERT INTO pbx_events (enterprise_id, source, event_id, linkedid, kind, payload, occurred_at,
                        received_at, handled_at)
SELECT e, s, i, l, k, p::jsonb, o, $7::timestamptz, $7::timestamptz
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $8::timestamptz[]) AS t(e, s, i, l, k, p, o)
ON CONFLICT (enterprise_id, source, event_id) DO NOTHING
RETURNING enterprise_id, source, event_id
"""
# ORDER BY the keys' position: the rows are locked in that order (no deadlocks between groups).
_PG_LOCK_CALLS = """
INSERT INTO calls (enterprise_id, linkedid, model, ringing, state, direction, external_number,
                   line_number, talk_seconds, created_at, updated_at)
SELECT e, l, '{}'::jsonb, '{}'::jsonb, 'new', 'inbound', '', '', 0, $3::timestamptz, $3::timestamptz
FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS t(e, l, n)
ORDER BY n
ON CONFLICT (enterprise_id, linkedid) DO UPDATE SET linkedid = excluded.linkedid
RETURNING id, enterprise_id, linkedid, model::text, integration_id
"""
_PG_UPDATE_CALLS = """
UPDATE calls SET model = t.model::jsonb, state = t.state, direction = t.direction,
    external_number = t.external_number, line_number = t.line_number,
    ringing = t.ringing::jsonb, answered_by = t.answered_by,
    bitrix24_call_id = t.bitrix24_call_id, crm_entity_type = t.crm_entity_type,
    crm_entity_id = t.crm_entity_id, started_at = t.started_at, answered_at = t.answered_at,
    ended_at = t.ended_at, status_code = t.status_code, talk_seconds = t.talk_seconds,
    recording = t.recording, integration_id = t.integration_id, updated_at = $19::timestamptz
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::text[], $11::integer[],
            $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::text[],
            $16::integer[], $17::text[], $18::bigint[])
    AS t(id, model, state, direction, external_number, line_number, ringing, answered_by,
         bitrix24_call_id, crm_entity_type, crm_entity_id, started_at, answered_at, ended_at,
         status_code, talk_seconds, recording, integration_id)
WHERE calls.id = t.id
RETURNING calls.id, calls.model::text
"""
# Rows are inserted in the parameters' order (ORDER BY n), so their ids ascend in it.
_PG_INSERT_JOBS = f"""
INSERT INTO jobs ({_JOB_COLUMNS})
SELECT k, p::jsonb, s, o, d, $9::timestamptz, {DEFAULT_MAX_ATTEMPTS}, i, c, 0,
       $9::timestamptz, $9::timestamptz, CASE WHEN s = '{_CANCELLED}' THEN $9::timestamptz END, err
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
            $7::bigint[], $8::text[]) WITH ORDINALITY AS t(k, p, s, o, d, i, c, err, n)
ORDER BY n
RETURNING id
"""


# The secrets check, the calls' locks and the events' filing of a group, in one round trip: the
# locks and the events only if every request is admitted (else nothing is written, and the
# statements run one by one for the admitted ones). The parts are read in this order (``locked``
# runs to completion before ``filed`` begins), so calls are still locked before events are filed.
_PG_ADMIT = """
WITH asked AS (
    SELECT DISTINCT e, s FROM unnest($1::bigint[], $2::text[]) AS r(e, s)
), refused AS (
    SELECT asked.e, asked.s FROM asked
    LEFT JOIN enterprises ON enterprises.id = asked.e AND enterprises.active IS true
    WHERE enterprises.webhook_secret_enc IS NULL OR enterprises.webhook_secret_enc = ''
        OR enterprises.webhook_secret_enc <> asked.s
), admitted AS (
    SELECT NOT EXISTS (SELECT 1 FROM refused) AS ok
), locked AS (
    INSERT INTO calls (enterprise_id, linkedid, model, ringing, state, direction,
                       external_number, line_number, talk_seconds, created_at, updated_at)
    SELECT e, l, '{}'::jsonb, '{}'::jsonb, 'new', 'inbound', '', '', 0, $11::timestamptz,
           $11::timestamptz
    FROM unnest($3::bigint[], $4::text[]) WITH ORDINALITY AS t(e, l, n)
    WHERE (SELECT ok FROM admitted)
    ORDER BY n
    ON CONFLICT (enterprise_id, linkedid) DO UPDATE SET linkedid = excluded.linkedid
    RETURNING id, enterprise_id, linkedid, model::text, integration_id
), filed AS (
    INSERT INTO pbx_events (enterprise_id, source, event_id, linkedid, kind, payload,
                            occurred_at, received_at, handled_at)
    SELECT e, s, i, l, k, p::jsonb, o, $11::timestamptz, $11::timestamptz
    FROM unnest($5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                $12::timestamptz[]) AS t(e, s, i, l, k, p, o)
    WHERE (SELECT ok FROM admitted)
    ON CONFLICT (enterprise_id, source, event_id) DO NOTHING
    RETURNING enterprise_id, source, event_id
)
SELECT 0, NULL::bigint, e, s, NULL::text, NULL::bigint FROM refused
UNION ALL SELECT 1, id, enterprise_id, linkedid, model, integration_id FROM locked
UNION ALL SELECT 2, NULL::bigint, enterprise_id, source, event_id, NULL::bigint FROM filed
"""


def _shifted(statement: str, by: int) -> str:
    """The statement with its parameters renumbered: ``$n`` becomes ``$(n + by)``."""
    return re.sub(r"\$(\d+)::", lambda match: f"${int(match[1]) + by}::", statement)


# The calls saved, and the jobs queued after them, in one round trip (the calls' parameters
# first, then the jobs').
_PG_SAVE_AND_QUEUE = (
    "WITH saved AS ("
    + _PG_UPDATE_CALLS.strip()
    + "), queued AS ("
    + _shifted(_PG_INSERT_JOBS.strip(), len(SAVED_COLUMNS) + 2)
    + ") SELECT true, id, model FROM saved UNION ALL SELECT false, id, NULL FROM queued"
)


class _PostgresTransaction(IntakeTransaction):
    """The intake's statements on the asyncpg connection itself (see the module docstring).

    Round trips are what a group's transaction costs here, so statements are folded together:
    :meth:`admit` also locks the calls and files the events, and the calls saved are written
    with the jobs queued after them (or, when none are, just before the commit).
    """

    def __init__(self, connection: Any, calls: CallCache | None = None) -> None:
        super().__init__(calls)
        self._db = connection
        # What admit() locked and filed: the keys and rows; the events asked and those new.
        self._locks: tuple[list[CallKey], list[_LockedRow]] | None = None
        self._filed: tuple[list[tuple[int, str, str]], set[tuple[int, str, str]]] | None = None
        # Calls saved but not written yet, and their columns for the UPDATE.
        self._unsaved: list[SavedCall] = []
        self._unsaved_columns: list[list[Any]] = _columns(len(SAVED_COLUMNS) + 1)

    async def active_webhook_secrets(self, ids: Collection[int]) -> dict[int, str]:
        """The stored (encrypted) webhook secret of each active enterprise among ``ids``."""
        rows = await self._db.fetch(_PG_SECRETS, list(ids))
        return {row[0]: row[1] for row in rows if row[1]}

    async def admit(self, requests: Sequence[Admission], source: str) -> list[bool]:
        """As :meth:`IntakeTransaction.admit`, with the locks and the events in one statement."""
        keys = sorted(
            {
                (enterprise_id, event.call_id)
                for enterprise_id, _, events in requests
                for event in events
            }
        )
        first: dict[tuple[int, str, str], Event] = {}
        for enterprise_id, _, events in requests:
            for event in events:
                first.setdefault((enterprise_id, source, event.event_id), event)
        events_columns = _event_columns(
            [
                (enterprise_id, source_, event)
                for (enterprise_id, source_, _), event in first.items()
            ]
        )
        rows = await self._db.fetch(
            _PG_ADMIT,
            [request[0] for request in requests],
            [request[1] for request in requests],
            [key[0] for key in keys],
            [key[1] for key in keys],
            *events_columns[:6],
            utcnow(),
            events_columns[6],
        )
        refused = {(row[2], row[3]) for row in rows if row[0] == 0}
        if refused:
            return [(request[0], request[1]) not in refused for request in requests]
        self._locks = (
            keys,
            [(row[1], row[2], row[3], row[4], row[5]) for row in rows if row[0] == 1],
        )
        self._filed = (list(first), {(row[2], row[3], row[4]) for row in rows if row[0] == 2})
        return [True] * len(requests)

    async def _insert_events(
        self, entries: Sequence[InboxEntry], now: datetime
    ) -> set[tuple[int, str, str]]:
        filed, self._filed = self._filed, None
        if filed is not None:
            if filed[0] != [(e, s, event.event_id) for e, s, event in entries]:
                raise RuntimeError("the events filed on admission are not the ones tracked")
            return filed[1]
        columns = _event_columns(entries)
        rows = await self._db.fetch(_PG_INSERT_EVENTS, *columns[:6], now, columns[6])
        return {(row[0], row[1], row[2]) for row in rows}

    async def _lock_calls(self, keys: Sequence[CallKey], now: datetime) -> Iterable[_LockedRow]:
        locks, self._locks = self._locks, None
        if locks is not None and locks[0] == list(keys):
            return locks[1]
        # A call saved but not written yet must be read as saved.
        await self.flush()
        rows = await self._db.fetch(
            _PG_LOCK_CALLS, [key[0] for key in keys], [key[1] for key in keys], now
        )
        return [(row[0], row[1], row[2], row[3], row[4]) for row in rows]

    async def save_many(self, calls: Sequence[SavedCall]) -> None:
        """Hold the calls back: written with the next jobs queued, or before the commit."""
        columns = self._unsaved_columns
        for row_id, call, integration_id in calls:
            columns[0].append(row_id)
            values = saved_values(call, integration_id)
            for index, name in enumerate(SAVED_COLUMNS, start=1):
                value = values[name]
                columns[index].append(_dumps(value) if name in _JSON_SUMMARY else value)
        self._unsaved += calls

    async def flush(self) -> None:
        """Write the calls saved since the last statement."""
        if self._unsaved:
            calls, columns = self._take_unsaved()
            rows = await self._db.fetch(_PG_UPDATE_CALLS, *columns, utcnow())
            # jsonb keeps its own spelling of the document: the text to remember is its.
            self._saved(calls, {row[0]: row[1] for row in rows})

    def _take_unsaved(self) -> tuple[list[SavedCall], list[list[Any]]]:
        taken = self._unsaved, self._unsaved_columns
        self._unsaved, self._unsaved_columns = [], _columns(len(SAVED_COLUMNS) + 1)
        return taken

    async def _update_calls(
        self, summaries: Sequence[tuple[int, dict[str, Any]]], now: datetime
    ) -> dict[int, str]:
        raise NotImplementedError  # save_many holds the calls back instead

    async def _job_statuses(self, ids: Collection[int]) -> dict[int, str]:
        rows = await self._db.fetch(
            "SELECT id, status FROM jobs WHERE id = ANY($1::bigint[])", list(ids)
        )
        return {row[0]: row[1] for row in rows}

    async def _insert_jobs(
        self, jobs: Sequence[NewJob], cancelled: Sequence[bool], now: datetime
    ) -> list[int]:
        columns = _columns(8)
        for job, dead in zip(jobs, cancelled, strict=True):
            status, _, last_error = _job_row(job, dead)
            columns[0].append(job.kind)
            columns[1].append(_dumps(dict(job.payload)))
            columns[2].append(status)
            columns[3].append(job.ordering_key)
            columns[4].append(job.depends_on)
            columns[5].append(job.integration_id)
            columns[6].append(job.call_id)
            columns[7].append(last_error)
        if not self._unsaved:
            rows = await self._db.fetch(_PG_INSERT_JOBS, *columns, now)
            return sorted(row[0] for row in rows)
        calls, call_columns = self._take_unsaved()
        rows = await self._db.fetch(_PG_SAVE_AND_QUEUE, *call_columns, now, *columns, now)
        self._saved(calls, {row[1]: row[2] for row in rows if row[0]})
        return sorted(row[1] for row in rows if not row[0])


def _columns(count: int) -> list[list[Any]]:
    return [[] for _ in range(count)]


def _event_columns(entries: Iterable[InboxEntry]) -> list[list[Any]]:
    columns = _columns(7)
    for enterprise_id, source, event in entries:
        columns[0].append(enterprise_id)
        columns[1].append(source)
        columns[2].append(event.event_id)
        columns[3].append(event.call_id)
        columns[4].append(event.name)
        columns[5].append(_dumps(event_to_dict(event)))
        columns[6].append(event.timestamp)
    return columns


# -- the transaction ---------------------------------------------------------------------------


class IntakeStore:
    """The intake's write transactions on one engine.

    On PostgreSQL the connection is kept between transactions that follow each other within
    ``keep_seconds``: the pool's pre-ping costs three round trips a checkout, more than a
    group's statements. It goes back to the pool when it has been idle that long (at the next
    transaction, or :meth:`release_if_idle`), on :meth:`release`, and at the first error. A
    connection idle for less than ``keep_seconds`` is as good as a pinged one. SQLite's one
    pooled connection goes back after a transaction unless the caller says another follows at
    once (and then after ``max_kept`` in a row): other sessions of the process wait for it, and
    a checkout and check-in cost more CPU than a small group's statements.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        keep_seconds: float = 1.0,
        max_kept: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.keep_seconds = keep_seconds
        #: SQLite: transactions in a row on a kept connection, at most, before it goes back to
        #: the pool (where other sessions of the process queue for it).
        self.max_kept = max_kept
        self._clock = clock
        self._postgres = engine.dialect.name == "postgresql"
        self._held: AsyncConnection | None = None
        # The kept connection and its driver's (read once, not at every transaction).
        self._held_driver: tuple[AsyncConnection, Any] | None = None
        self._last_used = 0.0
        self._kept_in_a_row = 0
        # PostgreSQL: the driver connection whose next transaction the last commit began.
        self._begun_on: Any = None
        #: The calls committed by this store's transactions, decoded.
        self.calls = CallCache()
        #: SQLite: transactions committed on the event loop's thread, without a checkpoint,
        #: between two committed on the driver's thread (which checkpoint the WAL when it has
        #: grown past its limit). The WAL grows at most by that many transactions beyond it.
        self.commits_between_checkpoints = 16
        self._commits_here = 0

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, more: Callable[[], bool] | None = None
    ) -> AsyncIterator[IntakeTransaction]:
        """A write transaction, committed when the block ends without error; else rolled back.

        ``more``: whether another transaction follows at once (asked once this one has
        committed: requests are waiting for it). SQLite's connection is then kept for it, up
        to ``max_kept`` transactions in a row, instead of going back to the pool and out again;
        the caller gives it back (:meth:`release`) when none follows, and before it opens a
        session of its own.

        A database or connection that fails raises
        :class:`~callbridge.domain.errors.StorageError`, and the connection is discarded;
        anything else propagates as raised.
        """
        try:
            connection, transaction = await self._begin()
            keep = False
            try:
                async with self._ending(connection, transaction, more):
                    yield transaction
                keep = self._postgres or (
                    more is not None and self._kept_in_a_row < self.max_kept and more()
                )
            finally:
                if keep:
                    self._held, self._last_used = connection, self._clock()
                    self._held_driver = (connection, transaction.driver)
                else:
                    await connection.close()
        except _UNAVAILABLE as err:
            raise StorageError("the database is unavailable; try again later") from err

    @property
    def keeps_idle(self) -> bool:
        """Whether a kept connection may wait, idle, for the next transaction (PostgreSQL)."""
        return self._postgres

    async def release(self) -> None:
        """Give the kept connection back to the pool (the next transaction begun on it, if
        any, rolled back)."""
        held, self._held = self._held, None
        kept, self._held_driver = self._held_driver, None
        self._begun_on = None
        if held is not None:
            if kept is not None and kept[0] is held and not await _rolled_back(kept[1]):
                await held.invalidate()
            await held.close()

    async def release_if_idle(self) -> None:
        """Give the kept connection back if it has been idle for ``keep_seconds``."""
        idle = self.idle_seconds()
        if idle is not None and idle >= self.keep_seconds:
            await self.release()

    def idle_seconds(self) -> float | None:
        """How long the kept connection has been idle; None when none is kept."""
        return None if self._held is None else self._clock() - self._last_used

    async def _begin(self) -> tuple[AsyncConnection, IntakeTransaction]:
        await self.release_if_idle()
        held, self._held = self._held, None
        if held is not None and not self._postgres:
            # SQLite's one connection: a failed BEGIN would fail again on the pool's.
            self._kept_in_a_row += 1
            try:
                return held, await self._begin_on(held)
            except BaseException:
                await held.close()
                raise
        self._kept_in_a_row = 0
        if held is not None:
            try:
                return held, await self._begin_on(held)
            except Exception:  # noqa: BLE001 - any failure of a kept connection's BEGIN
                # Lost while kept (say, the server restarted or ended the backend): BEGIN was
                # all it was sent, so a connection from the pool (pinged) may begin instead.
                # asyncpg does not always say so with a connection error: a termination it
                # is still reading can surface as InternalClientError ("another operation is
                # in progress").
                await held.close()
            except BaseException:
                await held.close()
                raise
        connection = await self.engine.connect().start()
        try:
            return connection, await self._begin_on(connection)
        except BaseException:
            await connection.close()
            raise

    async def _begin_on(self, connection: AsyncConnection) -> IntakeTransaction:
        kept, self._held_driver = self._held_driver, None
        driver: Any
        if kept is not None and kept[0] is connection:
            driver = kept[1]
        else:
            driver = await _driver_connection(connection)
        transaction: IntakeTransaction
        try:
            if self._postgres:
                begun, self._begun_on = self._begun_on, None
                if begun is not driver or not driver.is_in_transaction():
                    # SQLAlchemy's asyncpg adapter begins on its own first statement, and
                    # none runs through it: this is the connection's only transaction.
                    await driver.execute(_PG_BEGIN)
                transaction = _PostgresTransaction(driver, self.calls)
            else:
                await driver.begin_immediate()
                transaction = _SqliteTransaction(driver.sqlite, self.calls)
            transaction.driver = driver
            return transaction
        except BaseException as err:
            # Cancelled, say, while BEGIN waited: it may still begin. aiosqlite's thread runs
            # a rollback after it; an asyncpg connection is in an unknown state.
            if isinstance(err, _UNAVAILABLE) or self._postgres or not await _rolled_back(driver):
                await connection.invalidate()
            raise

    @contextlib.asynccontextmanager
    async def _ending(
        self,
        connection: AsyncConnection,
        transaction: IntakeTransaction,
        more: Callable[[], bool] | None,
    ) -> AsyncIterator[None]:
        driver = transaction.driver
        try:
            yield
            await transaction.flush()
            if self._postgres:
                # The NOTIFY goes with the COMMIT: one round trip, delivered on commit. When
                # another transaction follows at once, its BEGIN goes with them too (rolled
                # back if the connection goes back to the pool instead, see release()).
                begin_next = more is not None and more()
                statements = [f"NOTIFY {NOTIFY_CHANNEL}"] if transaction.jobs_queued else []
                statements += ["COMMIT", _PG_BEGIN] if begin_next else ["COMMIT"]
                await driver.execute("; ".join(statements))
                self._begun_on = driver if begin_next else None
            elif self._commits_here < self.commits_between_checkpoints and (
                driver.idle and driver.commit_without_checkpoint()
            ):
                self._commits_here += 1
            else:
                # On the driver's thread: a commit may checkpoint the WAL, and fsync.
                await driver.commit()
                self._commits_here = 0
            transaction.committed()
            announce_committed(transaction.queued_for)
        except BaseException as err:
            if isinstance(err, _UNAVAILABLE) or not await _rolled_back(driver):
                # Broken mid-transaction, or in an unknown state: never hand it out again.
                await connection.invalidate()
            raise


async def _driver_connection(connection: AsyncConnection) -> Any:
    """The driver's connection under ``connection`` (checked out by ``start()``).

    Read directly when the pooled connection is at hand, as it is once checked out: that is
    no I/O, where ``get_raw_connection()`` costs a greenlet hop (a tenth of a small group's
    CPU on SQLite).
    """
    sync = connection.sync_connection
    if sync is not None and not sync.closed and not sync.invalidated:
        return sync.connection.driver_connection
    return (await connection.get_raw_connection()).driver_connection


async def _rolled_back(driver: Any) -> bool:
    try:
        if isinstance(driver, asyncpg.Connection):
            if not driver.is_closed() and driver.is_in_transaction():
                await driver.execute("ROLLBACK")
        else:
            await driver.rollback()
    except Exception:  # noqa: BLE001 - the caller discards the connection
        return False
    return True
