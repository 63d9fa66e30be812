"""The PBX webhook route: ``POST /pbx/{enterprise}/events`` (contract v1, ``pbx/webhook.py``).

Verify → store → apply → enqueue → commit → 202. The enterprise is verified first (bearer token
or HMAC signature; an unknown enterprise and a bad credential get the same 401; only a body that
is not JSON at all is refused before, 422), then the body (422 naming each bad field), then the
whole batch is applied in one transaction, so a request is accepted whole or not at all, and
202 means committed. That transaction is shared with the other requests waiting at the same
moment (group commit, :mod:`callbridge.web.intake`). Each event is reported ``accepted`` or
``duplicate`` (a repeat of a stored event id: acknowledged, not applied again).

:class:`WebhookFastPath` serves these requests in front of FastAPI's stack, by the same steps;
the route serves only what the fast path leaves to it (see there).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Depends, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callbridge.domain.errors import InvalidEventError, StorageError
from callbridge.domain.events import Event
from callbridge.pbx.webhook import (
    AUTHORIZATION_HEADER,
    EVENT_TYPES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EventBatch,
    WebhookEvent,
    WebhookVerifier,
    parse_events,
)
from callbridge.services.call_tracking import Outcome
from callbridge.storage.crypto import SecretBox
from callbridge.storage.repositories import EnterpriseRepository
from callbridge.web.deps import (
    CredentialCacheDep,
    IntakeWriterDep,
    SecretBoxDep,
    SessionDep,
    SessionFactoryDep,
)
from callbridge.web.errors import ErrorResponse
from callbridge.web.intake import Credential, CredentialCache, CredentialsChangedError, IntakeWriter

__all__ = [
    "CachedVerifiedEnterprise",
    "IngestResponse",
    "VerifiedEnterprise",
    "WebhookFastPath",
    "router",
]

_EVENT_TAGS = frozenset(EVENT_TYPES)
_MAX_NUMBER_LENGTH = 64
_UNAUTHORIZED = "unknown enterprise or invalid credentials"


class _PbxRoute(APIRoute):
    """Reports body errors by the field's place in the request, not pydantic's union tags.

    ``body.0.call.started.direction`` becomes ``body.0.direction`` (``body.direction`` when
    the body is one event rather than a list).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                single = isinstance(exc.body, dict)
                raise RequestValidationError(
                    [_relocate(error, single=single) for error in exc.errors()], body=exc.body
                ) from None

        return route


def _relocate(error: Any, *, single: bool) -> dict[str, Any]:
    loc = list(error.get("loc", ()))
    if loc[:1] == ["body"]:
        rest = [part for part in loc[1:] if part not in _EVENT_TAGS]
        if single and rest[:1] == [0]:
            rest = rest[1:]
        if str(error.get("type", "")).startswith("union_tag"):
            rest.append("type")
        loc = ["body", *rest]
    return {**error, "loc": tuple(loc)}


router = APIRouter(prefix="/pbx", tags=["pbx"], route_class=_PbxRoute)


class VerifiedEnterprise:
    """Dependency: the id of the path's enterprise, once the request proves its webhook token."""

    def __init__(self, verifier: WebhookVerifier | None = None) -> None:
        self.verifier = verifier or WebhookVerifier()

    async def __call__(
        self,
        request: Request,
        enterprise: Annotated[str, Path(description="The enterprise number.", max_length=64)],
        session: SessionDep,
        box: SecretBoxDep,
    ) -> int:
        """The enterprise id; 401 for an unknown enterprise and for a bad credential alike."""
        body = await request.body()
        row = await EnterpriseRepository(session).by_number(enterprise)
        secret: str | None = None
        if row is not None and row.active and row.webhook_secret_enc:
            secret = box.decrypt(row.webhook_secret_enc)
        if row is None or not self.verifier(secret, request.headers, body):
            raise _unauthorized()
        return row.id


verified_enterprise = VerifiedEnterprise()


def _unauthorized() -> HTTPException:
    return HTTPException(
        status_code=401,
        detail=_UNAUTHORIZED,
        headers={"WWW-Authenticate": 'Bearer realm="callbridge-pbx"'},
    )


