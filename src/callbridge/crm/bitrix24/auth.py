"""The app's side of Bitrix24 OAuth: installs, the authorization-code flow, refresh, events.

What the portal sends us
    *Install POST* (the app's page opened in the portal frame): query ``DOMAIN``, ``PROTOCOL``,
    ``APP_SID``; form ``AUTH_ID``, ``AUTH_EXPIRES``, ``REFRESH_ID``, ``SERVER_ENDPOINT``,
    ``APPLICATION_TOKEN``, ``APPLICATION_SCOPE``, ``member_id``, ``status``
    (:func:`parse_install_post`). *Events* (``ONAPPINSTALL``, ``ONAPPUNINSTALL``, telephony):
    form-encoded, bracketed keys, ``auth[application_token]`` (:func:`parse_event`).

Refresh (spec §3.3, §9.1)
    Refresh tokens rotate and are single use, so a portal's refresh must happen once, whoever
    notices the expiry first. :class:`OAuthCredentials` makes concurrent callers of one process
    wait on one refresh (an ``asyncio.Lock``); across processes its :class:`TokenStore` takes the
    integration's row lock (``SELECT … FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite),
    re-reads the tokens (another process may have refreshed while we waited) and stores the new
    pair in the same transaction, before anyone can use it. We refresh on ``expired_token`` only,
    never on a timer (the OAuth server may block apps that do).

Whom we send ``client_secret`` to
    Only the configured OAuth server (or the two official ones). ``server_endpoint`` and
    ``server_domain`` arrive in requests anyone can forge; following them would hand our
    secret to whoever sent them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import httpx

from callbridge.crm.bitrix24.errors import (
    AppContextRequired,
    Bitrix24Error,
    RefreshRejected,
    UnexpectedResponse,
    error_from_response,
    error_from_transport,
)
from callbridge.crm.bitrix24.rate_limit import PLANS, RatePlan

OFFICIAL_OAUTH_HOSTS = frozenset({"oauth.bitrix.info", "oauth.bitrix24.tech"})
INSTALL_EVENT = "ONAPPINSTALL"
UNINSTALL_EVENT = "ONAPPUNINSTALL"
# Events callbridge binds after install (spec §0.2, §2.4, §2.5, §2.7).
BOUND_EVENTS = ("ONEXTERNALCALLSTART", "ONEXTERNALCALLBACKSTART", UNINSTALL_EVENT)

# Methods that refuse incoming webhooks with WRONG_AUTH_TYPE (spec §3.7, §9.5); compared
# lower-cased. A webhook integration raises AppContextRequired before sending them.
APP_ONLY_METHODS = frozenset(
    {
        "telephony.externalcall.register",
        "telephony.externalcall.finish",
        "telephony.externalcall.attachrecord",
        "telephony.externalline.add",
        "telephony.externalline.update",
        "telephony.externalline.get",
        "telephony.externalline.delete",
        "event.bind",
        "event.unbind",
        "event.get",
        "event.test",
        "placement.bind",
        "placement.unbind",
    }
)


def utcnow() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class TokenGrant:
    """A token pair and what came with it (OAuth server answer, install POST or event)."""

    access_token: str
    refresh_token: str
    expires_at: datetime
    member_id: str = ""
    domain: str = ""  # the portal's host (never the OAuth server's)
    client_endpoint: str = ""
    server_endpoint: str = ""
    scope: str = ""
    status: str = ""
    application_token: str | None = None
    user_id: int | None = None


@dataclass(frozen=True)
class Installation:
    """What an install (POST or ``ONAPPINSTALL``) tells us about a portal."""

    grant: TokenGrant
    source: str  # "install_post" or "event"
    placement: str = ""
    app_sid: str = ""

    @property
    def member_id(self) -> str:
        """The portal's ``member_id``."""
        return self.grant.member_id


@dataclass(frozen=True)
class PortalEvent:
    """An event POSTed by the portal, decoded from its bracketed form."""

    event: str
    data: Mapping[str, Any]
    auth: Mapping[str, Any]
    handler_id: str = ""
    ts: str = ""

    @property
    def member_id(self) -> str:
        """``auth[member_id]``."""
        return str(self.auth.get("member_id") or "")

    @property
    def application_token(self) -> str:
        """``auth[application_token]``."""
        return str(self.auth.get("application_token") or "")


