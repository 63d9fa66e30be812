"""List-method mechanics shared by the stores: filter operators, ordering, paging and dates.

Bitrix24 list methods put the filter operator in the key (``">=ID"``, ``"%NAME"``, ``"!@ID"``)
and return pages of 50 (spec §4.5, §6.2). Records here are wire-shaped dicts (IDs and numbers as
strings), so comparison needs to know which fields are numeric or dates: MySQL compares a string
column as a string and an integer column as a number, and so do we.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

PAGE_SIZE = 50
# The portal's time zone; cloud portals in the examples answer with +03:00 (Moscow).
PORTAL_TZ = timezone(timedelta(hours=3))

# Longest first, so "!=%" wins over "!=" and "!".
_OPERATORS = (
    "!><",
    "!=%",
    "!%=",
    "><",
    ">=",
    "<=",
    "!@",
    "=%",
    "%=",
    "!=",
    "!%",
    ">",
    "<",
    "@",
    "%",
    "=",
    "!",
    "?",
)
_NEGATED = {"!><": "><", "!=%": "=%", "!%=": "=%", "!@": "@", "!=": "=", "!%": "%", "!": "="}

ValueOf = Callable[[Mapping[str, Any], str], Any]


def iso(ts: float) -> str:
    """A unix time as Bitrix24 writes datetimes: ISO-8601 with the portal's offset."""
    return datetime.fromtimestamp(ts, tz=PORTAL_TZ).isoformat(timespec="seconds")


def parse_datetime(value: str) -> datetime | None:
    """An ISO date or datetime (naive ones are portal time), or None if it is not one."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=PORTAL_TZ)
    return parsed.astimezone(UTC)


def split_key(key: str) -> tuple[str, str]:
    """Split a filter key into (operator, field); the operator is "" for plain equality."""
    for op in _OPERATORS:
        if key.startswith(op) and len(key) > len(op):
            return op, key[len(op) :]
    return "", key


@dataclass(frozen=True)
class FieldTypes:
    """How to compare the fields of one record kind."""

    numeric: frozenset[str] = frozenset()
    dates: frozenset[str] = frozenset()


class Page(NamedTuple):
    """One page of a list: ``total`` and ``next`` are None when Bitrix24 leaves them out."""

    items: list[dict[str, Any]]
    total: int | None
    next: int | None


def _default_value_of(record: Mapping[str, Any], field: str) -> Any:
    return record.get(field)


class _Comparer:
    """Typed comparison of one field's values."""

    def __init__(self, field: str, types: FieldTypes) -> None:
        self.numeric = field in types.numeric
        self.date = field in types.dates

    def key(self, value: Any) -> tuple[int, Any]:
        """A sort/compare key; None and "" sort first, as NULLs do in MySQL."""
        if value is None or value == "":
            return (0, 0)
        if isinstance(value, bool):
            value = "Y" if value else "N"
        if self.numeric:
            try:
                return (1, float(value))
            except (TypeError, ValueError):
                return (2, str(value).lower())
        if self.date:
            parsed = parse_datetime(str(value))
            if parsed is not None:
                return (1, parsed.timestamp())
        return (2, str(value).lower())

    def eq(self, value: Any, wanted: Any) -> bool:
        return self.key(value) == self.key(wanted)

    def like(self, value: Any, pattern: Any) -> bool:
        if value is None:
            return False
        regex = "".join(
            ".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in str(pattern)
        )
        return re.fullmatch(regex, str(value), flags=re.IGNORECASE | re.DOTALL) is not None


def _as_list(wanted: Any) -> list[Any]:
    if isinstance(wanted, Mapping):
        return list(wanted.values())
    if isinstance(wanted, list | tuple):
        return list(wanted)
    if isinstance(wanted, str) and "," in wanted:
        return [part.strip() for part in wanted.split(",")]
    return [wanted]


