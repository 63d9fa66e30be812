"""Fixtures of the subcommands' tests that talk to an emulated portal in a process of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from callbridge.config import Settings
from tests.callbridge.crm.bitrix24.harness import callbridge_settings
from tests.callbridge.crm.bitrix24.test_processes import Emulator, install, start_emulator


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = start_emulator()
    yield emu
    emu.process.terminate()
    emu.process.wait(10)


@pytest.fixture
def installed_settings(emulator: Emulator, fresh_database_url: str, tmp_path: Path) -> Settings:
    """Settings of a callbridge the emulated portal has installed the app into."""
    key = Fernet.generate_key().decode()
    asyncio.run(install(emulator, fresh_database_url, key, tmp_path, {}))
    return callbridge_settings(
        fresh_database_url,
        tmp_path,
        encryption_keys=key,
        bitrix24_oauth_server_url=emulator.url,
    )
