"""Responsible routing: which extension a known customer's call should ring first.

``telephony.externalCall.searchCrmEntities`` lists the CRM objects that own a number, best
first, each with its responsible user (``ASSIGNED_BY_ID``); the first one wins (spec §1.5). The
user's extension comes from the synced directory with manual overrides applied. Answers are
cached briefly (:class:`ResponsibleCache`): a dialplan asks while the caller waits, and the
same customer tends to call back within minutes.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Responsible", "ResponsibleCache", "ResponsibleMiss", "choose_responsible"]


@dataclass(frozen=True)
class Responsible:
    """The CRM owner of a number and the extension that reaches them."""

    extension: str
    user_id: int
    crm_entity_type: str
    crm_entity_id: int
    name: str = ""

    @property
    def cacheable(self) -> bool:
        """Found answers are always worth remembering."""
        return True


@dataclass(frozen=True)
class ResponsibleMiss:
    """Why no extension can be given (``reason`` is a stable code, ``detail`` for people)."""

    reason: str
    detail: str
    #: False for the portal's failures: the next call should ask again.
    cacheable: bool = True
    user_id: int | None = None


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def choose_responsible(found: Any, extensions: Mapping[int, str]) -> Responsible | ResponsibleMiss:
    """The first CRM match's responsible user and their extension, or why not."""
    if not isinstance(found, list) or not found or not isinstance(found[0], Mapping):
        return ResponsibleMiss("unknown_number", "no CRM contact, company or lead has this number")
    first = found[0]
    assigned = first.get("ASSIGNED_BY")
    user_id = _int(first.get("ASSIGNED_BY_ID"))
    if user_id <= 0 and isinstance(assigned, Mapping):
        user_id = _int(assigned.get("ID"))
    if user_id <= 0:
        return ResponsibleMiss("no_responsible", "the CRM match has no responsible user")
    extension = extensions.get(user_id)
    if not extension:
        return ResponsibleMiss(
            "no_extension",
            f"the responsible user {user_id} has no extension (or is not active)",
            user_id=user_id,
        )
    return Responsible(
        extension=extension,
        user_id=user_id,
        crm_entity_type=str(first.get("CRM_ENTITY_TYPE") or ""),
        crm_entity_id=_int(first.get("CRM_ENTITY_ID")),
        name=str(first.get("NAME") or ""),
    )


@dataclass
class ResponsibleCache:
    """A bounded LRU of answers, each kept ``ttl_seconds`` (one process)."""

    ttl_seconds: float = 60.0
    max_entries: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _entries: OrderedDict[Hashable, tuple[float, Responsible | ResponsibleMiss]] = field(
        default_factory=OrderedDict
    )

    def get(self, key: Hashable) -> Responsible | ResponsibleMiss | None:
        """The cached answer, if still fresh."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() >= entry[0]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: Hashable, value: Responsible | ResponsibleMiss) -> None:
        """Remember an answer, evicting the least recently used beyond ``max_entries``."""
        self._entries[key] = (self.clock() + self.ttl_seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