class InstallRejected(Bitrix24Error):
    """The install request lacks what an install must carry."""


def _str(params: Mapping[str, Any], *names: str) -> str:
    for name in names:
        value = params.get(name)
        if value not in (None, ""):
            return str(value)
    return ""


def _expires_at(expires: str, expires_in: str, now: datetime) -> datetime:
    if expires.isdigit():
        return datetime.fromtimestamp(int(expires), UTC)
    seconds = int(expires_in) if expires_in.isdigit() else 3600
    return now + timedelta(seconds=seconds)


def _host(url: str) -> str:
    return urlsplit(url).netloc


def parse_install_post(
    form: Mapping[str, Any], query: Mapping[str, Any], *, now: datetime | None = None
) -> Installation:
    """The install POST of an app with UI (spec §3.6); raises :class:`InstallRejected`."""
    now = now or utcnow()
    params = {**query, **form}
    access = _str(params, "AUTH_ID")
    refresh = _str(params, "REFRESH_ID")
    member_id = _str(params, "member_id", "MEMBER_ID")
    domain = _str(params, "DOMAIN")
    if not (access and refresh and member_id and domain):
        raise InstallRejected(
            "an install POST needs AUTH_ID, REFRESH_ID, member_id and DOMAIN; got "
            + ", ".join(sorted(k for k in params if str(params[k])))
        )
    scheme = "https" if _str(params, "PROTOCOL") != "0" else "http"
    grant = TokenGrant(
        access_token=access,
        refresh_token=refresh,
        expires_at=_expires_at("", _str(params, "AUTH_EXPIRES"), now),
        member_id=member_id,
        domain=domain,
        client_endpoint=f"{scheme}://{domain}/rest/",
        server_endpoint=_str(params, "SERVER_ENDPOINT"),
        scope=_str(params, "APPLICATION_SCOPE"),
        status=_str(params, "status"),
        application_token=_str(params, "APPLICATION_TOKEN") or None,
    )
    return Installation(grant, "install_post", _str(params, "PLACEMENT"), _str(params, "APP_SID"))


def parse_event(params: Mapping[str, Any]) -> PortalEvent:
    """An event from its decoded form (see :func:`.encoding.decode_form`)."""
    auth = params.get("auth")
    data = params.get("data")
    return PortalEvent(
        event=str(params.get("event") or "").upper(),
        data=data if isinstance(data, Mapping) else {},
        auth=auth if isinstance(auth, Mapping) else {},
        handler_id=str(params.get("event_handler_id") or ""),
        ts=str(params.get("ts") or ""),
    )


def installation_from_event(event: PortalEvent, *, now: datetime | None = None) -> Installation:
    """The tokens an ``ONAPPINSTALL`` event carries; raises :class:`InstallRejected`."""
    now = now or utcnow()
    auth = event.auth
    access = _str(auth, "access_token")
    refresh = _str(auth, "refresh_token")
    client_endpoint = _str(auth, "client_endpoint")
    if event.event != INSTALL_EVENT or not (
        access and refresh and event.member_id and client_endpoint
    ):
        raise InstallRejected(
            "ONAPPINSTALL needs auth[access_token], auth[refresh_token], auth[member_id] "
            "and auth[client_endpoint]"
        )
    user_id = _str(auth, "user_id")
    grant = TokenGrant(
        access_token=access,
        refresh_token=refresh,
        expires_at=_expires_at(_str(auth, "expires"), _str(auth, "expires_in"), now),
        member_id=event.member_id,
        domain=_str(auth, "domain") or _host(client_endpoint),
        client_endpoint=client_endpoint,
        server_endpoint=_str(auth, "server_endpoint"),
        scope=_str(auth, "scope"),
        status=_str(auth, "status"),
        application_token=event.application_token or None,
        user_id=int(user_id) if user_id.isdigit() else None,
    )
    return Installation(grant, "event")


