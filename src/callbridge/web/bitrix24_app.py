"""The Bitrix24 app's HTTP side: install, OAuth connect, events, and the enterprise link page.

Routes (all under ``/bitrix24``):

* ``POST /install`` — the install POST of the app page (answers an HTML page that calls
  ``BX24.installFinish()`` and offers the link-code form) or the ``ONAPPINSTALL`` event
  (answers 200). Post-install setup (``event.bind``, external lines) runs after the commit.
* ``GET /oauth/start?portal=DOMAIN`` and ``GET /oauth/callback`` — the authorization-code flow.
* ``POST /events`` — verify ``auth[application_token]`` → store → act → 200; anything that does
  not verify gets 401, changes nothing and is logged without its secrets.
* ``POST /link`` — the link-code form of the app page.
"""

from __future__ import annotations

import html
import json
from typing import Annotated, Any, cast

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from callbridge.crm.bitrix24.auth import (
    INSTALL_EVENT,
    UNINSTALL_EVENT,
    InstallRejected,
    installation_from_event,
    parse_event,
    parse_install_post,
)
from callbridge.crm.bitrix24.encoding import decode_form
from callbridge.crm.bitrix24.errors import Bitrix24Error
from callbridge.logging import get_logger
from callbridge.portals import ForgedInstallError, LinkCodeError, PortalError, Portals
from callbridge.storage.models import Bitrix24Integration
from callbridge.web.deps import SessionDep

logger = get_logger(__name__)

router = APIRouter(prefix="/bitrix24", tags=["bitrix24"])


async def get_portals(request: Request) -> Portals:
    """The process's :class:`Portals`: from the lifespan state, else built once on first use.

    ``async def`` although it never awaits: FastAPI runs a plain ``def`` dependency in its
    thread pool, a thread hop on every request.
    """
    portals = getattr(request.state, "bitrix24_portals", None)
    if portals is None:
        portals = getattr(request.app.state, "bitrix24_portals", None)
    if portals is None:
        portals = Portals(
            request.state.settings,
            request.state.session_factory,
            request.state.http_client,
            request.state.secret_box,
        )
        request.app.state.bitrix24_portals = portals
    return cast(Portals, portals)


PortalsDep = Annotated[Portals, Depends(get_portals)]


