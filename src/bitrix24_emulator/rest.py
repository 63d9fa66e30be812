"""The portal's REST endpoint: ``/rest/<method>[.json]``, webhooks, ``batch`` and record uploads.

Pipeline per request (spec §4, §5): rate limit → auth → method lookup → scope → app-only →
operating-time budget → handler → envelope. Errors use the documented envelope and statuses.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import time
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from bitrix24_emulator.emulator import Authenticated, Emulator, scope_allowed
from bitrix24_emulator.encoding import decode_pairs, decode_query, encode_pairs, form_value
from bitrix24_emulator.errors import RestError
from bitrix24_emulator.methods.params import flag, portal_tz
from bitrix24_emulator.methods.registry import REGISTRY, CallContext, ListResult, Method
from bitrix24_emulator.methods.telephony import attach_file

BATCH_LIMIT = 50
logger = logging.getLogger(__name__)
_REFERENCE = re.compile(r"\$result\[([^\[\]]+)\]((?:\[[^\[\]]*\])*)")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
_JSON = "application/json; charset=utf-8"


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response the way Bitrix24 writes it (UTF-8, not ASCII-escaped)."""
    return Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
        status_code=status,
        media_type=_JSON,
    )


def error_response(error: RestError) -> Response:
    """The error envelope with its HTTP status."""
    return json_response(error.envelope(), error.http_status)


def php_map(values: dict[str, Any]) -> Any:
    """A batch result map as PHP's json_encode writes it: empty → ``[]``, 0..n-1 keys → list."""
    if not values:
        return []
    if list(values) == [str(i) for i in range(len(values))]:
        return list(values.values())
    return values


def time_block(
    emu: Emulator, start: float, finish: float, *, operating: float | None, reset_at: int | None
) -> dict[str, Any]:
    """The ``time`` object of a response (§4.2)."""
    tz = portal_tz(emu.portal.timezone_offset_hours)
    block: dict[str, Any] = {
        "start": start,
        "finish": finish,
        "duration": finish - start,
        "processing": finish - start,
        "date_start": datetime.fromtimestamp(start, tz).isoformat(timespec="seconds"),
        "date_finish": datetime.fromtimestamp(finish, tz).isoformat(timespec="seconds"),
    }
    if operating is not None:
        block["operating_reset_at"] = reset_at
        block["operating"] = operating
    return block


async def read_params(request: Request) -> tuple[dict[str, Any], bytes | None]:
    """Query string plus body (form with PHP brackets, JSON, or multipart); body wins.

    The second value is the content of the first file of a multipart body, if any.
    """
    query = request.url.query
    params = decode_query(query) if query else {}
    upload: bytes | None = None
    if request.method == "POST":
        ctype = request.headers.get("content-type", "")
        if "json" in ctype:
            raw = await request.body()
            if raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise RestError("INVALID_REQUEST", "Malformed JSON body", 400) from None
                if not isinstance(body, dict):
                    raise RestError("INVALID_REQUEST", "JSON body must be an object", 400)
                params.update(body)
        elif "multipart/form-data" in ctype:
            pairs: list[tuple[str, str]] = []
            async with request.form() as form:
                for key, value in form.multi_items():
                    if isinstance(value, str):
                        pairs.append((key, value))
                    elif upload is None and isinstance(value, UploadFile):
                        upload = await value.read()
            params.update(decode_pairs(pairs))
        else:
            raw = await request.body()
            if raw:
                params.update(decode_query(raw))
    return params, upload


