"""Enterprises: the PBX customers."""

from __future__ import annotations

from collections.abc import Sequence

from callbridge.storage.models import Enterprise
from callbridge.storage.repositories.base import Repository


class EnterpriseRepository(Repository[Enterprise]):
    """Queries on ``enterprises``."""

    model = Enterprise

    async def by_number(self, number: str) -> Enterprise | None:
        """The enterprise with this number, or None."""
        return await self.one_or_none(self.select().where(Enterprise.number == number))

    async def list_all(self) -> Sequence[Enterprise]:
        """Every enterprise, by number."""
        return await self.all(self.select().order_by(Enterprise.number))
