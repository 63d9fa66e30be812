"""Migrations run up, down and up again on every backend, and match the models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Table, insert, inspect, select
from sqlalchemy.engine import Connection

from callbridge.storage import migrate
from callbridge.storage.db import create_unpooled_engine
from callbridge.storage.models import Base, Job
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


def _attach(**command: str) -> dict[str, object]:
    return {
        "version": 1,
        "call_id": 1,
        "command": {"kind": "attach_record", "leg": 0, "filename": "a.wav", "format": "wav"}
        | command,
    }


class TestRecordingUploadsMigration:
    """0005 moves unfinished attach jobs of a file on the PBX to their own kind, and back."""

    async def test_upload_jobs_change_kind_up_and_back_down(self, database: Database) -> None:
        url = await database.clone()
        engine = create_unpooled_engine(url)
        jobs = cast(Table, Job.__table__)
        now = datetime.now(UTC)
        rows = {
            "path": ("bitrix24.command", "queued", _attach(path="/mon/a.wav")),
            "dead path": ("bitrix24.command", "dead", _attach(path="/mon/b.wav")),
            "done path": ("bitrix24.command", "succeeded", _attach(path="/mon/c.wav")),
            "url": ("bitrix24.command", "queued", _attach(url="https://pbx/a.wav")),
            "finish": ("bitrix24.command", "queued", {"command": {"kind": "finish"}}),
        }
        try:
            await migrate.downgrade(url, "0004")
            async with engine.begin() as connection:
                for name, (kind, status, payload) in rows.items():
                    await connection.execute(
                        insert(jobs).values(
                            kind=kind,
                            status=status,
                            payload=payload,
                            ordering_key=name,
                            attempts=0,
                            max_attempts=10,
                            run_after=now,
                            created_at=now,
                            updated_at=now,
                        )
                    )

            async def kinds() -> dict[str, str]:
                async with engine.connect() as connection:
                    result = await connection.execute(select(jobs.c.ordering_key, jobs.c.kind))
                    return {key: kind for key, kind in result}

            await migrate.upgrade(url)
            assert await kinds() == {
                "path": "bitrix24.upload_recording",
                "dead path": "bitrix24.upload_recording",
                "done path": "bitrix24.command",  # history stays as it ran
                "url": "bitrix24.command",
                "finish": "bitrix24.command",
            }
            await migrate.downgrade(url, "0004")
            assert set((await kinds()).values()) == {"bitrix24.command"}
        finally:
            await engine.dispose()
            await database.drop(url)