class RestHandler:
    """Serves ``/rest/...`` for one emulator."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu

    async def handle(self, request: Request) -> Response:
        """Handle one REST request and log it."""
        emu = self.emu
        started = emu.clock.now()
        perf = time.perf_counter()
        base_url = emu.seen_base_url(str(request.base_url))
        path: str = request.scope["path"][len("/rest/") :]
        entry: dict[str, Any] = {
            "time": started,
            "http_method": request.method,
            "path": "/rest/" + path,
            "method": None,
            "params": None,
            "auth_kind": None,
            "client_id": None,
            "user_id": None,
            "status": 0,
            "error": None,
        }
        try:
            response = await self._handle(request, path, base_url, started, entry)
        except RestError as err:
            response = error_response(err)
            entry["error"] = err.code
        except Exception as exc:
            logger.exception("emulator: %s failed", entry.get("method"))
            response = error_response(
                RestError("INTERNAL_SERVER_ERROR", "Internal server error", 500)
            )
            entry["error"] = f"INTERNAL_SERVER_ERROR: {type(exc).__name__}: {exc}"
        entry["status"] = response.status_code
        entry["duration_ms"] = round((time.perf_counter() - perf) * 1000, 3)
        emu.log_request(entry)
        return response

    async def _handle(
        self, request: Request, path: str, base_url: str, started: float, entry: dict[str, Any]
    ) -> Response:
        emu = self.emu
        parts = [p for p in path.split("/") if p]
        webhook: tuple[str, str] | None = None
        if len(parts) == 3:
            webhook = (parts[0], parts[1])
        elif len(parts) != 1:
            raise RestError("ERROR_METHOD_NOT_FOUND", "Method not found!", 404)
        name = re.sub(r"\.(json|xml)$", "", parts[-1], flags=re.IGNORECASE)
        entry["method"] = name
        params, upload = await read_params(request)
        token = params.pop("auth", None)
        entry["params"] = params
        if isinstance(params.get("FILE_CONTENT"), str) and len(params["FILE_CONTENT"]) > 64:
            entry["params"] = dict(params, FILE_CONTENT=f"<{len(params['FILE_CONTENT'])} chars>")

        client = request.client
        key = client.host if (client is not None and emu.config.rate_limit_per_ip) else "portal"
        if not emu.rate.allow(key, started):
            raise RestError("QUERY_LIMIT_EXCEEDED", "Too many requests", 503)

        if webhook is not None:
            who = emu.authenticate_webhook(*webhook)
        elif name.lower() == "upload" and "token" in params:
            return await self._upload(params, upload, started)
        else:
            who = emu.authenticate(token)
        entry["auth_kind"] = who.caller.kind
        entry["client_id"] = who.caller.client_id
        entry["user_id"] = who.caller.user_id
        ctx = CallContext(emu.portal, who.caller, started, base_url, who.token)

        if name.lower() == "batch":
            result = await self._batch(ctx, who, params, entry)
            finish = emu.clock.now()
            return json_response(
                {
                    "result": result,
                    "time": time_block(emu, started, finish, operating=0, reset_at=int(finish)),
                }
            )

        method = REGISTRY.get(name)
        if method is None:
            raise RestError(
                "ERROR_METHOD_NOT_FOUND",
                "Method not found!",
                emu.portal.behaviour.method_not_found_status,
            )
        value, operating, reset_at = await self._invoke(ctx, who, method, params)
        finish = emu.clock.now()
        body: dict[str, Any] = {}
        if isinstance(value, ListResult):
            body["result"] = value.items
            if value.next is not None:
                body["next"] = value.next
            body["total"] = value.total
        else:
            body["result"] = value
        body["time"] = time_block(emu, started, finish, operating=operating, reset_at=reset_at)
        return json_response(body)

    async def _invoke(
        self, ctx: CallContext, who: Authenticated, method: Method, params: dict[str, Any]
    ) -> tuple[Any, float, int]:
        """Scope, app-only and operating checks, then the handler; returns result and budget."""
        emu = self.emu
        if emu.portal.behaviour.enforce_scopes and not scope_allowed(method.scope, who.scopes):
            what = "access token" if who.caller.kind == "oauth" else "webhook token"
            raise RestError(
                "insufficient_scope",
                f"The request requires higher privileges than provided by the {what}",
                emu.portal.behaviour.insufficient_scope_status,
            )
        if emu.operating.blocked(who.key, method.name, ctx.now):
            raise RestError(
                "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.", 429
            )
        perf = time.perf_counter()
        try:
            value = REGISTRY.invoke(method.name, ctx, params)
            if inspect.isawaitable(value):
                value = await value
        finally:
            emu.flush_outbox()
            elapsed = time.perf_counter() - perf
            cost = emu.config.method_costs.get(method.name.lower())
            if cost is None:
                cost = emu.config.default_method_cost
            emu.operating.charge(who.key, method.name, ctx.now, elapsed if cost is None else cost)
        operating = emu.operating.operating(who.key, method.name, ctx.now)
        return value, operating, emu.operating.reset_at(who.key, method.name, ctx.now)

    async def _batch(
        self, ctx: CallContext, who: Authenticated, params: dict[str, Any], entry: dict[str, Any]
    ) -> dict[str, Any]:
        """Run up to 50 commands in order; errors per command; ``halt`` stops at the first."""
        emu = self.emu
        raw = params.get("cmd", params.get("CMD"))
        commands: list[tuple[str, Any]]
        if isinstance(raw, dict):
            commands = [(str(k), v) for k, v in raw.items()]
        elif isinstance(raw, list):
            commands = [(str(i), v) for i, v in enumerate(raw)]
        else:
            commands = []
        if len(commands) > BATCH_LIMIT:
            raise RestError("ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded", 400)
        halt = flag(params, "halt", False) or flag(params, "HALT", False)
        results: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        totals: dict[str, Any] = {}
        nexts: dict[str, Any] = {}
        times: dict[str, Any] = {}
        trace: list[dict[str, Any]] = []
        for command_id, command in commands:
            started = emu.clock.now()
            sub_name = ""
            try:
                if not isinstance(command, str):
                    raise RestError("ERROR_ARGUMENT", "Command must be a string", 400)
                sub_name, _, query = command.partition("?")
                sub_name = re.sub(r"\.(json|xml)$", "", sub_name.strip().strip("/"), flags=re.I)
                sub_params = decode_pairs(
                    self._resolve(parse_qsl(query, keep_blank_values=True), results)
                )
                sub_params.pop("auth", None)
                method = REGISTRY.get(sub_name)
                if sub_name.lower() == "batch" or (method is not None and not method.batchable):
                    raise RestError(
                        "ERROR_BATCH_METHOD_NOT_ALLOWED",
                        "Method is not allowed for batch usage",
                        405,
                    )
                if method is None:
                    raise RestError(
                        "ERROR_METHOD_NOT_FOUND",
                        "Method not found!",
                        emu.portal.behaviour.method_not_found_status,
                    )
                sub_ctx = CallContext(ctx.portal, ctx.caller, started, ctx.base_url, ctx.auth)
                value, _, _ = await self._invoke(sub_ctx, who, method, sub_params)
            except RestError as err:
                errors[command_id] = err.envelope()
                trace.append({"id": command_id, "method": sub_name, "error": err.code})
                if halt:
                    break
                continue
            if isinstance(value, ListResult):
                results[command_id] = value.items
                totals[command_id] = value.total
                if value.next is not None:
                    nexts[command_id] = value.next
            else:
                results[command_id] = value
            finish = emu.clock.now()
            times[command_id] = time_block(emu, started, finish, operating=None, reset_at=None)
            trace.append({"id": command_id, "method": sub_name, "error": None})
        entry["batch"] = trace
        return {
            "result": php_map(results),
            "result_error": php_map(errors),
            "result_total": php_map(totals),
            "result_next": php_map(nexts),
            "result_time": php_map(times),
        }

    @staticmethod
    def _lookup(results: dict[str, Any], command_id: str, path: str) -> tuple[bool, Any]:
        if command_id not in results:
            return False, None
        value = results[command_id]
        for segment in _SEGMENT.findall(path):
            if isinstance(value, dict) and segment in value:
                value = value[segment]
            elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
                value = value[int(segment)]
            else:
                return False, None
        return True, value

    def _resolve(
        self, pairs: list[tuple[str, str]], results: dict[str, Any]
    ) -> list[tuple[str, str]]:
        """Replace ``$result[cmd][field]...`` with earlier results; arrays expand in place."""
        out: list[tuple[str, str]] = []
        for key, value in pairs:
            if "$result[" not in value:
                out.append((key, value))
                continue
            whole = _REFERENCE.fullmatch(value)
            if whole is not None:
                found, resolved = self._lookup(results, whole.group(1), whole.group(2))
                if found and isinstance(resolved, dict | list):
                    out.extend(encode_pairs({key: resolved}))
                    continue

            def substitute(match: re.Match[str]) -> str:
                found, resolved = self._lookup(results, match.group(1), match.group(2))
                if not found or resolved is None or isinstance(resolved, dict | list):
                    return ""
                return form_value(resolved)

            out.append((key, _REFERENCE.sub(substitute, value)))
        return out

    async def _upload(self, params: dict[str, Any], upload: bytes | None, now: float) -> Response:
        """The multipart POST to attachRecord's ``uploadUrl`` (§1.4; answer UNCONFIRMED)."""
        emu = self.emu
        token = str(params.get("token", ""))
        token = token.split("|", 1)[1] if "|" in token else token
        pending = emu.portal.telephony.uploads.get(token)
        if pending is None or pending[2] < now:
            raise RestError("ERROR_CORE", "Upload token is not valid", 400)
        if upload is None:
            raise RestError("ERROR_CORE", "File content is empty.", 400)
        call_id, filename, _ = pending
        call = emu.portal.telephony.calls.get(call_id)
        if call is None:
            raise RestError("ERROR_CORE", "Call is not found", 400)
        content = upload
        if not content:
            raise RestError("ERROR_CORE", "File content is empty.", 400)
        stored = attach_file(emu.portal, call, filename, content, now)
        del emu.portal.telephony.uploads[token]
        result: Any = {"FILE_ID": stored.id}
        if emu.portal.behaviour.upload_result == "true":
            result = True
        finish = emu.clock.now()
        return json_response(
            {"result": result, "time": time_block(emu, now, finish, operating=None, reset_at=None)}
        )
