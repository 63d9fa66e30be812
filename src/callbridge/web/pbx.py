"""The PBX webhook route: ``POST /pbx/{enterprise}/events`` (contract v1, ``pbx/webhook.py``).

Verify → store → apply → enqueue → commit → 202. The enterprise is verified first (bearer token
or HMAC signature; an unknown enterprise and a bad credential get the same 401), then the body
(422 naming each bad field), then the whole batch is applied in the request's one transaction,
so a request is accepted whole or not at all, and 202 means committed. Each event is reported
``accepted`` or ``duplicate`` (a repeat of a stored event id: acknowledged, not applied again).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel

from callbridge.domain.errors import InvalidEventError
from callbridge.pbx.webhook import EVENT_TYPES, EventBatch, WebhookVerifier
from callbridge.services.call_tracking import Outcome, track_events
from callbridge.storage.call_tracking import RoutingCache, call_tracking_ports
from callbridge.storage.repositories import EnterpriseRepository
from callbridge.web.deps import SecretBoxDep, SessionDep
from callbridge.web.errors import ErrorResponse

__all__ = ["IngestResponse", "VerifiedEnterprise", "router"]

_EVENT_TAGS = frozenset(EVENT_TYPES)
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
            raise HTTPException(
                status_code=401,
                detail=_UNAUTHORIZED,
                headers={"WWW-Authenticate": 'Bearer realm="callbridge-pbx"'},
            )
        return row.id


verified_enterprise = VerifiedEnterprise()


def get_routing_cache(request: Request) -> RoutingCache:
    """The app's cache of enterprise routings, made on first use."""
    cache = getattr(request.app.state, "pbx_routing_cache", None)
    if cache is None:
        cache = RoutingCache()
        request.app.state.pbx_routing_cache = cache
    return cast(RoutingCache, cache)


class EventResult(BaseModel):
    """What became of one event of the request, in the request's order."""

    event_id: str
    status: Literal["accepted", "duplicate"]


class IngestResponse(BaseModel):
    """The 202 body: the events are committed (applied, or recognised as repeats)."""

    accepted: int
    duplicates: int
    events: list[EventResult]


@router.post(
    "/{enterprise}/events",
    status_code=202,
    response_model=IngestResponse,
    summary="Report call events (contract v1)",
    responses={
        401: {"model": ErrorResponse, "description": _UNAUTHORIZED},
        422: {"model": ErrorResponse, "description": "The body is invalid; nothing is stored."},
    },
)
async def receive_events(
    enterprise_id: Annotated[int, Depends(verified_enterprise)],
    events: Annotated[EventBatch, Body(description="One event, or a list of up to 500.")],
    session: SessionDep,
    box: SecretBoxDep,
    routing_cache: Annotated[RoutingCache, Depends(get_routing_cache)],
) -> IngestResponse:
    """Store and apply one event or a list of events: all of them, or none (see docs)."""
    try:
        facts = [event.to_domain() for event in events]
    except InvalidEventError as err:
        # The contract checks what the domain checks; this is a second line of defence.
        raise RequestValidationError(
            [{"loc": ("body",), "msg": err.message, "type": "value_error"}]
        ) from err
    ports = call_tracking_ports(session, box, routing_cache=routing_cache)
    outcomes = await track_events(ports, enterprise_id, facts)
    return _response([event.event_id for event in events], outcomes)


def _response(event_ids: Sequence[str], outcomes: Sequence[Outcome]) -> IngestResponse:
    results = [
        EventResult(event_id=event_id, status=outcome.value)
        for event_id, outcome in zip(event_ids, outcomes, strict=True)
    ]
    accepted = sum(1 for outcome in outcomes if outcome is Outcome.ACCEPTED)
    return IngestResponse(accepted=accepted, duplicates=len(outcomes) - accepted, events=results)
