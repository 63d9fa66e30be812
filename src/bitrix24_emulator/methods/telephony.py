"""``telephony.externalCall.*`` and ``telephony.externalLine.*`` (spec §1)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from bitrix24_emulator.errors import RestError, error_core, wrong_auth_type
from bitrix24_emulator.methods.params import (
    flag,
    int_list,
    iso,
    opt_float,
    opt_int,
    opt_str,
    parse_iso,
    required_user_missing,
    upper_keys,
    user_not_found,
)
from bitrix24_emulator.methods.registry import CallContext, method
from bitrix24_emulator.state import OutgoingEvent, Portal
from bitrix24_emulator.store.telephony import ExternalCall, StoredFile

CALL_TYPES = frozenset({1, 2, 3, 4, 5})
ENTITY_TYPES = frozenset({"CONTACT", "COMPANY", "LEAD"})
_PHONE_OK = re.compile(r"^\+?[0-9()\-\s.#*,;/]*[0-9][0-9()\-\s.#*,;/]*$")
_NOT_FOUND_FOR_FINISH = "Call is not found (call should be registered prior to finishing"
_NOT_FINISHED = "Call is not found in the statistic table. Looks like it is not finished yet."
UPLOAD_LIFETIME = 3600.0


def _user_of(ctx: CallContext, p: dict[str, Any], *, require_active: bool = True) -> int:
    """Resolve USER_ID / USER_PHONE_INNER to an active user id."""
    user_id = opt_int(p, "USER_ID")
    inner = opt_str(p, "USER_PHONE_INNER")
    if user_id is None and inner is None:
        raise required_user_missing()
    if user_id is None:
        assert inner is not None
        record = ctx.portal.users.by_inner_phone(inner)
        if record is None:
            raise user_not_found()
        user_id = int(record["ID"])
    if require_active and not ctx.portal.users.is_active(user_id):
        raise user_not_found()
    return user_id


def _app_fields(portal: Portal, client_id: str | None) -> tuple[str | None, str | None]:
    app = portal.apps.get(client_id)
    return (str(app.id), app.name) if app is not None else (None, None)


def _link_crm(
    portal: Portal,
    *,
    phone: str,
    entity_type: str | None,
    entity_id: int | None,
) -> tuple[str | None, int | None]:
    """The CRM object a call belongs to: the one named, else the first found by phone."""
    if entity_type in ENTITY_TYPES and entity_id and portal.crm.entity(entity_type, entity_id):
        return entity_type, entity_id
    matches = portal.crm.find_by_phone(phone)
    if matches:
        return matches[0]
    return None, None


def register_call(
    portal: Portal,
    *,
    client_id: str | None,
    user_id: int,
    phone: str,
    call_type: int,
    now: float,
    start: float | None = None,
    line_number: str | None = None,
    external_call_id: str | None = None,
    crm_create: bool = False,
    crm_source: str | None = None,
    entity_type: str | None = None,
    entity_id: int | None = None,
    show: bool = True,
    call_list_id: int = 0,
    origin: str = "register",
) -> tuple[ExternalCall, dict[str, Any]]:
    """Register (or find the 30-minute duplicate of) a call; returns it and the method result."""
    store = portal.telephony
    behaviour = portal.behaviour
    key = (client_id, phone, call_type, user_id, line_number, external_call_id)
    existing = store.find_recent(
        key, now - behaviour.dedup_window, behaviour.dedup_include_finished
    )
    if existing is not None:
        if show:
            existing.card(user_id, "show", now, origin)
        return existing, {
            "CALL_ID": existing.call_id,
            "CRM_CREATED_LEAD": None,
            "CRM_CREATED_ENTITIES": [],
            "CRM_ENTITY_TYPE": existing.crm_entity_type or behaviour.unmatched_entity_type,
            "CRM_ENTITY_ID": existing.crm_entity_id or behaviour.unmatched_entity_id,
        }

    linked_type, linked_id = _link_crm(
        portal, phone=phone, entity_type=entity_type, entity_id=entity_id
    )
    created_lead: int | None = None
    created: list[dict[str, Any]] = []
    if linked_type is None and crm_create:
        line = store.find_line(line_number) if line_number else None
        # For outgoing calls the line's CRM_AUTO_CREATE also has a say (§1.1).
        if not (call_type == 1 and line is not None and line.crm_auto_create == "N"):
            direction = "Outgoing" if call_type in (1, 4, 5) else "Incoming"
            fields = {
                "TITLE": behaviour.lead_title.format(phone=phone, direction=direction),
                "PHONE": [{"VALUE": phone, "VALUE_TYPE": "WORK"}],
                "SOURCE_ID": crm_source or "CALL",
                "STATUS_ID": "NEW",
                "ASSIGNED_BY_ID": user_id,
                "OPENED": "Y",
            }
            created_lead = portal.crm.add_lead(fields, now)
            created = [{"ENTITY_TYPE": "LEAD", "ENTITY_ID": created_lead}]
            linked_type, linked_id = "LEAD", created_lead

    call = store.add_call(
        ExternalCall(
            call_id=store.new_call_id(now),
            client_id=client_id,
            user_id=user_id,
            phone_number=phone,
            type=call_type,
            start=start if start is not None else now,
            registered_at=now,
            line_number=line_number,
            external_call_id=external_call_id,
            crm_entity_type=linked_type,
            crm_entity_id=linked_id,
            crm_created_lead=created_lead,
            crm_created_entities=created,
            crm_source=crm_source,
            call_list_id=call_list_id,
            origin=origin,
            dedup_key=key,
        )
    )
    if show:
        call.card(user_id, "show", now, origin)
    app_id, _ = _app_fields(portal, client_id)
    portal.outbox.append(
        OutgoingEvent(
            "ONVOXIMPLANTCALLINIT",
            {
                "CALL_ID": call.call_id,
                "CALL_TYPE": str(call_type),
                "CALLER_ID": phone,
                "REST_APP_ID": app_id or "",
            },
            user_id,
        )
    )
    return call, {
        "CALL_ID": call.call_id,
        "CRM_CREATED_LEAD": created_lead,
        "CRM_CREATED_ENTITIES": created,
        "CRM_ENTITY_TYPE": linked_type or behaviour.unmatched_entity_type,
        "CRM_ENTITY_ID": linked_id or behaviour.unmatched_entity_id,
    }


@method("telephony.externalCall.register", app_only=True, scope="telephony")
def external_call_register(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Register a call and show its card (§1.1)."""
    p = upper_keys(params)
    user_id = _user_of(ctx, p)
    call_type = opt_int(p, "TYPE", error_core("Unknown TYPE"))
    if call_type not in CALL_TYPES:
        raise error_core("Unknown TYPE")
    phone = opt_str(p, "PHONE_NUMBER")
    if phone is None or not _PHONE_OK.match(phone):
        raise error_core("Unsupported phone number format")
    start: float | None = None
    start_text = opt_str(p, "CALL_START_DATE")
    if start_text is not None:
        start = parse_iso(start_text)
        if start is None:
            raise error_core("CALL_START_DATE should be in the ISO-8601 format")
    entity_type = opt_str(p, "CRM_ENTITY_TYPE")
    _, result = register_call(
        ctx.portal,
        client_id=ctx.caller.client_id,
        user_id=user_id,
        phone=phone,
        call_type=call_type,
        now=ctx.now,
        start=start,
        line_number=opt_str(p, "LINE_NUMBER"),
        external_call_id=opt_str(p, "EXTERNAL_CALL_ID"),
        crm_create=flag(p, "CRM_CREATE", False),
        crm_source=opt_str(p, "CRM_SOURCE"),
        entity_type=entity_type.upper() if entity_type else None,
        entity_id=opt_int(p, "CRM_ENTITY_ID"),
        show=flag(p, "SHOW", True),
        call_list_id=opt_int(p, "CALL_LIST_ID") or 0,
    )
    return result


