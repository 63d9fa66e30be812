"""Settings: environment variables prefixed ``CALLBRIDGE_``, optionally a TOML file.

Precedence, highest first: explicit overrides, environment, the TOML file given with
``--config``, the defaults below. Invalid settings raise :class:`ConfigurationError` with one
readable line per problem, naming the environment variable to fix.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from callbridge.domain.errors import ConfigurationError

ENV_PREFIX = "CALLBRIDGE_"
DEV_KEY_FILE = "secret.key"


class Environment(StrEnum):
    """Where callbridge runs: dev generates what it lacks, production demands it."""

    DEV = "dev"
    PRODUCTION = "production"


class LogFormat(StrEnum):
    """How log lines look."""

    CONSOLE = "console"
    JSON = "json"


class Settings(BaseSettings):
    """All of callbridge's settings."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    environment: Environment = Environment.DEV
    var_dir: Path = Path("var")
    database_url: str = ""
    public_base_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_format: LogFormat = LogFormat.CONSOLE
    log_level: str = "INFO"
    encryption_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    bitrix24_client_id: str = ""
    bitrix24_client_secret: SecretStr = SecretStr("")
    bitrix24_oauth_server_url: str = "https://oauth.bitrix.info"
    http_timeout_seconds: float = Field(default=10.0, gt=0)
    worker_concurrency: int = Field(default=8, ge=1, le=1000)
    worker_poll_interval_seconds: float = Field(default=1.0, gt=0)
    worker_shutdown_timeout_seconds: float = Field(default=30.0, ge=0)
    job_lease_seconds: float = Field(default=60.0, gt=0)
    #: Pack ready Bitrix24 commands into ``batch`` requests (off: one request per command).
    dispatcher_batching: bool = True
    api_log_retention_days: float = Field(default=30.0, gt=0)
    job_retention_days: float = Field(default=7.0, gt=0)
    maintenance_interval_seconds: float = Field(default=3600.0, gt=0)
    #: When set, ``/metrics`` answers only requests with ``Authorization: Bearer <token>``.
    metrics_token: SecretStr = SecretStr("")
    #: Listen to the AMI of every enterprise that has an AMI URL (one listener per PBX).
    ami_enabled: bool = True
    #: How often the worker looks for enterprises whose AMI URL was added or changed.
    ami_poll_interval_seconds: float = Field(default=10.0, gt=0)
    #: Directories recordings reported by path may be read from (comma-separated); a path
    #: outside them, after resolving symlinks and ``..``, is refused and never read. The upper
    #: bound of every enterprise's own directories (``callbridge enterprise set-recordings``).
    recordings_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path("/var/spool/asterisk/monitor")]
    )
    #: The largest recording file uploaded (bytes); a bigger one is refused.
    recording_max_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    #: Up to this size a recording goes Base64 in ``FILE_CONTENT``; above, by ``uploadUrl``.
    recording_inline_max_bytes: int = Field(default=4 * 1024 * 1024, ge=0)
    #: How long a recording file that does not exist yet is waited for (MixMonitor, NFS lag).
    recording_wait_seconds: float = Field(default=600.0, ge=0)
    #: Recordings uploaded at once per process (outside the portals' command lanes).
    recording_upload_concurrency: int = Field(default=2, ge=1, le=100)

    @field_validator("encryption_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("recordings_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("recordings_dirs")
    @classmethod
    def _absolute_dirs(cls, value: list[Path]) -> list[Path]:
        for path in value:
            if not path.is_absolute():
                raise ValueError(f"{str(path)!r} is not an absolute directory")
        return value

    @field_validator("encryption_keys")
    @classmethod
    def _keys_are_fernet(cls, value: list[SecretStr]) -> list[SecretStr]:
        for index, key in enumerate(value):
            try:
                Fernet(key.get_secret_value())
            except ValueError as err:
                raise ValueError(
                    f"key #{index + 1} is not a Fernet key (32 url-safe base64 bytes); "
                    "generate one with `callbridge keygen`"
                ) from err
        return value

    @field_validator("public_base_url", "bitrix24_oauth_server_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if value and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg:// "
                "(e.g. postgresql+asyncpg://user@host/db)"
            )
        return value

    @model_validator(mode="after")
    def _production_has_secrets(self) -> Settings:
        if self.environment is Environment.PRODUCTION:
            if not self.encryption_keys:
                raise ValueError(
                    f"{ENV_PREFIX}ENCRYPTION_KEYS is required in production "
                    "(comma-separated Fernet keys, newest first; `callbridge keygen` makes one)"
                )
            if self.bitrix24_client_id and not self.bitrix24_client_secret.get_secret_value():
                raise ValueError(
                    f"{ENV_PREFIX}BITRIX24_CLIENT_SECRET is required when "
                    f"{ENV_PREFIX}BITRIX24_CLIENT_ID is set"
                )
        return self

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file under ``var_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.var_dir / 'callbridge.db'}"

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is SQLite (single process, polling worker)."""
        return self.effective_database_url.startswith("sqlite")

    def fernet_keys(self) -> list[bytes]:
        """The keys for secrets at rest, newest first; in dev, generated once under ``var_dir``."""
        if self.encryption_keys:
            return [key.get_secret_value().encode() for key in self.encryption_keys]
        if self.environment is Environment.PRODUCTION:  # pragma: no cover - refused by validator
            raise ConfigurationError(f"{ENV_PREFIX}ENCRYPTION_KEYS is required in production")
        path = self.var_dir / DEV_KEY_FILE
        if not path.exists():
            self.var_dir.mkdir(parents=True, exist_ok=True)
            # 0600 from the start: the key must never be readable by others, not even briefly.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(Fernet.generate_key())
        return [path.read_bytes().strip()]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Overrides, then environment, then the TOML file (when one was given)."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = settings_cls.model_config.get("toml_file")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings, or raise ConfigurationError naming every bad variable."""
    settings_cls: type[Settings] = Settings
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigurationError(f"config file {config_file} does not exist")

        class _WithFile(Settings):
            model_config = SettingsConfigDict(toml_file=config_file)

        settings_cls = _WithFile
    try:
        return settings_cls(**overrides)
    except ValidationError as err:
        raise ConfigurationError(_describe(err, config_file)) from None
    except ValueError as err:  # a malformed TOML file
        raise ConfigurationError(f"cannot read config file {config_file}: {err}") from None


def _describe(err: ValidationError, config_file: Path | None) -> str:
    problems = []
    for item in err.errors():
        field = ".".join(str(part) for part in item["loc"])
        name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        where = f" (or `{field}` in {config_file})" if config_file and field else ""
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{name}{where}: {message}")
    return "invalid settings: " + "; ".join(problems)
