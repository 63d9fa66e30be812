"""Bitrix24 portals: where the client library (``crm.bitrix24``) meets the database (``storage``).

``crm`` and ``storage`` are independent layers, so what needs both lives here, above them, for
the web app, the worker and the CLI alike: building a :class:`Bitrix24Client` for an
integration (tokens from the database, the shared rate budget, the API log) and the app's
lifecycle (install, uninstall, event verification, the authorization-code flow, linking a portal
to an enterprise).

Lifecycle methods take the caller's session and only flush: the edge (a request, a CLI command)
commits. Calls to Bitrix24 (post-install setup, ``ping``) must run *after* that commit, because
the client reads tokens in its own transactions.

Every request a :class:`Portals` sends takes a slot of the portal's rate budget through
:attr:`Portals.limiter`, and each slot is announced to this process's request listeners
(:func:`subscribe_requests`), whichever Portals sent it. A worker process has several (the
dispatcher's and the uploads', the users sync's and click-to-call's, the web app's in
all-in-one mode), and the dispatcher's picture of a portal's bucket must count them all.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge.config import Settings
from callbridge.crm.bitrix24.api_log import ApiLog, BufferedApiLog, NullApiLog
from callbridge.crm.bitrix24.auth import (
    Credentials,
    Installation,
    OAuthCredentials,
    OAuthServer,
    PortalEvent,
    SetupReport,
    WebhookCredentials,
    application_token_matches,
    hash_code,
    new_link_code,
    new_nonce,
    normalise_link_code,
    setup_portal,
)
from callbridge.crm.bitrix24.client import Bitrix24Client
from callbridge.crm.bitrix24.errors import InvalidRequest
from callbridge.crm.bitrix24.rate_limit import (
    InMemoryRateLimiter,
    RateLimiter,
    RatePlan,
    SharedRateLimiter,
)
from callbridge.domain.errors import CallbridgeError
from callbridge.storage import job_queue
from callbridge.storage.bitrix24 import (
    DatabaseApiLogWriter,
    DatabaseRateBudget,
    DatabaseTokenStore,
)
from callbridge.storage.crypto import SecretBox
from callbridge.storage.models import (
    Bitrix24Integration,
    Enterprise,
    IntegrationStatus,
    JobStatus,
)
from callbridge.storage.repositories import (
    EnterpriseRepository,
    IntegrationRepository,
    OneTimeCodeRepository,
)
from callbridge.storage.types import utcnow

logger = logging.getLogger(__name__)

EVENTS_PATH = "/bitrix24/events"
OAUTH_CALLBACK_PATH = "/bitrix24/oauth/callback"
STATE_TTL = timedelta(minutes=10)
LINK_CODE_TTL = timedelta(hours=24)
LINK_FORM_TTL = timedelta(hours=1)
WEBHOOK_MODE = "webhook"
# Job kinds for Bitrix24 events (handled by the click-to-call service).
EVENT_JOB_KINDS = {
    "ONEXTERNALCALLSTART": "bitrix24.click_to_call",
    "ONEXTERNALCALLBACKSTART": "bitrix24.callback_request",
}


class PortalError(CallbridgeError):
    """The portal request cannot be handled as asked."""


class UnknownPortalError(PortalError):
    """No integration matches this portal."""


class LinkCodeError(PortalError):
    """The link code is unknown, used or expired; ask the operator for a new one."""


class AuthorizationStateError(PortalError):
    """The OAuth ``state`` is unknown, used or expired; start the connection again."""


class ForgedInstallError(PortalError):
    """An install for a known portal carried tokens the portal does not accept."""


@dataclass(frozen=True)
class InstallResult:
    """What an install did to the database."""

    integration: Bitrix24Integration
    created: bool
    reinstalled: bool


class RequestListener(Protocol):
    """Hears of every request this process sends to a portal, and of every full bucket.

    ``key`` is the portal's rate-budget key (:attr:`Credentials.key`, its member_id), ``plan``
    its plan. Called synchronously on the sender's event loop: keep it short, never block.
    """

    def request_sent(self, key: str, plan: RatePlan) -> None:
        """A request to the portal took a slot of its budget (it goes now or soon)."""
        ...

    def bucket_full(self, key: str, plan: RatePlan) -> None:
        """The portal answered QUERY_LIMIT_EXCEEDED: its bucket is full."""
        ...


_request_listeners: list[RequestListener] = []


def subscribe_requests(listener: RequestListener) -> Callable[[], None]:
    """Hear of every portal request of this process until the returned function is called."""
    _request_listeners.append(listener)

    def unsubscribe() -> None:
        if listener in _request_listeners:
            _request_listeners.remove(listener)

    return unsubscribe


class AnnouncingLimiter:
    """A rate limiter that announces each slot it hands out, and each penalty, to the listeners.

    The announcement comes when the slot is reserved, before any wait for it: that is when the
    real budget counts it (and a request cancelled while waiting still spent its slot).
    """

    def __init__(self, inner: RateLimiter) -> None:
        self.inner = inner

    async def acquire(self, key: str, plan: RatePlan) -> float:
        """Announce the request, then wait for its slot."""
        _announce(key, plan, full=False)
        return await self.inner.acquire(key, plan)

    async def penalise(self, key: str, plan: RatePlan) -> None:
        """Announce the full bucket, then slow down."""
        _announce(key, plan, full=True)
        await self.inner.penalise(key, plan)


def _announce(key: str, plan: RatePlan, *, full: bool) -> None:
    for listener in list(_request_listeners):
        try:
            if full:
                listener.bucket_full(key, plan)
            else:
                listener.request_sent(key, plan)
        except Exception:  # a listener's bug must not fail the request
            logger.exception("a listener of portal requests failed")


# SQLite's budgets: one limiter for every Portals of a process on the same database (the
# dispatcher's, the directory's, the web app's in all-in-one mode), or each would spend a
# portal's whole budget on its own.
_IN_PROCESS_BUDGETS: weakref.WeakKeyDictionary[
    async_sessionmaker[AsyncSession], InMemoryRateLimiter
] = weakref.WeakKeyDictionary()


def _in_process_budget(session_factory: async_sessionmaker[AsyncSession]) -> InMemoryRateLimiter:
    limiter = _IN_PROCESS_BUDGETS.get(session_factory)
    if limiter is None:
        limiter = _IN_PROCESS_BUDGETS[session_factory] = InMemoryRateLimiter()
    return limiter


def is_webhook(row: Bitrix24Integration) -> bool:
    """Whether the integration authenticates with an incoming webhook (on-premise mode)."""
    return (row.settings or {}).get("auth_mode") == WEBHOOK_MODE


class Portals:
    """Clients and the app lifecycle for every integration of this process.

    Parameters
    ----------
    settings
        Client id and secret, OAuth server, public URL, HTTP timeout.
    session_factory
        For the client's token and budget transactions.
    http
        The shared outbound client.
    box
        Encrypts tokens at rest.
    limiter
        By default the database-shared budget on PostgreSQL, and on SQLite an in-process one
        that every Portals of the process on the same session factory shares;
        wrapped in an :class:`AnnouncingLimiter` unless it is one already (a Portals built on
        another's ``limiter`` announces each request once).
    api_log
        Where request records go (a ``BufferedApiLog`` over the database in production).
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: async_sessionmaker[AsyncSession],
        http: httpx.AsyncClient,
        box: SecretBox,
        *,
        limiter: RateLimiter | None = None,
        api_log: ApiLog | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.http = http
        self.box = box
        self.oauth = OAuthServer(
            http,
            settings.bitrix24_client_id,
            settings.bitrix24_client_secret.get_secret_value(),
            settings.bitrix24_oauth_server_url,
            timeout=settings.http_timeout_seconds,
        )
        if limiter is None:
            if settings.is_sqlite:
                limiter = _in_process_budget(session_factory)
            else:
                limiter = SharedRateLimiter(DatabaseRateBudget(session_factory))
        self.limiter = limiter
        self.api_log: ApiLog = api_log or NullApiLog()
        # One credentials object per portal, so that concurrent callers of this process wait
        # on one refresh instead of queueing on the database row lock.
        self._credentials: dict[str, Credentials] = {}

    # --- clients -------------------------------------------------------------------------------

    @property
    def limiter(self) -> RateLimiter:
        """The rate budget every client of this Portals takes its slots from (announcing them)."""
        return self._limiter

    @limiter.setter
    def limiter(self, limiter: RateLimiter) -> None:
        if not isinstance(limiter, AnnouncingLimiter):
            limiter = AnnouncingLimiter(limiter)
        self._limiter = limiter

    @property
    def events_url(self) -> str:
        """Where the portal POSTs events (bound after install)."""
        return f"{self.settings.public_base_url}{EVENTS_PATH}"

    def credentials_for(self, row: Bitrix24Integration) -> Credentials:
        """The (cached) credentials of an integration."""
        cached = self._credentials.get(row.member_id)
        if cached is not None:
            return cached
        plan = RatePlan.from_settings(row.settings)
        credentials: Credentials
        if is_webhook(row):
            url = self.box.decrypt_optional(row.access_token_enc)
            if not url:
                raise PortalError(f"integration {row.domain} has no webhook URL stored")
            credentials = WebhookCredentials(
                url, key=row.member_id, integration_id=row.id, plan=plan
            )
        else:
            store = DatabaseTokenStore(self.session_factory, self.box, row.member_id)
            credentials = OAuthCredentials(
                store, self.oauth, key=row.member_id, integration_id=row.id, plan=plan
            )
        self._credentials[row.member_id] = credentials
        return credentials

    async def warm_up(self, rows: Sequence[Bitrix24Integration]) -> None:
        """Build these integrations' credentials and load their tokens now, not on the first
        request (a worker's first call after a start goes as fast as the next ones).

        An integration that cannot be loaded is logged and left to its first request.
        """
        for row in rows:
            try:
                await self.credentials_for(row).access_token()
            except Exception:
                logger.exception("portals: cannot load the credentials of %s", row.domain)

    def client_for(self, row: Bitrix24Integration) -> Bitrix24Client:
        """A client for an integration (cheap: share the HTTP pool, credentials and budget)."""
        return Bitrix24Client(
            self.http,
            self.credentials_for(row),
            self.limiter,
            api_log=self.api_log,
            timeout=self.settings.http_timeout_seconds,
        )

    async def client(self, portal: str) -> Bitrix24Client:
        """A client for the integration with this member_id or domain."""
        async with self.session_factory() as session:
            row = await self.find(session, portal)
        return self.client_for(row)

    async def find(self, session: AsyncSession, portal: str) -> Bitrix24Integration:
        """The integration with this member_id or domain, or :class:`UnknownPortalError`."""
        repo = IntegrationRepository(session, self.box)
        row = await repo.by_member_id(portal) or await repo.by_domain(_bare_domain(portal))
        if row is None:
            raise UnknownPortalError(f"no Bitrix24 integration for portal {portal!r}")
        return row

    # --- install and uninstall ------------------------------------------------------------------

    async def install(self, session: AsyncSession, installation: Installation) -> InstallResult:
        """Store an install's tokens, endpoints, scope and application_token, encrypted.

        A new portal is accepted as it comes. For a known portal that is still installed, new
        tokens or a new application_token are accepted only when the portal itself accepts the
        offered access token (``app.info`` at the *stored* address): otherwise anyone could
        replace a portal's tokens and the token that authenticates its events.
        """
        grant = installation.grant
        repo = IntegrationRepository(session, self.box)
        row = await repo.by_member_id(grant.member_id, for_update=True)
        created = row is None
        reinstalled = False
        if row is None:
            row = Bitrix24Integration(
                member_id=grant.member_id,
                domain=grant.domain,
                client_endpoint=grant.client_endpoint,
                settings={},
            )
            await repo.add(row)
        else:
            known_token = repo.application_token(row)
            same_app_token = application_token_matches(known_token, grant.application_token)
            if row.status == IntegrationStatus.ACTIVE.value and not same_app_token:
                await self._verify_offered_token(row, grant.access_token)
            reinstalled = row.status != IntegrationStatus.ACTIVE.value or not same_app_token
            if not reinstalled and installation.source == "install_post":
                # The install POST repeats on every opening of the app, with the tokens of
                # whoever opened it; the installer's tokens stay (they bound the events).
                return InstallResult(row, created=False, reinstalled=False)
        row.domain = grant.domain or row.domain
        row.client_endpoint = grant.client_endpoint or row.client_endpoint
        row.server_endpoint = grant.server_endpoint or row.server_endpoint
        row.scope = grant.scope or row.scope
        row.status, row.status_reason = IntegrationStatus.ACTIVE.value, ""
        row.settings = {k: v for k, v in (row.settings or {}).items() if k != "auth_mode"}
        if grant.application_token:
            repo.set_application_token(row, grant.application_token)
        await repo.set_tokens(
            row,
            access_token=grant.access_token,
            refresh_token=grant.refresh_token,
            expires_at=grant.expires_at,
        )
        self._credentials.pop(row.member_id, None)
        logger.info(
            "Bitrix24 app installed on %s (%s, %s)",
            row.domain,
            installation.source,
            "new" if created else "reinstalled" if reinstalled else "updated",
        )
        return InstallResult(row, created, reinstalled)

    async def _verify_offered_token(self, row: Bitrix24Integration, access_token: str) -> None:
        try:
            response = await self.http.post(
                f"{row.client_endpoint}app.info.json",
                json={"auth": access_token},
                timeout=self.settings.http_timeout_seconds,
                follow_redirects=False,
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as err:
            raise ForgedInstallError(
                f"cannot check the install for {row.domain} with the portal: {err}"
            ) from err
        if response.status_code != 200 or not isinstance(body, dict) or "result" not in body:
            raise ForgedInstallError(
                f"an install for {row.domain} carried a token the portal does not accept"
            )

    async def uninstall(self, session: AsyncSession, row: Bitrix24Integration) -> int:
        """Mark the integration uninstalled (kept) and cancel its queued jobs; returns how many."""
        repo = IntegrationRepository(session, self.box)
        await repo.update(
            row,
            status=IntegrationStatus.UNINSTALLED.value,
            status_reason=f"ONAPPUNINSTALL at {utcnow().isoformat(timespec='seconds')}",
        )
        self._credentials.pop(row.member_id, None)
        cancelled = 0
        for job in await job_queue.list_jobs(
            session, status=JobStatus.QUEUED, integration_id=row.id, limit=10_000
        ):
            cancelled += len(
                await job_queue.cancel_job(session, job.id, "the Bitrix24 app was uninstalled")
            )
        logger.info("Bitrix24 app uninstalled from %s; %d jobs cancelled", row.domain, cancelled)
        return cancelled

    async def verify_event(
        self, session: AsyncSession, event: PortalEvent
    ) -> Bitrix24Integration | None:
        """The integration an event comes from, if its ``application_token`` is the stored one."""
        if not event.member_id or not event.application_token:
            return None
        repo = IntegrationRepository(session, self.box)
        row = await repo.by_member_id(event.member_id)
        if row is None:
            return None
        if not application_token_matches(repo.application_token(row), event.application_token):
            return None
        return row

    async def enqueue_event(
        self, session: AsyncSession, row: Bitrix24Integration, event: PortalEvent
    ) -> int | None:
        """Store a telephony event as a job for the click-to-call service; returns its id."""
        kind = EVENT_JOB_KINDS.get(event.event)
        if kind is None:
            return None
        payload: dict[str, Any] = {
            "event": event.event,
            "member_id": row.member_id,
            "data": dict(event.data),
            "handler_id": event.handler_id,
            "ts": event.ts,
        }
        job = await job_queue.enqueue(session, kind, payload, integration_id=row.id)
        return job.id

    async def setup(self, member_id: str) -> SetupReport:
        """Bind our events and add the integration's lines (after the install is committed)."""
        async with self.session_factory() as session:
            row = await self.find(session, member_id)
        lines: Sequence[Mapping[str, str]] = (row.settings or {}).get("lines", [])
        report = await setup_portal(self.client_for(row), self.events_url, lines)
        if report.errors:
            logger.warning("Bitrix24 setup of %s incomplete: %s", row.domain, report.errors)
        return report

    # --- authorization-code flow ----------------------------------------------------------------

    async def start_authorization(self, session: AsyncSession, portal: str) -> str:
        """A new ``state`` and the portal's authorize URL to send the admin's browser to."""
        if not self.settings.bitrix24_client_id:
            raise PortalError("CALLBRIDGE_BITRIX24_CLIENT_ID is not set")
        state = new_nonce()
        await OneTimeCodeRepository(session).create(
            "oauth_state",
            hash_code(state),
            utcnow() + STATE_TTL,
            data={"portal": _bare_domain(portal)},
        )
        portal_url = portal if "//" in portal else f"https://{portal}"
        return self.oauth.authorize_url(portal_url, state)

    async def finish_authorization(
        self, session: AsyncSession, *, code: str, state: str, member_id: str = ""
    ) -> InstallResult:
        """Check ``state``, trade ``code`` for tokens and store them."""
        stored = await OneTimeCodeRepository(session).consume("oauth_state", hash_code(state))
        if stored is None:
            raise AuthorizationStateError()
        grant = await self.oauth.exchange_code(code)
        if member_id and grant.member_id and grant.member_id != member_id:
            raise InvalidRequest("the token answer names another portal than the redirect")
        repo = IntegrationRepository(session, self.box)
        row = await repo.by_member_id(grant.member_id, for_update=True)
        created = row is None
        if row is None:
            row = await repo.add(
                Bitrix24Integration(
                    member_id=grant.member_id,
                    domain=grant.domain,
                    client_endpoint=grant.client_endpoint,
                    server_endpoint=grant.server_endpoint,
                    scope=grant.scope,
                    settings={},
                )
            )
        row.client_endpoint, row.domain = grant.client_endpoint, grant.domain
        row.scope = grant.scope or row.scope
        row.status, row.status_reason = IntegrationStatus.ACTIVE.value, ""
        await repo.set_tokens(
            row,
            access_token=grant.access_token,
            refresh_token=grant.refresh_token,
            expires_at=grant.expires_at,
        )
        self._credentials.pop(row.member_id, None)
        return InstallResult(row, created=created, reinstalled=not created)

    # --- linking a portal to an enterprise ------------------------------------------------------

    async def create_link_code(self, session: AsyncSession, enterprise: str) -> str:
        """A one-time code an admin types on the app's page to link the portal to ``enterprise``."""
        row = await self._enterprise(session, enterprise)
        code = new_link_code()
        await OneTimeCodeRepository(session).create(
            "link_code", hash_code(code), utcnow() + LINK_CODE_TTL, enterprise_id=row.id
        )
        return code

    async def new_link_form(self, session: AsyncSession, row: Bitrix24Integration) -> str:
        """A nonce that ties the app page's link form to this portal."""
        nonce = new_nonce()
        await OneTimeCodeRepository(session).create(
            "link_form", hash_code(nonce), utcnow() + LINK_FORM_TTL, member_id=row.member_id
        )
        return nonce

    async def link_with_code(
        self, session: AsyncSession, *, form: str, code: str
    ) -> Bitrix24Integration:
        """Link the form's portal to the enterprise of ``code`` (both single use)."""
        codes = OneTimeCodeRepository(session)
        link = await codes.consume("link_code", hash_code(normalise_link_code(code)))
        if link is None or link.enterprise_id is None:
            raise LinkCodeError()
        page = await codes.consume("link_form", hash_code(form))
        if page is None or not page.member_id:
            raise LinkCodeError("the page has expired; reopen the app in Bitrix24 and try again")
        repo = IntegrationRepository(session, self.box)
        row = await repo.by_member_id(page.member_id, for_update=True)
        if row is None:
            raise UnknownPortalError()
        await repo.update(row, enterprise_id=link.enterprise_id)
        return row

    async def link(
        self, session: AsyncSession, enterprise: str, portal: str
    ) -> Bitrix24Integration:
        """Link a portal to an enterprise directly (operator's CLI)."""
        target = await self._enterprise(session, enterprise)
        row = await self.find(session, portal)
        await IntegrationRepository(session, self.box).update(row, enterprise_id=target.id)
        return row

    async def _enterprise(self, session: AsyncSession, enterprise: str) -> Enterprise:
        repo = EnterpriseRepository(session)
        row = await repo.by_number(enterprise)
        if row is None and enterprise.isdigit():
            row = await repo.get(int(enterprise))
        if row is None:
            raise PortalError(f"no enterprise with number or id {enterprise!r}")
        return row

    # --- incoming-webhook mode ------------------------------------------------------------------

    async def add_webhook(
        self, session: AsyncSession, webhook_url: str, *, member_id: str | None = None
    ) -> Bitrix24Integration:
        """An on-premise portal through an incoming webhook (no events, no app-only methods)."""
        parts = urlsplit(webhook_url)
        if "/rest/" not in parts.path:
            raise PortalError("a webhook URL looks like https://portal/rest/<user>/<code>/")
        domain = parts.netloc
        key = member_id or f"webhook:{domain}"
        repo = IntegrationRepository(session, self.box)
        row = await repo.by_member_id(key)
        if row is None:
            row = await repo.add(
                Bitrix24Integration(
                    member_id=key,
                    domain=domain,
                    client_endpoint=f"{parts.scheme}://{domain}/rest/",
                    settings={},
                )
            )
        row.settings = {**(row.settings or {}), "auth_mode": WEBHOOK_MODE}
        # The webhook URL is the credential (its path carries the code): stored like a token.
        row.access_token_enc = self.box.encrypt(webhook_url)
        row.refresh_token_enc = None
        await session.flush()
        self._credentials.pop(key, None)
        return row


def _bare_domain(portal: str) -> str:
    if "//" in portal:
        return urlsplit(portal).netloc
    return portal.strip().rstrip("/")


@asynccontextmanager
async def running_portals(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    http: httpx.AsyncClient,
    box: SecretBox,
) -> AsyncIterator[Portals]:
    """:class:`Portals` whose API log is written to ``api_calls`` in the background (lifespan)."""
    async with BufferedApiLog(DatabaseApiLogWriter(session_factory)) as api_log:
        yield Portals(settings, session_factory, http, box, api_log=api_log)
