"""Schema migrations, run programmatically (``callbridge migrate``, tests, start-up checks)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.domain.errors import MigrationsPendingError, StorageError
from callbridge.storage.db import create_unpooled_engine


def _script_location() -> Path:
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise StorageError("migration scripts not found; reinstall callbridge")  # pragma: no cover


def alembic_config() -> Config:
    """An Alembic config pointing at callbridge's migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    return config


def head_revision() -> str | None:
    """The newest revision in the migration scripts."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _run(connection: Connection, action: str, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    if action == "upgrade":
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)


async def _apply(url: str, action: str, revision: str) -> None:
    engine = create_unpooled_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run, action, revision)
    except SQLAlchemyError as err:
        raise StorageError(f"migration failed: {err}") from err
    finally:
        await engine.dispose()


async def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision``."""
    await _apply(url, "upgrade", revision)


async def downgrade(url: str, revision: str = "base") -> None:
    """Downgrade the database at ``url`` to ``revision``."""
    await _apply(url, "downgrade", revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def ensure_at_head(engine: AsyncEngine) -> None:
    """Raise MigrationsPendingError unless the schema is at the newest revision."""
    current = await current_revision(engine)
    head = head_revision()
    if current != head:
        raise MigrationsPendingError(
            f"database schema is at {current or 'nothing'}, code expects {head}; "
            "run `callbridge migrate`"
        )
