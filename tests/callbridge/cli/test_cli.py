"""The callbridge command line: help, version, migrate, keygen, config, and one-line errors."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from cryptography.fernet import Fernet
from typer.testing import CliRunner, Result

from callbridge import __version__
from callbridge.cli import app
from callbridge.storage import migrate
from tests.conftest import Database

COMMANDS = [
    [],
    ["run"],
    ["serve"],
    ["worker"],
    ["migrate"],
    ["keygen"],
    ["config"],
    ["config", "show"],
    ["jobs"],
    ["jobs", "list"],
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Run in a tmp dir without outside CALLBRIDGE_ variables; restore logging afterwards."""
    for name in list(os.environ):
        if name.startswith("CALLBRIDGE_") and name != "CALLBRIDGE_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


class TestHelpAndVersion:
    def test_version(self) -> None:
        result = invoke("--version")

        assert result.exit_code == 0
        assert result.stdout.strip() == f"callbridge {__version__}"

    @pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "callbridge")
    def test_every_command_has_help(self, command: list[str]) -> None:
        result = invoke(*command, "--help")

        assert result.exit_code == 0, result.output
        assert "Usage:" in result.stdout

    def test_top_level_help_lists_the_commands(self) -> None:
        result = invoke("--help")

        listed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("│ ")}
        assert {"run", "serve", "worker", "migrate", "keygen", "config", "jobs"} <= listed

    def test_help_works_when_the_settings_are_broken(self) -> None:
        result = invoke("migrate", "--help", env={"CALLBRIDGE_PORT": "eighty"})

        assert result.exit_code == 0
        assert "Usage:" in result.stdout


class TestErrors:
    def test_bad_settings_give_one_line_and_no_traceback(self) -> None:
        result = invoke("migrate", env={"CALLBRIDGE_PORT": "eighty"})

        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("Error: ")
        assert "CALLBRIDGE_PORT" in lines[0]
        assert "Traceback" not in result.output

    def test_debug_adds_the_traceback(self) -> None:
        result = invoke("--debug", "migrate", env={"CALLBRIDGE_PORT": "eighty"})

        assert result.exit_code == 1
        assert "Traceback" in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("Error: ")

    def test_unreachable_database_names_the_variable(self) -> None:
        url = "postgresql+asyncpg://bridge:hunter2@127.0.0.1:1/callbridge"

        result = invoke("migrate", env={"CALLBRIDGE_DATABASE_URL": url})

        assert result.exit_code == 1
        [line] = result.stderr.strip().splitlines()
        assert "CALLBRIDGE_DATABASE_URL" in line
        assert "hunter2" not in line

    def test_missing_config_file_is_named(self, tmp_path: Path) -> None:
        result = invoke("--config", str(tmp_path / "nope.toml"), "config", "show")

        assert result.exit_code == 1
        assert "nope.toml" in result.stderr

    def test_an_unusable_var_dir_is_one_line(self, tmp_path: Path) -> None:
        not_a_dir = tmp_path / "file"
        not_a_dir.write_text("", encoding="utf-8")

        result = invoke("migrate", env={"CALLBRIDGE_VAR_DIR": str(not_a_dir / "var")})

        assert result.exit_code == 1
        [line] = result.stderr.strip().splitlines()
        assert "CALLBRIDGE_VAR_DIR" in line

    def test_run_refuses_a_busy_port(self, tmp_path: Path) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            env = {"CALLBRIDGE_PORT": str(port), "CALLBRIDGE_VAR_DIR": str(tmp_path / "var")}

            result = invoke("run", env=env)

        assert result.exit_code == 1
        [line] = result.stderr.strip().splitlines()
        assert f"127.0.0.1:{port}" in line
        assert "CALLBRIDGE_PORT" in line


