"""The PBX webhook route: ``POST /pbx/{enterprise}/events`` (contract v1, ``pbx/webhook.py``).

Verify → store → apply → enqueue → commit → 202. The enterprise is verified first (bearer token
or HMAC signature; an unknown enterprise and a bad credential get the same 401), then the body
(422 naming each bad field), then the whole batch is applied in one transaction, so a request
is accepted whole or not at all, and 202 means committed. That transaction is shared with the
other requests waiting at the same moment (group commit, :mod:`callbridge.web.intake`). Each
event is reported ``accepted`` or ``duplicate`` (a repeat of a stored event id: acknowledged,
not applied again).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callbridge.domain.errors import InvalidEventError, StorageError
from callbridge.domain.events import Event
from callbridge.pbx.webhook import (
    AUTHORIZATION_HEADER,
    EVENT_TYPES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EventBatch,
    WebhookVerifier,
    parse_events_json,
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
    get_credential_cache,
    get_intake_writer,
    get_secret_box,
    get_session_factory,
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
    try:
        facts = [event.to_domain() for event in events]
    except InvalidEventError as err:
        # The contract checks what the domain checks; this is a second line of defence.
        raise RequestValidationError(
            [{"loc": ("body",), "msg": err.message, "type": "value_error"}]
        ) from err
    outcomes = await _submit(intake, credentials, credential, enterprise, facts)
    return _response([event.event_id for event in events], outcomes)


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


class _WebhookRoute(_PbxRoute):
    """The webhook route, with a fast path for a well-formed request.

    FastAPI solving the route's dependencies and validating its body through them cost more
    CPU than the rest of the request together (measured with ``benchmarks/ingest.py``). A
    request with a JSON body that validates is served here by the same steps, called
    directly: verify (:class:`CachedVerifiedEnterprise`), validate the raw bytes in one pass,
    submit, answer. Anything else (a body that does not validate, another content type, a bad
    enterprise number, overridden dependencies) goes through FastAPI's handler, so error
    answers stay exactly FastAPI's; the body is read once, the request caches it.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        slow = super().get_route_handler()

        async def route(request: Request) -> Response:
            fast = await _receive_fast(request)
            return fast if fast is not None else await slow(request)

        return route


async def _receive_fast(request: Request) -> Response | None:
    enterprise = request.path_params.get("enterprise")
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if (
        not isinstance(enterprise, str)
        or not 0 < len(enterprise) <= _MAX_NUMBER_LENGTH
        or media_type != "application/json"
        or getattr(request.app, "dependency_overrides", None)
    ):
        return None
    credential = await cached_verified_enterprise(
        request,
        enterprise,
        await get_session_factory(request),
        await get_secret_box(request),
        await get_credential_cache(request),
    )
    try:
        events = parse_events_json(await request.body())
        facts = [event.to_domain() for event in events]
    except (ValidationError, InvalidEventError):
        return None
    outcomes = await _submit(
        await get_intake_writer(request),
        await get_credential_cache(request),
        credential,
        enterprise,
        facts,
    )
    body = _answer(events, outcomes)
    return JSONResponse(body, status_code=202)


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
    route_class_override=_WebhookRoute,
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
_VERIFIED_HEADERS = frozenset(
    {AUTHORIZATION_HEADER.lower(), SIGNATURE_HEADER.lower(), TIMESTAMP_HEADER.lower()}
)


class WebhookFastPath:
    """ASGI middleware: a well-formed webhook request served before FastAPI's stack.

    The webhook is the one route a PBX calls thousands of times a second, and FastAPI's
    exception middleware, router and request objects cost it a good share of its CPU (measured
    with ``benchmarks/ingest.py``). A ``POST /pbx/{enterprise}/events`` with a JSON body is
    served here by the same steps as the route (verify, validate, submit, answer 202); any other
    request, and any webhook request that does not end in a 202 (a bad credential, a body that
    does not validate, an error), goes on to the app with its body, so every answer but the 202
    is still the route's own, and nothing was stored for it: the writer stores a request whole
    or not at all.
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
        json_body = False
        for name, value in scope["headers"]:
            if name == b"content-type":
                media_type = value.decode("latin-1").partition(";")[0].strip().lower()
                json_body = media_type == "application/json"
            elif (key := name.decode("latin-1")) in _VERIFIED_HEADERS:
                headers.setdefault(key, value.decode("latin-1"))
        app = scope.get("app")
        state = scope.get("state")
        if not json_body or state is None or getattr(app, "dependency_overrides", None):
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive)
        answer = await _accept(match.group(1), headers, body, state) if more is None else None
        if answer is None:
            await self.app(scope, _replay(body, more, receive), send)
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
    enterprise: str, headers: Mapping[str, str], body: bytes, state: Mapping[str, Any]
) -> bytes | None:
    """The 202 body for a webhook request, or None to leave the request to the route."""
    factory = state.get("session_factory")
    box = state.get("secret_box")
    intake = state.get("pbx_intake")
    credentials = state.get("pbx_credentials")
    if factory is None or box is None or intake is None or credentials is None:
        return None
    if len(enterprise) > _MAX_NUMBER_LENGTH:
        return None
    try:
        credential = await cached_verified_enterprise.verify(
            enterprise, headers, body, factory, box, credentials
        )
        events = parse_events_json(body)
        facts = [event.to_domain() for event in events]
        outcomes = await intake.submit(credential.enterprise_id, credential.secret_enc, facts)
    except CredentialsChangedError:
        # Verified against a secret changed since: the route looks the enterprise up afresh.
        credentials.forget(enterprise)
        return None
    except Exception:  # noqa: BLE001 - the route answers it, as it answers any error
        # Refused, invalid or failed, and nothing of it stored.
        return None
    answer = _answer(events, outcomes)
    # As Starlette's JSONResponse renders it.
    return json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _answer(events: Sequence[Any], outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The 202 body (:class:`IngestResponse`'s shape) of a fast path."""
    accepted = sum(1 for outcome in outcomes if outcome is Outcome.ACCEPTED)
    return {
        "accepted": accepted,
        "duplicates": len(outcomes) - accepted,
        "events": [
            {"event_id": event.event_id, "status": outcome.value}
            for event, outcome in zip(events, outcomes, strict=True)
        ],
    }
