"""The control and inspection API under ``/_emulator/`` (documented in README.md and OpenAPI)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from bitrix24_emulator.apps import InstallMode
from bitrix24_emulator.emulator import ControlError, Emulator, Webhook
from bitrix24_emulator.faults import FaultConfig, FaultKind, LatencyMode
from bitrix24_emulator.methods.registry import REGISTRY, CallContext, Caller, ListResult


class AppIn(BaseModel):
    """An app to register (a local app's card)."""

    handler_url: str = Field(description="Install handler and default event handler URL")
    scopes: list[str] = Field(default_factory=lambda: ["crm", "telephony", "user_basic", "im"])
    client_id: str | None = None
    client_secret: str | None = None
    name: str = "callbridge"
    redirect_uri: str | None = Field(None, description="Where /oauth/authorize/ redirects")
    install_mode: InstallMode = Field(
        "both",
        description="both: install POST + ONAPPINSTALL; event: ONAPPINSTALL only; ui: POST only",
    )
    version: int = 1
    status: str = "L"
    language_id: str = "en"


class InstallIn(BaseModel):
    """Who installs the app."""

    user_id: int = 1


class UninstallIn(BaseModel):
    """Whether the administrator chose to clear the app's data."""

    clean: bool = False


class ClickToCallIn(BaseModel):
    """An employee clicking a number in CRM."""

    user_id: int
    phone_number: str
    client_id: str | None = None
    line_number: str | None = None
    crm_entity_type: Literal["CONTACT", "COMPANY", "LEAD"] | None = None
    crm_entity_id: int | None = None
    call_list_id: int = 0
    is_mobile: bool = False
    extension: str = ""


class CallbackIn(BaseModel):
    """A visitor's call-back request from a CRM form."""

    phone_number: str
    client_id: str | None = None
    text: str = ""
    voice: str = ""
    line_number: str | None = None
    crm_entity_type: Literal["CONTACT", "COMPANY", "LEAD"] | None = None
    crm_entity_id: int | None = None
    user_id: int | None = None


class FireIn(BaseModel):
    """Any event, to every bound handler (or one app's)."""

    event: str
    data: dict[str, Any] = Field(default_factory=dict)
    user_id: int | None = 1
    client_id: str | None = None


class FaultsIn(BaseModel):
    """Fault settings (omitted fields keep their value)."""

    latency_mode: LatencyMode | None = None
    latency_ms: float | None = None
    latency_min_ms: float | None = None
    latency_max_ms: float | None = None
    latency_stddev_ms: float | None = None
    error_rate: float | None = Field(None, ge=0, le=1)
    error_kinds: list[FaultKind] | None = None
    outage_start: float | None = None
    outage_end: float | None = None
    outage_seconds: float | None = Field(None, description="Outage from now for this long")
    outage_kind: FaultKind | None = None
    hang_seconds: float | None = None
    clear: bool = Field(False, description="Reset every fault first")


class ExpireIn(BaseModel):
    """Which access tokens to expire now."""

    client_id: str | None = None


class PlanIn(BaseModel):
    """The portal's plan."""

    plan: Literal["standard", "enterprise", "unlimited"]


class WebhookIn(BaseModel):
    """An incoming webhook to create."""

    user_id: int = 1
    code: str
    scopes: list[str] = Field(default_factory=lambda: ["crm", "telephony", "user", "im"])


class ResetIn(BaseModel):
    """What survives a reset."""

    keep_apps: bool = False


class TokensIn(BaseModel):
    """A token pair straight from the OAuth server, skipping the authorize dance."""

    user_id: int = 1


def _emu(request: Request) -> Emulator:
    emu: Emulator = request.app.state.emulator
    emu.seen_base_url(str(request.base_url))
    return emu


def _control(err: ControlError) -> HTTPException:
    return HTTPException(status_code=err.status, detail=str(err))


def _list_crm(emu: Emulator, entity: str) -> list[dict[str, Any]]:
    """Every record of a CRM type, through the portal's own list method."""
    ctx = CallContext(emu.portal, Caller("webhook", 1), emu.clock.now(), emu.url)
    items: list[dict[str, Any]] = []
    start: int | None = 0
    while start is not None:
        page = REGISTRY.invoke(
            f"crm.{entity}.list",
            ctx,
            {"select": ["*", "PHONE", "EMAIL"], "order": {"ID": "ASC"}, "start": start},
        )
        if not isinstance(page, ListResult):
            return list(page)
        items.extend(page.items)
        start = page.next
    return items


router = APIRouter(prefix="/_emulator", tags=["emulator"])


@router.get("/state")
def state(request: Request) -> dict[str, Any]:
    """Portal identity, plan, counts and limits."""
    emu = _emu(request)
    now = emu.clock.now()
    return {
        "domain": emu.portal.domain,
        "member_id": emu.portal.member_id,
        "plan": emu.config.plan,
        "license": emu.portal.license,
        "base_url": emu.url,
        "client_endpoint": emu.rest_endpoint,
        "now": now,
        "apps": [a.public() for a in emu.portal.apps.apps.values()],
        "webhooks": [dataclasses.asdict(w) for w in emu.webhooks.values()],
        "calls": len(emu.portal.telephony.calls),
        "requests": len(emu.requests),
        "deliveries": len(emu.deliveries.log),
        "behaviour": dataclasses.asdict(emu.portal.behaviour),
    }


@router.post("/reset")
def reset(request: Request, body: Annotated[ResetIn | None, Body()] = None) -> dict[str, Any]:
    """Back to the seed (apps and tokens too, unless ``keep_apps``)."""
    _emu(request).reset(keep_apps=bool(body and body.keep_apps))
    return {"ok": True}


@router.get("/apps")
def list_apps(request: Request) -> list[dict[str, Any]]:
    """Registered apps."""
    return [a.public() for a in _emu(request).portal.apps.apps.values()]


@router.post("/apps", status_code=201)
def register_app(request: Request, body: AppIn) -> dict[str, Any]:
    """Register an app (client_id and secret generated unless given)."""
    emu = _emu(request)
    app = emu.portal.apps.register(
        handler_url=body.handler_url,
        scopes=body.scopes,
        client_id=body.client_id,
        client_secret=body.client_secret,
        name=body.name,
        redirect_uri=body.redirect_uri,
        install_mode=body.install_mode,
        version=body.version,
        status=body.status,
        language_id=body.language_id,
    )
    return app.public()


@router.post("/apps/{client_id}/install")
async def install_app(
    request: Request, client_id: str, body: Annotated[InstallIn | None, Body()] = None
) -> dict[str, Any]:
    """Install: the portal POSTs the install page and/or ONAPPINSTALL to the handler."""
    try:
        return await _emu(request).install(client_id, (body or InstallIn()).user_id)
    except ControlError as err:
        raise _control(err) from err


@router.post("/apps/{client_id}/install-finish")
def install_finish(request: Request, client_id: str) -> dict[str, Any]:
    """``BX24.installFinish()`` for UI apps (events flow only after it)."""
    try:
        return _emu(request).finish_install(client_id).public()
    except ControlError as err:
        raise _control(err) from err


@router.post("/apps/{client_id}/uninstall")
async def uninstall_app(
    request: Request, client_id: str, body: Annotated[UninstallIn | None, Body()] = None
) -> dict[str, Any]:
    """Uninstall: ONAPPUNINSTALL to bound handlers, then tokens and handlers are gone."""
    try:
        return await _emu(request).uninstall(client_id, clean=bool(body and body.clean))
    except ControlError as err:
        raise _control(err) from err


@router.post("/apps/{client_id}/tokens")
def issue_tokens(
    request: Request, client_id: str, body: Annotated[TokensIn | None, Body()] = None
) -> dict[str, Any]:
    """A fresh token pair for an installed app (test shortcut for the OAuth dance)."""
    emu = _emu(request)
    try:
        app = emu.app(client_id)
    except ControlError as err:
        raise _control(err) from err
    if not app.installed:
        raise HTTPException(409, "app is not installed")
    access, refresh = emu.tokens.issue_pair(
        client_id, (body or TokensIn()).user_id, emu.clock.now()
    )
    return {
        "access_token": access.token,
        "refresh_token": refresh.token,
        "expires": int(access.expires_at),
        "client_endpoint": emu.rest_endpoint,
        "application_token": app.application_token,
    }


@router.post("/events/click-to-call")
async def click_to_call(request: Request, body: ClickToCallIn) -> dict[str, Any]:
    """An employee clicks a number: a registered call and ONEXTERNALCALLSTART."""
    try:
        return await _emu(request).click_to_call(**body.model_dump())
    except ControlError as err:
        raise _control(err) from err


@router.post("/events/callback")
async def callback(request: Request, body: CallbackIn) -> dict[str, Any]:
    """A call-back request from a CRM form: ONEXTERNALCALLBACKSTART."""
    try:
        return await _emu(request).callback_request(**body.model_dump())
    except ControlError as err:
        raise _control(err) from err


@router.post("/events/fire")
async def fire(request: Request, body: FireIn) -> dict[str, Any]:
    """Deliver any event to its bound handlers."""
    deliveries = await _emu(request).fire(
        body.event, body.data, body.user_id, client_id=body.client_id
    )
    return {"deliveries": deliveries}


@router.get("/deliveries")
async def deliveries(
    request: Request, limit: Annotated[int, Query(ge=1, le=10_000)] = 200
) -> list[dict[str, Any]]:
    """Every POST the portal made to apps (install, events), oldest first."""
    emu = _emu(request)
    await emu.deliveries.wait_idle()
    return list(emu.deliveries.log)[-limit:]


@router.get("/calls")
def calls(request: Request) -> list[dict[str, Any]]:
    """Registered calls with cards shown/hidden per user, status, duration, records."""
    return [c.summary() for c in _emu(request).portal.telephony.calls.values()]


@router.get("/calls/{call_id}")
def call(request: Request, call_id: str) -> dict[str, Any]:
    """One call, with its statistics row (the finish result)."""
    found = _emu(request).portal.telephony.calls.get(call_id)
    if found is None:
        raise HTTPException(404, "no such call")
    return found.summary() | {"statistic": found.statistic}


@router.get("/statistics")
def statistics(request: Request) -> list[dict[str, Any]]:
    """Rows of ``voximplant.statistic.get``."""
    return list(_emu(request).portal.telephony.statistics)


@router.get("/files/{file_id}")
def file(request: Request, file_id: int) -> Response:
    """A stored call record."""
    stored = _emu(request).portal.telephony.files.get(file_id)
    if stored is None:
        raise HTTPException(404, "no such file")
    media = "audio/mpeg" if stored.name.lower().endswith(".mp3") else "audio/wav"
    return Response(
        stored.content,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{stored.name}"'},
    )


@router.get("/leads")
def leads(request: Request) -> list[dict[str, Any]]:
    """Every lead (seeded and created by calls)."""
    return _list_crm(_emu(request), "lead")


@router.get("/contacts")
def contacts(request: Request) -> list[dict[str, Any]]:
    """Every contact."""
    return _list_crm(_emu(request), "contact")


@router.get("/companies")
def companies(request: Request) -> list[dict[str, Any]]:
    """Every company."""
    return _list_crm(_emu(request), "company")


@router.get("/users")
def users(request: Request) -> list[dict[str, Any]]:
    """The portal's employees."""
    return _emu(request).portal.users.all()


@router.get("/notifications")
def notifications(request: Request) -> list[dict[str, Any]]:
    """Notifications sent with ``im.notify``."""
    return list(_emu(request).portal.notifications)


@router.get("/lines")
def lines(request: Request) -> dict[str, list[dict[str, Any]]]:
    """External lines by app."""
    return {
        client: [dataclasses.asdict(line) for line in by_number.values()]
        for client, by_number in _emu(request).portal.telephony.lines.items()
    }


@router.get("/requests")
def requests(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
    method: str | None = None,
    since_id: int = 0,
) -> list[dict[str, Any]]:
    """Requests received (method, params with tokens redacted, auth kind, status, time)."""
    return _emu(request).request_log(limit=limit, method=method, since_id=since_id)


@router.get("/stats")
def stats(request: Request) -> dict[str, Any]:
    """Counters: requests by method and status, bucket levels, operating time."""
    emu = _emu(request)
    now = emu.clock.now()
    return {
        "requests_total": sum(emu.counts.values()),
        "by_method": dict(emu.counts),
        "by_status": {str(k): v for k, v in emu.statuses.items()},
        "rate_buckets": emu.rate.levels(now),
        "operating": emu.operating.snapshot(now),
        "deliveries": len(emu.deliveries.log),
        "calls": len(emu.portal.telephony.calls),
    }


@router.get("/faults")
def get_faults(request: Request) -> dict[str, Any]:
    """Current fault settings."""
    return dataclasses.asdict(_emu(request).faults.config)


@router.put("/faults")
def set_faults(request: Request, body: FaultsIn) -> dict[str, Any]:
    """Change fault settings (latency, error rate and kinds, outage window, hang time)."""
    emu = _emu(request)
    config = FaultConfig() if body.clear else emu.faults.config
    changes = body.model_dump(exclude_none=True, exclude={"clear", "outage_seconds"})
    for name, value in changes.items():
        setattr(config, name, value)
    if body.outage_seconds is not None:
        config.outage_start = emu.clock.now()
        config.outage_end = config.outage_start + body.outage_seconds
    emu.faults.config = config
    return dataclasses.asdict(config)


@router.post("/faults/expire-tokens")
def expire_tokens(
    request: Request, body: Annotated[ExpireIn | None, Body()] = None
) -> dict[str, Any]:
    """Force every live access token (of one app, if given) to expire now."""
    emu = _emu(request)
    count = emu.tokens.expire_all(emu.clock.now(), body.client_id if body else None)
    return {"expired": count}


@router.put("/plan")
def set_plan(request: Request, body: PlanIn) -> dict[str, Any]:
    """Switch plan: standard (50, 2/s), enterprise (250, 5/s) or unlimited."""
    _emu(request).set_plan(body.plan)
    return {"plan": body.plan}


@router.put("/behaviour")
def set_behaviour(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Change UNCONFIRMED behaviours (see ``Behaviour`` in config.py)."""
    behaviour = _emu(request).portal.behaviour
    known = {f.name for f in dataclasses.fields(behaviour)}
    unknown = set(body) - known
    if unknown:
        raise HTTPException(422, f"unknown settings: {sorted(unknown)}")
    for name, value in body.items():
        setattr(behaviour, name, value)
    return dataclasses.asdict(behaviour)


@router.post("/webhooks", status_code=201)
def add_webhook(request: Request, body: WebhookIn) -> dict[str, Any]:
    """Create an incoming webhook ``/rest/<user_id>/<code>/``."""
    emu = _emu(request)
    hook = Webhook(body.user_id, body.code, body.scopes)
    emu.webhooks[(hook.user_id, hook.code)] = hook
    return dataclasses.asdict(hook) | {"url": f"{emu.url}/rest/{hook.user_id}/{hook.code}/"}


@router.post("/clock/advance")
def advance_clock(request: Request, seconds: float) -> dict[str, Any]:
    """Move a fake clock forward (only when the emulator runs on one)."""
    emu = _emu(request)
    advance = getattr(emu.clock, "advance", None)
    if not callable(advance):
        raise HTTPException(409, "the emulator runs on the real clock")
    advance(seconds)
    return {"now": emu.clock.now()}
