"""Bitrix24 users of an integration and the extensions and numbers that reach them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update

from callbridge.storage.models import Bitrix24User
from callbridge.storage.repositories.base import Repository


class Bitrix24UserRepository(Repository[Bitrix24User]):
    """Queries on ``bitrix24_users``."""

    model = Bitrix24User

    async def active_for_integration(self, integration_id: int) -> Sequence[Bitrix24User]:
        """The integration's active users, by Bitrix24 user id."""
        return await self.all(
            self.select()
            .where(Bitrix24User.integration_id == integration_id, Bitrix24User.active.is_(True))
            .order_by(Bitrix24User.user_id)
        )

    async def for_integration(self, integration_id: int) -> Sequence[Bitrix24User]:
        """Every user of the integration, active or not, by Bitrix24 user id."""
        return await self.all(
            self.select()
            .where(Bitrix24User.integration_id == integration_id)
            .order_by(Bitrix24User.user_id)
        )

    async def by_user_id(self, integration_id: int, user_id: int) -> Bitrix24User | None:
        """One user of the integration."""
        return await self.one_or_none(
            self.select().where(
                Bitrix24User.integration_id == integration_id, Bitrix24User.user_id == user_id
            )
        )

    async def deactivate(
        self, integration_id: int, user_ids: Sequence[int], synced_at: datetime
    ) -> int:
        """Mark users inactive; how many rows changed."""
        if not user_ids:
            return 0
        result = await self.session.execute(
            update(Bitrix24User)
            .where(
                Bitrix24User.integration_id == integration_id,
                Bitrix24User.user_id.in_(list(user_ids)),
            )
            .values(active=False, synced_at=synced_at)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def touch(self, integration_id: int, synced_at: datetime) -> None:
        """Stamp every row of the integration as seen by a sync at ``synced_at``."""
        await self.session.execute(
            update(Bitrix24User)
            .where(Bitrix24User.integration_id == integration_id)
            .values(synced_at=synced_at)
            .execution_options(synchronize_session=False)
        )

    async def last_synced(self, integration_id: int) -> datetime | None:
        """When the integration's users were last synced, if ever."""
        statement = select(func.max(Bitrix24User.synced_at)).where(
            Bitrix24User.integration_id == integration_id
        )
        value = (await self.session.execute(statement)).scalar_one_or_none()
        return value if isinstance(value, datetime) else None