def _status_fields(code: str) -> int:
    return 1 if code == "200" else 0


@method("telephony.externalCall.finish", app_only=True, scope="telephony")
def external_call_finish(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Finish a call: statistics row, CRM call activity, card closed (§1.2)."""
    p = upper_keys(params)
    raw_call_id = p.get("CALL_ID")
    if raw_call_id is not None and not isinstance(raw_call_id, str):
        raise RestError("INVALID_ARGUMENT", "CALL_ID must be a string", 400)
    if opt_int(p, "USER_ID") is None and opt_str(p, "USER_PHONE_INNER") is None:
        raise required_user_missing()
    portal = ctx.portal
    call = portal.telephony.calls.get(raw_call_id or "")
    if call is None:
        raise error_core(_NOT_FOUND_FOR_FINISH)
    if call.state == "finished":
        if portal.behaviour.finish_twice == "repeat" and call.statistic is not None:
            return call.statistic
        raise error_core(_NOT_FOUND_FOR_FINISH)
    user_id = _user_of(ctx, p)

    duration = max(0, opt_int(p, "DURATION") or 0)
    status_code = opt_str(p, "STATUS_CODE") or ("200" if duration > 0 else "304")
    vote = opt_int(p, "VOTE")
    cost = opt_float(p, "COST")
    add_to_chat = flag(p, "ADD_TO_CHAT", portal.behaviour.finish_add_to_chat_default)

    activity_id: int | None = None
    if call.crm_entity_type and call.crm_entity_id:
        activity_id = portal.crm.add_call_activity(
            owner_type=call.crm_entity_type,
            owner_id=call.crm_entity_id,
            call_id=call.call_id,
            user_id=user_id,
            phone=call.phone_number,
            incoming=call.type in (2, 3),
            duration=duration,
            status_code=status_code,
            start=call.start,
            now=ctx.now,
        )
    app_id, app_name = _app_fields(portal, call.client_id or ctx.caller.client_id)
    stat_id = portal.telephony.next_stat_id()
    portal_number = call.line_number or f"REST_APP:{app_id or ''}"
    tz = portal.timezone_offset_hours
    result: dict[str, Any] = {
        "ID": stat_id,
        "CALL_ID": call.call_id,
        "EXTERNAL_CALL_ID": call.external_call_id,
        "PORTAL_USER_ID": user_id,
        "PHONE_NUMBER": call.phone_number,
        "PORTAL_NUMBER": portal_number,
        "INCOMING": str(call.type),
        "CALL_DURATION": duration,
        "CALL_START_DATE": {}
        if portal.behaviour.finish_start_date_as_object
        else iso(call.start, tz),
        "CALL_STATUS": _status_fields(status_code),
        "CALL_VOTE": vote or 0,
        "COST": cost,
        "COST_CURRENCY": opt_str(p, "COST_CURRENCY") or "",
        "CALL_FAILED_CODE": status_code,
        "CALL_FAILED_REASON": opt_str(p, "FAILED_REASON") or "",
        "REST_APP_ID": app_id,
        "REST_APP_NAME": app_name,
        "CRM_ACTIVITY_ID": activity_id,
        "COMMENT": None,
        "CRM_ENTITY_TYPE": call.crm_entity_type,
        "CRM_ENTITY_ID": call.crm_entity_id,
    }
    portal.telephony.statistics.append(
        {
            "ID": str(stat_id),
            "CALL_ID": call.call_id,
            "EXTERNAL_CALL_ID": call.external_call_id,
            "CALL_CATEGORY": "external",
            "PORTAL_USER_ID": str(user_id),
            "PORTAL_NUMBER": portal_number,
            "PHONE_NUMBER": call.phone_number,
            "CALL_TYPE": str(call.type),
            "CALL_DURATION": str(duration),
            "CALL_START_DATE": iso(call.start, tz),
            "CALL_LOG": None,
            "CALL_RECORD_URL": None,
            "CALL_VOTE": str(vote) if vote is not None else None,
            "COST": f"{cost:.4f}",
            "COST_CURRENCY": result["COST_CURRENCY"],
            "CALL_FAILED_CODE": status_code,
            "CALL_FAILED_REASON": result["CALL_FAILED_REASON"],
            "CRM_ENTITY_TYPE": call.crm_entity_type,
            "CRM_ENTITY_ID": str(call.crm_entity_id) if call.crm_entity_id else None,
            "CRM_ACTIVITY_ID": str(activity_id) if activity_id else None,
            "REST_APP_ID": app_id,
            "REST_APP_NAME": app_name,
            "TRANSCRIPT_ID": None,
            "TRANSCRIPT_PENDING": "N",
            "SESSION_ID": None,
            "REDIAL_ATTEMPT": None,
            "COMMENT": None,
            "RECORD_DURATION": None,
            "RECORD_FILE_ID": None,
        }
    )
    call.state = "finished"
    call.finished_at = ctx.now
    call.statistic = result
    call.added_to_chat = add_to_chat
    if portal.behaviour.finish_hides_card:
        for shown_to in [u for u, shown in call.visible.items() if shown]:
            call.card(shown_to, "hide", ctx.now, "finish")
    portal.outbox.append(
        OutgoingEvent(
            "ONVOXIMPLANTCALLEND",
            {
                "CALL_ID": call.call_id,
                "CALL_TYPE": str(call.type),
                "PHONE_NUMBER": call.phone_number,
                "PORTAL_NUMBER": portal_number,
                "PORTAL_USER_ID": str(user_id),
                "CALL_DURATION": str(duration),
                "CALL_START_DATE": iso(call.start, tz),
                "COST": f"{cost:.4f}",
                "COST_CURRENCY": result["COST_CURRENCY"],
                "CALL_FAILED_CODE": status_code,
                "CALL_FAILED_REASON": result["CALL_FAILED_REASON"],
                "CRM_ACTIVITY_ID": str(activity_id) if activity_id else "",
            },
            user_id,
        )
    )
    return result


def _show_or_hide(ctx: CallContext, params: dict[str, Any], action: str) -> bool:
    if ctx.caller.kind != "oauth" and not ctx.portal.behaviour.show_hide_allow_webhook:
        raise wrong_auth_type()
    p = upper_keys(params)
    call = ctx.portal.telephony.calls.get(opt_str(p, "CALL_ID") or "")
    if call is None or call.state == "finished":
        return False
    users = int_list(p.get("USER_ID")) or [call.user_id]
    for user_id in users:
        call.card(user_id, "show" if action == "show" else "hide", ctx.now, action)
    return True


@method("telephony.externalCall.show", scope="telephony")
def external_call_show(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Show the call card to one or several users (§1.3)."""
    return _show_or_hide(ctx, params, "show")


@method("telephony.externalCall.hide", scope="telephony")
def external_call_hide(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Hide the call card from one or several users (§1.3)."""
    return _show_or_hide(ctx, params, "hide")


def attach_file(
    portal: Portal, call: ExternalCall, name: str, content: bytes, now: float
) -> StoredFile:
    """Store a record and make it the call's (a second attach replaces the first)."""
    stored = portal.telephony.add_file(name, content, call.call_id, now)
    call.record_file_id = stored.id
    call.records.append(stored.id)
    for row in portal.telephony.statistics:
        if row["CALL_ID"] == call.call_id:
            row["RECORD_FILE_ID"] = stored.id
            row["CALL_RECORD_URL"] = f"/_emulator/files/{stored.id}"
    activity_id = (call.statistic or {}).get("CRM_ACTIVITY_ID")
    if activity_id:
        portal.crm.attach_activity_record(int(activity_id), stored.id)
    return stored


def _check_extension(name: str) -> None:
    if not name:
        raise error_core("File name is empty")
    if PurePosixPath(name).suffix.lower() not in (".wav", ".mp3"):
        raise error_core("Wrong file extension. Only wav and mp3 are allowed")


@method("telephony.externalCall.attachRecord", scope="telephony")
def external_call_attach_record(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Attach a recording to a finished call: Base64, upload URL, or RECORD_URL (§1.4)."""
    p = upper_keys(params)
    filename = opt_str(p, "FILENAME")
    record_url = opt_str(p, "RECORD_URL")
    if filename is None and record_url is None:
        raise error_core(
            "Required parameters are not set. Request should contain or URL or FILENAME parameter"
        )
    portal = ctx.portal
    call = portal.telephony.calls.get(opt_str(p, "CALL_ID") or "")
    if call is None or call.state != "finished":
        raise error_core(_NOT_FINISHED)
    if filename is None:
        assert record_url is not None
        filename = PurePosixPath(urlsplit(record_url).path).name
    _check_extension(filename)
    content = p.get("FILE_CONTENT")
    if content is not None and not isinstance(content, dict | list):
        text = str(content)
        if not text.strip():
            raise error_core("File content is empty.")
        try:
            data = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise error_core(
                "File content is not properly encoded. Base64 encoding is expected."
            ) from None
        if not data:
            raise error_core("File content is empty.")
        return {"FILE_ID": attach_file(portal, call, filename, data, ctx.now).id}
    if record_url is not None:
        return _download_record(ctx, call, filename, record_url)
    token = portal.telephony.new_upload(call.call_id, filename, ctx.now + UPLOAD_LIFETIME)
    auth = f"auth={ctx.auth}&" if ctx.auth else ""
    return {
        "uploadUrl": f"{ctx.base_url}/rest/upload.json?{auth}token=telephony%7C{token}",
        "fieldName": "file",
    }


async def _download(ctx: CallContext, call: ExternalCall, filename: str, url: str) -> Any:
    fetch = ctx.portal.fetch
    if fetch is None:
        raise error_core("Server returns HTTP error code 0")
    status, body = await fetch(url)
    if status >= 400 or status == 0:
        raise error_core(f"Server returns HTTP error code {status}")
    if not body:
        raise error_core("File content is empty.")
    return {"FILE_ID": attach_file(ctx.portal, call, filename, body, ctx.now).id}


def _download_record(
    ctx: CallContext, call: ExternalCall, filename: str, url: str
) -> Awaitable[Any]:
    """RECORD_URL mode: the portal downloads the file once, synchronously (older docs)."""
    return _download(ctx, call, filename, url)


def _entity_name(entity: dict[str, Any]) -> str:
    name = " ".join(str(entity.get(k) or "") for k in ("NAME", "LAST_NAME")).strip()
    return name or str(entity.get("TITLE") or "")


@method("telephony.externalCall.searchCrmEntities", scope="telephony")
def external_call_search(ctx: CallContext, params: dict[str, Any]) -> Any:
    """CRM objects with this phone and their responsible employees (§1.5)."""
    if ctx.caller.kind != "oauth" and not ctx.portal.behaviour.search_allow_webhook:
        raise wrong_auth_type()
    p = upper_keys(params)
    phone = opt_str(p, "PHONE_NUMBER")
    if phone is None:
        raise error_core("PHONE_NUMBER is empty")
    found: list[dict[str, Any]] = []
    for entity_type, entity_id in ctx.portal.crm.find_by_phone(phone):
        entity = ctx.portal.crm.entity(entity_type, entity_id) or {}
        assigned = int(entity.get("ASSIGNED_BY_ID") or 0)
        user = ctx.portal.users.get(assigned) or {}
        found.append(
            {
                "CRM_ENTITY_TYPE": entity_type,
                "CRM_ENTITY_ID": entity_id,
                "ASSIGNED_BY_ID": assigned,
                "NAME": _entity_name(entity),
                "ASSIGNED_BY": {
                    "ID": str(assigned),
                    "TIMEMAN_STATUS": str(user.get("TIMEMAN_STATUS") or "OPENED"),
                    "USER_PHONE_INNER": user.get("UF_PHONE_INNER") or None,
                    "WORK_PHONE": user.get("WORK_PHONE") or None,
                    "PERSONAL_PHONE": user.get("PERSONAL_PHONE") or None,
                    "PERSONAL_MOBILE": user.get("PERSONAL_MOBILE") or None,
                },
            }
        )
    return found


def _line_number(p: dict[str, Any]) -> str:
    number = opt_str(p, "NUMBER")
    if number is None:
        raise error_core("NUMBER should not be empty")
    return number


def _yn(value: Any, default: str) -> str:
    if value is None or value == "":
        return default
    return "Y" if str(value).strip().upper() in ("Y", "1", "TRUE") else "N"


@method("telephony.externalLine.add", app_only=True, scope="telephony")
def external_line_add(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Add an external line of the calling app (§1.6)."""
    p = upper_keys(params)
    number = _line_number(p)
    client_id = ctx.caller.client_id or ""
    if number in ctx.portal.telephony.app_lines(client_id):
        raise error_core("Line already exists")
    line = ctx.portal.telephony.add_line(
        client_id, number, opt_str(p, "NAME") or "", _yn(p.get("CRM_AUTO_CREATE"), "Y")
    )
    return {"ID": line.id}


@method("telephony.externalLine.update", app_only=True, scope="telephony")
def external_line_update(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Rename a line or change its CRM_AUTO_CREATE; the ID comes back as a string (§1.6)."""
    p = upper_keys(params)
    number = _line_number(p)
    line = ctx.portal.telephony.app_lines(ctx.caller.client_id or "").get(number)
    if line is None:
        raise error_core(f"Could not find line with number {number}")
    if "NAME" not in p and "CRM_AUTO_CREATE" not in p:
        raise error_core("There are no fields to update")
    if "NAME" in p:
        line.name = opt_str(p, "NAME") or ""
    if "CRM_AUTO_CREATE" in p:
        line.crm_auto_create = _yn(p.get("CRM_AUTO_CREATE"), line.crm_auto_create)
    return {"ID": str(line.id)}


@method("telephony.externalLine.get", app_only=True, scope="telephony")
def external_line_get(ctx: CallContext, params: dict[str, Any]) -> Any:
    """The calling app's lines (§1.6)."""
    lines = ctx.portal.telephony.app_lines(ctx.caller.client_id or "").values()
    return [
        {"NUMBER": line.number, "NAME": line.name, "CRM_AUTO_CREATE": line.crm_auto_create}
        for line in lines
    ]


@method("telephony.externalLine.delete", app_only=True, scope="telephony")
def external_line_delete(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Delete a line; the result is an empty array (§1.6)."""
    p = upper_keys(params)
    number = _line_number(p)
    lines = ctx.portal.telephony.app_lines(ctx.caller.client_id or "")
    if number not in lines:
        raise error_core(f"Could not find line with number {number}")
    del lines[number]
    return []
