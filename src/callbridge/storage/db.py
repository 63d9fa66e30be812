"""Engines and sessions for SQLite and PostgreSQL.

SQLite runs in WAL mode with a ``busy_timeout``, and every transaction starts with
``BEGIN IMMEDIATE``: it takes the write lock up front, so two writers queue on the busy timeout
instead of one failing with "database is locked" when it upgrades a read lock mid-transaction.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sqlalchemy import event
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
        engine = create_async_engine(
            url,
            echo=echo,
            pool_size=1,
            max_overflow=0,
            pool_timeout=SQLITE_POOL_TIMEOUT_S,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        _configure_sqlite(engine)
        # aiosqlite runs every call on its own thread and hands the result back: a busy event
        # loop keeps that thread waiting for the GIL up to one switch interval per hand-off,
        # and a statement takes several. Measured with py-spy under webhook load, a quarter
        # of the loop's time went to that wait at the default 5 ms.
        if sys.getswitchinterval() > SQLITE_SWITCH_INTERVAL_S:
            sys.setswitchinterval(SQLITE_SWITCH_INTERVAL_S)
        return engine
    return create_async_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


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
