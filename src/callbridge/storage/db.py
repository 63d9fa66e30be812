"""Engines and sessions for SQLite and PostgreSQL.

SQLite runs in WAL mode with a ``busy_timeout``, and every transaction starts with
``BEGIN IMMEDIATE``: it takes the write lock up front, so two writers queue on the busy timeout
instead of one failing with "database is locked" when it upgrades a read lock mid-transaction.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import aiosqlite
from aiosqlite.context import Result
from sqlalchemy import event, exc
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_POOL_TIMEOUT_S = 60.0
#: The GIL switch interval a process using SQLite runs with (CPython's default is 5 ms).
SQLITE_SWITCH_INTERVAL_S = 0.001


def is_sqlite_url(url: str) -> bool:
    """Whether a database URL points at SQLite."""
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, echo: bool = False, pool_size: int = 10) -> AsyncEngine:
    """An async engine configured for callbridge's concurrency model on either database."""
    if is_sqlite_url(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # One connection per process: SQLite has one writer at a time anyway, and sessions
        # queueing fairly on the pool beat connections polling the lock in SQLite's busy handler
        # (which sleeps up to 100 ms a try and can starve a waiter past its timeout).
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        engine = create_async_engine(
            url,
            echo=echo,
            pool_size=1,
            max_overflow=0,
            pool_timeout=SQLITE_POOL_TIMEOUT_S,
            connect_args=connect_args,
            async_creator=_one_hop_connector(url, connect_args),
        )
        _configure_sqlite(engine)
        # aiosqlite runs every call on its own thread and hands the result back: a busy event
        # loop keeps that thread waiting for the GIL up to one switch interval per hand-off,
        # and a statement takes several. Measured with py-spy under webhook load, a quarter
        # of the loop's time went to that wait at the default 5 ms.
        if sys.getswitchinterval() > SQLITE_SWITCH_INTERVAL_S:
            sys.setswitchinterval(SQLITE_SWITCH_INTERVAL_S)
        return engine
    engine = create_async_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_use_lifo=True
    )
    ping_idle_connections(engine)
    return engine


#: A pooled PostgreSQL connection idle at least this long is pinged before it is handed out.
PING_AFTER_IDLE_S = 1.0
_IDLE_SINCE = "callbridge.idle_since"


