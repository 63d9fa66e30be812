"""User methods: ``user.get`` (spec §6.6) and ``profile``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bitrix24_emulator.errors import RestError
from bitrix24_emulator.methods.registry import CallContext, ListResult, method
from bitrix24_emulator.store.crm import multifield_values
from bitrix24_emulator.store.query import (
    FieldTypes,
    filter_records,
    paginate,
    sort_records,
    split_key,
)
from bitrix24_emulator.store.users import as_bool

# Top-level keys of user.get that are not filter fields when no FILTER array is given.
_CONTROL_KEYS = frozenset(
    {"SORT", "ORDER", "FILTER", "ADMIN_MODE", "SELECT", "IMAGE_RESIZE", "START", "AUTH"}
)
_USER_TYPES = FieldTypes(numeric=frozenset({"ID", "UF_DEPARTMENT", "TIME_ZONE_OFFSET"}))
_NAME_SEARCH_FIELDS = ("NAME", "LAST_NAME", "SECOND_NAME", "EMAIL")
# Accounts user.get never lists (bots, e-mail and open-line users, replicas), by EXTERNAL_AUTH_ID.
_HIDDEN_AUTH_IDS = frozenset({"bot", "email", "imconnector", "replica", "__controller"})


def _conditions(query: Mapping[str, Any]) -> dict[str, Any]:
    """The filter: the ``FILTER`` array if given, else the remaining top-level keys (§6.6)."""
    raw = query.get("FILTER")
    if isinstance(raw, Mapping):
        source: Mapping[str, Any] = raw
    else:
        source = {k: v for k, v in query.items() if k not in _CONTROL_KEYS}
    conditions: dict[str, Any] = {}
    for key, value in source.items():
        op, field = split_key(str(key))
        field = field.upper()
        if field == "ACTIVE":
            # ACTIVE is a JSON boolean in results; filters say true/"Y"/"1" or false/"N"/"0".
            flags = multifield_values(value) if isinstance(value, list | Mapping) else [value]
            value = ["Y" if as_bool(v) else "N" for v in flags]
        conditions[op + field] = value
    return conditions


def _name_search(users: list[Mapping[str, Any]], text: Any) -> list[Mapping[str, Any]]:
    """Users whose name fields contain every word of ``text`` (case-insensitive)."""
    words = str(text).lower().split()

    def hit(user: Mapping[str, Any]) -> bool:
        haystack = [str(user.get(f) or "").lower() for f in _NAME_SEARCH_FIELDS]
        return all(any(w in h for h in haystack) for w in words)

    return [u for u in users if hit(u)]


def _order(query: Mapping[str, Any]) -> list[tuple[str, bool]]:
    sort = query.get("SORT")
    direction = str(query.get("ORDER") or "ASC").strip().upper() == "DESC"
    if isinstance(sort, Mapping):
        return [(str(f).upper(), str(d).strip().upper() == "DESC") for f, d in sort.items()]
    field = str(sort).strip().upper() if sort not in (None, "") else "ID"
    return [(field, direction), ("ID", False)] if field != "ID" else [("ID", direction)]


def _project(user: Mapping[str, Any], select: list[str]) -> dict[str, Any]:
    if not select:
        return dict(user)
    star, uf_star = "*" in select, "UF_*" in select
    return {
        name: value
        for name, value in user.items()
        if name == "ID"
        or name in select
        or (star and not name.startswith("UF_"))
        or (uf_star and name.startswith("UF_"))
    }


# The least scope that may call it; the HTTP layer lets "user" and "user_basic" in too (§6.6).
@method("user.get", scope="user_brief")
def user_get(ctx: CallContext, params: dict[str, Any]) -> ListResult | list[dict[str, Any]]:
    """Employees by filter, 50 a page, ordered by ``sort``/``order`` (default ``ID`` ASC)."""
    query = {str(k).upper(): v for k, v in params.items()}
    conditions = _conditions(query)
    name_search = conditions.pop("NAME_SEARCH", None)
    users: list[Mapping[str, Any]] = [
        u
        for u in ctx.portal.users.all()
        if str(u.get("EXTERNAL_AUTH_ID") or "").lower() not in _HIDDEN_AUTH_IDS
    ]
    known = {name for user in users for name in user}
    users = filter_records(users, conditions, _USER_TYPES, known=known.__contains__)
    if name_search not in (None, ""):
        users = _name_search(users, name_search)
    users = sort_records(users, _order(query), _USER_TYPES)
    select = [
        str(s).strip().upper() for s in multifield_values(query.get("SELECT")) if str(s).strip()
    ]
    page = paginate([_project(u, select) for u in users], query.get("START"))
    if page.total is None:
        return page.items
    return ListResult(page.items, page.total, page.next)


@method("profile")
def profile(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    """The calling user: id, admin flag, name, gender, photo and time zone."""
    user_id = ctx.caller.user_id
    user = ctx.portal.users.get(user_id)
    if user is None or not user["ACTIVE"]:
        raise RestError(
            "user_access_error", "The user does not have access to the application", 403
        )
    try:
        offset = int(user.get("TIME_ZONE_OFFSET") or 0)
    except ValueError:
        offset = 0
    return {
        "ID": user["ID"],
        "ADMIN": ctx.portal.users.is_admin(user_id),
        "NAME": user["NAME"],
        "LAST_NAME": user["LAST_NAME"],
        "PERSONAL_GENDER": user["PERSONAL_GENDER"],
        "PERSONAL_PHOTO": user["PERSONAL_PHOTO"],
        "TIME_ZONE": user["TIME_ZONE"],
        "TIME_ZONE_OFFSET": offset,
    }
