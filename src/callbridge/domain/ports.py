"""The ports the call-tracking services drive: a call store, the job outbox, a clock.

Each is a small :class:`typing.Protocol`; the storage package implements them on a database
session (the unit of work is the caller's: implementations may flush, never commit), and
tests use in-memory twins.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from callbridge.domain.call import Call

__all__ = ["CallRepository", "Clock", "JobQueue"]


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
