"""``callbridge users``: manual extension overrides and the listing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from callbridge.cli.users import users_app
from callbridge.config import Settings
from callbridge.storage.models import Bitrix24User
from tests.callbridge.cli.helpers import (
    integration_setting,
    invoker,
    session_on,
    the_integration,
)
from tests.callbridge.cli.test_integration_cli import seed
from tests.callbridge.crm.bitrix24.harness import callbridge_settings


def cli(settings: Settings) -> Callable[..., Result]:
    return invoker(users_app, "users", settings)


async def add_users(settings: Settings) -> None:
    async with session_on(settings) as session, session.begin():
        row = await the_integration(session)
        session.add(Bitrix24User(integration_id=row.id, user_id=2, extension="102", name="M"))
        session.add(Bitrix24User(integration_id=row.id, user_id=3, extension="103", name="S"))


@pytest.fixture
def settings(fresh_database_url: str, tmp_path: Path) -> Settings:
    settings = callbridge_settings(fresh_database_url, tmp_path)
    asyncio.run(seed(settings))
    asyncio.run(add_users(settings))
    return settings


class TestUsersCli:
    def test_map_wins_and_unmap_restores(self, settings: Settings) -> None:
        run = cli(settings)
        result = run("map", "102", "3")
        assert result.exit_code == 0, result.output
        assert integration_setting(settings, "extension_users") == {"102": 3}
        listing = run("list").output
        assert "102*" in listing  # user 3 now answers on 102
        assert run("unmap", "102").exit_code == 0
        assert integration_setting(settings, "extension_users") == {}
        listing = run("list").output
        assert "102*" not in listing
        assert "102" in listing

    def test_unmap_unknown_extension_fails(self, settings: Settings) -> None:
        result = cli(settings)("unmap", "555")
        assert result.exit_code == 1
        assert "no manual mapping" in result.output

    def test_unknown_integration_fails(self, settings: Settings) -> None:
        result = cli(settings)("map", "102", "3", "--integration", "999")
        assert result.exit_code == 1
        assert "no integration with id 999" in result.output
