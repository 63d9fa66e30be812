"""The Bitrix24 request log."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete

from callbridge.storage.models import ApiCall
from callbridge.storage.repositories.base import Repository


class ApiCallRepository(Repository[ApiCall]):
    """Queries on ``api_calls``."""

    model = ApiCall

    async def purge_older_than(self, cutoff: datetime) -> int:
        """Delete entries that started before ``cutoff``; returns how many."""
        result = await self.session.execute(delete(ApiCall).where(ApiCall.started_at < cutoff))
        return int(getattr(result, "rowcount", 0) or 0)
