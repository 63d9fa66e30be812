"""The request log is purged by age."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.storage.models import ApiCall
from callbridge.storage.repositories import ApiCallRepository


class TestApiCallRepository:
    async def test_purge_older_than(self, session: AsyncSession) -> None:
        repo = ApiCallRepository(session)
        now = datetime(2026, 6, 1, tzinfo=UTC)
        await repo.add(ApiCall(method="profile", started_at=now - timedelta(days=40)))
        await repo.add(ApiCall(method="batch", batch_size=50, started_at=now - timedelta(days=1)))
        assert await repo.purge_older_than(now - timedelta(days=30)) == 1
        assert await repo.count() == 1
