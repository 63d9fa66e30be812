"""OAuth codes, access tokens and refresh tokens the emulated authorization server issues (§3)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass


@dataclass
class AccessToken:
    """An access token (``auth`` of REST calls)."""

    token: str
    client_id: str
    user_id: int
    expires_at: float
    refresh_token: str | None = None
    revoked: bool = False


@dataclass
class RefreshToken:
    """A refresh token; single use when the behaviour says so."""

    token: str
    client_id: str
    user_id: int
    expires_at: float
    used: bool = False
    revoked: bool = False


@dataclass
class AuthCode:
    """An authorization code from ``/oauth/authorize/`` (lives 30 s)."""

    code: str
    client_id: str
    user_id: int
    expires_at: float
    used: bool = False


class TokenStore:
    """All tokens of the portal, by value."""

    def __init__(self, access_lifetime: int, refresh_lifetime: int, code_lifetime: int) -> None:
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        self.code_lifetime = code_lifetime
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}
        self.codes: dict[str, AuthCode] = {}

    def issue_pair(
        self, client_id: str, user_id: int, now: float
    ) -> tuple[AccessToken, RefreshToken]:
        """A new access token and the refresh token that renews it."""
        refresh = RefreshToken(
            secrets.token_hex(35), client_id, user_id, now + self.refresh_lifetime
        )
        access = AccessToken(
            secrets.token_hex(35), client_id, user_id, now + self.access_lifetime, refresh.token
        )
        self.access[access.token] = access
        self.refresh[refresh.token] = refresh
        return access, refresh

    def issue_code(self, client_id: str, user_id: int, now: float) -> AuthCode:
        """A fresh authorization code."""
        code = AuthCode(secrets.token_hex(35), client_id, user_id, now + self.code_lifetime)
        self.codes[code.code] = code
        return code

    def expire_all(self, now: float, client_id: str | None = None) -> int:
        """Make live access tokens expired (forced expiry fault); returns how many."""
        count = 0
        for token in self.access.values():
            if (client_id is None or token.client_id == client_id) and token.expires_at > now:
                token.expires_at = now - 1
                count += 1
        return count

    def revoke_app(self, client_id: str) -> None:
        """Kill every token of an app (uninstall)."""
        for access in self.access.values():
            if access.client_id == client_id:
                access.revoked = True
        for refresh in self.refresh.values():
            if refresh.client_id == client_id:
                refresh.revoked = True

    def clear(self) -> None:
        """Forget everything."""
        self.access.clear()
        self.refresh.clear()
        self.codes.clear()