def application_token_matches(expected: str | None, given: str | None) -> bool:
    """Whether an event's ``application_token`` is the stored one (constant-time)."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


# --- one-time codes --------------------------------------------------------------------------

_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud and typed


def new_link_code() -> str:
    """A code an admin can type: ``XXXX-XXXX`` from 32 symbols (40 bits)."""
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(8))
    return f"{raw[:4]}-{raw[4:]}"


def new_nonce() -> str:
    """An unguessable single-use token for URLs and forms (OAuth ``state``)."""
    return secrets.token_urlsafe(24)


def normalise_link_code(code: str) -> str:
    """A link code as typed (spaces, dashes, lower case) in its canonical ``XXXX-XXXX`` form."""
    raw = "".join(ch for ch in code.upper() if ch.isalnum())
    return f"{raw[:4]}-{raw[4:]}" if len(raw) == 8 else raw


def hash_code(code: str) -> str:
    """What we store of a one-time code or nonce: its SHA-256."""
    return hashlib.sha256(code.encode()).hexdigest()


# --- the OAuth server ------------------------------------------------------------------------


@dataclass
class OAuthServer:
    """Talks to Bitrix24's authorization server (``oauth.bitrix.info`` or a configured one).

    Parameters
    ----------
    http
        The shared client; no redirects are followed.
    client_id, client_secret
        The app's credentials from its card.
    server_url
        ``https://oauth.bitrix.info`` or another host that is ours to trust (the emulator).
    timeout
        Seconds for the whole exchange.
    """

    http: httpx.AsyncClient
    client_id: str
    client_secret: str
    server_url: str = "https://oauth.bitrix.info"
    timeout: float = 10.0
    refreshes: int = field(default=0, init=False)  # for tests and metrics

    @property
    def token_url(self) -> str:
        """``<server>/oauth/token/``."""
        return f"{self.server_url.rstrip('/')}/oauth/token/"

    def trusts(self, url_or_host: str) -> bool:
        """Whether a ``server_endpoint`` or ``server_domain`` names a server we send secrets to."""
        host = _host(url_or_host) if "//" in url_or_host else url_or_host
        return host in OFFICIAL_OAUTH_HOSTS or host == _host(self.server_url)

    def authorize_url(self, portal_url: str, state: str) -> str:
        """Where to send an admin's browser to connect a portal (``/oauth/authorize/``)."""
        base = portal_url if "//" in portal_url else f"https://{portal_url}"
        query = urlencode({"client_id": self.client_id, "state": state})
        return f"{base.rstrip('/')}/oauth/authorize/?{query}"

    async def exchange_code(self, code: str) -> TokenGrant:
        """Trade an authorization code (valid 30 s) for tokens."""
        return await self._token({"grant_type": "authorization_code", "code": code})

    async def refresh(self, refresh_token: str) -> TokenGrant:
        """Trade a refresh token for a new pair (the old refresh token is spent)."""
        self.refreshes += 1
        return await self._token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def _token(self, params: dict[str, str]) -> TokenGrant:
        query = {"client_id": self.client_id, "client_secret": self.client_secret, **params}
        now = utcnow()
        try:
            response = await self.http.get(
                self.token_url, params=query, timeout=self.timeout, follow_redirects=False
            )
        except httpx.HTTPError as err:
            raise error_from_transport(err, method="oauth.token") from err
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise error_from_response(
                response.status_code, "", "the OAuth server answered no JSON", oauth=True
            )
        # wrong_client comes with HTTP 200 (spec §3.4): an error field wins over the status.
        if body.get("error") or response.status_code >= 400:
            raise error_from_response(
                response.status_code,
                str(body.get("error") or ""),
                str(body.get("error_description") or ""),
                method="oauth.token",
                oauth=True,
            )
        access, refresh = body.get("access_token"), body.get("refresh_token")
        client_endpoint = str(body.get("client_endpoint") or "")
        if not access or not refresh or not client_endpoint:
            raise UnexpectedResponse("the OAuth server's answer lacks tokens or client_endpoint")
        user_id = body.get("user_id")
        return TokenGrant(
            access_token=str(access),
            refresh_token=str(refresh),
            expires_at=_expires_at(
                str(body.get("expires") or ""), str(body.get("expires_in") or ""), now
            ),
            member_id=str(body.get("member_id") or ""),
            # ``domain`` of a token answer is the OAuth server (spec §9.2): the portal is the
            # host of client_endpoint.
            domain=_host(client_endpoint),
            client_endpoint=client_endpoint,
            server_endpoint=str(body.get("server_endpoint") or ""),
            scope=str(body.get("scope") or ""),
            status=str(body.get("status") or ""),
            user_id=int(user_id)
            if isinstance(user_id, int | str) and str(user_id).isdigit()
            else None,
        )


