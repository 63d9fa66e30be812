"""Enterprises: the PBX customers."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import bindparam, select

from callbridge.storage.models import Enterprise
from callbridge.storage.repositories.base import Repository

# Built once: the intake writer runs it in every transaction, and building a SELECT with an
# IN costs more CPU than running it.
_ACTIVE_WEBHOOK_SECRETS = select(Enterprise.id, Enterprise.webhook_secret_enc).where(
    Enterprise.id.in_(bindparam("ids", expanding=True)), Enterprise.active.is_(True)
)


class EnterpriseRepository(Repository[Enterprise]):
    """Queries on ``enterprises``."""

    model = Enterprise

    async def by_number(self, number: str) -> Enterprise | None:
        """The enterprise with this number, or None."""
        return await self.one_or_none(self.select().where(Enterprise.number == number))

    async def active_webhook_secrets(self, ids: Collection[int]) -> dict[int, str]:
        """The stored (encrypted) webhook secret of each active enterprise among ``ids``."""
        rows = await self.session.execute(_ACTIVE_WEBHOOK_SECRETS, {"ids": list(ids)})
        return {row.id: row.webhook_secret_enc for row in rows if row.webhook_secret_enc}

    async def list_all(self) -> Sequence[Enterprise]:
        """Every enterprise, by number."""
        return await self.all(self.select().order_by(Enterprise.number))
