"""Single-use codes of the Bitrix24 app lifecycle (OAuth ``state``, enterprise link codes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, update

from callbridge.storage.models import Bitrix24OneTimeCode
from callbridge.storage.repositories.base import Repository
from callbridge.storage.types import utcnow


class OneTimeCodeRepository(Repository[Bitrix24OneTimeCode]):
    """Queries on ``bitrix24_one_time_codes``; callers pass hashes, never codes."""

    model = Bitrix24OneTimeCode

    async def create(
        self,
        kind: str,
        code_hash: str,
        expires_at: datetime,
        *,
        enterprise_id: int | None = None,
        member_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Bitrix24OneTimeCode:
        """Store a new code (its hash)."""
        row = Bitrix24OneTimeCode(
            kind=kind,
            code_hash=code_hash,
            expires_at=expires_at,
            enterprise_id=enterprise_id,
            member_id=member_id,
            data=data or {},
        )
        return await self.add(row)

    async def consume(
        self, kind: str, code_hash: str, *, now: datetime | None = None
    ) -> Bitrix24OneTimeCode | None:
        """Use a live code once: the single UPDATE makes a concurrent second use find nothing."""
        now = now or utcnow()
        statement = (
            update(Bitrix24OneTimeCode)
            .where(
                Bitrix24OneTimeCode.kind == kind,
                Bitrix24OneTimeCode.code_hash == code_hash,
                Bitrix24OneTimeCode.used_at.is_(None),
                Bitrix24OneTimeCode.expires_at > now,
            )
            .values(used_at=now)
            .returning(Bitrix24OneTimeCode)
            .execution_options(synchronize_session=False)
        )
        result = await self.session.execute(statement)
        return result.scalar_one_or_none()

    async def purge_expired(self, *, now: datetime | None = None) -> int:
        """Delete codes that expired or were used; returns how many."""
        now = now or utcnow()
        result = await self.session.execute(
            delete(Bitrix24OneTimeCode).where(
                (Bitrix24OneTimeCode.expires_at <= now) | Bitrix24OneTimeCode.used_at.is_not(None)
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)
