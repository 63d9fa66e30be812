"""Shared fixtures: real, migrated databases on SQLite and (when configured) PostgreSQL.

``CALLBRIDGE_TEST_POSTGRES_URL`` (e.g. ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``)
enables the PostgreSQL half of every database test. The tests create their own databases on
that server, named ``cbtest_*``, and drop them afterwards; they never touch other databases.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from callbridge.storage import migrate
from callbridge.storage.db import create_engine, create_unpooled_engine

POSTGRES_URL_ENV = "CALLBRIDGE_TEST_POSTGRES_URL"
# Set by CI: a PostgreSQL test that cannot run is a failure, not a skip.
REQUIRE_POSTGRES_ENV = "CALLBRIDGE_TEST_REQUIRE_POSTGRES"


def _postgres_required() -> bool:
    return os.environ.get(REQUIRE_POSTGRES_ENV, "") not in ("", "0")


def _no_postgres(reason: str) -> None:
    if _postgres_required():
        pytest.fail(f"{reason}, and {REQUIRE_POSTGRES_ENV} demands PostgreSQL tests run")
    pytest.skip(reason)


_postgres_passed = 0


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, under CI, fail) PostgreSQL tests when no server is configured."""
    if item.get_closest_marker("postgres") and postgres_admin_url() is None:
        _no_postgres(f"{POSTGRES_URL_ENV} is not set")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count PostgreSQL tests that passed."""
    global _postgres_passed
    if report.when == "call" and report.passed and "postgres" in report.keywords:
        _postgres_passed += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI, a run in which no PostgreSQL test passed is a failure."""
    if _postgres_required() and _postgres_passed == 0 and exitstatus == 0:
        session.exitstatus = 1
    if postgres_admin_url() is not None or _postgres_required():
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write("\n")
            reporter.write_line(f"PostgreSQL tests passed: {_postgres_passed}")


def postgres_admin_url() -> str | None:
    """The PostgreSQL server the tests may create databases on, if any."""
    return os.environ.get(POSTGRES_URL_ENV) or None


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


async def _pg_admin(sql: str) -> None:
    admin = postgres_admin_url()
    assert admin is not None
    engine = create_unpooled_engine(admin)
    try:
        async with engine.connect() as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(sql))
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class Database:
    """A migrated test database and how to make more like it."""

    backend: str
    url: str
    tmp_dir: Path

    async def clone(self) -> str:
        """A new, empty, migrated database of the same backend; returns its URL."""
        name = f"cbtest_{uuid.uuid4().hex[:12]}"
        if self.backend == "sqlite":
            url = f"sqlite+aiosqlite:///{self.tmp_dir / (name + '.db')}"
            await migrate.upgrade(url)
            return url
        await _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{make_url(self.url).database}"')
        return _with_database(self.url, name)

    async def drop(self, url: str) -> None:
        """Drop a database made by :meth:`clone`."""
        if self.backend == "postgres":
            database = make_url(url).database
            await _pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _backends() -> list[object]:
    return ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session", params=_backends())
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """A migrated database per backend, shared by the session (tests roll back)."""
    backend: str = request.param
    tmp_dir = tmp_path_factory.mktemp(f"db-{backend}")
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_dir / 'test.db'}"
        asyncio.run(migrate.upgrade(url))
        yield Database(backend, url, tmp_dir)
        return
    admin = postgres_admin_url()
    if admin is None:
        _no_postgres(f"{POSTGRES_URL_ENV} is not set")
        return
    name = f"cbtest_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    url = _with_database(admin, name)
    try:
        asyncio.run(migrate.upgrade(url))
        yield Database(backend, url, tmp_dir)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    """An engine on the shared migrated database."""
    engine = create_engine(database.url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session inside a transaction that is rolled back after the test."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        session = AsyncSession(
            bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()


@pytest.fixture
async def fresh_database_url(database: Database) -> AsyncIterator[str]:
    """A database of its own for tests that commit (queues, workers, processes)."""
    url = await database.clone()
    yield url
    await database.drop(url)
