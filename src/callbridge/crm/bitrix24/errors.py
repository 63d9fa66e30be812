"""Errors of the Bitrix24 client, grouped by what the caller should do about them.

Every error Bitrix24 answers (or that happens on the way to it) becomes one of these classes; the
job queue's retry policy reads the classes (``Retryable``, ``RetryLater``, ``Permanent`` from
:mod:`callbridge.domain.errors`), never the codes or the messages::

    CallbridgeError
    └── Bitrix24Error                    code, description, http_status, method
        ├── TokenExpired                 expired_token: refresh and retry once (the client does)
        │                                  (Retryable if it still escapes)
        ├── ReauthRequired               an administrator must reconnect or approve (RetryLater)
        │   ├── InvalidToken             invalid_token, NO_AUTH_FOUND, ERROR_OAUTH,
        │   │                              APPLICATION_NOT_FOUND, authorization_error,
        │   │                              METHOD_CONFIRM_WAITING, PAYMENT_REQUIRED (REST)
        │   └── RefreshRejected          the OAuth server refused the refresh token or the
        │                                  client credentials (invalid_grant, invalid_client...)
        ├── BackOff                      transient: try again later (Retryable)
        │   ├── QueryLimitExceeded       QUERY_LIMIT_EXCEEDED, HTTP 503 (RetryLater: never drop)
        │   ├── OperationTimeLimit       OPERATION_TIME_LIMIT, HTTP 429, until ``reset_at``
        │   │                              (RetryLater)
        │   ├── ServerError              5xx, INTERNAL_SERVER_ERROR, OVERLOAD_LIMIT, HTML pages
        │   └── TransportError           connection refused/reset, DNS, protocol errors
        │       └── RequestTimeout       no answer in time
        ├── PermanentError               retrying cannot help (Permanent)
        │   ├── AccessDenied             ACCESS_DENIED, user_access_error, INVALID_CREDENTIALS
        │   ├── InsufficientScope        insufficient_scope
        │   ├── WrongAuthType            WRONG_AUTH_TYPE
        │   │   └── AppContextRequired   an app-only method in incoming-webhook mode
        │   ├── MethodNotFound           ERROR_METHOD_NOT_FOUND
        │   ├── InvalidRequest           ERROR_CORE, INVALID_ARGUMENT, CRM errors with an empty
        │   │   │                          code, ERROR_BATCH_*, any other 4xx
        │   │   └── CallNotFound         ``finish``: "Call is not found (call should be registered
        │   │                              prior to finishing" — no open call with that CALL_ID
        │   └── UnexpectedResponse       an answer that is not the documented envelope
        └── PortalGone                   PORTAL_DELETED (Permanent)

Codes are compared case-insensitively (``expired_token`` and ``NO_AUTH_FOUND`` differ in case
on the wire; both SDKs lower-case them). :func:`error_from_response` is the one place that maps
an answer to a class; :func:`error_from_transport` translates httpx errors at the boundary.
"""

from __future__ import annotations

from typing import Any

import httpx

from callbridge.domain.errors import CallbridgeError, Permanent, Retryable, RetryLater

# Seconds a job waits when an administrator must act (reconnect, approve a method): long enough
# not to hammer the portal, short enough that work resumes soon after the fix.
REAUTH_RETRY_AFTER = 300.0
# QUERY_LIMIT_EXCEEDED: a standard bucket drains one request per 0.5 s; 1.5 s is the JS SDK's
# first wait ((1000 / drain + 1000) ms) and lets a whole bucket's worth of callers spread out.
QUERY_LIMIT_RETRY_AFTER = 1.5
# OPERATION_TIME_LIMIT without a known reset time: the oldest one-minute slot expires within
# the ten-minute window; one minute is the shortest wait that can help.
OPERATION_LIMIT_RETRY_AFTER = 60.0


class Bitrix24Error(CallbridgeError):
    """Bitrix24 refused the request or could not be reached."""

    default_retry_after: float | None = None

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str = "",
        description: str = "",
        http_status: int | None = None,
        method: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        if message is None and (code or description):
            where = f" ({method})" if method else ""
            message = f"Bitrix24{where}: {code or 'error'}: {description}".rstrip(": ")
        # Not super(): for the RetryLater subclasses the next __init__ in the MRO takes
        # ``retry_after`` first, and the message would be lost.
        CallbridgeError.__init__(self, message)
        self.code = code
        self.description = description
        self.http_status = http_status
        self.method = method
        # Set directly: Retryable/RetryLater read only this attribute.
        self.retry_after = retry_after if retry_after is not None else self.default_retry_after


class TokenExpired(Bitrix24Error, Retryable):
    """The access token has expired; refresh it and repeat the call once."""


class ReauthRequired(Bitrix24Error, RetryLater):
    """The portal no longer accepts our authorisation; an administrator must reconnect the app."""

    default_retry_after = REAUTH_RETRY_AFTER


class InvalidToken(ReauthRequired):
    """The portal does not know our token (or the app, or its user) any more."""


class RefreshRejected(ReauthRequired):
    """The OAuth server refused to refresh the tokens; the app must be authorised again."""


class BackOff(Bitrix24Error, Retryable):
    """A transient failure; the request may succeed later."""


class QueryLimitExceeded(BackOff, RetryLater):
    """Too many requests to this portal (HTTP 503 QUERY_LIMIT_EXCEEDED); slow down."""

    default_retry_after = QUERY_LIMIT_RETRY_AFTER


