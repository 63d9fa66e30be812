"""``bitrix24_users`` as the :class:`~callbridge.services.user_sync.UserDirectory` port."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.services.user_sync import PortalUser, StoredUser
from callbridge.storage.models import Bitrix24User
from callbridge.storage.repositories.bitrix24_users import Bitrix24UserRepository

__all__ = ["SqlUserDirectory", "stored_user"]


def stored_user(row: Bitrix24User) -> StoredUser:
    """A row as the service sees it."""
    return StoredUser(
        user_id=row.user_id,
        name=row.name,
        active=row.active,
        extension=row.extension,
        mobile=row.mobile,
    )


class SqlUserDirectory:
    """One integration's users on the caller's session (flushes, never commits)."""

    def __init__(self, session: AsyncSession, integration_id: int) -> None:
        self.repository = Bitrix24UserRepository(session)
        self.integration_id = integration_id
        self._rows: dict[int, Bitrix24User] | None = None

    async def _loaded(self) -> dict[int, Bitrix24User]:
        if self._rows is None:
            rows = await self.repository.for_integration(self.integration_id)
            self._rows = {row.user_id: row for row in rows}
        return self._rows

    async def stored(self) -> Sequence[StoredUser]:
        """Every row of the integration, active or not."""
        return [stored_user(row) for row in (await self._loaded()).values()]

    async def upsert(self, user: PortalUser, synced_at: datetime) -> None:
        """Insert or update the user's row."""
        rows = await self._loaded()
        row = rows.get(user.user_id)
        if row is None:
            row = Bitrix24User(integration_id=self.integration_id, user_id=user.user_id)
            rows[user.user_id] = row
            self.repository.session.add(row)
        row.name = user.name[:255]
        row.active = user.active
        row.extension = user.extension[:32] if user.extension else None
        row.mobile = user.mobile
        row.synced_at = synced_at
        await self.repository.session.flush()

    async def deactivate(self, user_ids: Sequence[int], synced_at: datetime) -> None:
        """Mark these users inactive."""
        rows = await self._loaded()
        for user_id in user_ids:
            row = rows.get(user_id)
            if row is not None:
                row.active = False
                row.synced_at = synced_at
        await self.repository.session.flush()

    async def touch(self, synced_at: datetime) -> None:
        """Stamp every row as seen by this sync."""
        await self.repository.touch(self.integration_id, synced_at)
