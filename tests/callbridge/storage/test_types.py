"""Timestamps come back timezone-aware UTC on every engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.storage.models import Enterprise


class TestUTCDateTime:
    async def test_aware_values_come_back_as_utc(self, session: AsyncSession) -> None:
        moscow = timezone(timedelta(hours=3))
        enterprise = Enterprise(
            number="100", created_at=datetime(2026, 3, 7, 10, 20, 30, tzinfo=moscow)
        )
        session.add(enterprise)
        await session.flush()
        session.expunge_all()
        loaded = await session.get(Enterprise, enterprise.id)
        assert loaded is not None
        assert loaded.created_at == datetime(2026, 3, 7, 7, 20, 30, tzinfo=UTC)
        assert loaded.created_at.tzinfo is not None
        assert loaded.created_at.utcoffset() == timedelta(0)

    async def test_naive_values_are_refused(self, session: AsyncSession) -> None:
        session.add(Enterprise(number="101", created_at=datetime(2026, 1, 1)))  # noqa: DTZ001
        with pytest.raises(Exception, match="naive datetime"):
            await session.flush()
