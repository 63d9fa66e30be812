"""``callbridge lines``: lines in the integration settings, and created in Bitrix24."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import Result

from callbridge.cli.lines import lines_app
from callbridge.config import Settings
from tests.callbridge.cli.helpers import (
    integration_setting,
    invoker,
)
from tests.callbridge.cli.test_integration_cli import seed
from tests.callbridge.crm.bitrix24.harness import callbridge_settings
from tests.callbridge.crm.bitrix24.test_processes import Emulator


def cli(settings: Settings) -> Callable[..., Result]:
    return invoker(lines_app, "lines", settings)


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
        assert integration_setting(settings, "lines") == [
            {"number": "74951110101", "name": "74951110101", "pbx_line": "4951110101"}
        ]
        listed = run("list")
        assert "74951110101      4951110101" in listed.output
        removed = run("remove", "74951110101")
        assert removed.exit_code == 0, removed.output
        assert integration_setting(settings, "lines") == []
        assert "no lines configured" in run("list").output

    def test_removing_an_unknown_line_names_the_fix(self, settings: Settings) -> None:
        result = cli(settings)("remove", "000")
        assert result.exit_code == 1
        assert "line 000 is not configured; see `callbridge lines list`" in result.output


class TestLinesInBitrix24:
    def test_add_creates_the_line_once(
        self, emulator: Emulator, installed_settings: Settings
    ) -> None:
        run = cli(installed_settings)
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
