"""``Bitrix24Client``: REST calls, batches and pages for one portal (spec §4).

Every request is a JSON ``POST`` to ``<client_endpoint><method>.json`` with ``auth`` in the body
(as both official SDKs send it), within the portal's rate budget, with an explicit timeout,
without following redirects, and logged (:mod:`~callbridge.crm.bitrix24.api_log`).

What the client handles itself, so callers never see it:

* ``expired_token`` (401): refresh through the credentials (single-flight) and repeat the
  request once; a second expiry is raised.
* ``QUERY_LIMIT_EXCEEDED`` (503): penalise the rate limiter (everyone slows down) and try
  again within the budget, at most ``max_rate_limit_retries`` times.
* HTTP 302 (the portal changed its domain, §4.1): re-POST the same body to the new domain once
  and remember it; an automatic redirect would turn the POST into a GET and lose the body.

Everything else becomes an error of :mod:`~callbridge.crm.bitrix24.errors`.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import httpx

from callbridge.crm.bitrix24.api_log import ApiCallRecord, ApiLog, NullApiLog
from callbridge.crm.bitrix24.auth import Credentials, require_app_context
from callbridge.crm.bitrix24.encoding import build_command, form_value
from callbridge.crm.bitrix24.errors import (
    AppContextRequired,
    Bitrix24Error,
    OperationTimeLimit,
    QueryLimitExceeded,
    TokenExpired,
    UnexpectedResponse,
    WrongAuthType,
    error_from_response,
    error_from_transport,
)
from callbridge.crm.bitrix24.rate_limit import NoRateLimit, RateLimiter

BATCH_LIMIT = 50  # commands per batch request (spec §4.4)
DEFAULT_TIMEOUT = 30.0  # the cloud cuts a request at 60 s; half of that is already very slow
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_REFERENCE = re.compile(r"\$result\[([^\[\]]+)\]((?:\[[^\[\]]*\])*)")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")

Command: TypeAlias = "tuple[str, Mapping[str, Any] | None] | str"


@dataclass(frozen=True)
class ApiResponse:
    """A successful answer: ``result`` plus the envelope's ``total``, ``next`` and ``time``."""

    result: Any
    total: int | None = None
    next: int | None = None
    time: Mapping[str, Any] = field(default_factory=dict)
    http_status: int = 200

    @property
    def operating(self) -> float | None:
        """``time.operating``: this method's execution seconds in the current window."""
        value = self.time.get("operating")
        return float(value) if isinstance(value, int | float) else None


@dataclass
class BatchResult:
    """Results and errors of a batch, by command name, over every chunk sent."""

    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, Bitrix24Error] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    nexts: dict[str, int] = field(default_factory=dict)
    requests: int = 0

    def __getitem__(self, name: str) -> Any:
        """The result of one command; raises its error if it failed."""
        if name in self.errors:
            raise self.errors[name]
        return self.results[name]

    @property
    def ok(self) -> bool:
        """Whether every command succeeded."""
        return not self.errors


def _as_map(value: Any) -> dict[str, Any]:
    """A batch map; PHP writes an empty one as ``[]`` and a 0..n-1 one as a list."""
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    return {}


def _lookup(results: Mapping[str, Any], name: str, path: str) -> tuple[bool, Any]:
    if name not in results:
        return False, None
    value = results[name]
    for segment in _SEGMENT.findall(path):
        if isinstance(value, Mapping) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            return False, None
    return True, value