class OperationTimeLimit(BackOff, RetryLater):
    """This method used up its execution-time budget (HTTP 429); it unblocks at ``reset_at``."""

    default_retry_after = OPERATION_LIMIT_RETRY_AFTER

    def __init__(
        self, message: str | None = None, *, reset_at: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.reset_at = reset_at


class ServerError(BackOff):
    """The portal failed (HTTP 5xx); try again later."""


class TransportError(BackOff):
    """The portal could not be reached (connection, DNS or protocol error)."""


class RequestTimeout(TransportError):
    """The portal did not answer in time."""


class PermanentError(Bitrix24Error, Permanent):
    """Bitrix24 refused the request for a reason that retrying cannot fix."""


class AccessDenied(PermanentError):
    """The token's user or plan may not do this."""


class InsufficientScope(PermanentError):
    """The app lacks the scope this method needs; add it to the app card and reinstall."""


class WrongAuthType(PermanentError):
    """This method refuses this kind of authorisation (e.g. a webhook for an app-only method)."""


class AppContextRequired(WrongAuthType):
    """This method works only for an installed app, not through an incoming webhook."""


class MethodNotFound(PermanentError):
    """The portal has no such method."""


class InvalidRequest(PermanentError):
    """The portal rejected the parameters."""


class CallNotFound(InvalidRequest):
    """No open call has this CALL_ID: it was never registered, or it is already finished."""


# ``finish`` of a CALL_ID that is not open (spec §1.2, §8.6): the code is the generic ERROR_CORE,
# so the description is all that tells it apart. A second finish of one call gets it too.
_CALL_NOT_FOUND_PREFIX = "call is not found (call should be registered"


class UnexpectedResponse(PermanentError):
    """The portal's answer is not the documented JSON envelope."""


class PortalGone(Bitrix24Error, Permanent):
    """The portal was deleted."""


_BY_CODE: dict[str, type[Bitrix24Error]] = {
    "expired_token": TokenExpired,
    "invalid_token": InvalidToken,
    "no_auth_found": InvalidToken,
    "error_oauth": InvalidToken,
    "application_not_found": InvalidToken,
    "authorization_error": InvalidToken,
    "method_confirm_waiting": InvalidToken,
    "payment_required": InvalidToken,
    "not_installed": InvalidToken,
    "query_limit_exceeded": QueryLimitExceeded,
    "operation_time_limit": OperationTimeLimit,
    "internal_server_error": ServerError,
    "error_unexpected_answer": ServerError,
    "overload_limit": ServerError,
    "access_denied": AccessDenied,
    "user_access_error": AccessDenied,
    "invalid_credentials": AccessDenied,
    "insufficient_scope": InsufficientScope,
    "wrong_auth_type": WrongAuthType,
    "error_method_not_found": MethodNotFound,
    "portal_deleted": PortalGone,
}

# Answers of the OAuth server to a token request (spec §3.4).
_OAUTH_BY_CODE: dict[str, type[Bitrix24Error]] = {
    "invalid_grant": RefreshRejected,
    "invalid_client": RefreshRejected,
    "wrong_client": RefreshRejected,
    "not_installed": RefreshRejected,
    "payment_required": RefreshRejected,
    "no_auth_found": RefreshRejected,
    "invalid_scope": RefreshRejected,
    "insufficient_scope": RefreshRejected,
    "invalid_request": InvalidRequest,
    "unsupported_grant_type": InvalidRequest,
}

# OVERLOAD_LIMIT is a manual block of the portal's REST API: retrying every few seconds only
# prolongs it, so it waits as long as an operating-time block.
_LONG_WAIT_CODES = frozenset({"overload_limit"})


def error_from_response(
    http_status: int,
    code: str,
    description: str,
    *,
    method: str | None = None,
    retry_after: float | None = None,
    oauth: bool = False,
) -> Bitrix24Error:
    """The error for an answer with ``{"error": code, "error_description": description}``."""
    key = code.lower()
    cls = (_OAUTH_BY_CODE if oauth else _BY_CODE).get(key)
    if cls is None:
        # A 503 without QUERY_LIMIT_EXCEEDED is a proxy's HTML page: a failure, not a rate limit.
        if http_status >= 500:
            cls = ServerError
        elif http_status == 429:
            cls = OperationTimeLimit
        elif http_status == 401:
            cls = RefreshRejected if oauth else InvalidToken
        elif http_status == 403:
            cls = AccessDenied
        elif http_status == 404 and not code:
            cls = MethodNotFound
        else:
            cls = InvalidRequest
    if cls is InvalidRequest and description.lower().startswith(_CALL_NOT_FOUND_PREFIX):
        cls = CallNotFound
    if key in _LONG_WAIT_CODES and retry_after is None:
        retry_after = OPERATION_LIMIT_RETRY_AFTER
    return cls(
        code=code,
        description=description,
        http_status=http_status,
        method=method,
        retry_after=retry_after,
    )


def error_from_transport(err: httpx.HTTPError, *, method: str | None = None) -> Bitrix24Error:
    """The error for an httpx failure; raise it ``from err``."""
    where = f" calling {method}" if method else ""
    if isinstance(err, httpx.TimeoutException):
        return RequestTimeout(
            f"Bitrix24 did not answer in time{where}: {type(err).__name__}", method=method
        )
    return TransportError(
        f"cannot reach Bitrix24{where}: {type(err).__name__}: {err}", method=method
    )
