"""Test doubles for the client's collaborators: an in-memory token store and credentials."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from callbridge.crm.bitrix24.auth import TokenGrant
from callbridge.crm.bitrix24.rate_limit import PLANS, RatePlan


@dataclass(frozen=True)
class Tokens:
    access_token: str | None
    refresh_token: str | None
    client_endpoint: str = "https://portal.test/rest/"


class _Session:
    def __init__(self, store: MemoryTokenStore) -> None:
        self.store = store
        self.current = store.tokens

    async def save(self, grant: TokenGrant) -> None:
        self.store.pending = replace(
            self.store.tokens, access_token=grant.access_token, refresh_token=grant.refresh_token
        )


class MemoryTokenStore:
    """A TokenStore with a lock standing in for the row lock."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        self.pending: Tokens | None = None
        self.lock = asyncio.Lock()
        self.needs_reauth: str | None = None

    async def load(self) -> Tokens:
        return self.tokens

    @asynccontextmanager
    async def refreshing(self) -> AsyncIterator[_Session]:
        async with self.lock:
            self.pending = None
            yield _Session(self)
            if self.pending is not None:  # "commit"
                self.tokens = self.pending

    async def mark_needs_reauth(self, reason: str) -> None:
        self.needs_reauth = reason

    async def moved(self, client_endpoint: str) -> None:
        self.tokens = replace(self.tokens, client_endpoint=client_endpoint)


class StaticCredentials:
    """Credentials with a fixed token that record refreshes."""

    app_context = True

    def __init__(
        self,
        token: str = "tok-1",
        endpoint: str = "https://portal.test/rest/",
        plan: RatePlan = PLANS["standard"],
    ) -> None:
        self.token = token
        self._endpoint = endpoint
        self.key = "member-1"
        self.integration_id: int | None = 7
        self.plan = plan
        self.refreshed: list[str | None] = []

    async def endpoint(self) -> str:
        return self._endpoint

    async def access_token(self) -> str | None:
        return self.token

    async def refresh(self, rejected: str | None) -> None:
        self.refreshed.append(rejected)
        self.token = f"tok-{len(self.refreshed) + 1}"

    async def moved(self, client_endpoint: str) -> None:
        self._endpoint = client_endpoint
