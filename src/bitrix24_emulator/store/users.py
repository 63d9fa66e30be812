"""The portal's employees, kept in the shape ``user.get`` returns them (spec §6.6)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

# Text fields every user.get item carries; Bitrix24 sends "" for an unset one.
_TEXT_FIELDS = (
    "XML_ID",
    "NAME",
    "LAST_NAME",
    "SECOND_NAME",
    "EMAIL",
    "LAST_LOGIN",
    "DATE_REGISTER",
    "IS_ONLINE",
    "TIME_ZONE",
    "TIME_ZONE_OFFSET",
    "PERSONAL_GENDER",
    "PERSONAL_BIRTHDAY",
    "PERSONAL_PHOTO",
    "PERSONAL_MOBILE",
    "PERSONAL_PHONE",
    "PERSONAL_CITY",
    "WORK_PHONE",
    "WORK_POSITION",
    "WORK_COMPANY",
    "USER_TYPE",
)
_DEFAULTS: dict[str, str] = {"IS_ONLINE": "N", "USER_TYPE": "employee", "TIME_ZONE_OFFSET": "0"}
_TRUE_WORDS = frozenset({"y", "yes", "true", "1"})


def as_bool(value: Any) -> bool:
    """Bitrix24's loose booleans: ``true``, ``"Y"``, ``"true"``, ``"1"``, ``1``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    return str(value).strip().lower() in _TRUE_WORDS


class UserStore:
    """Employees by id, with lookups by internal phone number."""

    def __init__(self, users: Iterable[Mapping[str, Any]] = ()) -> None:
        self._users: dict[int, dict[str, Any]] = {}
        self._admins: set[int] = set()
        for record in users:
            self.add(record)

    def add(self, record: Mapping[str, Any]) -> int:
        """Add (or replace, when ``ID`` is taken) a user and return its id.

        ``ADMIN`` (bool) marks a portal administrator; it is kept apart because ``user.get``
        does not return it.
        """
        fields = {str(k).upper(): v for k, v in record.items()}
        raw_id = fields.pop("ID", None)
        user_id = int(raw_id) if raw_id not in (None, "") else max(self._users, default=0) + 1
        if user_id <= 0:
            raise ValueError(f"user ID must be positive, got {raw_id!r}")
        if as_bool(fields.pop("ADMIN", False)):
            self._admins.add(user_id)
        else:
            self._admins.discard(user_id)
        user: dict[str, Any] = {"ID": str(user_id), "ACTIVE": as_bool(fields.pop("ACTIVE", True))}
        for name in _TEXT_FIELDS:
            value = fields.pop(name, None)
            user[name] = _DEFAULTS.get(name, "") if value is None else str(value)
        departments = fields.pop("UF_DEPARTMENT", [1])
        if not isinstance(departments, list):
            departments = [departments]
        user["UF_DEPARTMENT"] = [int(d) for d in departments]
        inner = fields.pop("UF_PHONE_INNER", None)
        # An employee without an internal number has null there, not "".
        user["UF_PHONE_INNER"] = None if inner in (None, "") else str(inner)
        user.update(fields)  # any extra UF_* or custom fields, as given
        self._users[user_id] = user
        return user_id

    def get(self, user_id: int) -> dict[str, Any] | None:
        """A copy of the user's record, or None."""
        user = self._users.get(user_id)
        return copy.deepcopy(user) if user is not None else None

    def by_inner_phone(self, inner: str) -> dict[str, Any] | None:
        """The user whose ``UF_PHONE_INNER`` is ``inner`` (active or not), lowest id first."""
        wanted = str(inner).strip()
        for user_id in sorted(self._users):
            if self._users[user_id]["UF_PHONE_INNER"] == wanted:
                return self.get(user_id)
        return None

    def is_active(self, user_id: int) -> bool:
        """Whether the user exists and is not fired."""
        user = self._users.get(user_id)
        return user is not None and bool(user["ACTIVE"])

    def is_admin(self, user_id: int) -> bool:
        """Whether the user is a portal administrator."""
        return user_id in self._admins

    def all(self) -> list[dict[str, Any]]:
        """Copies of every user, by id."""
        return [copy.deepcopy(self._users[user_id]) for user_id in sorted(self._users)]

    def __len__(self) -> int:
        return len(self._users)
