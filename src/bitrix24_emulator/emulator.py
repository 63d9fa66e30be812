"""The emulator's core: one portal, its OAuth server, limits, faults, logs and outgoing events.

The HTTP layer (:mod:`bitrix24_emulator.rest`, :mod:`bitrix24_emulator.oauth`,
:mod:`bitrix24_emulator.control`) is thin; what the portal *does* lives here and in the method
handlers.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import re
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from bitrix24_emulator.apps import App
from bitrix24_emulator.clock import Clock, SystemClock
from bitrix24_emulator.config import EmulatorConfig
from bitrix24_emulator.errors import EmulatorError, RestError
from bitrix24_emulator.events import Deliveries
from bitrix24_emulator.faults import FaultInjector
from bitrix24_emulator.limits import OperatingBudget, RateLimiter
from bitrix24_emulator.methods.registry import Caller
from bitrix24_emulator.seed import DEFAULT_SEED, build_stores, portal_identity
from bitrix24_emulator.state import OutgoingEvent, Portal
from bitrix24_emulator.tokens import AccessToken, TokenStore

LICENSES = {"standard": "ru_basic", "enterprise": "ru_ent250", "unlimited": "ru_ent10000"}
SCOPE_ALIASES: dict[str, frozenset[str]] = {
    "user": frozenset({"user", "user_basic", "user_brief"}),
    "user_basic": frozenset({"user", "user_basic"}),
    "user_brief": frozenset({"user", "user_basic", "user_brief"}),
}
_SECRET_KEYS = frozenset(
    {
        "auth",
        "access_token",
        "refresh_token",
        "client_secret",
        "code",
        "auth_id",
        "refresh_id",
        "application_token",
    }
)


class ControlError(EmulatorError):
    """A control-API request that cannot be done (answered with ``status``)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Webhook:
    """An incoming webhook: ``/rest/<user_id>/<code>/<method>``."""

    user_id: int
    code: str
    scopes: list[str] = field(default_factory=list)


@dataclass
class Authenticated:
    """A resolved caller and what it may use."""

    caller: Caller
    scopes: frozenset[str]
    key: str  # operating-time account: the app, or the webhook
    token: str | None = None


def scope_allowed(method_scope: str, granted: frozenset[str]) -> bool:
    """Whether a token with ``granted`` scopes may call a method of ``method_scope``."""
    if method_scope in ("", "basic"):
        return True
    return bool(granted & SCOPE_ALIASES.get(method_scope, frozenset({method_scope})))