class CachedVerifiedEnterprise:
    """Dependency: like :class:`VerifiedEnterprise`, with the secret from the process's cache.

    No transaction and no decryption per request. A miss, or a cached secret the request does
    not match, is looked up in the database before the answer; a stale secret that still
    matches is caught by the intake writer, which re-checks it in its transaction.
    """

    def __init__(self, verifier: WebhookVerifier | None = None) -> None:
        self.verifier = verifier or WebhookVerifier()

    async def __call__(
        self,
        request: Request,
        enterprise: Annotated[str, Path(description="The enterprise number.", max_length=64)],
        factory: SessionFactoryDep,
        box: SecretBoxDep,
        cache: CredentialCacheDep,
    ) -> Credential:
        """The enterprise's credential; 401 for an unknown enterprise and a bad one alike."""
        body = await request.body()
        return await self.verify(enterprise, request.headers, body, factory, box, cache)

    async def verify(
        self,
        enterprise: str,
        headers: Mapping[str, str],
        body: bytes,
        factory: Callable[[], Any],
        box: SecretBox,
        cache: CredentialCache,
    ) -> Credential:
        """:meth:`__call__` on a request's parts (``headers`` by lower-case name)."""
        cached = cache.get(enterprise)
        if cached is not None and self.verifier(cached.secret, headers, body):
            return cached
        credential = await _load_credential(factory, box, enterprise)
        if credential is None:
            cache.forget(enterprise)
        else:
            cache.put(enterprise, credential)
        secret = credential.secret if credential is not None else None
        if credential is None or not self.verifier(secret, headers, body):
            raise _unauthorized()
        return credential


async def _load_credential(
    factory: Callable[[], Any], box: SecretBox, number: str
) -> Credential | None:
    try:
        async with factory() as session:
            row = await EnterpriseRepository(session).by_number(number)
    except (OperationalError, InterfaceError, OSError) as err:
        raise StorageError("the database is unavailable; try again later") from err
    if row is None or not row.active or not row.webhook_secret_enc:
        return None
    return Credential(row.id, row.webhook_secret_enc, box.decrypt(row.webhook_secret_enc))


cached_verified_enterprise = CachedVerifiedEnterprise()


class EventResult(BaseModel):
    """What became of one event of the request, in the request's order."""

    event_id: str
    status: Literal["accepted", "duplicate"]


class IngestResponse(BaseModel):
    """The 202 body: the events are committed (applied, or recognised as repeats)."""

    accepted: int
    duplicates: int
    events: list[EventResult]


async def receive_events(
    credential: Annotated[Credential, Depends(cached_verified_enterprise)],
    enterprise: Annotated[str, Path(max_length=64)],
    events: Annotated[EventBatch, Body(description="One event, or a list of up to 500.")],
    intake: IntakeWriterDep,
    credentials: CredentialCacheDep,
) -> IngestResponse:
    """Store and apply one event or a list of events: all of them, or none (see docs)."""
    facts = _to_domain(events)
    outcomes = await _submit(intake, credentials, credential, enterprise, facts)
    return _response([event.event_id for event in events], outcomes)


def _to_domain(events: Sequence[WebhookEvent]) -> list[Event]:
    """The events as the domain's facts; an event the domain refuses is a 422."""
    try:
        return [event.to_domain() for event in events]
    except InvalidEventError as err:
        # The contract checks what the domain checks; this is a second line of defence.
        raise RequestValidationError(
            [{"loc": ("body",), "msg": err.message, "type": "value_error"}]
        ) from err


async def _submit(
    intake: IntakeWriter,
    credentials: CredentialCache,
    credential: Credential,
    enterprise: str,
    facts: Sequence[Event],
) -> list[Outcome]:
    try:
        return await intake.submit(credential.enterprise_id, credential.secret_enc, facts)
    except CredentialsChangedError:
        credentials.forget(enterprise)
        raise _unauthorized() from None


