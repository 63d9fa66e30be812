"""Bitrix24Client over httpx.MockTransport: envelope, refresh, limits, redirects, batch, pages."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from callbridge.crm.bitrix24 import errors as e
from callbridge.crm.bitrix24.api_log import MemoryApiLog
from callbridge.crm.bitrix24.auth import WebhookCredentials
from callbridge.crm.bitrix24.client import Bitrix24Client, resolve_references
from callbridge.crm.bitrix24.encoding import decode_form
from callbridge.crm.bitrix24.rate_limit import RatePlan
from tests.callbridge.crm.bitrix24.fakes import StaticCredentials

Handler = Callable[[httpx.Request], httpx.Response]


def ok(result: Any, **extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"result": result, "time": {"operating": 0.5}, **extra})


def fail(status: int, code: str, description: str = "") -> httpx.Response:
    return httpx.Response(status, json={"error": code, "error_description": description})


class RecordingLimiter:
    def __init__(self) -> None:
        self.acquired = 0
        self.penalised = 0

    async def acquire(self, key: str, plan: RatePlan) -> float:
        self.acquired += 1
        return 0.0

    async def penalise(self, key: str, plan: RatePlan) -> None:
        self.penalised += 1


def make(
    handler: Handler,
    credentials: Any = None,
    limiter: RecordingLimiter | None = None,
    log: MemoryApiLog | None = None,
) -> tuple[Bitrix24Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(record))
    client = Bitrix24Client(
        http, credentials or StaticCredentials(), limiter or RecordingLimiter(), api_log=log
    )
    return client, seen


def body(request: httpx.Request) -> dict[str, Any]:
    return json.loads(request.content)  # type: ignore[no-any-return]


class TestCall:
    async def test_posts_json_with_auth_to_client_endpoint(self) -> None:
        client, seen = make(lambda r: ok({"ID": 1}))
        assert await client.call("crm.contact.get", {"id": 1}) == {"ID": 1}
        (request,) = seen
        assert request.method == "POST"
        assert str(request.url) == "https://portal.test/rest/crm.contact.get.json"
        assert body(request) == {"id": 1, "auth": "tok-1"}
        assert request.extensions["timeout"]["read"] == 30.0
        assert client.operating["crm.contact.get"] == 0.5

    async def test_error_envelope_becomes_its_class(self) -> None:
        client, _ = make(lambda r: fail(400, "ERROR_CORE", "Unknown TYPE"))
        with pytest.raises(e.InvalidRequest) as caught:
            await client.call("telephony.externalCall.register", {"TYPE": 9})
        assert caught.value.description == "Unknown TYPE"
        assert caught.value.method == "telephony.externalCall.register"

    async def test_crm_error_with_empty_code(self) -> None:
        client, _ = make(lambda r: fail(400, "", "Access denied."))
        with pytest.raises(e.InvalidRequest):
            await client.call("crm.lead.add")

    async def test_html_502_is_a_server_error(self) -> None:
        client, _ = make(lambda r: httpx.Response(502, text="<html>Bad Gateway</html>"))
        with pytest.raises(e.ServerError):
            await client.call("profile")

    async def test_transport_errors_are_translated(self) -> None:
        def boom(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectTimeout("no route", request=request)

        log = MemoryApiLog()
        client, _ = make(boom, log=log)
        with pytest.raises(e.RequestTimeout) as caught:
            await client.call("profile")
        assert isinstance(caught.value.__cause__, httpx.ConnectTimeout)
        assert log.entries[0].error_code == "RequestTimeout"
        assert log.entries[0].http_status is None


class TestRefresh:
    async def test_expired_token_refreshes_once_and_retries(self) -> None:
        credentials = StaticCredentials()

        def handler(request: httpx.Request) -> httpx.Response:
            if body(request)["auth"] == "tok-1":
                return fail(401, "expired_token", "The access token provided has expired.")
            return ok(True)

        client, seen = make(handler, credentials)
        assert await client.call("profile") is True
        assert credentials.refreshed == ["tok-1"]
        assert [body(r)["auth"] for r in seen] == ["tok-1", "tok-2"]

    async def test_second_expiry_is_raised(self) -> None:
        credentials = StaticCredentials()
        client, seen = make(lambda r: fail(401, "expired_token"), credentials)
        with pytest.raises(e.TokenExpired):
            await client.call("profile")
        assert len(seen) == 2
        assert credentials.refreshed == ["tok-1"]

    async def test_other_auth_errors_never_refresh(self) -> None:
        credentials = StaticCredentials()
        client, _ = make(lambda r: fail(401, "invalid_token"), credentials)
        with pytest.raises(e.InvalidToken):
            await client.call("profile")
        assert credentials.refreshed == []


class TestLimits:
    async def test_query_limit_penalises_and_retries(self) -> None:
        answers = iter([fail(503, "QUERY_LIMIT_EXCEEDED"), ok(1)])
        limiter = RecordingLimiter()
        client, _seen = make(lambda r: next(answers), limiter=limiter)
        assert await client.call("profile") == 1
        assert limiter.penalised == 1
        assert limiter.acquired == 2

    async def test_query_limit_raised_after_retries(self) -> None:
        limiter = RecordingLimiter()
        client, seen = make(lambda r: fail(503, "QUERY_LIMIT_EXCEEDED"), limiter=limiter)
        with pytest.raises(e.QueryLimitExceeded) as caught:
            await client.call("profile")
        assert len(seen) == 3
        assert limiter.penalised == 3
        assert caught.value.retry_after == e.QUERY_LIMIT_RETRY_AFTER

    async def test_operation_time_limit_waits_for_reset(self) -> None:
        import time

        reset = time.time() + 120
        answers = iter(
            [
                httpx.Response(
                    200, json={"result": 1, "time": {"operating": 470, "operating_reset_at": reset}}
                ),
                fail(429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit."),
            ]
        )
        client, _ = make(lambda r: next(answers))
        await client.call("crm.contact.list")
        with pytest.raises(e.OperationTimeLimit) as caught:
            await client.call("crm.contact.list")
        assert caught.value.reset_at == reset
        assert caught.value.retry_after == pytest.approx(120, abs=2)


class TestDomainChange:
    async def test_302_reposts_to_the_new_domain_once(self) -> None:
        credentials = StaticCredentials()

        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.host == "portal.test":
                return httpx.Response(
                    302, headers={"Location": "https://new.bitrix24.ru/rest/crm.lead.add.json"}
                )
            return ok(5)

        client, seen = make(handler, credentials)
        assert await client.call("crm.lead.add", {"fields": {"TITLE": "x"}}) == 5
        assert [r.method for r in seen] == ["POST", "POST"]
        assert str(seen[1].url) == "https://new.bitrix24.ru/rest/crm.lead.add.json"
        assert body(seen[1]) == body(seen[0])
        assert await credentials.endpoint() == "https://new.bitrix24.ru/rest/"

    async def test_redirect_loop_stops(self) -> None:
        client, seen = make(
            lambda r: httpx.Response(302, headers={"Location": "https://a.test/rest/x"})
        )
        with pytest.raises(e.Bitrix24Error):
            await client.call("profile")
        assert len(seen) == 2


def batch_handler(request: httpx.Request) -> httpx.Response:
    """A tiny portal: ``echo`` returns its params; ``fail`` fails; references resolved."""
    payload = body(request)
    results: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    for name, command in payload["cmd"].items():
        method, _, query = command.partition("?")
        pairs = []
        for key, value in parse_qsl(query, keep_blank_values=True):
            if value.startswith("$result["):
                ref = value[len("$result[") :].split("]")[0]
                value = str(results[ref]["n"]) if ref in results else ""
            pairs.append((key, value))
        params = decode_form("&".join(f"{k}={v}" for k, v in pairs))
        if method == "fail":
            errors[name] = {"error": "ERROR_CORE", "error_description": "nope"}
            if payload["halt"]:
                break
            continue
        results[name] = params
    return ok(
        {
            "result": results or [],
            "result_error": errors or [],
            "result_total": [],
            "result_next": [],
            "result_time": [],
        }
    )


class TestBatch:
    async def test_thousand_commands_take_twenty_requests(self) -> None:
        log = MemoryApiLog()
        client, seen = make(batch_handler, log=log)
        commands = [("echo", {"n": i}) for i in range(1000)]
        outcome = await client.batch(commands)
        assert len(seen) == 20
        assert outcome.requests == 20
        assert outcome.ok
        assert outcome["999"] == {"n": "999"}
        assert {entry.batch_size for entry in log.entries} == {50}
        assert all(len(body(r)["cmd"]) <= 50 for r in seen)

    async def test_per_command_errors(self) -> None:
        client, _ = make(batch_handler)
        outcome = await client.batch({"a": ("echo", {"n": 1}), "b": ("fail", {}), "c": "echo?n=3"})
        assert outcome["a"] == {"n": "1"}
        assert outcome["c"] == {"n": "3"}
        assert isinstance(outcome.errors["b"], e.InvalidRequest)
        with pytest.raises(e.InvalidRequest):
            outcome["b"]

    async def test_halt_stops_later_chunks(self) -> None:
        client, seen = make(batch_handler)
        commands = [("fail", {})] + [("echo", {"n": i}) for i in range(60)]
        outcome = await client.batch(commands, halt=True)
        assert len(seen) == 1
        assert list(outcome.errors) == ["0"]
        assert not outcome.results

    async def test_references_across_chunks_are_resolved_by_us(self) -> None:
        client, seen = make(batch_handler)
        commands = {f"c{i}": ("echo", {"n": i}) for i in range(50)}
        commands["later"] = ("echo", {"n": "$result[c7][n]"})
        outcome = await client.batch(commands)
        assert outcome["later"] == {"n": "7"}
        assert "$result" not in body(seen[1])["cmd"]["later"]

    def test_resolve_references(self) -> None:
        earlier = {"u": {"UF_DEPARTMENT": [4, 5]}, "x": {"ID": 9}}
        assert resolve_references({"ID": "$result[u][UF_DEPARTMENT]"}, earlier) == {"ID": [4, 5]}
        assert resolve_references({"T": "id $result[x][ID]!"}, earlier) == {"T": "id 9!"}
        assert resolve_references({"T": "$result[y][ID]"}, earlier) == {"T": "$result[y][ID]"}


class TestIterate:
    async def test_follows_next(self) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            start = body(request)["start"]
            items = [{"ID": str(i)} for i in range(start, min(start + 50, 120))]
            extra = {"total": 120} | ({"next": start + 50} if start + 50 < 120 else {})
            return ok(items, **extra)

        client, seen = make(handler)
        ids = [item["ID"] async for item in client.iterate("crm.contact.list", {"select": ["ID"]})]
        assert ids == [str(i) for i in range(120)]
        assert [body(r)["start"] for r in seen] == [0, 50, 100]


class TestWebhookMode:
    async def test_url_carries_auth_and_app_only_methods_refused(self) -> None:
        credentials = WebhookCredentials("https://onprem.test/rest/1/code123")
        client, seen = make(lambda r: ok([]), credentials)
        await client.call("user.get")
        assert str(seen[0].url) == "https://onprem.test/rest/1/code123/user.get.json"
        assert "auth" not in body(seen[0])
        with pytest.raises(e.AppContextRequired, match="installed Bitrix24 app"):
            await client.call("telephony.externalCall.register", {})
        with pytest.raises(e.AppContextRequired):
            await client.batch([("event.bind", {})])
        assert len(seen) == 1

    async def test_wrong_auth_type_names_the_limitation(self) -> None:
        credentials = WebhookCredentials("https://onprem.test/rest/1/code123/")
        client, _ = make(lambda r: fail(403, "WRONG_AUTH_TYPE"), credentials)
        with pytest.raises(e.AppContextRequired, match="installed Bitrix24 app"):
            await client.call("telephony.externalCall.show", {})


class TestApiLog:
    async def test_one_record_per_request_without_secrets(self) -> None:
        credentials = StaticCredentials()

        def handler(request: httpx.Request) -> httpx.Response:
            if body(request)["auth"] == "tok-1":
                return fail(401, "expired_token")
            return ok(1)

        log = MemoryApiLog()
        client, _ = make(handler, credentials, log=log)
        await client.call("profile", {"secret": "x"})
        assert [(r.method, r.http_status, r.error_code) for r in log.entries] == [
            ("profile", 401, "expired_token"),
            ("profile", 200, None),
        ]
        assert log.entries[1].operating == 0.5
        assert log.entries[1].integration_id == 7
        assert "tok-" not in repr(log.entries)


class TestOperationTimeLimitInBatch:
    async def test_a_blocked_sub_command_says_until_when_its_method_is_blocked(self) -> None:
        reset_at = time.time() + 300

        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/telephony.externalCall.finish.json"):
                return ok({"ID": 1}, time={"operating": 479.0, "operating_reset_at": reset_at})
            return ok(
                {
                    "result": {"a": True},
                    "result_error": {
                        "b": {"error": "OPERATION_TIME_LIMIT", "error_description": "blocked"}
                    },
                }
            )

        client, _ = make(handler)
        await client.call("telephony.externalCall.finish", {"CALL_ID": "x"})
        outcome = await client.batch(
            {
                "a": ("telephony.externalCall.hide", {"CALL_ID": "y"}),
                "b": ("telephony.externalCall.finish", {"CALL_ID": "y"}),
            }
        )
        error = outcome.errors["b"]
        assert isinstance(error, e.OperationTimeLimit)
        assert error.method == "telephony.externalCall.finish"
        assert error.reset_at == reset_at
        assert error.retry_after is not None
        assert 290 < error.retry_after <= 300


async def chunks_of(content: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


class TestUpload:
    URL = "https://portal.test/rest/upload.json?auth=t&token=telephony%7Cabc"

    async def test_streams_one_multipart_file_part(self) -> None:
        content = bytes(range(256)) * 10
        limiter, log = RecordingLimiter(), MemoryApiLog()
        client, seen = make(lambda r: ok({"FILE_ID": 7}), limiter=limiter, log=log)
        result = await client.upload(
            self.URL, "file", 'a"b.wav', chunks_of(content), len(content), content_type="audio/wav"
        )
        assert result == {"FILE_ID": 7}
        (request,) = seen
        assert str(request.url) == self.URL
        ctype = request.headers["content-type"]
        assert ctype.startswith("multipart/form-data; boundary=")
        boundary = ctype.split("boundary=", 1)[1].encode()
        assert int(request.headers["content-length"]) == len(request.content)
        head, rest = request.content.split(b"\r\n\r\n", 1)
        assert head.split(b"\r\n") == [
            b"--" + boundary,
            b'Content-Disposition: form-data; name="file"; filename="a_b.wav"',
            b"Content-Type: audio/wav",
        ]
        assert rest == content + b"\r\n--" + boundary + b"--\r\n"
        # Within the rate budget, and logged like any request (no content in the record).
        assert limiter.acquired == 1
        (entry,) = log.entries
        assert (entry.method, entry.http_status, entry.error_code) == ("upload", 200, None)

    async def test_a_refusal_is_an_error_sent_once(self) -> None:
        log = MemoryApiLog()
        client, seen = make(lambda r: fail(400, "ERROR_CORE", "Upload token is not valid"), log=log)
        with pytest.raises(e.Bitrix24Error, match="Upload token is not valid"):
            await client.upload(self.URL, "file", "a.wav", chunks_of(b"RIFF"), 4)
        assert len(seen) == 1
        assert [(x.method, x.error_code) for x in log.entries] == [("upload", "ERROR_CORE")]

    async def test_a_full_bucket_slows_every_sender_down_and_is_not_retried(self) -> None:
        limiter = RecordingLimiter()
        client, seen = make(
            lambda r: fail(503, "QUERY_LIMIT_EXCEEDED", "Too many requests"), limiter=limiter
        )
        with pytest.raises(e.QueryLimitExceeded):
            await client.upload(self.URL, "file", "a.wav", chunks_of(b"RIFF"), 4)
        assert len(seen) == 1  # the stream cannot be sent again: the caller asks anew
        assert (limiter.acquired, limiter.penalised) == (1, 1)

    async def test_a_url_that_is_not_http_is_refused_unsent(self) -> None:
        client, seen = make(lambda r: ok(True))
        with pytest.raises(e.UnexpectedResponse):
            await client.upload("file:///etc/passwd", "file", "a.wav", chunks_of(b"RIFF"), 4)
        assert seen == []
