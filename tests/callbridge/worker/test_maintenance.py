"""Housekeeping purges old rows and keeps what must stay visible."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import ApiCall, Job, JobStatus
from callbridge.worker.maintenance import Retention, maintain_once

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
RETENTION = Retention(api_log=timedelta(days=30), finished_jobs=timedelta(days=7))


class TestMaintainOnce:
    async def test_purges_old_rows_and_keeps_dead_and_recent_ones(
        self, fresh_database_url: str
    ) -> None:
        engine = create_engine(fresh_database_url)
        session_factory = create_session_factory(engine)
        old, recent = NOW - timedelta(days=40), NOW - timedelta(days=1)
        try:
            async with session_factory() as session, session.begin():
                session.add_all(
                    [
                        ApiCall(method="profile", started_at=old),
                        ApiCall(method="profile", started_at=recent),
                        Job(kind="k", status=JobStatus.SUCCEEDED.value, finished_at=old),
                        Job(kind="k", status=JobStatus.CANCELLED.value, finished_at=old),
                        Job(kind="k", status=JobStatus.SUCCEEDED.value, finished_at=recent),
                        Job(kind="k", status=JobStatus.DEAD.value, finished_at=old),
                        Job(kind="k", status=JobStatus.QUEUED.value),
                    ]
                )
            purged = await maintain_once(session_factory, RETENTION, now=NOW)
            assert (purged.api_calls, purged.jobs) == (1, 2)
            async with session_factory() as session:
                statuses = sorted((await session.execute(select(Job.status))).scalars())
                methods = (await session.execute(select(ApiCall.started_at))).scalars().all()
            assert statuses == ["dead", "queued", "succeeded"]
            assert methods == [recent]
        finally:
            await engine.dispose()
