"""Database back ends of the Bitrix24 client: tokens, the shared rate budget, the API log.

They fit the protocols of ``callbridge.crm.bitrix24`` (``TokenStore``, ``RateBudgetStore``,
``ApiLogWriter``) by shape, without importing them (storage and crm are independent layers).

Unlike repositories, these own their transactions, each short and committed at once, because
what they record must outlive the caller's transaction: a refreshed token pair is the only valid
one the moment the OAuth server answers (the old refresh token is spent), a budget slot is taken
the moment it is reserved, and a log line records a request that was sent whatever happens next.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge.domain.errors import StorageError
from callbridge.storage.crypto import SecretBox
from callbridge.storage.models import ApiCall, Bitrix24Integration, IntegrationStatus
from callbridge.storage.repositories.api_calls import ApiCallRepository
from callbridge.storage.repositories.integrations import IntegrationRepository
from callbridge.storage.repositories.rate_budgets import RateBudgetRepository
from callbridge.storage.types import utcnow


class IntegrationNotFoundError(StorageError):
    """No Bitrix24 integration has this member_id."""


@dataclass(frozen=True)
class IntegrationTokens:
    """An integration's tokens in clear text, as read from its row."""

    access_token: str | None
    refresh_token: str | None
    client_endpoint: str
    server_endpoint: str
    expires_at: datetime | None
    status: str


class GrantFields(Protocol):
    """What a new token pair carries (``crm.bitrix24.auth.TokenGrant`` has these)."""

    @property
    def access_token(self) -> str:
        """New access token."""
        ...

    @property
    def refresh_token(self) -> str:
        """New refresh token."""
        ...

    @property
    def expires_at(self) -> datetime:
        """When the access token expires."""
        ...

    @property
    def client_endpoint(self) -> str:
        """The portal's REST base URL, or ""."""
        ...

    @property
    def scope(self) -> str:
        """Granted scopes, or ""."""
        ...


def _tokens(repo: IntegrationRepository, row: Bitrix24Integration) -> IntegrationTokens:
    return IntegrationTokens(
        access_token=repo.access_token(row),
        refresh_token=repo.refresh_token(row),
        client_endpoint=row.client_endpoint,
        server_endpoint=row.server_endpoint,
        expires_at=row.expires_at,
        status=row.status,
    )


class _RefreshSession:
    """The transaction that holds an integration's row lock during a refresh."""

    def __init__(self, repo: IntegrationRepository, row: Bitrix24Integration) -> None:
        self._repo = repo
        self._row = row
        self.current = _tokens(repo, row)

    async def save(self, grant: GrantFields) -> None:
        """Store the new pair in this transaction (committed when the lock is released)."""
        row = self._row
        if grant.client_endpoint:
            row.client_endpoint = grant.client_endpoint
            row.domain = urlsplit(grant.client_endpoint).netloc or row.domain
        if grant.scope:
            row.scope = grant.scope
        if row.status == IntegrationStatus.NEEDS_REAUTH.value:
            row.status, row.status_reason = IntegrationStatus.ACTIVE.value, ""
        await self._repo.set_tokens(
            row,
            access_token=grant.access_token,
            refresh_token=grant.refresh_token,
            expires_at=grant.expires_at,
        )


