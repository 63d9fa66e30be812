"""Migrations run up, down and up again on every backend, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from callbridge.storage import migrate
from callbridge.storage.db import create_unpooled_engine
from callbridge.storage.models import Base
from tests.conftest import Database


def _diff(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


class TestMigrations:
    async def test_upgrade_downgrade_upgrade(self, database: Database) -> None:
        url = await database.clone()
        engine = create_unpooled_engine(url)
        try:
            assert await migrate.current_revision(engine) == migrate.head_revision()
            await migrate.downgrade(url, "base")
            assert await migrate.current_revision(engine) is None
            async with engine.connect() as connection:
                assert await connection.run_sync(_tables) == set()
            await migrate.upgrade(url)
            await migrate.ensure_at_head(engine)
            async with engine.connect() as connection:
                assert await connection.run_sync(_tables) == set(Base.metadata.tables)
        finally:
            await engine.dispose()
            await database.drop(url)

    async def test_schema_matches_models(self, database: Database) -> None:
        engine = create_unpooled_engine(database.url)
        try:
            async with engine.connect() as connection:
                assert await connection.run_sync(_diff) == []
        finally:
            await engine.dispose()
