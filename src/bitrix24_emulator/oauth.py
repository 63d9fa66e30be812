"""The OAuth server: ``/oauth/authorize/`` and ``/oauth/token/`` (spec §3.2-§3.4)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from bitrix24_emulator.emulator import Emulator
from bitrix24_emulator.encoding import decode_query
from bitrix24_emulator.tokens import AccessToken, RefreshToken


class OAuthError(Exception):
    """An authorization-server error body ``{"error", "error_description"}``."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(error)
        self.error = error
        self.description = description
        self.status = status


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json")


class OAuthServer:
    """Serves the authorization and token endpoints for one emulator."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu

    def _log(
        self, request: Request, name: str, params: dict[str, Any], status: int, error: str | None
    ) -> None:
        self.emu.log_request(
            {
                "time": self.emu.clock.now(),
                "http_method": request.method,
                "path": request.url.path,
                "method": name,
                "params": params,
                "auth_kind": "oauth-server",
                "client_id": params.get("client_id"),
                "user_id": None,
                "status": status,
                "error": error,
                "duration_ms": 0.0,
            }
        )

    async def authorize(self, request: Request) -> Response:
        """Auto-approve and redirect back with ``code`` (30 s), ``domain``, ``member_id``..."""
        emu = self.emu
        emu.seen_base_url(str(request.base_url))
        params = decode_query(request.url.query)
        client_id = str(params.get("client_id") or "")
        app = emu.portal.apps.get(client_id)
        # The portal shows its own error page; it never redirects to an unknown app (§3.2).
        if app is None or not app.installed:
            self._log(request, "oauth.authorize", params, 400, "not_installed")
            return HTMLResponse(
                "<html><body>The application is not installed on this portal.</body></html>",
                status_code=400,
            )
        try:
            user_id = int(params.get("user_id") or app.installed_by)
        except ValueError:
            user_id = app.installed_by
        code = emu.tokens.issue_code(client_id, user_id, emu.clock.now())
        query = {
            "code": code.code,
            "domain": emu.portal.domain,
            "member_id": emu.portal.member_id,
            "scope": app.scope_string(emu.portal.behaviour.scope_separator),
            "server_domain": emu.auth_host,
        }
        if "state" in params:
            query["state"] = str(params["state"])
        target = app.redirect_uri or app.handler_url
        separator = "&" if "?" in target else "?"
        self._log(request, "oauth.authorize", params, 302, None)
        return RedirectResponse(f"{target}{separator}{urlencode(query)}", status_code=302)

    async def token(self, request: Request) -> Response:
        """Exchange a code or a refresh token for a new pair (refresh tokens rotate)."""
        params = decode_query(request.url.query)
        if request.method == "POST":
            raw = await request.body()
            if "json" in request.headers.get("content-type", ""):
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                if isinstance(body, dict):
                    params.update(body)
            elif raw:
                params.update(decode_query(raw))
        self.emu.seen_base_url(str(request.base_url))
        try:
            body = self._grant(params)
        except OAuthError as err:
            self._log(request, "oauth.token", params, err.status, err.error)
            return _json({"error": err.error, "error_description": err.description}, err.status)
        self._log(request, "oauth.token", params, 200, None)
        return _json(body)

    def _grant(self, params: dict[str, Any]) -> dict[str, Any]:
        emu = self.emu
        behaviour = emu.portal.behaviour
        now = emu.clock.now()
        grant = str(params.get("grant_type") or "")
        client_id = str(params.get("client_id") or "")
        if not grant:
            raise OAuthError("invalid_request", 'No "grant_type" parameter found')
        if not client_id:
            raise OAuthError("invalid_request", 'No "client_id" parameter found')
        app = emu.portal.apps.get(client_id)
        if app is None or str(params.get("client_secret") or "") != app.client_secret:
            raise OAuthError(
                "invalid_client", "Invalid client credentials", behaviour.invalid_client_status
            )
        if not app.installed:
            raise OAuthError("NOT_INSTALLED", "Application not installed", 401)
        if grant == "authorization_code":
            value = str(params.get("code") or "")
            if not value:
                raise OAuthError("invalid_request", 'No "code" parameter found')
            code = emu.tokens.codes.get(value)
            if code is None or code.used or code.expires_at <= now or code.client_id != client_id:
                raise OAuthError("invalid_grant", "Invalid authorization code")
            code.used = True
            access, refresh = emu.tokens.issue_pair(client_id, code.user_id, now)
            return self._token_body(
                access, refresh, app.scope_string(behaviour.scope_separator), app.status
            )
        if grant == "refresh_token":
            value = str(params.get("refresh_token") or "")
            if not value:
                raise OAuthError("invalid_request", 'No "refresh_token" parameter found')
            old = emu.tokens.refresh.get(value)
            if (
                old is None
                or old.revoked
                or old.client_id != client_id
                or old.expires_at <= now
                or (old.used and behaviour.refresh_token_single_use)
            ):
                raise OAuthError("invalid_grant", "Invalid refresh token")
            old.used = True
            if behaviour.revoke_access_on_refresh:
                for token in emu.tokens.access.values():
                    if token.refresh_token == old.token:
                        token.revoked = True
            access, refresh = emu.tokens.issue_pair(client_id, old.user_id, now)
            return self._token_body(
                access, refresh, app.scope_string(behaviour.scope_separator), app.status
            )
        raise OAuthError("unsupported_grant_type", f"Unsupported grant_type {grant!r}")

    def _token_body(
        self, access: AccessToken, refresh: RefreshToken, scope: str, status: str
    ) -> dict[str, Any]:
        emu = self.emu
        return {
            "access_token": access.token,
            "expires": int(access.expires_at),
            "expires_in": emu.tokens.access_lifetime,
            "scope": scope,
            "domain": emu.auth_host,
            "server_endpoint": emu.rest_endpoint,
            "status": status,
            "client_endpoint": emu.rest_endpoint,
            "member_id": emu.portal.member_id,
            "user_id": access.user_id,
            "refresh_token": refresh.token,
        }
