"""``callbridge enterprise``: add, list, show, rotate-token; the token is printed once only."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from callbridge.cli import app as main_app
from callbridge.cli.enterprise import enterprise_app
from callbridge.config import Settings
from callbridge.storage.crypto import SecretBox
from tests.callbridge.cli.helpers import invoker, stored_enterprise
from tests.callbridge.web.test_app import make_settings


def cli(settings: Settings) -> Callable[..., Result]:
    return invoker(enterprise_app, "enterprise", settings)


def printed_token(result: Result) -> str:
    match = re.search(r"webhook token: (\S+)", result.output)
    assert match is not None, result.output
    return match.group(1)


def stored_token(settings: Settings, number: str) -> str | None:
    row = stored_enterprise(settings, number)
    return SecretBox(settings.fernet_keys()).decrypt_optional(row.webhook_secret_enc)


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


def stored_dirs(settings: Settings, number: str) -> list[str]:
    return list(stored_enterprise(settings, number).recordings_dirs)


class TestRecordingsDirectories:
    @pytest.fixture
    def monitor(self, tmp_path: Path) -> Path:
        path = tmp_path / "monitor"
        (path / "100").mkdir(parents=True)
        (path / "200").mkdir()
        return path

    @pytest.fixture
    def settings(self, fresh_database_url: str, tmp_path: Path, monitor: Path) -> Settings:
        return make_settings(tmp_path, fresh_database_url, recordings_dirs=[monitor])

    def test_set_show_and_clear(self, settings: Settings, monitor: Path) -> None:
        run = cli(settings)
        assert run("add", "100").exit_code == 0
        shown = run("show", "100")
        assert f"recordings:    the bridge's (CALLBRIDGE_RECORDINGS_DIRS: {monitor})" in (
            shown.output
        )
        assert stored_dirs(settings, "100") == []

        done = run("set-recordings", "100", f"{monitor}/100/", f"{monitor}/100")
        assert done.exit_code == 0, done.output
        assert stored_dirs(settings, "100") == [str(monitor / "100")]
        assert f"recordings:    {monitor / '100'}" in run("show", "100").output

        cleared = run("set-recordings", "100", "--clear")
        assert cleared.exit_code == 0, cleared.output
        assert stored_dirs(settings, "100") == []

    def test_add_with_recordings_directories(self, settings: Settings, monitor: Path) -> None:
        run = cli(settings)
        added = run(
            "add",
            "200",
            "--recordings-dir",
            str(monitor / "200"),
            "--recordings-dir",
            str(monitor / "200" / "archive"),
        )
        assert added.exit_code == 0, added.output
        assert stored_dirs(settings, "200") == [
            str(monitor / "200"),
            str(monitor / "200" / "archive"),
        ]
        assert "not a directory here" not in added.output

    def test_a_directory_outside_the_bridges_is_refused(
        self, settings: Settings, tmp_path: Path
    ) -> None:
        run = cli(settings)
        assert run("add", "100").exit_code == 0
        for outside in (str(tmp_path / "elsewhere"), f"{tmp_path}/monitor/../elsewhere"):
            result = run("set-recordings", "100", outside)
            assert result.exit_code == 1
            assert "is not inside CALLBRIDGE_RECORDINGS_DIRS" in result.output
        relative = run("set-recordings", "100", "monitor/100")
        assert relative.exit_code == 1
        assert "not an absolute directory" in relative.output
        refused = run("add", "300", "--recordings-dir", str(tmp_path))
        assert refused.exit_code == 1
        assert stored_dirs(settings, "100") == []
        assert run("show", "300").exit_code == 1  # refused before anything was added

    def test_a_symlink_out_of_the_bridges_directories_is_refused(
        self, settings: Settings, monitor: Path, tmp_path: Path
    ) -> None:
        (tmp_path / "elsewhere").mkdir()
        (monitor / "escape").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        run = cli(settings)
        assert run("add", "100").exit_code == 0
        result = run("set-recordings", "100", str(monitor / "escape"))
        assert result.exit_code == 1
        assert "is not inside CALLBRIDGE_RECORDINGS_DIRS" in result.output

    def test_overlapping_another_enterprises_directory_is_refused(
        self, settings: Settings, monitor: Path
    ) -> None:
        run = cli(settings)
        assert run("add", "100", "--recordings-dir", str(monitor / "100")).exit_code == 0
        assert run("add", "200").exit_code == 0
        for clash in (str(monitor), str(monitor / "100" / "sub")):
            result = run("set-recordings", "200", clash)
            assert result.exit_code == 1, result.output
            assert "overlapping recordings directories" in result.output
            assert "enterprise 100's" in result.output
        assert stored_dirs(settings, "200") == []
        shared = run("set-recordings", "200", str(monitor / "100"), "--allow-overlap")
        assert shared.exit_code == 0, shared.output
        assert stored_dirs(settings, "200") == [str(monitor / "100")]

    def test_a_shared_bridge_without_own_directories_says_so(
        self, settings: Settings, monitor: Path
    ) -> None:
        run = cli(settings)
        assert run("add", "100").exit_code == 0
        assert "serves several enterprises" not in run("show", "100").output
        assert run("add", "200", "--recordings-dir", str(monitor / "200")).exit_code == 0
        assert "serves several enterprises" in run("show", "100").output
        assert "serves several enterprises" not in run("show", "200").output

    def test_needs_directories_or_clear_and_a_known_enterprise(self, settings: Settings) -> None:
        run = cli(settings)
        assert "either the recordings directories" in run("set-recordings", "100").output
        unknown = run("set-recordings", "999", "--clear")
        assert unknown.exit_code == 1
        assert "no enterprise 999" in unknown.output

    def test_an_empty_bridge_setting_is_explained(
        self, fresh_database_url: str, tmp_path: Path
    ) -> None:
        run = cli(make_settings(tmp_path, fresh_database_url, recordings_dirs=[]))
        assert run("add", "100").exit_code == 0
        result = run("set-recordings", "100", "/var/spool/asterisk/monitor/100")
        assert result.exit_code == 1
        assert "CALLBRIDGE_RECORDINGS_DIRS is empty" in result.output
