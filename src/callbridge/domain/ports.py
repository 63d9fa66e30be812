"""The ports the call-tracking services drive: a call store, the job outbox, a clock.

Each is a small :class:`typing.Protocol`; the storage package implements them on a database
session (the unit of work is the caller's: implementations may flush, never commit), and
tests use in-memory twins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from callbridge.domain.call import Call, CallPolicy
from callbridge.domain.events import Event

__all__ = ["CallRepository", "CallRouting", "Clock", "EventInbox", "JobQueue", "RoutingSource"]


class CallRepository(Protocol):
    """Calls by (enterprise, PBX linkedid), read and written whole."""

    async def get(self, enterprise_id: int, linkedid: str) -> Call | None:
        """The stored call, locked against concurrent writers until commit; None if new."""
        ...

    async def save(self, enterprise_id: int, call: Call) -> int:
        """Insert or update the call; its row id (what jobs refer to)."""
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


@dataclass(frozen=True)
class CallRouting:
    """Where an enterprise's calls go: its Bitrix24 integration (if any) and its call policy."""

    integration_id: int | None
    policy: CallPolicy


class RoutingSource(Protocol):
    """The integration and :class:`CallPolicy` that apply to an enterprise's calls now."""

    async def for_enterprise(self, enterprise_id: int) -> CallRouting:
        """The routing; ``integration_id`` None when no live integration is linked."""
        ...
