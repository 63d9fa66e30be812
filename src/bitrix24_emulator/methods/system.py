"""``app.info``, ``im.notify`` and ``voximplant.statistic.get`` (spec §3.6, §6.7, §6.8)."""

from __future__ import annotations

import json
import re
from typing import Any

from bitrix24_emulator.errors import RestError
from bitrix24_emulator.methods.params import opt_int, opt_str, upper_keys
from bitrix24_emulator.methods.registry import CallContext, ListResult, method

PAGE = 50
ATTACH_LIMIT = 60_000


def license_family(license_code: str) -> str:
    """``ru_ent250`` → ``ent``."""
    parts = license_code.split("_", 1)
    return re.sub(r"\d+$", "", parts[-1])


@method("app.info")
def app_info(ctx: CallContext, params: dict[str, Any]) -> Any:
    """The calling app's record (or the license, for a webhook)."""
    portal = ctx.portal
    family = license_family(portal.license)
    app = portal.apps.get(ctx.caller.client_id)
    if app is None:
        return {"SCOPE": [], "LICENSE": portal.license, "LICENSE_FAMILY": family}
    return {
        "ID": app.id,
        "CODE": app.code,
        "VERSION": app.version,
        "STATUS": app.status,
        "INSTALLED": app.install_finished,
        "PAYMENT_EXPIRED": "N",
        "DAYS": None,
        "LANGUAGE_ID": app.language_id,
        "LICENSE": portal.license,
        "LICENSE_TYPE": family,
        "LICENSE_FAMILY": family,
    }


def _notify(ctx: CallContext, params: dict[str, Any], default_type: str) -> Any:
    p = upper_keys(params)
    user_id = opt_int(p, "USER_ID")
    if not user_id:
        raise RestError("USER_ID_EMPTY", "User ID can't be empty", 400)
    message = opt_str(p, "MESSAGE")
    if message is None:
        raise RestError("MESSAGE_EMPTY", "Message can't be empty", 400)
    attach = p.get("ATTACH")
    if attach is not None:
        text = attach if isinstance(attach, str) else json.dumps(attach, ensure_ascii=False)
        if len(text) > ATTACH_LIMIT:
            raise RestError(
                "ATTACH_OVERSIZE", "You have exceeded the maximum allowable size of attach", 400
            )
    if ctx.portal.users.get(user_id) is None:
        return False
    tag = opt_str(p, "TAG")
    source = ctx.caller.client_id or f"webhook:{ctx.caller.user_id}"
    if tag is not None:
        # A new notification with an existing tag replaces the older ones (per app).
        ctx.portal.notifications[:] = [
            n for n in ctx.portal.notifications if (n["source"], n["TAG"]) != (source, tag)
        ]
    notification_id = 1 + max((n["ID"] for n in ctx.portal.notifications), default=0)
    ctx.portal.notifications.append(
        {
            "ID": notification_id,
            "USER_ID": user_id,
            "MESSAGE": message,
            "TYPE": (opt_str(p, "TYPE") or default_type).upper(),
            "TAG": tag,
            "SUB_TAG": opt_str(p, "SUB_TAG"),
            "MESSAGE_OUT": opt_str(p, "MESSAGE_OUT"),
            "ATTACH": attach,
            "source": source,
            "time": ctx.now,
        }
    )
    return notification_id


@method("im.notify", scope="im")
def im_notify(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Send a notification to an employee."""
    return _notify(ctx, params, "USER")


@method("im.notify.system.add", scope="im")
def im_notify_system(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Send a system notification."""
    return _notify(ctx, params, "SYSTEM")


@method("im.notify.personal.add", scope="im")
def im_notify_personal(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Send a personal notification."""
    return _notify(ctx, params, "USER")


_OPERATOR = re.compile(r"^(!><|><|>=|<=|!=|!%|>|<|=|!|%|\?)?(.+)$")


def _number(value: Any) -> float | None:
    try:
        return float(str(value))
    except ValueError:
        return None


def _compare(left: Any, right: Any) -> int:
    a, b = _number(left), _number(right)
    if a is not None and b is not None:
        return (a > b) - (a < b)
    sa, sb = str(left), str(right)
    return (sa > sb) - (sa < sb)


def _matches(row: dict[str, Any], key: str, wanted: Any) -> bool:
    match = _OPERATOR.match(key)
    assert match is not None
    op, field = match.group(1) or "=", match.group(2).upper()
    value = row.get(field)
    values = wanted if isinstance(wanted, list) else [wanted]
    if op in ("><", "!><"):
        lo, hi = [*values, None, None][:2]
        inside = value is not None and _compare(value, lo) >= 0 and _compare(value, hi) <= 0
        return inside if op == "><" else not inside
    if op in ("%", "?", "!%"):
        found = any(str(v).lower() in str(value or "").lower() for v in values)
        return not found if op == "!%" else found
    if op in ("=",):
        return any(_compare(value, v) == 0 for v in values) if value is not None else None in values
    if op in ("!", "!="):
        return value is None or all(_compare(value, v) != 0 for v in values)
    if value is None:
        return False
    cmp = _compare(value, values[0])
    return {">": cmp > 0, ">=": cmp >= 0, "<": cmp < 0, "<=": cmp <= 0}[op]


@method("voximplant.statistic.get", scope="telephony")
def statistic_get(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Call history rows (all numerics as strings), 50 per page."""
    p = upper_keys(params)
    filters = p.get("FILTER") or {}
    if not isinstance(filters, dict):
        filters = {}
    rows = [
        row
        for row in ctx.portal.telephony.statistics
        if all(_matches(row, str(k), v) for k, v in filters.items())
    ]
    sort = (opt_str(p, "SORT") or "ID").upper()
    descending = (opt_str(p, "ORDER") or "ASC").upper() == "DESC"
    rows.sort(
        key=lambda r: (_number(r.get(sort)) is None, _number(r.get(sort)) or 0, str(r.get(sort))),
        reverse=descending,
    )
    start = max(0, opt_int(p, "START") or 0)
    page = [dict(row) for row in rows[start : start + PAGE]]
    following = start + PAGE if start + PAGE < len(rows) else None
    return ListResult(page, len(rows), following)