class DatabaseTokenStore:
    """One integration's tokens, with the row lock that makes a refresh single-flight."""

    def __init__(
        self, session_factory: async_sessionmaker[AsyncSession], box: SecretBox, member_id: str
    ) -> None:
        self.session_factory = session_factory
        self.box = box
        self.member_id = member_id

    async def _row(
        self, repo: IntegrationRepository, *, for_update: bool = False
    ) -> Bitrix24Integration:
        row = await repo.by_member_id(self.member_id, for_update=for_update)
        if row is None:
            raise IntegrationNotFoundError(
                f"no Bitrix24 integration with member_id {self.member_id}"
            )
        return row

    async def load(self) -> IntegrationTokens:
        """The tokens as stored now."""
        async with self.session_factory() as session:
            repo = IntegrationRepository(session, self.box)
            return _tokens(repo, await self._row(repo))

    @asynccontextmanager
    async def refreshing(self) -> AsyncIterator[_RefreshSession]:
        """Lock the row (``FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` locks the database)."""
        async with self.session_factory() as session, session.begin():
            repo = IntegrationRepository(session, self.box)
            yield _RefreshSession(repo, await self._row(repo, for_update=True))

    async def mark_needs_reauth(self, reason: str) -> None:
        """Pause the integration until an administrator reconnects it."""
        async with self.session_factory() as session, session.begin():
            repo = IntegrationRepository(session, self.box)
            row = await self._row(repo, for_update=True)
            if row.status == IntegrationStatus.ACTIVE.value:
                await repo.update(
                    row, status=IntegrationStatus.NEEDS_REAUTH.value, status_reason=reason
                )

    async def moved(self, client_endpoint: str) -> None:
        """The portal answered from a new domain: store it."""
        async with self.session_factory() as session, session.begin():
            repo = IntegrationRepository(session, self.box)
            row = await self._row(repo, for_update=True)
            await repo.update(
                row,
                client_endpoint=client_endpoint,
                domain=urlsplit(client_endpoint).netloc or row.domain,
            )


class DatabaseRateBudget:
    """The shared rate budget: one short transaction per reservation."""

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self.session_factory = session_factory

    async def reserve(self, key: str, capacity: int, rate: float, recovery: float) -> float:
        """Take a slot; returns the seconds to wait."""
        async with self.session_factory() as session, session.begin():
            return await RateBudgetRepository(session).reserve(key, capacity, rate, recovery)

    async def penalise(
        self, key: str, capacity: int, rate: float, factor: float, floor: float, recovery: float
    ) -> None:
        """Slow every process down for this portal."""
        async with self.session_factory() as session, session.begin():
            await RateBudgetRepository(session).penalise(
                key, capacity, rate, factor, floor, recovery
            )


class ApiCallFields(Protocol):
    """One API log record (``crm.bitrix24.api_log.ApiCallRecord`` has these)."""

    @property
    def method(self) -> str:
        """Method name, or ``batch``."""
        ...

    @property
    def started_at(self) -> datetime:
        """When the request started."""
        ...

    @property
    def duration_ms(self) -> float:
        """How long it took."""
        ...

    @property
    def integration_id(self) -> int | None:
        """Which integration."""
        ...

    @property
    def batch_size(self) -> int:
        """Commands in a batch, else 0."""
        ...

    @property
    def http_status(self) -> int | None:
        """HTTP status, None when no answer came."""
        ...

    @property
    def error_code(self) -> str | None:
        """Bitrix24's error code or the transport error."""
        ...

    @property
    def operating(self) -> float | None:
        """``time.operating`` of the answer."""
        ...


class DatabaseApiLogWriter:
    """Writes API log records to ``api_calls``."""

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self.session_factory = session_factory

    async def write(self, entries: Sequence[ApiCallFields]) -> None:
        """Insert the records in one transaction."""
        async with self.session_factory() as session, session.begin():
            session.add_all(
                ApiCall(
                    integration_id=entry.integration_id,
                    method=entry.method[:255],
                    batch_size=entry.batch_size,
                    started_at=entry.started_at,
                    duration_ms=entry.duration_ms,
                    http_status=entry.http_status,
                    error_code=(entry.error_code or None) and entry.error_code[:128],
                    operating=entry.operating,
                )
                for entry in entries
            )


async def purge_api_log(
    session_factory: async_sessionmaker[AsyncSession], retention_days: float
) -> int:
    """Delete API log rows older than the retention; returns how many."""
    cutoff = utcnow() - timedelta(days=retention_days)
    async with session_factory() as session, session.begin():
        return await ApiCallRepository(session).purge_older_than(cutoff)