def ping_idle_connections(
    engine: AsyncEngine,
    *,
    idle_seconds: float = PING_AFTER_IDLE_S,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Ping a pooled connection before handing it out, unless it was in use just now.

    SQLAlchemy's ``pool_pre_ping`` costs three round trips a checkout on asyncpg (BEGIN, an
    empty statement, ROLLBACK): as many as a short claim's own statements. A connection given
    back less than ``idle_seconds`` ago is as good as a pinged one (the intake keeps its
    connection by the same rule), and the pool hands out the most recently returned one first
    (``pool_use_lifo``), so under load a checkout is rarely pinged; after a quiet spell, every
    connection is. One that fails its ping is replaced by a new one.
    """
    sync_engine = engine.sync_engine
    dialect = sync_engine.dialect

    @event.listens_for(sync_engine, "connect")
    def _on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = clock()

    @event.listens_for(sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = clock()

    @event.listens_for(sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is not None and clock() - since < idle_seconds:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as err:
            # The pool discards it and checks out another (a new one if need be).
            raise exc.DisconnectionError(f"a pooled connection failed its ping: {err}") from err


def _one_hop_connector(
    url: str, connect_args: dict[str, Any]
) -> Callable[[], Awaitable[OneHopConnection]]:
    """The engine's ``async_creator``: SQLAlchemy's arguments for aiosqlite, our connection."""
    args, kwargs = SQLiteDialect_aiosqlite().create_connect_args(make_url(url))
    kwargs = {**kwargs, **connect_args}

    def connector() -> sqlite3.Connection:
        return cast(sqlite3.Connection, sqlite3.connect(*args, **kwargs))  # type: ignore[call-overload]

    async def connect() -> OneHopConnection:
        connection = OneHopConnection(connector, 64)
        # As SQLAlchemy does for aiosqlite: the driver's thread must not keep the process up.
        connection._thread.daemon = True
        await connection
        return connection

    return connect


class OneHopCursor:
    """An aiosqlite cursor whose statement costs one trip to the driver's thread, not four.

    aiosqlite runs each call (make a cursor, execute, fetch the rows, close) on its thread and
    hands the result back to the event loop: a thread wake-up and a loop wake-up each, which
    under webhook load cost more CPU than the statements themselves (measured with py-spy on
    ``benchmarks/ingest.py``). SQLAlchemy reads every row of a result anyway (its aiosqlite
    cursors buffer them), so this one executes, fetches and closes in a single call and
    serves the rows from memory. Made and used by the driver's thread only, as sqlite3 wants.
    """

    def __init__(self, connection: OneHopConnection) -> None:
        self._connection = connection
        self._rows: list[Any] = []
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> OneHopCursor:
        """Run one statement and read its rows, in one call on the driver's thread."""
        conn = self._connection._conn

        def run() -> tuple[Any, int, int | None, list[Any]]:
            cursor = conn.cursor()
            try:
                cursor.execute(sql, () if parameters is None else parameters)
                rows = cursor.fetchall() if cursor.description else []
                return cursor.description, cursor.rowcount, cursor.lastrowid, rows
            finally:
                cursor.close()

        (
            self.description,
            self.rowcount,
            self.lastrowid,
            self._rows,
        ) = await self._connection._execute(run)
        return self

    async def executemany(self, sql: str, parameters: Sequence[Any]) -> OneHopCursor:
        """Run one statement for each set of parameters (sqlite3 returns no rows from it)."""
        conn = self._connection._conn

        def run() -> tuple[Any, int, int | None]:
            cursor = conn.cursor()
            try:
                cursor.executemany(sql, parameters)
                return cursor.description, cursor.rowcount, cursor.lastrowid
            finally:
                cursor.close()

        self.description, self.rowcount, self.lastrowid = await self._connection._execute(run)
        self._rows = []
        return self

    async def fetchone(self) -> Any:
        """The next row, or None."""
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to ``size`` (else ``arraysize``) more rows."""
        count = self.arraysize if size is None else size
        rows, self._rows = self._rows[:count], self._rows[count:]
        return rows

    async def fetchall(self) -> list[Any]:
        """The remaining rows."""
        rows, self._rows = self._rows, []
        return rows

    async def close(self) -> None:
        """Forget the rows (the sqlite3 cursor is closed already)."""
        self._rows = []


class OneHopConnection(aiosqlite.Connection):
    """An aiosqlite connection whose cursors are :class:`OneHopCursor` s."""

    # Calls handed to the driver's thread, and calls it finished: each counter is written by
    # one thread only, so their difference is exact (the thread is idle when they are equal).
    _sent = 0
    _finished = 0
    # The connection's WAL auto-checkpoint, in pages (0: not in WAL mode); read at first use.
    _wal_autocheckpoint: int | None = None

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                self._finished += 1

        self._sent += 1
        return await super()._execute(run)  # type: ignore[no-untyped-call]

    @property
    def idle(self) -> bool:
        """Whether nothing is queued or running on the driver's thread (say, for a caller
        that was cancelled while it waited)."""
        return self._sent == self._finished

    def cursor(self) -> Result[OneHopCursor]:  # type: ignore[override]
        """A cursor; making it costs no trip to the driver's thread."""
        return Result(self._new_cursor())

    async def _new_cursor(self) -> OneHopCursor:
        return OneHopCursor(self)

    @property
    def sqlite(self) -> sqlite3.Connection:
        """The ``sqlite3`` connection, for a caller that holds this one and has nothing running
        on the driver's thread (see :mod:`callbridge.storage.intake_sql`)."""
        return self._conn

    async def rollback(self) -> None:
        """Roll back the open transaction; with none open (the pool resets every connection it
        gets back, most of them committed) it costs no trip to the driver's thread."""
        if self.idle and self._connection is not None and not self._connection.in_transaction:
            return
        await super().rollback()

    def commit_without_checkpoint(self) -> bool:
        """COMMIT on the caller's thread, if that cannot wait on the disk; whether it did.

        In WAL mode with ``synchronous=NORMAL`` a commit appends to the WAL and syncs nothing:
        only a checkpoint reads and writes the database file and syncs. The commit's automatic
        checkpoint is turned off for it, so it costs microseconds, where the trip to the
        driver's thread costs several times that in CPU. A checkpoint is left to a
        :meth:`commit` (on the driver's thread) or to another connection. False, having done
        nothing, when the database is not in WAL mode. The caller holds this connection with
        nothing running on the driver's thread.
        """
        conn = self.sqlite
        if self._wal_autocheckpoint is None:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            (pages,) = conn.execute("PRAGMA wal_autocheckpoint").fetchone()
            self._wal_autocheckpoint = int(pages) if str(mode).lower() == "wal" else 0
        if self._wal_autocheckpoint <= 0:
            return False
        conn.execute("PRAGMA wal_autocheckpoint = 0").close()
        try:
            conn.commit()
        finally:
            conn.execute(f"PRAGMA wal_autocheckpoint = {self._wal_autocheckpoint}").close()
        return True

    async def begin_immediate(self) -> None:
        """``BEGIN IMMEDIATE``: at once on the caller's thread when the write lock is free,
        else on the driver's thread, waiting for it up to the busy timeout.

        Trying costs microseconds; a trip to the driver's thread costs more CPU than that, and
        the lock is free most of the time. The caller holds this connection with nothing running
        on the driver's thread.
        """
        if not self.idle:
            await self.execute("BEGIN IMMEDIATE")
            return
        conn = self.sqlite
        conn.execute("PRAGMA busy_timeout = 0").close()
        try:
            conn.execute("BEGIN IMMEDIATE").close()
            return
        except sqlite3.OperationalError as err:
            # The primary code: busy covers its extended codes (recovery, snapshot, timeout).
            if err.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").close()
        await self.execute("BEGIN IMMEDIATE")


def create_unpooled_engine(url: str) -> AsyncEngine:
    """An engine without a pool, for short-lived tools (migrations, test set-up)."""
    engine = create_async_engine(url, poolclass=NullPool)
    if is_sqlite_url(url):
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (the driver would issue a deferred BEGIN).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
