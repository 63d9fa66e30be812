"""Integrations keep their secrets encrypted in the database."""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.storage.crypto import SecretBox
from callbridge.storage.models import Bitrix24Integration
from callbridge.storage.repositories import IntegrationRepository


class TestIntegrationRepository:
    async def test_tokens_are_never_stored_in_clear_text(self, session: AsyncSession) -> None:
        repo = IntegrationRepository(session, SecretBox([Fernet.generate_key()]))
        integration = await repo.add(
            Bitrix24Integration(
                member_id="m1", domain="a.bitrix24.ru", client_endpoint="https://a/rest/"
            )
        )
        await repo.set_tokens(
            integration,
            access_token="ACCESS-CLEAR",
            refresh_token="REFRESH-CLEAR",
            expires_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        repo.set_application_token(integration, "APPTOKEN-CLEAR")
        await session.flush()
        row = (
            await session.execute(
                text("SELECT * FROM bitrix24_integrations WHERE member_id = 'm1'")
            )
        ).one()
        dumped = " ".join(str(value) for value in row)
        for secret in ("ACCESS-CLEAR", "REFRESH-CLEAR", "APPTOKEN-CLEAR"):
            assert secret not in dumped
        loaded = await repo.by_member_id("m1", for_update=True)
        assert loaded is not None
        assert repo.access_token(loaded) == "ACCESS-CLEAR"
        assert repo.refresh_token(loaded) == "REFRESH-CLEAR"
        assert repo.application_token(loaded) == "APPTOKEN-CLEAR"

    async def test_rotate_secrets_moves_to_the_new_key(self, session: AsyncSession) -> None:
        old, new = Fernet.generate_key(), Fernet.generate_key()
        repo = IntegrationRepository(session, SecretBox([old]))
        integration = await repo.add(
            Bitrix24Integration(member_id="m2", domain="b", client_endpoint="https://b/rest/")
        )
        repo.set_application_token(integration, "tok")
        await session.flush()
        rotating = IntegrationRepository(session, SecretBox([new, old]))
        assert await rotating.rotate_secrets() >= 1
        only_new = IntegrationRepository(session, SecretBox([new]))
        assert only_new.application_token(integration) == "tok"
