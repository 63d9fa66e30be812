"""``callbridge integration``: list, show, link, link-code, add-webhook, ping, rotate-keys."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from typer.testing import Result

from callbridge.cli.integration import integration_app
from callbridge.config import Settings
from callbridge.crm.bitrix24.auth import Installation, TokenGrant
from callbridge.portals import Portals
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import Enterprise
from callbridge.storage.repositories import IntegrationRepository
from tests.callbridge.cli.helpers import invoker, session_on
from tests.callbridge.crm.bitrix24.harness import callbridge_settings
from tests.callbridge.crm.bitrix24.test_processes import Emulator


def cli(settings: Settings) -> Callable[..., Result]:
    return invoker(integration_app, "integration", settings)


async def seed(settings: Settings) -> None:
    engine = create_engine(settings.effective_database_url)
    try:
        factory = create_session_factory(engine)
        async with httpx.AsyncClient() as http, factory() as session, session.begin():
            session.add(Enterprise(number="100", name="Acme"))
            portals = Portals(settings, factory, http, SecretBox(settings.fernet_keys()))
            grant = TokenGrant(
                access_token="access-secret-1",
                refresh_token="refresh-secret-1",
                expires_at=datetime.now(UTC) + timedelta(hours=1),
                member_id="m" * 32,
                domain="b24-x.bitrix24.ru",
                client_endpoint="https://b24-x.bitrix24.ru/rest/",
                scope="crm,telephony",
                application_token="app-secret-1",
            )
            await portals.install(session, Installation(grant, "event"))
    finally:
        await engine.dispose()


@pytest.fixture
def settings(fresh_database_url: str, tmp_path: Path) -> Settings:
    return callbridge_settings(fresh_database_url, tmp_path)


class TestIntegrationCli:
    def test_list_and_show_never_print_secrets(self, settings: Settings) -> None:
        run = cli(settings)
        assert "no integrations" in run("list").output
        asyncio.run(seed(settings))
        listed = run("list")
        assert listed.exit_code == 0
        assert "b24-x.bitrix24.ru" in listed.output
        assert "crm,telephony" in listed.output
        shown = run("show", "b24-x.bitrix24.ru")
        assert shown.exit_code == 0, shown.output
        assert "access_token:       stored" in shown.output
        assert "secret-1" not in shown.output
        missing = run("show", "nowhere.bitrix24.ru")
        assert missing.exit_code == 1
        assert "no Bitrix24 integration" in missing.output

    def test_link_and_link_code(self, settings: Settings) -> None:
        asyncio.run(seed(settings))
        run = cli(settings)
        linked = run("link", "--enterprise", "100", "--portal", "b24-x.bitrix24.ru")
        assert linked.exit_code == 0, linked.output
        assert "linked b24-x.bitrix24.ru to enterprise" in linked.output
        code = run("link-code", "--enterprise", "100")
        assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}\n", code.output)
        unknown = run("link", "--enterprise", "999", "--portal", "b24-x.bitrix24.ru")
        assert unknown.exit_code == 1
        assert "no enterprise" in unknown.output

    def test_rotate_keys(self, settings: Settings, tmp_path: Path) -> None:
        asyncio.run(seed(settings))
        old_key = settings.fernet_keys()[0].decode()
        new_key = Fernet.generate_key().decode()
        rotated = callbridge_settings(
            settings.effective_database_url, tmp_path, encryption_keys=f"{new_key},{old_key}"
        )
        result = cli(rotated)("rotate-keys")
        assert result.exit_code == 0, result.output
        assert "1 integrations" in result.output

        async def read_with_new_key_only() -> str | None:
            async with session_on(settings) as session:
                repo = IntegrationRepository(session, SecretBox([new_key.encode()]))
                row = await repo.by_domain("b24-x.bitrix24.ru")
                assert row is not None
                raw = (await session.execute(text("SELECT * FROM bitrix24_integrations"))).all()
                assert "secret-1" not in repr(raw)
                return repo.refresh_token(row)

        assert asyncio.run(read_with_new_key_only()) == "refresh-secret-1"


class TestPing:
    def test_app_mode(self, emulator: Emulator, installed_settings: Settings) -> None:
        result = cli(installed_settings)("ping", emulator.url.split("//")[1])
        assert result.exit_code == 0, result.output
        assert re.search(r"app\.info\s+\d+\.\d ms", result.output)
        assert re.search(r"profile\s+\d+\.\d ms", result.output)
        assert "scope     crm,telephony" in result.output
        assert "failed" not in result.output

    def test_webhook_mode(self, emulator: Emulator, settings: Settings) -> None:
        run = cli(settings)
        added = run("add-webhook", f"{emulator.url}/rest/1/emulatorhook0001/")
        assert added.exit_code == 0, added.output
        assert "webhook mode" in added.output
        result = run("ping", emulator.url.split("//")[1])
        assert result.exit_code == 0, result.output
        assert re.search(r"profile\s+\d+\.\d ms", result.output)
        assert "app.info" not in result.output  # app-only: never tried through a webhook
        assert "scope     " in result.output