router.add_api_route(
    "/{enterprise}/events",
    receive_events,
    methods=["POST"],
    status_code=202,
    response_model=IngestResponse,
    summary="Report call events (contract v1)",
    responses={
        401: {"model": ErrorResponse, "description": _UNAUTHORIZED},
        422: {"model": ErrorResponse, "description": "The body is invalid; nothing is stored."},
    },
)


def _response(event_ids: Sequence[str], outcomes: Sequence[Outcome]) -> IngestResponse:
    results = [
        EventResult(event_id=event_id, status=outcome.value)
        for event_id, outcome in zip(event_ids, outcomes, strict=True)
    ]
    accepted = sum(1 for outcome in outcomes if outcome is Outcome.ACCEPTED)
    return IngestResponse(accepted=accepted, duplicates=len(outcomes) - accepted, events=results)


# -- the fast path, in front of FastAPI ---------------------------------------------------------

_WEBHOOK_PATH = re.compile(r"/pbx/([^/]+)/events")
# By the raw (lower-case) name the server gives: only these are decoded.
_VERIFIED_HEADERS = {
    name.lower().encode("latin-1"): name.lower()
    for name in (AUTHORIZATION_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER)
}
_STATE_KEYS = ("session_factory", "secret_box", "pbx_intake", "pbx_credentials")


