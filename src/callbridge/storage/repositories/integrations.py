"""Bitrix24 integrations, with their secrets encrypted through a :class:`SecretBox`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.storage.crypto import SecretBox
from callbridge.storage.models import Bitrix24Integration
from callbridge.storage.repositories.base import Repository


class IntegrationRepository(Repository[Bitrix24Integration]):
    """Queries on ``bitrix24_integrations``; tokens cross this boundary only in clear text."""

    model = Bitrix24Integration

    def __init__(self, session: AsyncSession, box: SecretBox) -> None:
        super().__init__(session)
        self.box = box

    async def by_member_id(
        self, member_id: str, *, for_update: bool = False
    ) -> Bitrix24Integration | None:
        """The integration of a portal, optionally row-locked (PostgreSQL) for a token refresh."""
        statement = self.select().where(Bitrix24Integration.member_id == member_id)
        if for_update:
            statement = statement.with_for_update()
        return await self.one_or_none(statement)

    async def by_domain(self, domain: str) -> Bitrix24Integration | None:
        """The integration of a portal by its domain."""
        return await self.one_or_none(self.select().where(Bitrix24Integration.domain == domain))

    async def for_enterprise(self, enterprise_id: int) -> Sequence[Bitrix24Integration]:
        """The integrations linked to an enterprise."""
        return await self.all(
            self.select()
            .where(Bitrix24Integration.enterprise_id == enterprise_id)
            .order_by(Bitrix24Integration.id)
        )

    async def set_tokens(
        self,
        integration: Bitrix24Integration,
        *,
        access_token: str,
        refresh_token: str,
        expires_at: datetime,
    ) -> None:
        """Store a new token pair, encrypted."""
        integration.access_token_enc = self.box.encrypt(access_token)
        integration.refresh_token_enc = self.box.encrypt(refresh_token)
        integration.expires_at = expires_at
        await self.session.flush()

    def set_application_token(self, integration: Bitrix24Integration, token: str) -> None:
        """Store the token that authenticates the portal's events, encrypted."""
        integration.application_token_enc = self.box.encrypt(token)

    def access_token(self, integration: Bitrix24Integration) -> str | None:
        """The access token in clear text."""
        return self.box.decrypt_optional(integration.access_token_enc)

    def refresh_token(self, integration: Bitrix24Integration) -> str | None:
        """The refresh token in clear text."""
        return self.box.decrypt_optional(integration.refresh_token_enc)

    def application_token(self, integration: Bitrix24Integration) -> str | None:
        """The application token in clear text."""
        return self.box.decrypt_optional(integration.application_token_enc)

    async def rotate_secrets(self) -> int:
        """Re-encrypt every stored secret under the newest key; returns rows touched."""
        touched = 0
        for integration in await self.all(self.select().order_by(Bitrix24Integration.id)):
            for column in ("access_token_enc", "refresh_token_enc", "application_token_enc"):
                value = getattr(integration, column)
                if value is not None:
                    setattr(integration, column, self.box.rotate(value))
            touched += 1
        await self.session.flush()
        return touched
