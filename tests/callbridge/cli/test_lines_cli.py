"""``callbridge lines``: lines in the integration settings, and created in Bitrix24."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import typer
from cryptography.fernet import Fernet
from typer.testing import CliRunner, Result

from callbridge.cli.lines import lines_app
from callbridge.config import Settings
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import Bitrix24Integration
from tests.callbridge.cli.test_integration_cli import seed
from tests.callbridge.crm.bitrix24.harness import callbridge_settings
from tests.callbridge.crm.bitrix24.test_processes import Emulator, install, start_emulator


def cli(settings: Settings) -> Callable[..., Result]:
    app = typer.Typer()
    app.add_typer(lines_app, name="lines")

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, ["lines", *args], obj=settings)

    return invoke


async def stored_lines(settings: Settings) -> object:
    engine = create_engine(settings.effective_database_url)
    try:
        async with create_session_factory(engine)() as session:
            row = (await session.execute(Bitrix24Integration.__table__.select())).first()
            assert row is not None
            return row.settings.get("lines")
    finally:
        await engine.dispose()


@pytest.fixture
def settings(fresh_database_url: str, tmp_path: Path) -> Settings:
    settings = callbridge_settings(fresh_database_url, tmp_path)
    asyncio.run(seed(settings))
    return settings


class TestLinesSettings:
    def test_add_replace_list_remove(self, settings: Settings) -> None:
        run = cli(settings)
        added = run("add", "74951110101", "--name", "Moscow", "--crm-source", "CALL", "--no-push")
        assert added.exit_code == 0, added.output
        replaced = run("add", "74951110101", "--pbx-line", "4951110101", "--no-push")
        assert replaced.exit_code == 0, replaced.output
        assert asyncio.run(stored_lines(settings)) == [
            {"number": "74951110101", "name": "74951110101", "pbx_line": "4951110101"}
        ]
        listed = run("list")
        assert "74951110101      4951110101" in listed.output
        removed = run("remove", "74951110101")
        assert removed.exit_code == 0, removed.output
        assert asyncio.run(stored_lines(settings)) == []
        assert "no lines configured" in run("list").output

    def test_removing_an_unknown_line_names_the_fix(self, settings: Settings) -> None:
        result = cli(settings)("remove", "000")
        assert result.exit_code == 1
        assert "line 000 is not configured; see `callbridge lines list`" in result.output


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = start_emulator()
    yield emu
    emu.process.terminate()
    emu.process.wait(10)


class TestLinesInBitrix24:
    def test_add_creates_the_line_once(
        self, emulator: Emulator, fresh_database_url: str, tmp_path: Path
    ) -> None:
        key = Fernet.generate_key().decode()
        asyncio.run(install(emulator, fresh_database_url, key, tmp_path, {}))
        settings = callbridge_settings(
            fresh_database_url,
            tmp_path,
            encryption_keys=key,
            bitrix24_oauth_server_url=emulator.url,
        )
        run = cli(settings)
        first = run("add", "74951110199", "--name", "Sales")
        assert first.exit_code == 0, first.output
        assert "line 74951110199 exists in Bitrix24" in first.output
        again = run("add", "74951110199", "--name", "Sales")  # "already exists" counts as done
        assert again.exit_code == 0, again.output
        lines = httpx.get(f"{emulator.url}/_emulator/lines", timeout=10).json()
        numbers = [line.get("NUMBER") or line.get("number") for line in _items(lines)]
        assert numbers.count("74951110199") == 1


def _items(payload: object) -> list[dict[str, str]]:
    if isinstance(payload, dict):
        for value in payload.values():
            if isinstance(value, list):
                return value
    assert isinstance(payload, list)
    return payload
