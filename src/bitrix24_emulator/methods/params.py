"""Reading loosely typed REST parameters: form values are strings, JSON values are anything."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from bitrix24_emulator.errors import RestError, error_core

_TRUE = frozenset({"1", "y", "yes", "true"})


def upper_keys(params: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys upper-cased, as Bitrix24 does for most methods (``array_change_key_case``)."""
    return {str(k).upper(): v for k, v in params.items()}


def opt_str(params: dict[str, Any], key: str) -> str | None:
    """A scalar parameter as a string; None when absent, null or empty."""
    value = params.get(key)
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    text = str(value).strip()
    return text or None


def opt_int(params: dict[str, Any], key: str, error: RestError | None = None) -> int | None:
    """An integer parameter (``"5"`` or ``5``); None when absent; ``error`` when not a number."""
    value = params.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        try:
            return int(float(str(value).strip()))
        except ValueError:
            if error is not None:
                raise error from None
            return None


def opt_float(params: dict[str, Any], key: str, default: float = 0.0) -> float:
    """A number parameter, ``default`` when absent or unreadable."""
    value = params.get(key)
    try:
        return float(str(value).strip()) if value not in (None, "") else default
    except ValueError:
        return default


def flag(params: dict[str, Any], key: str, default: bool) -> bool:
    """A 0/1 (or Y/N, true/false) switch."""
    value = params.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in _TRUE


def int_list(value: Any) -> list[int]:
    """An int or array of ints (list, or PHP-style dict with non-sequential keys)."""
    if value is None or value == "":
        return []
    items = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
    )
    out: list[int] = []
    for item in items:
        try:
            out.append(int(str(item).strip()))
        except ValueError:
            continue
    return out


def portal_tz(offset_hours: int) -> timezone:
    """The portal's time zone."""
    return timezone(timedelta(hours=offset_hours))


def iso(ts: float, offset_hours: int) -> str:
    """A Bitrix24 datetime string: ISO-8601 with the portal's offset, e.g. ``…T10:20:30+03:00``."""
    return datetime.fromtimestamp(ts, portal_tz(offset_hours)).isoformat(timespec="seconds")


def parse_iso(text: str) -> float | None:
    """Unix time of an ISO-8601 datetime (no offset: UTC); None when unreadable."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def required_user_missing() -> RestError:
    """The telephony error for a call without a user."""
    return error_core("USER_ID or USER_PHONE_INNER should be set")


def user_not_found() -> RestError:
    """The telephony error for an unknown or fired user."""
    return error_core("User is not found or is not active")
