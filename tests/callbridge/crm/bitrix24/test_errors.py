"""The error tree: each answer maps to the class that says what the caller should do."""

from __future__ import annotations

import httpx
import pytest

from callbridge.crm.bitrix24 import errors as e
from callbridge.domain.errors import Permanent, Retryable, RetryLater


class TestErrorFromResponse:
    @pytest.mark.parametrize(
        ("status", "code", "cls"),
        [
            (401, "expired_token", e.TokenExpired),
            (401, "EXPIRED_TOKEN", e.TokenExpired),
            (401, "invalid_token", e.InvalidToken),
            (401, "NO_AUTH_FOUND", e.InvalidToken),
            (401, "no_auth_found", e.InvalidToken),
            (503, "QUERY_LIMIT_EXCEEDED", e.QueryLimitExceeded),
            (429, "OPERATION_TIME_LIMIT", e.OperationTimeLimit),
            (500, "INTERNAL_SERVER_ERROR", e.ServerError),
            (502, "", e.ServerError),
            (503, "", e.ServerError),
            (403, "ACCESS_DENIED", e.AccessDenied),
            (403, "insufficient_scope", e.InsufficientScope),
            (401, "insufficient_scope", e.InsufficientScope),
            (403, "WRONG_AUTH_TYPE", e.WrongAuthType),
            (400, "ERROR_CORE", e.InvalidRequest),
            (400, "INVALID_ARGUMENT", e.InvalidRequest),
            (400, "", e.InvalidRequest),
            (404, "ERROR_METHOD_NOT_FOUND", e.MethodNotFound),
            (500, "PORTAL_DELETED", e.PortalGone),
            (410, "PORTAL_DELETED", e.PortalGone),
        ],
    )
    def test_class_follows_code_then_status(self, status: int, code: str, cls: type) -> None:
        error = e.error_from_response(status, code, "text", method="crm.lead.add")
        assert type(error) is cls
        assert error.code == code
        assert error.http_status == status
        assert error.method == "crm.lead.add"

    @pytest.mark.parametrize(
        ("code", "cls"),
        [
            ("invalid_grant", e.RefreshRejected),
            ("invalid_client", e.RefreshRejected),
            ("wrong_client", e.RefreshRejected),
            ("NOT_INSTALLED", e.RefreshRejected),
            ("invalid_request", e.InvalidRequest),
        ],
    )
    def test_oauth_server_codes(self, code: str, cls: type) -> None:
        assert type(e.error_from_response(400, code, "", oauth=True)) is cls

    def test_finish_of_a_call_that_is_not_open_is_told_apart(self) -> None:
        err = e.error_from_response(
            400,
            "ERROR_CORE",
            "Call is not found (call should be registered prior to finishing",
            method="telephony.externalCall.finish",
        )
        assert type(err) is e.CallNotFound
        assert isinstance(err, e.InvalidRequest)
        assert isinstance(err, Permanent)
        other = e.error_from_response(
            400, "ERROR_CORE", "USER_ID or USER_PHONE_INNER should be set"
        )
        assert type(other) is e.InvalidRequest


class TestWhatTheQueueReads:
    def test_groups_map_to_retry_policy_bases(self) -> None:
        assert issubclass(e.QueryLimitExceeded, RetryLater)
        assert issubclass(e.OperationTimeLimit, RetryLater)
        assert issubclass(e.ReauthRequired, RetryLater)
        assert issubclass(e.ServerError, Retryable)
        assert not issubclass(e.ServerError, RetryLater)
        assert issubclass(e.TransportError, Retryable)
        assert issubclass(e.TokenExpired, Retryable)
        for cls in (e.InvalidRequest, e.AccessDenied, e.AppContextRequired, e.PortalGone):
            assert issubclass(cls, Permanent)
            assert not issubclass(cls, Retryable)

    def test_retry_later_always_has_a_delay(self) -> None:
        assert e.QueryLimitExceeded().retry_after == e.QUERY_LIMIT_RETRY_AFTER
        assert e.InvalidToken().retry_after == e.REAUTH_RETRY_AFTER
        limited = e.error_from_response(429, "OPERATION_TIME_LIMIT", "", retry_after=42.0)
        assert limited.retry_after == 42.0

    def test_overload_waits_long(self) -> None:
        error = e.error_from_response(503, "OVERLOAD_LIMIT", "blocked")
        assert isinstance(error, e.ServerError)
        assert error.retry_after == e.OPERATION_LIMIT_RETRY_AFTER

    def test_a_finish_of_an_unknown_or_finished_call_has_its_own_class(self) -> None:
        error = e.error_from_response(
            400,
            "ERROR_CORE",
            "Call is not found (call should be registered prior to finishing",
            method="telephony.externalCall.finish",
        )
        assert type(error) is e.CallNotFound
        assert isinstance(error, e.InvalidRequest)
        other = e.error_from_response(400, "ERROR_CORE", "Unknown TYPE")
        assert type(other) is e.InvalidRequest

    def test_errors_that_say_retry_later_keep_their_message(self) -> None:
        for code, status in (("OPERATION_TIME_LIMIT", 429), ("QUERY_LIMIT_EXCEEDED", 503)):
            error = e.error_from_response(status, code, "blocked", method="x.y", retry_after=3.0)
            assert error.message == f"Bitrix24 (x.y): {code}: blocked"
            assert error.retry_after == 3.0

    def test_message_names_method_code_and_description(self) -> None:
        error = e.error_from_response(400, "ERROR_CORE", "Unknown TYPE", method="x.y")
        assert error.message == "Bitrix24 (x.y): ERROR_CORE: Unknown TYPE"
        assert e.PortalGone().message == "The portal was deleted."


class TestErrorFromTransport:
    def test_timeout(self) -> None:
        error = e.error_from_transport(httpx.ReadTimeout("slow"), method="profile")
        assert isinstance(error, e.RequestTimeout)
        assert "profile" in error.message

    def test_connection(self) -> None:
        error = e.error_from_transport(httpx.ConnectError("refused"))
        assert type(error) is e.TransportError