class WebhookFastPath:
    """ASGI middleware: the webhook's requests served before FastAPI's stack.

    The webhook is the one route a PBX calls thousands of times a second, and FastAPI's
    exception middleware, router, dependencies and request objects cost it a good share of its
    CPU (measured with ``benchmarks/ingest.py``). A ``POST /pbx/{enterprise}/events`` with a
    JSON body is served here by the route's steps in the route's order: decode the body, verify
    the credential, validate the events, submit them, answer. Every outcome is answered here,
    each once: the 202, and a refusal or an error as the app's exception handlers render it
    when the route raises it (same status, body and headers). So a request is verified,
    validated and submitted once, also when the writer fails (503), where submitting again
    would add to an overload.

    What the route would judge otherwise goes on to the app, body and all, untouched: another
    content type, a body the JSON decoder refuses (FastAPI answers that before it verifies),
    an enterprise number too long for the route, a body cut short by a disconnect, an app with
    overridden dependencies or without the lifespan's state.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a webhook request, or pass the request on."""
        match = (
            _WEBHOOK_PATH.fullmatch(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path")
            else None
        )
        if match is None:
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        media_type: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                if media_type is None:  # The first one, as the route reads it.
                    media_type = value.decode("latin-1").partition(";")[0].strip().lower()
            elif (key := _VERIFIED_HEADERS.get(name)) is not None:
                headers.setdefault(key, value.decode("latin-1"))
        enterprise = match.group(1)
        app = scope.get("app")
        state = scope.get("state")
        if (
            media_type != "application/json"
            or len(enterprise) > _MAX_NUMBER_LENGTH
            or state is None
            or any(state.get(key) is None for key in _STATE_KEYS)
            or getattr(app, "exception_handlers", None) is None
            or getattr(app, "dependency_overrides", None)
        ):
            await self.app(scope, receive, send)
            return
        body, ended = await _read_body(receive)
        data = _decode(body) if ended is None else _UNDECODED
        if data is _UNDECODED:
            await self.app(scope, _replay(body, ended, receive), send)
            return
        try:
            answer = await _accept(enterprise, headers, body, data, state)
        except Exception as exc:  # noqa: BLE001 - answered as the app answers it
            await _answer_error(scope, receive, send, exc)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [
                    (b"content-length", str(len(answer)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})


_UNDECODED: Any = object()
# A body this short cannot nest deeper than ``json`` can decode (it runs out of recursion at
# nearly a thousand levels, where orjson goes on to 1024).
_ORJSON_MAX_BYTES = 1024
_LONG_DIGITS = re.compile(rb"\d{19}")


def _decode(body: bytes) -> Any:
    """The body decoded as the route decodes it (stdlib ``json``), or ``_UNDECODED``.

    The route answers a body that does not decode before it verifies the request, by FastAPI's
    own rules; an empty body is the route's too (a missing body, not invalid JSON).
    """
    if not body:
        return _UNDECODED
    if len(body) <= _ORJSON_MAX_BYTES and _LONG_DIGITS.search(body) is None:
        # orjson decodes what it accepts as ``json`` does, at a fraction of the cost; what it
        # refuses (other encodings, NaN, infinities, lone surrogates) ``json`` judges. An
        # integer beyond 64 bits it would make a float: a body with one goes to ``json``.
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body)
    except Exception:  # noqa: BLE001 - invalid JSON, bad UTF-8, nesting too deep: the route's
        return _UNDECODED


async def _read_body(receive: Receive) -> tuple[bytes, Message | None]:
    """The request's body; and the message that ended it early (a disconnect), if any."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _replay(body: bytes, ended: Message | None, receive: Receive) -> Receive:
    """``receive`` again from the start of the body (already read)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    if ended is not None:
        pending = [{"type": "http.request", "body": body, "more_body": True}, ended]

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _accept(
    enterprise: str, headers: Mapping[str, str], body: bytes, data: Any, state: Mapping[str, Any]
) -> bytes:
    """The 202 body for a webhook request; raises what the route raises when it refuses."""
    factory = state["session_factory"]
    box = state["secret_box"]
    intake: IntakeWriter = state["pbx_intake"]
    credentials: CredentialCache = state["pbx_credentials"]
    verify = cached_verified_enterprise.verify
    credential = await verify(enterprise, headers, body, factory, box, credentials)
    events = _validate(data)
    facts = _to_domain(events)
    try:
        outcomes = await intake.submit(credential.enterprise_id, credential.secret_enc, facts)
    except CredentialsChangedError:
        # Verified against a secret changed since (or only encrypted anew): nothing was stored,
        # so once more with the enterprise's current secret, as a new request would be.
        credentials.forget(enterprise)
        credential = await verify(enterprise, headers, body, factory, box, credentials)
        outcomes = await _submit(intake, credentials, credential, enterprise, facts)
    # The bytes Starlette's JSONResponse renders (compact, UTF-8), at a fraction of the cost.
    return orjson.dumps(_answer(events, outcomes))


def _validate(data: Any) -> list[WebhookEvent]:
    """The decoded body's events; a 422 naming each problem as the route names it."""
    try:
        return parse_events(data)
    except ValidationError as err:
        single = isinstance(data, dict)
        raise RequestValidationError(
            [
                _relocate({**error, "loc": ("body", *error["loc"])}, single=single)
                for error in err.errors(include_url=False)
            ],
            body=data,
        ) from None


async def _answer_error(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """Answer ``exc`` with the app's exception handler for it, as when the route raises it.

    Starlette's exception middleware picks the handler (by status for an HTTP error, then by
    the exception's classes); an exception it has none for is answered by the server error
    middleware's handler and raised again, for the server to log.
    """
    handlers: Mapping[Any, Callable[[Request, Exception], Any]] = scope["app"].exception_handlers
    handler = handlers.get(exc.status_code) if isinstance(exc, StarletteHTTPException) else None
    if handler is None:
        found = (handlers.get(cls) for cls in type(exc).__mro__ if cls is not Exception)
        handler = next((each for each in found if each is not None), None)
    unexpected = handler is None
    if handler is None:
        handler = handlers.get(500) or handlers.get(Exception)
        if handler is None:
            raise exc
    response = handler(Request(scope, receive), exc)
    if inspect.isawaitable(response):
        response = await response
    await response(scope, receive, send)
    if unexpected:
        raise exc


def _answer(events: Sequence[WebhookEvent], outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The 202 body (:class:`IngestResponse`'s shape) of the fast path."""
    accepted = sum(1 for outcome in outcomes if outcome is Outcome.ACCEPTED)
    return {
        "accepted": accepted,
        "duplicates": len(outcomes) - accepted,
        "events": [
            {"event_id": event.event_id, "status": outcome.value}
            for event, outcome in zip(events, outcomes, strict=True)
        ],
    }
