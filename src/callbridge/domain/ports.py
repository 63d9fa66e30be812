"""The ports the call-tracking services drive: a call store, the job outbox, a clock.

Each is a small :class:`typing.Protocol`; the storage package implements them on a database
session (the unit of work is the caller's: implementations may flush, never commit), and
tests use in-memory twins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from callbridge.domain.call import Call, CallPolicy
from callbridge.domain.events import Event

__all__ = [
    "CallKey",
    "CallRepository",
    "CallRouting",
    "Clock",
    "EventInbox",
    "InboxEntry",
    "JobQueue",
    "NewJob",
    "RoutingSource",
    "SavedCall",
    "StoredCall",
]

#: A call's identity: (enterprise id, the PBX's linkedid).
CallKey = tuple[int, str]
#: An event to file: (enterprise id, source, event).
InboxEntry = tuple[int, str, Event]


class StoredCall(NamedTuple):
    """A call as :meth:`CallRepository.get_many` locked it."""

    row_id: int
    #: None for a call nothing is known about yet.
    call: Call | None
    #: The Bitrix24 integration its commands go to, fixed when it started (None: none).
    integration_id: int | None = None


#: A call to write: (row id, call, the integration its commands go to).
SavedCall = tuple[int, Call, int | None]


@dataclass(frozen=True)
class NewJob:
    """A job to enqueue (see :meth:`JobQueue.enqueue` for the fields)."""

    kind: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    ordering_key: str | None = None
    depends_on: int | None = None
    integration_id: int | None = None
    call_id: int | None = None


class CallRepository(Protocol):
    """Calls by (enterprise, PBX linkedid), read and written whole."""

    async def get(self, enterprise_id: int, linkedid: str) -> Call | None:
        """The stored call, locked against concurrent writers until commit; None if new."""
        ...

    async def save(self, enterprise_id: int, call: Call) -> int:
        """Insert or update the call; its row id (what jobs refer to)."""
        ...

    async def get_many(self, keys: Sequence[CallKey]) -> Mapping[CallKey, StoredCall]:
        """Each call as stored (its call None if new), all locked until commit.

        A new call gets an empty row at once (its id is what jobs refer to); ``keys`` come
        sorted, the order in which rows are locked.
        """
        ...

    async def save_many(self, calls: Sequence[SavedCall]) -> None:
        """Write calls (row id, call, integration) whose rows :meth:`get_many` locked."""
        ...


class JobQueue(Protocol):
    """The outbox: work committed together with the state change that implies it."""

    async def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        ordering_key: str | None = None,
        depends_on: int | None = None,
        integration_id: int | None = None,
        call_id: int | None = None,
    ) -> int:
        """Queue a job (``domain.verb`` kind, JSON-safe payload); its id."""
        ...

    async def enqueue_many(self, jobs: Sequence[NewJob]) -> list[int]:
        """Queue jobs in the given order (ids ascend with it); their ids, in order."""
        ...


class Clock(Protocol):
    """Where services read the time (the call model never does)."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class EventInbox(Protocol):
    """Every accepted PBX event, stored once per (enterprise, source, event id)."""

    async def add(self, enterprise_id: int, source: str, event: Event) -> int | None:
        """Store the event as handled by the caller's transaction; its id, None for a repeat.

        The caller applies the event before it commits, so the row is never visible without
        its effects: it is stored handled, with no second write to mark it.
        """
        ...

    async def add_many(self, entries: Sequence[InboxEntry]) -> list[bool]:
        """Store events like :meth:`add`; for each, in order, whether it was new.

        An event id repeated within ``entries`` is new at its first place only.
        """
        ...


@dataclass(frozen=True)
class CallRouting:
    """Where an enterprise's calls go: its Bitrix24 integration (if any) and its call policy."""

    integration_id: int | None
    policy: CallPolicy
    #: The enterprise's other live integrations and their policies: a call that started on
    #: one of them goes on there (its Bitrix24 calls live on that portal).
    also_live: Mapping[int, CallPolicy] = field(default_factory=dict)

    def policy_of(self, integration_id: int | None) -> CallPolicy | None:
        """The policy of one of the enterprise's live integrations; None if it is not one."""
        if integration_id is None:
            return None
        if integration_id == self.integration_id:
            return self.policy
        return self.also_live.get(integration_id)


class RoutingSource(Protocol):
    """The integration and :class:`CallPolicy` that apply to an enterprise's calls now."""

    async def for_enterprise(self, enterprise_id: int) -> CallRouting:
        """The routing; ``integration_id`` None when no live integration is linked."""
        ...