# --- credentials the client uses --------------------------------------------------------------


class StoredTokens(Protocol):
    """An integration's current tokens and endpoints, as stored."""

    @property
    def access_token(self) -> str | None:
        """Current access token."""
        ...

    @property
    def refresh_token(self) -> str | None:
        """Current refresh token."""
        ...

    @property
    def client_endpoint(self) -> str:
        """The portal's REST base URL."""
        ...


class RefreshSession(Protocol):
    """A transaction holding the integration's row lock."""

    @property
    def current(self) -> StoredTokens:
        """The tokens as read *after* taking the lock."""
        ...

    async def save(self, grant: TokenGrant) -> None:
        """Store the new pair; it is committed when the session ends without error."""
        ...


class TokenStore(Protocol):
    """Where one integration's tokens live (a database row)."""

    async def load(self) -> StoredTokens:
        """The current tokens."""
        ...

    def refreshing(self) -> AbstractAsyncContextManager[RefreshSession]:
        """Lock the integration for a refresh; commit on a clean exit, roll back otherwise."""
        ...

    async def mark_needs_reauth(self, reason: str) -> None:
        """Record that an administrator must reconnect the portal."""
        ...

    async def moved(self, client_endpoint: str) -> None:
        """The portal moved to a new address (HTTP 302 on a REST call)."""
        ...


class Credentials(Protocol):
    """How the client authenticates to one portal."""

    key: str  # the portal's rate-budget key
    integration_id: int | None
    plan: RatePlan
    app_context: bool  # False for an incoming webhook (no app-only methods)

    async def endpoint(self) -> str:
        """The REST base URL (``…/rest/`` or the webhook URL)."""
        ...

    async def access_token(self) -> str | None:
        """The token to put in ``auth`` (None for a webhook: the URL authenticates)."""
        ...

    async def refresh(self, rejected: str | None) -> None:
        """Get a new token because ``rejected`` expired (single-flight)."""
        ...

    async def moved(self, client_endpoint: str) -> None:
        """Remember the portal's new address."""
        ...


class OAuthCredentials:
    """An installed app's tokens, refreshed once per expiry however many callers notice it."""

    app_context = True

    def __init__(
        self,
        store: TokenStore,
        oauth: OAuthServer,
        *,
        key: str,
        integration_id: int | None = None,
        plan: RatePlan = PLANS["standard"],
    ) -> None:
        self.store = store
        self.oauth = oauth
        self.key = key
        self.integration_id = integration_id
        self.plan = plan
        self._tokens: StoredTokens | None = None
        self._lock = asyncio.Lock()

    async def _current(self) -> StoredTokens:
        if self._tokens is None:
            self._tokens = await self.store.load()
        return self._tokens

    async def endpoint(self) -> str:
        """The portal's ``client_endpoint``."""
        return (await self._current()).client_endpoint

    async def access_token(self) -> str | None:
        """The access token as last loaded or refreshed."""
        return (await self._current()).access_token

    async def refresh(self, rejected: str | None) -> None:
        """Refresh unless someone (this process or another) already replaced ``rejected``."""
        async with self._lock:
            cached = self._tokens
            if cached is not None and cached.access_token not in (rejected, None):
                return  # a caller in this process refreshed while we waited for the lock
            try:
                async with self.store.refreshing() as session:
                    current = session.current
                    if current.access_token not in (rejected, None):
                        self._tokens = current  # another process refreshed first
                        return
                    if not current.refresh_token:
                        raise RefreshRejected("no refresh token is stored; reinstall the app")
                    grant = await self.oauth.refresh(current.refresh_token)
                    await session.save(grant)
            except RefreshRejected as err:
                await self.store.mark_needs_reauth(err.message)
                raise
            self._tokens = await self.store.load()

    async def moved(self, client_endpoint: str) -> None:
        """Store the new address and use it from now on."""
        await self.store.moved(client_endpoint)
        self._tokens = await self.store.load()