def resolve_references(value: Any, earlier: Mapping[str, Any]) -> Any:
    """Replace ``$result[cmd]...`` naming commands of earlier chunks with their values.

    The portal resolves references only inside one batch request; when a batch is split into
    chunks, a command may refer to one that went in an earlier chunk, so we substitute it.
    References to commands of the same chunk are left for the portal.
    """
    if isinstance(value, Mapping):
        return {k: resolve_references(v, earlier) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [resolve_references(v, earlier) for v in value]
    if not isinstance(value, str) or "$result[" not in value:
        return value
    whole = _REFERENCE.fullmatch(value)
    if whole is not None:
        found, resolved = _lookup(earlier, whole.group(1), whole.group(2))
        if found:
            return resolved

    def substitute(match: re.Match[str]) -> str:
        found, resolved = _lookup(earlier, match.group(1), match.group(2))
        if not found:
            return match.group(0)
        return "" if resolved is None else form_value(resolved)

    return _REFERENCE.sub(substitute, value)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


class Bitrix24Client:
    """A portal's REST API.

    Parameters
    ----------
    http
        The process's shared ``httpx.AsyncClient`` (its transport is what tests replace).
    credentials
        :class:`~callbridge.crm.bitrix24.auth.OAuthCredentials` or
        :class:`~callbridge.crm.bitrix24.auth.WebhookCredentials`.
    limiter
        The portal's rate budget; by default none.
    api_log
        Where each request's record goes; by default nowhere.
    timeout
        Seconds for one request (connecting gets at most 5 of them).
    max_rate_limit_retries
        How many times a ``QUERY_LIMIT_EXCEEDED`` answer is retried before it is raised.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        credentials: Credentials,
        limiter: RateLimiter | None = None,
        *,
        api_log: ApiLog | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_rate_limit_retries: int = 2,
    ) -> None:
        self.http = http
        self.credentials = credentials
        self.limiter: RateLimiter = limiter or NoRateLimit()
        self.api_log: ApiLog = api_log or NullApiLog()
        self.timeout = httpx.Timeout(timeout, connect=min(5.0, timeout))
        self.max_rate_limit_retries = max_rate_limit_retries
        # Per method (lower-cased): the last time.operating and time.operating_reset_at seen.
        self.operating: dict[str, float] = {}
        self.operating_reset_at: dict[str, float] = {}

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Call one method; returns its ``result``."""
        return (await self.request(method, params)).result

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> ApiResponse:
        """Call one method; returns the whole envelope (``total``, ``next``, ``time``)."""
        require_app_context(self.credentials, method)
        return await self._send(method, dict(params or {}), batch_size=0)

    async def iterate(
        self, method: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[Any]:
        """Every item of a list method, page by page (50 per page, following ``next``)."""
        query = dict(params or {})
        start = query.pop("start", 0)
        while True:
            response = await self.request(method, {**query, "start": start})
            result = response.result
            # crm.item.* style lists wrap their items in {"items": [...]}.
            if isinstance(result, Mapping) and isinstance(result.get("items"), list):
                result = result["items"]
            if isinstance(result, Mapping):
                result = list(result.values())
            for item in result or []:
                yield item
            if response.next is None:
                return
            start = response.next

    async def batch(
        self,
        commands: Mapping[str, Command] | Sequence[Command],
        *,
        halt: bool = False,
    ) -> BatchResult:
        """Run commands ``(method, params)`` in batches of ≤ 50; results and errors per command.

        Commands may refer to earlier ones with ``$result[name][FIELD]``. With ``halt`` the
        portal stops at the first failing command and no further chunk is sent.
        """
        if isinstance(commands, Mapping):
            items = [(str(name), command) for name, command in commands.items()]
        else:
            items = [(str(index), command) for index, command in enumerate(commands)]
        outcome = BatchResult()
        for offset in range(0, len(items), BATCH_LIMIT):
            chunk = items[offset : offset + BATCH_LIMIT]
            cmd: dict[str, str] = {}
            for name, command in chunk:
                if isinstance(command, str):
                    method = command.split("?", 1)[0]
                    require_app_context(self.credentials, method)
                    cmd[name] = command
                    continue
                method, params = command
                require_app_context(self.credentials, method)
                cmd[name] = build_command(method, resolve_references(params or {}, outcome.results))
            response = await self._send(
                "batch", {"halt": 1 if halt else 0, "cmd": cmd}, batch_size=len(chunk)
            )
            outcome.requests += 1
            body = response.result if isinstance(response.result, Mapping) else {}
            outcome.results.update(_as_map(body.get("result")))
            for name, error in _as_map(body.get("result_error")).items():
                error = error if isinstance(error, Mapping) else {}
                sub_method = cmd.get(name, "").split("?", 1)[0] or None
                failure = error_from_response(
                    400,
                    str(error.get("error") or ""),
                    str(error.get("error_description") or ""),
                    method=sub_method,
                )
                if isinstance(failure, OperationTimeLimit) and sub_method:
                    # Only this method is blocked; say until when, as for a single call.
                    failure.reset_at = self.operating_reset_at.get(sub_method.lower())
                    failure.retry_after = (
                        self._operating_wait(sub_method) or failure.default_retry_after
                    )
                outcome.errors[name] = failure
            for name, value in _as_map(body.get("result_total")).items():
                if (total := _int_or_none(value)) is not None:
                    outcome.totals[name] = total
            for name, value in _as_map(body.get("result_next")).items():
                if (next_ := _int_or_none(value)) is not None:
                    outcome.nexts[name] = next_
            if halt and outcome.errors:
                break
        return outcome

    async def upload(
        self,
        url: str,
        field_name: str,
        filename: str,
        content: AsyncIterable[bytes],
        size: int,
        *,
        content_type: str = "application/octet-stream",
    ) -> Any:
        """POST a file as ``multipart/form-data`` to an ``uploadUrl`` (spec §1.4); its ``result``.

        ``content`` yields exactly ``size`` bytes and is streamed, never held whole. The URL
        carries its own authorisation, so the request is sent once: no refresh, no retry (the
        stream cannot be replayed); the caller asks for a new ``uploadUrl`` to try again.
        """
        if urlsplit(url).scheme not in ("http", "https"):
            raise UnexpectedResponse(f"Bitrix24 gave an upload URL that is not http(s): {url!r}")
        boundary = secrets.token_hex(16)
        quoted = re.sub(r'[\\"\r\n]', "_", filename)  # no header injection
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field_name}"; filename="{quoted}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        async def body() -> AsyncIterator[bytes]:
            yield head
            async for chunk in content:
                yield chunk
            yield tail

        method = "upload"
        credentials = self.credentials
        await self.limiter.acquire(credentials.key, credentials.plan)
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        try:
            response = await self.http.post(
                url,
                content=body(),
                headers={
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Content-Length": str(len(head) + size + len(tail)),
                },
                timeout=self.timeout,
                follow_redirects=False,
            )
        except httpx.HTTPError as err:
            error = error_from_transport(err, method=method)
            self._log(method, 0, started_at, started, None, type(error).__name__)
            raise error from err
        outcome = self._parse(method, response)
        if isinstance(outcome, ApiResponse):
            self._log(method, 0, started_at, started, response.status_code, None)
            return outcome.result
        self._log(method, 0, started_at, started, response.status_code, outcome.code or None)
        if isinstance(outcome, QueryLimitExceeded):
            # The portal's bucket is full for every sender: slow them all down, as _send does.
            await self.limiter.penalise(credentials.key, credentials.plan)
        raise outcome

    # --- one HTTP exchange, with refresh, rate-limit retries and domain change ----------------

    async def _send(self, method: str, params: dict[str, Any], *, batch_size: int) -> ApiResponse:
        credentials = self.credentials
        refreshed = moved = False
        limited = 0
        while True:
            token = await credentials.access_token()
            endpoint = await credentials.endpoint()
            body = {**params, "auth": token} if token is not None else params
            await self.limiter.acquire(credentials.key, credentials.plan)
            started_at = datetime.now(UTC)
            started = time.perf_counter()
            try:
                response = await self.http.post(
                    f"{endpoint}{method}.json",
                    json=body,
                    timeout=self.timeout,
                    follow_redirects=False,
                )
            except httpx.HTTPError as err:
                error = error_from_transport(err, method=method)
                self._log(method, batch_size, started_at, started, None, type(error).__name__)
                raise error from err
            status = response.status_code
            if status in _REDIRECTS and not moved:
                self._log(method, batch_size, started_at, started, status, "REDIRECT")
                location = response.headers.get("location", "")
                await credentials.moved(_new_endpoint(endpoint, location))
                moved = True
                continue
            outcome = self._parse(method, response)
            if isinstance(outcome, ApiResponse):
                self._log(method, batch_size, started_at, started, status, None, outcome.operating)
                return outcome
            self._log(method, batch_size, started_at, started, status, outcome.code or None)
            if isinstance(outcome, TokenExpired) and token is not None and not refreshed:
                await credentials.refresh(token)
                refreshed = True
                continue
            if isinstance(outcome, QueryLimitExceeded):
                await self.limiter.penalise(credentials.key, credentials.plan)
                if limited < self.max_rate_limit_retries:
                    limited += 1
                    continue
            if isinstance(outcome, WrongAuthType) and not credentials.app_context:
                raise AppContextRequired(
                    f"{method} refused the incoming webhook (WRONG_AUTH_TYPE): it works only "
                    "for an installed Bitrix24 app",
                    code=outcome.code,
                    description=outcome.description,
                    http_status=outcome.http_status,
                    method=method,
                ) from outcome
            raise outcome

    def _parse(self, method: str, response: httpx.Response) -> ApiResponse | Bitrix24Error:
        status = response.status_code
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            if status >= 400:
                return error_from_response(
                    status, "", f"HTTP {status} without a JSON body", method=method
                )
            return UnexpectedResponse(
                f"Bitrix24 ({method}) answered HTTP {status} without a JSON object",
                http_status=status,
                method=method,
            )
        if "error" in payload and (status >= 400 or "result" not in payload):
            code = str(payload.get("error") or "")
            retry_after = None
            if code.lower() == "operation_time_limit":
                retry_after = self._operating_wait(method)
            error = error_from_response(
                status,
                code,
                str(payload.get("error_description") or ""),
                method=method,
                retry_after=retry_after,
            )
            if isinstance(error, OperationTimeLimit):
                error.reset_at = self.operating_reset_at.get(method.lower())
            return error
        if status >= 400 or "result" not in payload:
            return error_from_response(
                status, "", f"HTTP {status} with an unexpected body", method=method
            )
        time_block = payload.get("time")
        time_block = time_block if isinstance(time_block, Mapping) else {}
        self._track_operating(method, time_block)
        return ApiResponse(
            payload["result"],
            _int_or_none(payload.get("total")),
            _int_or_none(payload.get("next")),
            time_block,
            status,
        )

    def _track_operating(self, method: str, time_block: Mapping[str, Any]) -> None:
        key = method.lower()
        operating = time_block.get("operating")
        if isinstance(operating, int | float):
            self.operating[key] = float(operating)
        reset_at = time_block.get("operating_reset_at")
        if isinstance(reset_at, int | float):
            self.operating_reset_at[key] = float(reset_at)

    def _operating_wait(self, method: str) -> float | None:
        reset_at = self.operating_reset_at.get(method.lower())
        if reset_at is None:
            return None
        return max(1.0, reset_at - time.time())

    def _log(
        self,
        method: str,
        batch_size: int,
        started_at: datetime,
        started: float,
        status: int | None,
        error_code: str | None,
        operating: float | None = None,
    ) -> None:
        self.api_log.record(
            ApiCallRecord(
                method=method,
                started_at=started_at,
                duration_ms=(time.perf_counter() - started) * 1000.0,
                integration_id=self.credentials.integration_id,
                batch_size=batch_size,
                http_status=status,
                error_code=error_code,
                operating=operating,
            )
        )


def _new_endpoint(endpoint: str, location: str) -> str:
    """The REST base on the portal's new domain: same path, the Location's scheme and host."""
    target = urlsplit(location)
    if not target.netloc:
        raise UnexpectedResponse(f"Bitrix24 redirected to {location!r}, which names no host")
    return urlsplit(endpoint)._replace(scheme=target.scheme, netloc=target.netloc).geturl()
