"""Engine settings: the pool pings a PostgreSQL connection only after it sat idle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from callbridge.storage.db import create_engine, create_unpooled_engine, ping_idle_connections

POSTGRES_ONLY = pytest.mark.parametrize(
    "database", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


class Clock:
    """The only mock: time, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def count_pings(engine: AsyncEngine) -> list[object]:
    pings: list[object] = []
    dialect: Any = engine.sync_engine.dialect
    ping = dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return bool(ping(dbapi_connection))

    dialect.do_ping = counted
    return pings


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


@pytest.fixture
async def clocked(fresh_database_url: str) -> AsyncIterator[tuple[AsyncEngine, Clock]]:
    clock = Clock()
    engine = create_async_engine(fresh_database_url, pool_size=1, max_overflow=0)
    ping_idle_connections(engine, idle_seconds=1.0, clock=clock)
    yield engine, clock
    await engine.dispose()


@POSTGRES_ONLY
class TestPingIdleConnections:
    async def test_the_engine_does_not_ping_a_connection_used_just_now(
        self, fresh_database_url: str
    ) -> None:
        engine = create_engine(fresh_database_url)
        try:
            pings = count_pings(engine)
            first = await backend_pid(engine)
            assert await backend_pid(engine) == first  # the same one, most recent first
            assert pings == []
        finally:
            await engine.dispose()

    async def test_a_connection_idle_for_a_while_is_pinged(
        self, clocked: tuple[AsyncEngine, Clock]
    ) -> None:
        engine, clock = clocked
        pings = count_pings(engine)
        first = await backend_pid(engine)
        clock.now += 0.9
        assert await backend_pid(engine) == first
        assert pings == []
        clock.now += 1.0
        assert await backend_pid(engine) == first
        assert len(pings) == 1

    async def test_an_idle_connection_that_was_lost_is_replaced(
        self, clocked: tuple[AsyncEngine, Clock], fresh_database_url: str
    ) -> None:
        engine, clock = clocked
        lost = await backend_pid(engine)
        admin = create_unpooled_engine(fresh_database_url)
        try:
            async with admin.connect() as connection:
                await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": lost})
        finally:
            await admin.dispose()
        clock.now += 5.0
        replacement = await backend_pid(engine)
        assert replacement != lost