class WebhookCredentials:
    """An incoming webhook (``https://<portal>/rest/<user>/<code>/``) for on-premise portals.

    No tokens, no refresh, no events; app-only methods raise :class:`AppContextRequired`.
    """

    app_context = False

    def __init__(
        self,
        webhook_url: str,
        *,
        key: str | None = None,
        integration_id: int | None = None,
        plan: RatePlan = PLANS["standard"],
    ) -> None:
        self.webhook_url = webhook_url.rstrip("/") + "/"
        self.key = key or _host(webhook_url)
        self.integration_id = integration_id
        self.plan = plan

    async def endpoint(self) -> str:
        """The webhook URL."""
        return self.webhook_url

    async def access_token(self) -> str | None:
        """None: the URL carries the credential."""
        return None

    async def refresh(self, rejected: str | None) -> None:
        """A webhook cannot be refreshed; its code was revoked or expired."""
        raise RefreshRejected(
            "the incoming webhook was rejected; create a new one on the portal and update "
            "the integration"
        )

    async def moved(self, client_endpoint: str) -> None:
        """Follow the portal to its new domain, keeping the webhook path."""
        new = urlsplit(client_endpoint)
        old = urlsplit(self.webhook_url)
        self.webhook_url = old._replace(scheme=new.scheme, netloc=new.netloc).geturl()


def require_app_context(credentials: Credentials, method: str) -> None:
    """Raise :class:`AppContextRequired` for an app-only method on a webhook integration."""
    if not credentials.app_context and method.lower() in APP_ONLY_METHODS:
        raise AppContextRequired(
            f"{method} works only for an installed Bitrix24 app (OAuth), not through an "
            "incoming webhook: install the callbridge app on the portal to register calls, "
            "manage external lines or receive click-to-call events",
            code="WRONG_AUTH_TYPE",
            method=method,
        )


# --- after install ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SetupReport:
    """What post-install setup did."""

    bound: Sequence[str]
    lines: Sequence[str]
    errors: Mapping[str, str]


class _BatchClient(Protocol):
    async def batch(self, commands: Mapping[str, tuple[str, Mapping[str, Any]]]) -> Any: ...


_ALREADY_DONE = ("already exist", "already exists")


async def setup_portal(
    client: _BatchClient, handler_url: str, lines: Sequence[Mapping[str, str]] = ()
) -> SetupReport:
    """Bind our events and add the configured external lines, in one ``batch`` request.

    Handlers die with every install or update (spec §2.1), so this runs after every install;
    "already exists" answers count as done.
    """
    commands: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for event in BOUND_EVENTS:
        commands[f"bind_{event.lower()}"] = ("event.bind", {"event": event, "handler": handler_url})
    for index, line in enumerate(lines):
        params = {"NUMBER": line["number"], "NAME": line.get("name", line["number"])}
        if "crm_auto_create" in line:
            params["CRM_AUTO_CREATE"] = line["crm_auto_create"]
        commands[f"line_{index}"] = ("telephony.externalLine.add", params)
    result = await client.batch(commands)
    errors: dict[str, str] = {}
    for name, error in result.errors.items():
        text = f"{error.code}: {error.description}"
        if not any(marker in text.lower() for marker in _ALREADY_DONE):
            errors[name] = text
    bound = [e for e in BOUND_EVENTS if f"bind_{e.lower()}" not in errors]
    added = [line["number"] for i, line in enumerate(lines) if f"line_{i}" not in errors]
    return SetupReport(bound, added, errors)