async def _params(request: Request) -> dict[str, Any]:
    """The body as nested params: PHP-bracket form (what Bitrix24 sends) or JSON."""
    body = await request.body()
    if "json" in request.headers.get("content-type", ""):
        try:
            value = json.loads(body or b"{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    return decode_form(body)


def _ok() -> JSONResponse:
    return JSONResponse({"result": "ok"})


def _unauthorised(reason: str) -> JSONResponse:
    return JSONResponse({"error": {"code": "unauthorized", "message": reason}}, status_code=401)


async def _setup_after_commit(portals: Portals, member_id: str) -> None:
    """Bind events and add lines once the install is committed (runs after the response)."""
    try:
        await portals.setup(member_id)
    except Bitrix24Error as err:
        logger.warning("Bitrix24 post-install setup failed", member_id=member_id, error=str(err))


@router.post("/install", response_model=None)
async def install(
    request: Request,
    session: SessionDep,
    portals: PortalsDep,
    background: BackgroundTasks,
) -> Response:
    """Accept an install: the app page's POST or the ``ONAPPINSTALL`` event."""
    params = await _params(request)
    query = dict(request.query_params)
    try:
        if str(params.get("event") or "").upper() == INSTALL_EVENT:
            installation = installation_from_event(parse_event(params))
        else:
            installation = parse_install_post(params, query)
        result = await portals.install(session, installation)
    except InstallRejected as err:
        logger.warning("rejected a Bitrix24 install", reason=err.message)
        return JSONResponse(
            {"error": {"code": "install_rejected", "message": err.message}}, status_code=400
        )
    except ForgedInstallError as err:
        logger.warning("rejected a forged Bitrix24 install", reason=err.message)
        return _unauthorised("the install could not be verified with the portal")
    if result.created or result.reinstalled:
        background.add_task(_setup_after_commit, portals, installation.member_id)
    if installation.source == "event":
        return _ok()
    nonce = None
    if result.integration.enterprise_id is None:
        nonce = await portals.new_link_form(session, result.integration)
    return HTMLResponse(_install_page(result.integration, nonce))


@router.get("/oauth/start", response_model=None)
async def oauth_start(
    session: SessionDep,
    portals: PortalsDep,
    portal: Annotated[str, Query(min_length=3, description="The portal's domain")],
) -> Response:
    """Send the admin's browser to the portal's authorize page with a fresh ``state``."""
    try:
        url = await portals.start_authorization(session, portal)
    except PortalError as err:
        return HTMLResponse(_page("Cannot connect", html.escape(err.message)), status_code=400)
    return RedirectResponse(url, status_code=302)


@router.get("/oauth/callback", response_model=None)
async def oauth_callback(
    session: SessionDep,
    portals: PortalsDep,
    background: BackgroundTasks,
    code: Annotated[str, Query()] = "",
    state: Annotated[str, Query()] = "",
    member_id: Annotated[str, Query()] = "",
) -> Response:
    """Trade the code for tokens when ``state`` is ours; then set the portal up."""
    if not code or not state:
        return _unauthorised("code and state are required")
    try:
        result = await portals.finish_authorization(
            session, code=code, state=state, member_id=member_id
        )
    except PortalError as err:
        return HTMLResponse(_page("Not connected", html.escape(err.message)), status_code=400)
    except Bitrix24Error as err:
        logger.warning("Bitrix24 code exchange failed", error_class=type(err).__name__)
        return HTMLResponse(
            _page("Not connected", "Bitrix24 refused the authorization; try again."),
            status_code=502,
        )
    background.add_task(_setup_after_commit, portals, result.integration.member_id)
    domain = html.escape(result.integration.domain)
    return HTMLResponse(
        f"<!doctype html><html><body><h1>callbridge</h1><p>Portal {domain} is connected."
        "</p></body></html>"
    )


@router.post("/events", response_model=None)
async def events(request: Request, session: SessionDep, portals: PortalsDep) -> Response:
    """Verify an event by its ``application_token``, store it, act on it, answer 200."""
    event = parse_event(await _params(request))
    row = await portals.verify_event(session, event)
    if row is None:
        # Never log the token itself: only what identifies the attempt.
        logger.warning(
            "rejected a Bitrix24 event that does not verify",
            bitrix24_event=event.event,
            member_id=event.member_id,
            client=request.client.host if request.client else None,
        )
        return _unauthorised("the event's application_token does not match")
    if event.event == UNINSTALL_EVENT:
        await portals.uninstall(session, row)
    elif event.event == INSTALL_EVENT:
        await portals.install(session, installation_from_event(event))
    else:
        job_id = await portals.enqueue_event(session, row, event)
        logger.info(
            "Bitrix24 event accepted", bitrix24_event=event.event, domain=row.domain, job=job_id
        )
    return _ok()


@router.post("/link", response_model=None)
async def link(
    session: SessionDep,
    portals: PortalsDep,
    form: Annotated[str, Form()],
    code: Annotated[str, Form()],
) -> HTMLResponse:
    """Link the page's portal to the enterprise of a one-time link code."""
    try:
        row = await portals.link_with_code(session, form=form, code=code)
    except LinkCodeError as err:
        return HTMLResponse(_page("Link failed", html.escape(err.message)), status_code=400)
    return HTMLResponse(
        _page("Linked", f"Portal {html.escape(row.domain)} is linked to the PBX account.")
    )


def _page(title: str, body_html: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>callbridge: {html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{body_html}</p></body></html>"
    )


def _install_page(row: Bitrix24Integration, nonce: str | None) -> str:
    """The page shown in the portal's frame; ``BX24.installFinish()`` completes the install."""
    domain = html.escape(row.domain)
    if nonce is None:
        linked = "<p>This portal is linked to its PBX account.</p>"
    else:
        linked = (
            "<p>Enter the link code your telephony provider gave you:</p>"
            "<form method='post' action='link'>"
            f"<input type='hidden' name='form' value='{html.escape(nonce)}'>"
            "<input name='code' placeholder='XXXX-XXXX' autocomplete='off' required>"
            "<button type='submit'>Link</button></form>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>callbridge</title>"
        "<script src='//api.bitrix24.com/api/v1/'></script></head><body>"
        f"<h1>callbridge</h1><p>Installed on {domain}.</p>{linked}"
        # Until installFinish the portal delivers no events (spec §3.6).
        "<script>if (window.BX24) { BX24.init(function () { BX24.installFinish(); }); }"
        "</script></body></html>"
    )