class TestMigrate:
    def test_migrates_an_empty_sqlite_database_to_head(self, tmp_path: Path) -> None:
        url = sqlite_url(tmp_path / "sub" / "bridge.db")

        result = invoke("migrate", env={"CALLBRIDGE_DATABASE_URL": url})

        assert result.exit_code == 0, result.output
        head = migrate.head_revision()
        assert f"from an empty database to revision {head}" in result.stdout

        again = invoke("migrate", env={"CALLBRIDGE_DATABASE_URL": url})
        assert again.exit_code == 0
        assert f"already at revision {head}" in again.stdout

    def test_a_migrated_database_is_left_alone(self, fresh_database_url: str) -> None:
        result = invoke("migrate", env={"CALLBRIDGE_DATABASE_URL": fresh_database_url})

        assert result.exit_code == 0, result.output
        assert "already at revision" in result.stdout

    def test_explicit_revision(self, tmp_path: Path) -> None:
        url = sqlite_url(tmp_path / "bridge.db")
        head = migrate.head_revision()
        assert head is not None

        result = invoke("migrate", "--revision", head, env={"CALLBRIDGE_DATABASE_URL": url})

        assert result.exit_code == 0, result.output
        assert f"to revision {head}" in result.stdout

    def test_unknown_revision_is_one_line(self, tmp_path: Path) -> None:
        url = sqlite_url(tmp_path / "bridge.db")

        result = invoke("migrate", "--revision", "nosuch", env={"CALLBRIDGE_DATABASE_URL": url})

        assert result.exit_code == 1
        [line] = result.stderr.strip().splitlines()
        assert "nosuch" in line


class TestKeygen:
    def test_prints_a_fernet_key(self) -> None:
        result = invoke("keygen")

        assert result.exit_code == 0
        Fernet(result.stdout.strip().encode())

    def test_works_when_the_settings_are_broken(self) -> None:
        result = invoke("keygen", env={"CALLBRIDGE_ENCRYPTION_KEYS": "broken"})

        assert result.exit_code == 0
        Fernet(result.stdout.strip().encode())


class TestConfigShow:
    def test_shows_effective_settings_with_secrets_masked(self, tmp_path: Path) -> None:
        key = Fernet.generate_key().decode()
        config = tmp_path / "callbridge.toml"
        config.write_text('port = 9100\nbitrix24_client_id = "app.1"\n', encoding="utf-8")
        env = {
            "CALLBRIDGE_BITRIX24_CLIENT_SECRET": "client-secret-value",
            "CALLBRIDGE_ENCRYPTION_KEYS": key,
            "CALLBRIDGE_DATABASE_URL": "postgresql+asyncpg://bridge:db-password@db/cb",
        }

        result = invoke("--config", str(config), "config", "show", env=env)

        assert result.exit_code == 0, result.output
        shown = dict(line.split("=", 1) for line in result.stdout.strip().splitlines())
        assert shown["CALLBRIDGE_PORT"] == "9100"
        assert shown["CALLBRIDGE_BITRIX24_CLIENT_ID"] == "app.1"
        assert shown["CALLBRIDGE_BITRIX24_CLIENT_SECRET"] == "********"
        assert shown["CALLBRIDGE_ENCRYPTION_KEYS"] == "********"
        for secret in ("client-secret-value", key, "db-password"):
            assert secret not in result.output

    def test_default_database_is_marked(self) -> None:
        result = invoke("config", "show")

        assert "CALLBRIDGE_DATABASE_URL=sqlite+aiosqlite:///var/callbridge.db (default)" in (
            result.stdout
        )


def test_postgres_migrate_reports_the_head(database: Database) -> None:
    """The `database` fixture runs this once per backend."""
    result = invoke("migrate", env={"CALLBRIDGE_DATABASE_URL": database.url})

    assert result.exit_code == 0, result.output
    assert str(migrate.head_revision()) in result.stdout


class _ReturningWorker:
    """A worker whose run() returns at once, as when a side task dies."""

    async def run(self) -> None:
        return None

    def stop(self) -> None:  # pragma: no cover - nothing asks it to stop
        pass


def test_a_worker_that_stops_on_its_own_exits_non_zero(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("callbridge.cli.build_worker", lambda *_args: _ReturningWorker())

    result = invoke("worker", env={"CALLBRIDGE_DATABASE_URL": fresh_database_url})

    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "stopped on its own" in line