def _positive(op: str, value: Any, wanted: Any, cmp: _Comparer) -> bool:
    """Whether one scalar field value satisfies a non-negated operator."""
    if op in ("", "="):
        if isinstance(wanted, list | tuple | Mapping):
            return any(cmp.eq(value, w) for w in _as_list(wanted))
        return cmp.eq(value, wanted)
    if op == "@":
        return any(cmp.eq(value, w) for w in _as_list(wanted))
    if op in ("%", "?"):
        if value is None:
            return False
        return any(str(w).lower() in str(value).lower() for w in _as_list(wanted))
    if op in ("=%", "%="):
        return any(cmp.like(value, w) for w in _as_list(wanted))
    if op == "><":
        bounds = _as_list(wanted)
        if len(bounds) != 2 or value in (None, ""):
            return False
        return cmp.key(bounds[0]) <= cmp.key(value) <= cmp.key(bounds[1])
    if value in (None, ""):
        return False
    left, right = cmp.key(value), cmp.key(wanted)
    if left[0] != right[0]:
        return False
    if op == ">":
        return bool(left > right)
    if op == ">=":
        return bool(left >= right)
    if op == "<":
        return bool(left < right)
    return bool(left <= right)  # "<="


def matches(value: Any, op: str, wanted: Any, cmp: _Comparer) -> bool:
    """Whether a field value (a scalar, or a list for multi-valued fields) passes one condition."""
    values = value if isinstance(value, list) else [value]
    if op in _NEGATED:
        base = _NEGATED[op]
        return not any(_positive(base, v, wanted, cmp) for v in values)
    return any(_positive(op, v, wanted, cmp) for v in values)


def filter_records(
    records: Iterable[Mapping[str, Any]],
    conditions: Mapping[str, Any],
    types: FieldTypes,
    *,
    known: Callable[[str], bool] | None = None,
    value_of: ValueOf = _default_value_of,
) -> list[Mapping[str, Any]]:
    """Records passing every condition; fields ``known`` rejects are ignored, as Bitrix24 does."""
    parsed: list[tuple[str, str, Any, _Comparer]] = []
    for key, wanted in conditions.items():
        op, field = split_key(str(key))
        field = field.upper()
        if field == "LOGIC" or (known is not None and not known(field)):
            continue
        parsed.append((op, field, wanted, _Comparer(field, types)))
    return [
        record
        for record in records
        if all(matches(value_of(record, f), op, w, cmp) for op, f, w, cmp in parsed)
    ]


def parse_order(order: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """``{"ID": "DESC"}`` → ``[("ID", True)]`` (field, descending)."""
    return [(str(f).upper(), str(d).strip().upper() == "DESC") for f, d in order.items()]


def sort_records(
    records: list[Mapping[str, Any]],
    order: Sequence[tuple[str, bool]],
    types: FieldTypes,
    *,
    value_of: ValueOf = _default_value_of,
) -> list[Mapping[str, Any]]:
    """Records ordered by several keys; stable, so the last key is applied first."""
    result = list(records)
    for field, descending in reversed(order):
        result.sort(key=_sort_key(field, types, value_of), reverse=descending)
    return result


def _sort_key(
    field: str, types: FieldTypes, value_of: ValueOf
) -> Callable[[Mapping[str, Any]], tuple[int, Any]]:
    cmp = _Comparer(field, types)

    def key(record: Mapping[str, Any]) -> tuple[int, Any]:
        return cmp.key(value_of(record, field))

    return key


def page_offset(start: Any) -> int | None:
    """The row offset for a ``start`` parameter, or None for "no count" mode (negative start).

    Bitrix24's classic list methods turn ``start`` into a page number (``intval(start / 50) + 1``,
    CRestUtil::getNavData), so an offset that is not a multiple of 50 is rounded down to a page.
    """
    if start is None or start == "":
        return 0
    try:
        value = int(float(str(start)))
    except ValueError:
        return 0
    if value < 0:
        return None
    return (value // PAGE_SIZE) * PAGE_SIZE


def paginate(records: Sequence[dict[str, Any]], start: Any) -> Page:
    """One page of 50 of ordered records, with ``total`` and ``next`` as Bitrix24 sets them."""
    offset = page_offset(start)
    if offset is None:
        return Page(list(records[:PAGE_SIZE]), None, None)
    items = list(records[offset : offset + PAGE_SIZE])
    total = len(records)
    following = offset + PAGE_SIZE
    return Page(items, total, following if following < total else None)
