"""Every error the web app returns has one JSON shape: ``{"error": {"code", "message"}}``.

One handler maps the :class:`~callbridge.domain.errors.CallbridgeError` tree to HTTP statuses by
class (the nearest mapped ancestor wins), so a new error class gets a sensible status without
touching this module. Validation errors (422, with the field and the reason for each problem),
unknown routes (404), other HTTP errors and unexpected exceptions (500) use the same shape.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from callbridge.domain.errors import (
    CallbridgeError,
    ConfigurationError,
    JobError,
    JobNotFoundError,
    MigrationsPendingError,
    Retryable,
    StorageError,
    UnknownJobKindError,
)
from callbridge.logging import get_logger
from callbridge.storage.crypto import SecretDecryptionError

logger = get_logger(__name__)

# Status per error class; the nearest ancestor in the MRO that is listed here decides.
_STATUS_BY_CLASS: dict[type[CallbridgeError], HTTPStatus] = {
    CallbridgeError: HTTPStatus.INTERNAL_SERVER_ERROR,
    ConfigurationError: HTTPStatus.INTERNAL_SERVER_ERROR,
    StorageError: HTTPStatus.SERVICE_UNAVAILABLE,
    MigrationsPendingError: HTTPStatus.SERVICE_UNAVAILABLE,
    SecretDecryptionError: HTTPStatus.INTERNAL_SERVER_ERROR,
    JobError: HTTPStatus.CONFLICT,
    JobNotFoundError: HTTPStatus.NOT_FOUND,
    UnknownJobKindError: HTTPStatus.UNPROCESSABLE_ENTITY,
    Retryable: HTTPStatus.SERVICE_UNAVAILABLE,
}

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


class FieldProblem(BaseModel):
    """One invalid input: where it is (``body.number``, ``query.limit``) and what is wrong."""

    field: str
    reason: str


class ErrorDetail(BaseModel):
    """A machine-readable code and a human-readable message."""

    code: str
    message: str
    fields: list[FieldProblem] | None = None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def status_for(error: CallbridgeError) -> HTTPStatus:
    """The HTTP status for an error: that of its nearest mapped ancestor."""
    for cls in type(error).__mro__:
        status = _STATUS_BY_CLASS.get(cls)
        if status is not None:
            return status
    return HTTPStatus.INTERNAL_SERVER_ERROR  # pragma: no cover - CallbridgeError is mapped


def code_for(error: CallbridgeError) -> str:
    """A stable snake_case code from the class name: JobNotFoundError -> job_not_found."""
    name = type(error).__name__.removesuffix("Error") or "callbridge"
    return _CAMEL_BOUNDARY.sub("_", name).lower()


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    fields: list[FieldProblem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON error response in the one shape."""
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, fields=fields))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


async def _callbridge_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CallbridgeError)
    status = status_for(exc)
    if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        logger.error("request failed", error=type(exc).__name__, reason=exc.message)
    headers = None
    if isinstance(exc, Retryable) and exc.retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return error_response(status, code_for(exc), exc.message, headers=headers)


def _status_code(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "http_error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return error_response(
        exc.status_code, _status_code(exc.status_code), message, headers=exc.headers
    )


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [
        FieldProblem(
            field=".".join(str(part) for part in problem.get("loc", ())) or "request",
            reason=str(problem.get("msg", "invalid")),
        )
        for problem in exc.errors()
    ]
    summary = "; ".join(f"{item.field}: {item.reason}" for item in fields)
    return error_response(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "validation_error",
        f"invalid request: {summary}",
        fields=fields,
    )


async def _unexpected_error(_request: Request, _exc: Exception) -> JSONResponse:
    # The server logs the traceback (Starlette re-raises after answering); the client gets no
    # internals.
    return error_response(
        HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "internal server error"
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error response the same shape."""
    app.add_exception_handler(CallbridgeError, _callbridge_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
