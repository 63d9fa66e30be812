"""``callbridge enterprise``: add, list, show, rotate-token; the token is printed once only."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from callbridge.cli import app as main_app
from callbridge.cli.enterprise import enterprise_app
from callbridge.config import Settings
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.repositories import EnterpriseRepository
from tests.callbridge.web.test_app import make_settings


def cli(settings: Settings) -> Callable[..., Result]:
    app = typer.Typer()
    app.add_typer(enterprise_app, name="enterprise")

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, ["enterprise", *args], obj=settings)

    return invoke


def printed_token(result: Result) -> str:
    match = re.search(r"webhook token: (\S+)", result.output)
    assert match is not None, result.output
    return match.group(1)


def stored_token(settings: Settings, number: str) -> str | None:
    async def read() -> str | None:
        engine = create_engine(settings.effective_database_url)
        try:
            async with create_session_factory(engine)() as session:
                row = await EnterpriseRepository(session).by_number(number)
                assert row is not None
                return SecretBox(settings.fernet_keys()).decrypt_optional(row.webhook_secret_enc)
        finally:
            await engine.dispose()

    return asyncio.run(read())


@pytest.fixture
def settings(fresh_database_url: str, tmp_path: Path) -> Settings:
    return make_settings(tmp_path, fresh_database_url)


class TestEnterpriseCli:
    def test_add_generates_a_token_shown_once(self, settings: Settings) -> None:
        run = cli(settings)
        added = run("add", "100", "--name", "Acme")
        assert added.exit_code == 0, added.output
        token = printed_token(added)
        assert len(token) >= 32
        assert "http://127.0.0.1:8000/pbx/100/events" in added.output
        assert stored_token(settings, "100") == token
        shown = run("show", "100")
        assert shown.exit_code == 0
        assert "Acme" in shown.output
        assert "webhook token: set" in shown.output
        assert token not in shown.output
        listed = run("list")
        assert re.search(r"100\s+yes\s+set\s+0\s+Acme", listed.output), listed.output
        assert token not in listed.output

    def test_add_with_a_given_token(self, settings: Settings) -> None:
        run = cli(settings)
        added = run("add", "200", "--webhook-token", "a-token-from-the-pbx-admin")
        assert added.exit_code == 0, added.output
        assert stored_token(settings, "200") == "a-token-from-the-pbx-admin"

    def test_add_refuses_short_tokens_and_duplicates(self, settings: Settings) -> None:
        run = cli(settings)
        short = run("add", "300", "--webhook-token", "short")
        assert short.exit_code == 1
        assert "at least 16 characters" in short.output
        assert run("add", "300").exit_code == 0
        again = run("add", "300")
        assert again.exit_code == 1
        assert "already exists" in again.output

    def test_rotate_token(self, settings: Settings) -> None:
        run = cli(settings)
        old = printed_token(run("add", "400"))
        rotated = run("rotate-token", "400")
        assert rotated.exit_code == 0, rotated.output
        new = printed_token(rotated)
        assert new != old
        assert stored_token(settings, "400") == new

    def test_unknown_enterprise(self, settings: Settings) -> None:
        run = cli(settings)
        assert "no enterprises" in run("list").output
        for args in (("show", "999"), ("rotate-token", "999")):
            result = run(*args)
            assert result.exit_code == 1
            assert "no enterprise 999" in result.output

    def test_mounted_on_the_main_command(self) -> None:
        result = CliRunner().invoke(main_app, ["enterprise", "--help"])
        assert result.exit_code == 0
        assert "rotate-token" in result.output
