"""Users of a portal and the phones that reach them: sync ``user.get`` into ``bitrix24_users``.

Pure use case over two ports: a :class:`PortalUserSource` (every ``user.get`` item, paginated
by the adapter) and a :class:`UserDirectory` (the stored rows of one integration). A sync:

* reads every user, fired ones included (``ACTIVE`` false), so that a firing is seen;
* maps ``UF_PHONE_INNER`` to the extension, and ``PERSONAL_MOBILE`` (else ``WORK_PHONE``), in
  E.164, to the number that reaches an employee called on a mobile;
* inserts new users, updates changed ones, and deactivates users that are fired or gone.

Manual overrides (``extension_users`` in the integration's settings: extension → user id, the
plan's ``department_mapping``) are never written to the table: the call policy and
:func:`extensions_by_user` apply them on top of the synced values, so a sync cannot undo them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

__all__ = [
    "EXTENSION_OVERRIDES_SETTING",
    "PortalUser",
    "PortalUserSource",
    "StoredUser",
    "SyncReport",
    "UserDirectory",
    "extension_overrides",
    "extensions_by_user",
    "parse_user",
    "sync_users",
]

#: The integration setting holding manual extension → user overrides.
EXTENSION_OVERRIDES_SETTING = "extension_users"


@dataclass(frozen=True)
class PortalUser:
    """A Bitrix24 user as the bridge needs it."""

    user_id: int
    name: str
    active: bool
    extension: str | None
    mobile: str | None


@dataclass(frozen=True)
class StoredUser:
    """A row of ``bitrix24_users`` as the directory holds it."""

    user_id: int
    name: str
    active: bool
    extension: str | None
    mobile: str | None


@dataclass(frozen=True)
class SyncReport:
    """What one sync changed."""

    seen: int
    added: int
    updated: int
    deactivated: int
    unchanged: int
    #: Users the portal lists as fired (stored inactive).
    fired: int = 0

    @property
    def active(self) -> int:
        """Users the portal lists as active."""
        return self.seen - self.fired


class PortalUserSource(Protocol):
    """Every user of the portal, as ``user.get`` items (the adapter follows ``next``)."""

    def users(self) -> AsyncIterator[Mapping[str, Any]]:
        """Each item, fired users included."""
        ...


class UserDirectory(Protocol):
    """One integration's ``bitrix24_users`` rows (the caller's unit of work)."""

    async def stored(self) -> Sequence[StoredUser]:
        """Every row, active or not."""
        ...

    async def upsert(self, user: PortalUser, synced_at: datetime) -> None:
        """Insert or update the user's row."""
        ...

    async def deactivate(self, user_ids: Sequence[int], synced_at: datetime) -> None:
        """Mark these users inactive (kept: old calls still name them)."""
        ...

    async def touch(self, synced_at: datetime) -> None:
        """Record that the integration's users were synced now."""
        ...


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _active(value: Any) -> bool:
    # user.get sends a JSON bool; older portals and the docs' filters use "Y"/"N".
    if isinstance(value, bool):
        return value
    return _text(value).lower() in ("y", "yes", "true", "1")


def parse_user(item: Mapping[str, Any], e164: Callable[[str], str | None]) -> PortalUser | None:
    """A ``user.get`` item as a :class:`PortalUser`; None for an item without a valid ``ID``."""
    try:
        user_id = int(item.get("ID") or 0)
    except (TypeError, ValueError):
        return None
    if user_id <= 0:
        return None
    name = " ".join(
        part for part in (_text(item.get("NAME")), _text(item.get("LAST_NAME"))) if part
    )
    extension = _text(item.get("UF_PHONE_INNER")) or None
    mobile = None
    # A mobile first: WORK_PHONE is often the office's switchboard, shared by many people.
    for field in ("PERSONAL_MOBILE", "WORK_PHONE"):
        mobile = e164(_text(item.get(field)))
        if mobile:
            break
    return PortalUser(
        user_id=user_id,
        name=name or _text(item.get("EMAIL")) or f"user {user_id}",
        active=_active(item.get("ACTIVE", True)),
        extension=extension,
        mobile=mobile,
    )


def _same(stored: StoredUser, user: PortalUser) -> bool:
    return (stored.name, stored.active, stored.extension, stored.mobile) == (
        user.name,
        user.active,
        user.extension,
        user.mobile,
    )


async def sync_users(
    source: PortalUserSource,
    directory: UserDirectory,
    *,
    e164: Callable[[str], str | None],
    now: datetime,
) -> SyncReport:
    """Bring the directory in line with the portal; what changed.

    The portal is read whole before anything is written: a failure halfway through the pages
    raises before the directory is touched, so a partial read never deactivates anyone.
    """
    fetched: dict[int, PortalUser] = {}
    async for item in source.users():
        user = parse_user(item, e164)
        if user is not None:
            fetched[user.user_id] = user
    stored = {row.user_id: row for row in await directory.stored()}
    added = updated = unchanged = 0
    for user_id in sorted(fetched):
        user = fetched[user_id]
        row = stored.get(user_id)
        if row is None:
            added += 1
        elif _same(row, user):
            unchanged += 1
            continue
        else:
            updated += 1
        await directory.upsert(user, now)
    gone = sorted(uid for uid, row in stored.items() if row.active and uid not in fetched)
    if gone:
        await directory.deactivate(gone, now)
    await directory.touch(now)
    fired = sum(1 for user in fetched.values() if not user.active)
    return SyncReport(
        seen=len(fetched),
        added=added,
        updated=updated,
        deactivated=len(gone),
        unchanged=unchanged,
        fired=fired,
    )


def extension_overrides(settings: Mapping[str, Any]) -> dict[str, int]:
    """The integration's manual extension → user overrides; malformed entries are skipped."""
    raw = settings.get(EXTENSION_OVERRIDES_SETTING) or {}
    if not isinstance(raw, Mapping):
        return {}
    overrides: dict[str, int] = {}
    for extension, user_id in raw.items():
        try:
            value = int(user_id)
        except (TypeError, ValueError):
            continue
        if str(extension).strip() and value > 0:
            overrides[str(extension).strip()] = value
    return overrides


def extensions_by_user(
    synced: Sequence[StoredUser], overrides: Mapping[str, int]
) -> dict[int, str]:
    """Each active user's extension; an override wins over the synced ``UF_PHONE_INNER``.

    An extension overridden to another user no longer reaches its synced owner.
    """
    taken = set(overrides)
    result: dict[int, str] = {}
    for user in synced:
        if user.active and user.extension and user.extension not in taken:
            result.setdefault(user.user_id, user.extension)
    for extension, user_id in sorted(overrides.items()):
        result[user_id] = extension
    return result
