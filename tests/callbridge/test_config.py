"""Settings: environment, TOML file, precedence, readable errors, secrets in production."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from callbridge.config import Environment, LogFormat, load_settings
from callbridge.domain.errors import ConfigurationError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CALLBRIDGE_ variable from the outside leaks into these tests; ./var is a tmp dir."""
    for name in list(os.environ):
        if name.startswith("CALLBRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


class TestDefaults:
    def test_dev_defaults_need_nothing(self) -> None:
        settings = load_settings()

        assert settings.environment is Environment.DEV
        assert settings.host == "127.0.0.1"
        assert settings.port == 8000
        assert settings.effective_database_url == "sqlite+aiosqlite:///var/callbridge.db"
        assert settings.is_sqlite
        assert settings.bitrix24_oauth_server_url == "https://oauth.bitrix.info"


class TestEnvironmentVariables:
    def test_variables_are_read(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CALLBRIDGE_PORT", "9001")
        monkeypatch.setenv("CALLBRIDGE_LOG_FORMAT", "json")
        monkeypatch.setenv("CALLBRIDGE_DATABASE_URL", "postgresql+asyncpg://u@db/cb")

        settings = load_settings()

        assert settings.port == 9001
        assert settings.log_format is LogFormat.JSON
        assert not settings.is_sqlite

    def test_a_bad_variable_gives_one_readable_line_naming_it(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CALLBRIDGE_PORT", "eighty")

        with pytest.raises(ConfigurationError) as caught:
            load_settings()

        message = caught.value.message
        assert "CALLBRIDGE_PORT" in message
        assert "\n" not in message
        assert "pydantic" not in message.lower()

    def test_every_bad_variable_is_named(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CALLBRIDGE_PORT", "0")
        monkeypatch.setenv("CALLBRIDGE_PUBLIC_BASE_URL", "bridge.example.com")

        with pytest.raises(ConfigurationError) as caught:
            load_settings()

        assert "CALLBRIDGE_PORT" in caught.value.message
        assert "CALLBRIDGE_PUBLIC_BASE_URL" in caught.value.message

    def test_unknown_database_driver_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CALLBRIDGE_DATABASE_URL", "mysql://u@db/cb")

        with pytest.raises(ConfigurationError, match="CALLBRIDGE_DATABASE_URL"):
            load_settings()


class TestTomlFile:
    def test_values_are_read_from_the_file(self, tmp_path: Path) -> None:
        config = _write(
            tmp_path / "callbridge.toml",
            'port = 9100\nlog_format = "json"\nbitrix24_client_id = "app.123"\n',
        )

        settings = load_settings(config)

        assert settings.port == 9100
        assert settings.log_format is LogFormat.JSON
        assert settings.bitrix24_client_id == "app.123"

    def test_environment_beats_the_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        config = _write(tmp_path / "callbridge.toml", "port = 9100\nhost = '0.0.0.0'\n")
        monkeypatch.setenv("CALLBRIDGE_PORT", "9200")

        settings = load_settings(config)

        assert settings.port == 9200
        assert settings.host == "0.0.0.0"

    def test_explicit_overrides_beat_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CALLBRIDGE_PORT", "9200")

        assert load_settings(port=9300).port == 9300

    def test_a_bad_value_in_the_file_names_the_variable_and_the_file(self, tmp_path: Path) -> None:
        config = _write(tmp_path / "callbridge.toml", 'port = "many"\n')

        with pytest.raises(ConfigurationError) as caught:
            load_settings(config)

        assert "CALLBRIDGE_PORT" in caught.value.message
        assert str(config) in caught.value.message

    def test_an_unknown_key_in_the_file_is_refused(self, tmp_path: Path) -> None:
        config = _write(tmp_path / "callbridge.toml", "prot = 9100\n")

        with pytest.raises(ConfigurationError, match="prot"):
            load_settings(config)

    def test_a_missing_file_is_named(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigurationError, match="does not exist"):
            load_settings(tmp_path / "missing.toml")

    def test_a_malformed_file_is_named(self, tmp_path: Path) -> None:
        config = _write(tmp_path / "callbridge.toml", "port = = 1\n")

        with pytest.raises(ConfigurationError, match=r"callbridge\.toml"):
            load_settings(config)


class TestSecrets:
    def test_production_requires_encryption_keys(self) -> None:
        with pytest.raises(ConfigurationError, match="CALLBRIDGE_ENCRYPTION_KEYS"):
            load_settings(environment="production")

    def test_production_accepts_comma_separated_keys(self, monkeypatch: pytest.MonkeyPatch) -> None:
        new, old = Fernet.generate_key().decode(), Fernet.generate_key().decode()
        monkeypatch.setenv("CALLBRIDGE_ENVIRONMENT", "production")
        monkeypatch.setenv("CALLBRIDGE_ENCRYPTION_KEYS", f"{new}, {old}")

        settings = load_settings()

        assert settings.fernet_keys() == [new.encode(), old.encode()]

    def test_production_requires_the_client_secret_with_a_client_id(self) -> None:
        with pytest.raises(ConfigurationError, match="CALLBRIDGE_BITRIX24_CLIENT_SECRET"):
            load_settings(
                environment="production",
                encryption_keys=Fernet.generate_key().decode(),
                bitrix24_client_id="app.123",
            )

    def test_a_malformed_key_points_to_keygen(self) -> None:
        with pytest.raises(ConfigurationError, match="callbridge keygen"):
            load_settings(encryption_keys="not-a-key")

    def test_secrets_are_not_shown_in_the_settings_repr(self) -> None:
        settings = load_settings(bitrix24_client_secret="very-secret-value")

        assert "very-secret-value" not in repr(settings)

    def test_dev_key_is_generated_once_with_mode_0600(self, tmp_path: Path) -> None:
        settings = load_settings(var_dir=tmp_path / "var")

        first = settings.fernet_keys()
        second = settings.fernet_keys()

        key_file = tmp_path / "var" / "secret.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert first == second
        Fernet(first[0])  # a valid key
