"""Migrations run up, down and up again on every backend, and match the models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Table, insert, inspect, select, text
from sqlalchemy.engine import Connection

from callbridge.storage import migrate
from callbridge.storage.db import create_unpooled_engine
from callbridge.storage.models import Base, Bitrix24Integration, Enterprise, Job
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


class TestCallIntegrationMigration:
    """0007 gives stored calls the integration their commands went (or would have gone) to."""

    async def test_calls_get_their_first_job_s_integration_or_the_live_one(
        self, database: Database
    ) -> None:
        url = await database.clone()
        engine = create_unpooled_engine(url)
        now = datetime.now(UTC)
        enterprises = cast(Table, Enterprise.__table__)
        integrations = cast(Table, Bitrix24Integration.__table__)
        jobs = cast(Table, Job.__table__)
        try:
            await migrate.downgrade(url, "0006")
            async with engine.begin() as connection:
                enterprise = await connection.scalar(
                    insert(enterprises).values(number="e1").returning(enterprises.c.id)
                )

                async def integration(status: str) -> int:
                    row_id = await connection.scalar(
                        insert(integrations)
                        .values(
                            enterprise_id=enterprise,
                            member_id=status,
                            domain="portal.test",
                            client_endpoint="http://portal.test/rest/",
                            status=status,
                        )
                        .returning(integrations.c.id)
                    )
                    assert row_id is not None
                    return int(row_id)

                gone, live, other = (
                    await integration("uninstalled"),
                    await integration("active"),
                    await integration("needs_reauth"),
                )
                calls: dict[str, int] = {}
                for linkedid, state in (
                    ("with jobs", "ended"),
                    ("going on", "active"),
                    ("over", "ended"),
                    ("not started", "new"),
                ):
                    result = await connection.execute(
                        text(
                            "INSERT INTO calls (enterprise_id, linkedid, state, direction,"
                            " external_number, line_number, ringing, talk_seconds, model,"
                            " created_at, updated_at) VALUES (:e, :l, :s, 'inbound', '', '',"
                            " '{}', 0, '{}', :now, :now) RETURNING id"
                        ),
                        {"e": enterprise, "l": linkedid, "s": state, "now": now},
                    )
                    calls[linkedid] = result.scalar_one()
                for integration_id in (None, gone, other):
                    await connection.execute(
                        insert(jobs).values(
                            kind="bitrix24.command",
                            call_id=calls["with jobs"],
                            integration_id=integration_id,
                            run_after=now,
                        )
                    )
            await migrate.upgrade(url)
            async with engine.connect() as connection:
                rows = await connection.execute(text("SELECT linkedid, integration_id FROM calls"))
                assert {row[0]: row[1] for row in rows} == {
                    "with jobs": gone,  # where its first commands went, live or not
                    "going on": live,  # where its later ones went until now
                    "over": None,
                    "not started": None,
                }
            await migrate.downgrade(url, "0006")
        finally:
            await engine.dispose()
            await database.drop(url)
