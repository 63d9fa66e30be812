"""Responsible routing for dialplans: ``GET /pbx/{enterprise}/responsible?phone=...``.

A dialplan asks, while the caller waits, which extension belongs to the CRM owner of the
caller's number, and rings it first. Authenticated like the events webhook (bearer token or
HMAC over the timestamp and the empty body). Answers:

* 200 ``{"extension": "102", "user_id": 2, ...}`` (with ``format=text``: just ``102``);
* 404 when nobody is known (unknown number, no responsible, responsible without extension,
  no active portal), with the reason as the error code;
* 504 / 502 when Bitrix24 did not answer within the time box or refused: route as usual;
* 422 for something that is not a phone number; 401 for bad credentials.

With ``format=text`` an error's body is empty, so ``${CURL(...)}`` yields "" and the dialplan
falls through to its normal route.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from callbridge.directory import ResponsibleFinder
from callbridge.services.responsible import Responsible, ResponsibleMiss
from callbridge.web.bitrix24_app import get_portals
from callbridge.web.deps import SessionDep
from callbridge.web.errors import ErrorResponse, error_response
from callbridge.web.pbx import verified_enterprise

__all__ = ["ResponsibleAnswer", "get_responsible_finder", "router"]

router = APIRouter(prefix="/pbx", tags=["pbx"])

_STATUS_BY_REASON = {
    "invalid_phone": HTTPStatus.UNPROCESSABLE_ENTITY,
    "crm_timeout": HTTPStatus.GATEWAY_TIMEOUT,
    "crm_error": HTTPStatus.BAD_GATEWAY,
}


class ResponsibleAnswer(BaseModel):
    """The extension to ring and the CRM object it was found by."""

    extension: str
    user_id: int
    crm_entity_type: str
    crm_entity_id: int
    name: str


async def get_responsible_finder(request: Request) -> ResponsibleFinder:
    """The app's finder (and its cache), made on first use (``async``: no thread hop)."""
    finder = getattr(request.app.state, "responsible_finder", None)
    if finder is None:
        finder = ResponsibleFinder(await get_portals(request))
        request.app.state.responsible_finder = finder
    return cast(ResponsibleFinder, finder)


@router.get(
    "/{enterprise}/responsible",
    response_model=ResponsibleAnswer,
    summary="The extension of the CRM owner of a phone number",
    responses={
        401: {"model": ErrorResponse, "description": "Unknown enterprise or bad credentials."},
        404: {"model": ErrorResponse, "description": "Nobody known: route as usual."},
        422: {"model": ErrorResponse, "description": "Not a phone number."},
        502: {"model": ErrorResponse, "description": "Bitrix24 refused the search."},
        504: {"model": ErrorResponse, "description": "Bitrix24 did not answer in time."},
    },
)
async def responsible(
    enterprise_id: Annotated[int, Depends(verified_enterprise)],
    phone: Annotated[str, Query(min_length=1, max_length=64, description="Caller's number.")],
    session: SessionDep,
    finder: Annotated[ResponsibleFinder, Depends(get_responsible_finder)],
    format: Annotated[Literal["json", "text"], Query(description="text: the bare extension")] = (
        "json"
    ),
) -> Response:
    """Find the responsible user's extension for ``phone`` (cached for a minute)."""
    # Nothing to write: end the verification's read transaction so that no connection is
    # held while Bitrix24 is asked (SQLite has one per process).
    await session.commit()
    outcome = await finder.find(enterprise_id, phone)
    if isinstance(outcome, Responsible):
        if format == "text":
            return PlainTextResponse(outcome.extension)
        answer = ResponsibleAnswer(
            extension=outcome.extension,
            user_id=outcome.user_id,
            crm_entity_type=outcome.crm_entity_type,
            crm_entity_id=outcome.crm_entity_id,
            name=outcome.name,
        )
        return JSONResponse(answer.model_dump())
    return _miss(outcome, text=format == "text")


def _miss(miss: ResponsibleMiss, *, text: bool) -> Response:
    status = _STATUS_BY_REASON.get(miss.reason, HTTPStatus.NOT_FOUND)
    if text:
        return PlainTextResponse("", status_code=status)
    return error_response(status, miss.reason, miss.detail)
