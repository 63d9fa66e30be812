"""Bitrix24 users of an integration and the extensions and numbers that reach them."""

from __future__ import annotations

from collections.abc import Sequence

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
