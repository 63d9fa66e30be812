"""Is the database reachable, and is its schema current? For `/readyz` and the CLI.

Driver and network failures are translated here, at the boundary, into :class:`StorageError`
with one line that names the setting to fix.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.domain.errors import MigrationsPendingError, StorageError
from callbridge.storage import migrate

DATABASE_URL_VARIABLE = "CALLBRIDGE_DATABASE_URL"
PROBE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class SchemaStatus:
    """The schema revision the database is at, and the one the code expects."""

    current: str | None
    head: str | None

    @property
    def at_head(self) -> bool:
        """Whether no migration is pending."""
        return self.current == self.head


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "(unparsable URL)"


def connection_error(url: str, err: BaseException) -> StorageError:
    """A one-line StorageError for a failure to reach the database at ``url``."""
    reason = getattr(err, "orig", None) or err
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    if isinstance(err, TimeoutError):
        text = f"no answer within {PROBE_TIMEOUT_SECONDS:g}s"
    return StorageError(
        f"cannot use the database at {safe_url(url)}: {text}; check {DATABASE_URL_VARIABLE}"
    )


async def schema_status(engine: AsyncEngine) -> SchemaStatus:
    """Connect and read the schema revision; raise StorageError if the database is unreachable."""
    url = engine.url.render_as_string(hide_password=False)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            current = await migrate.current_revision(engine)
    except (SQLAlchemyError, OSError, TimeoutError) as err:
        raise connection_error(url, err) from err
    return SchemaStatus(current=current, head=migrate.head_revision())


async def ensure_ready(engine: AsyncEngine) -> SchemaStatus:
    """Raise StorageError if unreachable, MigrationsPendingError unless the schema is at head."""
    status = await schema_status(engine)
    if not status.at_head:
        raise MigrationsPendingError(
            f"database schema is at {status.current or 'nothing'}, code expects {status.head}; "
            "run `callbridge migrate`"
        )
    return status