def redact(value: Any) -> Any:
    """Params as the request log shows them: tokens hidden, file contents summarised."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            lowered = str(key).lower()
            if lowered in _SECRET_KEYS and item not in (None, ""):
                out[key] = "***"
            elif lowered == "file_content" and isinstance(item, str) and len(item) > 64:
                out[key] = f"<{len(item)} base64 chars>"
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def international(phone: str) -> str:
    """A best-effort E.164 form of a clicked number (``PHONE_NUMBER_INTERNATIONAL``)."""
    digits = re.sub(r"\D", "", phone)
    if len(digits) == 11 and digits.startswith("8"):
        digits = "7" + digits[1:]
    return f"+{digits}" if digits else phone


class Emulator:
    """One emulated portal with everything around it."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.clock: Clock = self.config.clock or SystemClock()
        self.tokens = TokenStore(
            self.config.access_token_lifetime,
            self.config.refresh_token_lifetime,
            self.config.code_lifetime,
        )
        self.rate = RateLimiter(self.config.plan, enabled=self.config.rate_limit)
        self.operating = OperatingBudget(
            self.config.operating_limit,
            self.config.operating_window,
            enabled=self.config.operating_limit_enabled,
        )
        self.faults = FaultInjector(self.config.faults, self.config.random_seed)
        self.requests: deque[dict[str, Any]] = deque(maxlen=self.config.request_log_size)
        self.deliveries = Deliveries(self.clock, self.config.delivery_log_size)
        self.counts: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()
        self._request_ids = itertools.count(1)
        self._http = self.config.http_client
        self._own_http: httpx.AsyncClient | None = None
        self.base_url = (self.config.base_url or "").rstrip("/") or None
        self.webhooks: dict[tuple[int, str], Webhook] = {}
        self.portal = self._new_portal()
        self._default_webhook()

    # --- building and resetting ------------------------------------------------------------

    def _new_portal(self) -> Portal:
        seed = self.config.seed if self.config.seed is not None else DEFAULT_SEED
        users, crm = build_stores(seed)
        domain, member_id = portal_identity(seed)
        domain = self.config.domain or domain
        if self.config.member_id:
            member_id = self.config.member_id
        elif self.config.domain and "member_id" not in seed.get("portal", {}):
            member_id = hashlib.md5(domain.encode(), usedforsecurity=False).hexdigest()
        portal = Portal(domain=domain, member_id=member_id, users=users, crm=crm)
        portal.behaviour = self.config.behaviour
        portal.license = self.config.license or LICENSES.get(self.config.plan, "ru_basic")
        portal.timezone_offset_hours = self.config.timezone_offset_hours
        portal.fetch = self._fetch
        return portal

    def _default_webhook(self) -> None:
        hook = Webhook(
            self.config.webhook_user_id, self.config.webhook_code, list(self.config.webhook_scopes)
        )
        self.webhooks[(hook.user_id, hook.code)] = hook

    def reset(self, *, keep_apps: bool = False) -> None:
        """Back to the seed: calls, leads, logs, limits; apps and tokens too unless kept."""
        apps = self.portal.apps
        self.portal = self._new_portal()
        if keep_apps:
            self.portal.apps = apps
        else:
            self.tokens.clear()
        self.rate.reset()
        self.operating.reset()
        self.requests.clear()
        self.deliveries.clear()
        self.counts.clear()
        self.statuses.clear()

    def set_plan(self, plan: str) -> None:
        """Switch the portal's plan (bucket size and drain rate)."""
        if plan not in LICENSES:
            raise ControlError(f"unknown plan {plan!r}", 422)
        self.config.plan = plan  # type: ignore[assignment]
        self.rate.set_plan(plan)
        if not self.config.license:
            self.portal.license = LICENSES[plan]

    # --- URLs -----------------------------------------------------------------------------

    def seen_base_url(self, base_url: str) -> str:
        """The URL the portal is reached at (configured, else as the first request saw it)."""
        if self.base_url is None:
            self.base_url = base_url.rstrip("/")
        return self.base_url

    @property
    def url(self) -> str:
        """The portal's base URL."""
        return self.base_url or "http://127.0.0.1:8090"

    @property
    def rest_endpoint(self) -> str:
        """``client_endpoint`` and ``server_endpoint``: the portal and OAuth server share a port."""
        return f"{self.url}/rest/"

    @property
    def auth_host(self) -> str:
        """The OAuth server's host, the ``domain`` of token responses (spec §3.2)."""
        return urlsplit(self.url).netloc

    # --- HTTP for outgoing calls ----------------------------------------------------------

    def http(self) -> httpx.AsyncClient:
        """The client for deliveries and RECORD_URL downloads."""
        if self._http is None:
            self._own_http = self._http = httpx.AsyncClient(
                timeout=self.portal.behaviour.event_timeout, follow_redirects=False
            )
        return self._http

    async def aclose(self) -> None:
        """Close what we opened."""
        await self.deliveries.wait_idle()
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = self._http = None

    async def _fetch(self, url: str) -> tuple[int, bytes]:
        try:
            response = await self.http().get(url, timeout=60.0)
        except httpx.HTTPError:
            return 0, b""
        return response.status_code, response.content

    # --- authentication -------------------------------------------------------------------

    def authenticate(self, token: Any) -> Authenticated:
        """Resolve an OAuth ``auth`` token, or raise the documented 401/403."""
        if not token or not isinstance(token, str):
            raise RestError("NO_AUTH_FOUND", "Wrong authorization data", 401)
        now = self.clock.now()
        access: AccessToken | None = self.tokens.access.get(token)
        if access is None:
            if self.portal.behaviour.unknown_token_error == "invalid_token":
                raise RestError("invalid_token", "Unable to get application by token", 401)
            raise RestError("NO_AUTH_FOUND", "Wrong authorization data", 401)
        if access.expires_at <= now or access.revoked:
            raise RestError("expired_token", "The access token provided has expired.", 401)
        app = self.portal.apps.get(access.client_id)
        if app is None:
            raise RestError("APPLICATION_NOT_FOUND", "Application not found", 401)
        if not app.installed:
            raise RestError("ERROR_OAUTH", "Application not installed", 401)
        if not self.portal.users.is_active(access.user_id):
            raise RestError("authorization_error", "Unable to authorize user", 401)
        return Authenticated(
            Caller("oauth", access.user_id, app.client_id),
            frozenset(app.scopes),
            app.client_id,
            token,
        )

    def authenticate_webhook(self, user_id: str, code: str) -> Authenticated:
        """Resolve ``/rest/<user_id>/<code>/``, or raise NO_AUTH_FOUND."""
        try:
            hook = self.webhooks.get((int(user_id), code))
        except ValueError:
            hook = None
        if hook is None or not self.portal.users.is_active(hook.user_id):
            raise RestError("NO_AUTH_FOUND", "Wrong authorization data", 401)
        return Authenticated(
            Caller("webhook", hook.user_id), frozenset(hook.scopes), f"webhook:{hook.user_id}"
        )

    # --- apps and events ------------------------------------------------------------------

    def app(self, client_id: str) -> App:
        """A registered app, or a 404 control error."""
        app = self.portal.apps.get(client_id)
        if app is None:
            raise ControlError(f"no app with client_id {client_id!r}", 404)
        return app

    def auth_block(
        self, app: App, user_id: int | None, *, with_refresh: bool, tokens: bool = True
    ) -> dict[str, Any]:
        """The ``auth`` part of an event (§2.2); new tokens for the acting user."""
        sep = self.portal.behaviour.scope_separator
        block: dict[str, Any] = {}
        refresh_token: str | None = None
        if tokens and user_id is not None:
            access, refresh = self.tokens.issue_pair(app.client_id, user_id, self.clock.now())
            refresh_token = refresh.token
            block |= {
                "access_token": access.token,
                "expires": str(int(access.expires_at)),
                "expires_in": str(self.tokens.access_lifetime),
                "scope": app.scope_string(sep),
            }
        block |= {
            "domain": self.portal.domain,
            "server_endpoint": self.rest_endpoint,
        }
        if tokens:
            block["status"] = app.status
        block |= {"client_endpoint": self.rest_endpoint, "member_id": self.portal.member_id}
        if tokens and user_id is not None:
            block["user_id"] = str(user_id)
            if with_refresh and refresh_token is not None:
                block["refresh_token"] = refresh_token
        block["application_token"] = app.application_token
        return block

    async def deliver_event(
        self,
        app: App,
        url: str,
        event: str,
        data: dict[str, Any],
        user_id: int | None,
        *,
        handler_id: int,
        with_refresh: bool,
        tokens: bool = True,
    ) -> dict[str, Any]:
        """POST one event to one handler."""
        payload = {
            "event": event,
            "event_handler_id": str(handler_id),
            "data": data,
            "ts": str(int(self.clock.now())),
            "auth": self.auth_block(app, user_id, with_refresh=with_refresh, tokens=tokens),
        }
        return await self.deliveries.post(
            self.http(),
            url,
            payload,
            kind="event",
            client_id=app.client_id,
            timeout_s=self.portal.behaviour.event_timeout,
        )

    async def fire(
        self,
        event: str,
        data: dict[str, Any],
        user_id: int | None,
        *,
        client_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Deliver an event to every handler bound to it (one app's, if ``client_id``)."""
        event = event.upper()
        results = []
        for app in list(self.portal.apps.apps.values()):
            # Events are not delivered until the installation is finished (§3.6).
            if not (app.installed and app.install_finished):
                continue
            if client_id is not None and app.client_id != client_id:
                continue
            for binding in list(app.bindings):
                if binding.event != event or binding.event_type != "online":
                    continue
                acting = binding.auth_type or user_id
                results.append(
                    await self.deliver_event(
                        app,
                        binding.handler,
                        event,
                        data,
                        acting,
                        handler_id=binding.id,
                        with_refresh=self.portal.behaviour.event_auth_refresh_token,
                    )
                )
        return results

    def flush_outbox(self) -> None:
        """Send, in the background, the events the last method fired."""
        if not self.portal.outbox:
            return
        pending, self.portal.outbox = self.portal.outbox, []
        if not any(a.bindings for a in self.portal.apps.apps.values()):
            return
        for item in pending:
            self.deliveries.spawn(self._fire_outgoing(item))

    async def _fire_outgoing(self, item: OutgoingEvent) -> None:
        await self.fire(item.event, item.data, item.user_id, client_id=item.client_id)

    async def install(self, client_id: str, user_id: int = 1) -> dict[str, Any]:
        """Install an app as an admin would: install POST and/or ONAPPINSTALL (§2.7, §3.6)."""
        app = self.app(client_id)
        if not self.portal.users.is_active(user_id):
            raise ControlError(f"user {user_id} is not an active user", 422)

        if not app.application_token or self.portal.behaviour.new_application_token_on_reinstall:
            app.application_token = secrets.token_hex(16)
        app.installed = True
        app.installed_by = user_id
        app.bindings = []  # handlers die with every install/update (§2.1)
        app.install_finished = app.install_mode != "ui"
        now = self.clock.now()
        access, refresh = self.tokens.issue_pair(app.client_id, user_id, now)
        sep = self.portal.behaviour.scope_separator
        deliveries = []
        if app.install_mode in ("ui", "both"):
            split = urlsplit(self.url)
            query = {
                "DOMAIN": self.portal.domain,
                "PROTOCOL": "1" if split.scheme == "https" else "0",
                "LANG": app.language_id,
                "APP_SID": secrets.token_hex(16),
            }
            body = {
                "AUTH_ID": access.token,
                "AUTH_EXPIRES": str(self.tokens.access_lifetime),
                "REFRESH_ID": refresh.token,
                "SERVER_ENDPOINT": self.rest_endpoint,
                "APPLICATION_TOKEN": app.application_token,
                "APPLICATION_SCOPE": app.scope_string(sep),
                "member_id": self.portal.member_id,
                "status": app.status,
                "PLACEMENT": "DEFAULT",
                "PLACEMENT_OPTIONS": "{}",
            }
            deliveries.append(
                await self.deliveries.post(
                    self.http(),
                    app.handler_url,
                    body,
                    kind="install",
                    client_id=app.client_id,
                    timeout_s=self.portal.behaviour.event_timeout,
                    query=query,
                )
            )
        if app.install_mode in ("event", "both"):
            payload = {
                "event": "ONAPPINSTALL",
                "event_handler_id": str(self.portal.apps.new_binding_id()),
                "data": {
                    "VERSION": str(app.version),
                    "ACTIVE": "Y",
                    "INSTALLED": "Y",
                    "LANGUAGE_ID": app.language_id,
                },
                "ts": str(int(now)),
                "auth": {
                    "access_token": access.token,
                    "expires": str(int(access.expires_at)),
                    "expires_in": str(self.tokens.access_lifetime),
                    "scope": app.scope_string(sep),
                    "domain": self.portal.domain,
                    "server_endpoint": self.rest_endpoint,
                    "status": app.status,
                    "client_endpoint": self.rest_endpoint,
                    "member_id": self.portal.member_id,
                    "user_id": str(user_id),
                    "refresh_token": refresh.token,
                    "application_token": app.application_token,
                },
            }
            deliveries.append(
                await self.deliveries.post(
                    self.http(),
                    app.handler_url,
                    payload,
                    kind="event",
                    client_id=app.client_id,
                    timeout_s=self.portal.behaviour.event_timeout,
                )
            )
        return {
            "app": app.public(),
            "access_token": access.token,
            "refresh_token": refresh.token,
            "deliveries": deliveries,
        }

    def finish_install(self, client_id: str) -> App:
        """``BX24.installFinish()`` for apps with UI: from now on events are delivered."""
        app = self.app(client_id)
        if not app.installed:
            raise ControlError("app is not installed")
        app.install_finished = True
        return app

    async def uninstall(self, client_id: str, *, clean: bool = False) -> dict[str, Any]:
        """Uninstall: ONAPPUNINSTALL (no tokens in ``auth``), then handlers and tokens are gone."""
        app = self.app(client_id)
        if not app.installed:
            raise ControlError("app is not installed")
        deliveries = []
        for binding in list(app.bindings):
            if binding.event == "ONAPPUNINSTALL":
                deliveries.append(
                    await self.deliver_event(
                        app,
                        binding.handler,
                        "ONAPPUNINSTALL",
                        {"LANGUAGE_ID": app.language_id, "CLEAN": "1" if clean else "0"},
                        None,
                        handler_id=binding.id,
                        with_refresh=False,
                        tokens=False,
                    )
                )
        app.installed = False
        app.install_finished = False
        app.bindings = []
        self.tokens.revoke_app(app.client_id)
        return {"app": app.public(), "deliveries": deliveries}

    def _telephony_app(self, client_id: str | None, event: str) -> App:
        if client_id:
            return self.app(client_id)
        for app in self.portal.apps.installed():
            if app.install_finished and any(b.event == event for b in app.bindings):
                return app
        raise ControlError(f"no installed app has a handler for {event}")

    async def click_to_call(
        self,
        *,
        user_id: int,
        phone_number: str,
        client_id: str | None = None,
        line_number: str | None = None,
        crm_entity_type: str | None = None,
        crm_entity_id: int | None = None,
        call_list_id: int = 0,
        is_mobile: bool = False,
        extension: str = "",
    ) -> dict[str, Any]:
        """An employee clicks a number in CRM: a registered call, then ONEXTERNALCALLSTART."""
        from bitrix24_emulator.methods.telephony import register_call

        app = self._telephony_app(client_id, "ONEXTERNALCALLSTART")
        if not self.portal.users.is_active(user_id):
            raise ControlError(f"user {user_id} is not an active user", 422)
        call, result = register_call(
            self.portal,
            client_id=app.client_id,
            user_id=user_id,
            phone=phone_number,
            call_type=1,
            now=self.clock.now(),
            line_number=line_number,
            entity_type=crm_entity_type,
            entity_id=crm_entity_id,
            show=True,
            call_list_id=call_list_id,
            origin="click_to_call",
        )
        self.flush_outbox()
        data = {
            "PHONE_NUMBER": phone_number,
            "PHONE_NUMBER_INTERNATIONAL": international(phone_number),
            "EXTENSION": extension,
            "USER_ID": str(user_id),
            "CALL_LIST_ID": str(call_list_id),
            "LINE_NUMBER": line_number or "",
            "IS_MOBILE": "1" if is_mobile else "0",
            "CALL_ID": call.call_id,
            "CRM_ENTITY_TYPE": call.crm_entity_type or "",
            "CRM_ENTITY_ID": str(call.crm_entity_id or ""),
        }
        deliveries = await self.fire("ONEXTERNALCALLSTART", data, user_id, client_id=app.client_id)
        return {"CALL_ID": call.call_id, "register": result, "data": data, "deliveries": deliveries}

    async def callback_request(
        self,
        *,
        phone_number: str,
        client_id: str | None = None,
        text: str = "",
        voice: str = "",
        line_number: str | None = None,
        crm_entity_type: str | None = None,
        crm_entity_id: int | None = None,
        user_id: int | None = None,
    ) -> dict[str, Any]:
        """A visitor asks for a call back through a CRM form: ONEXTERNALCALLBACKSTART (§2.5)."""
        app = self._telephony_app(client_id, "ONEXTERNALCALLBACKSTART")
        if crm_entity_type is None:
            found = self.portal.crm.find_by_phone(phone_number)
            if found:
                crm_entity_type, crm_entity_id = found[0]
        if user_id is None:
            entity = (
                self.portal.crm.entity(crm_entity_type, crm_entity_id)
                if crm_entity_type and crm_entity_id
                else None
            )
            user_id = int((entity or {}).get("ASSIGNED_BY_ID") or app.installed_by)
        data = {
            "PHONE_NUMBER": phone_number,
            "TEXT": text,
            "VOICE": voice,
            "CRM_ENTITY_TYPE": crm_entity_type or "",
            "CRM_ENTITY_ID": str(crm_entity_id or ""),
            "LINE_NUMBER": line_number or "",
        }
        deliveries = await self.fire(
            "ONEXTERNALCALLBACKSTART", data, user_id, client_id=app.client_id
        )
        return {"data": data, "deliveries": deliveries}

    # --- logs -----------------------------------------------------------------------------

    def log_request(self, entry: dict[str, Any]) -> None:
        """Remember one request (params are redacted when read, not here: speed)."""
        entry["id"] = next(self._request_ids)
        self.requests.append(entry)
        self.counts[str(entry.get("method"))] += 1
        self.statuses[int(entry.get("status") or 0)] += 1

    def request_log(
        self, *, limit: int = 200, method: str | None = None, since_id: int = 0
    ) -> list[dict[str, Any]]:
        """The newest requests, oldest first, with tokens redacted."""
        wanted = method.lower() if method else None
        rows = [
            r
            for r in self.requests
            if r["id"] > since_id and (wanted is None or str(r.get("method")).lower() == wanted)
        ]
        return [dict(r, params=redact(r.get("params"))) for r in rows[-limit:]]
