"""Job kinds and their handlers.

A handler is ``async def handler(job: JobContext) -> dict | None``. The runner opens the
session in ``job.session``, calls the handler, and commits the handler's writes together with
marking the job succeeded (and the returned dict as its result): a job's effects and its success
are one transaction. Handlers are thin wrappers around a session-taking core
(CONVENTIONS #3): ``async def register_call(job)`` calls ``_register_call(job.session, ...)``.
Kinds are ``domain.verb`` strings, stable across refactors.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.domain.errors import UnknownJobKindError
from callbridge.storage.models import Job

KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


@dataclass(frozen=True)
class JobContext:
    """What a handler gets: the job's data and a session the runner commits on success."""

    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    session: AsyncSession
    worker: str
    ordering_key: str | None = None
    depends_on: int | None = None
    integration_id: int | None = None
    call_id: int | None = None

    async def dependency_result(self) -> dict[str, Any] | None:
        """The result the job this one depends on returned (e.g. a Bitrix24 CALL_ID)."""
        if self.depends_on is None:
            return None
        dependency = await self.session.get(Job, self.depends_on)
        return dependency.result if dependency is not None else None


Handler: TypeAlias = Callable[[JobContext], Awaitable[dict[str, Any] | None]]


class JobRegistry:
    """Maps job kinds (``domain.verb``) to async handlers."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, kind: str, handler: Handler) -> None:
        """Add a handler; a kind is registered once."""
        if not KIND_PATTERN.match(kind):
            raise ValueError(f"job kind {kind!r} is not of the form domain.verb")
        if kind in self._handlers:
            raise ValueError(f"job kind {kind!r} is already registered")
        self._handlers[kind] = handler

    def handler(self, kind: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""

        def decorate(handler: Handler) -> Handler:
            self.register(kind, handler)
            return handler

        return decorate

    def get(self, kind: str) -> Handler:
        """The handler for ``kind``, or UnknownJobKindError."""
        try:
            return self._handlers[kind]
        except KeyError:
            raise UnknownJobKindError(f"no handler registered for job kind {kind!r}") from None

    @property
    def kinds(self) -> frozenset[str]:
        """The registered kinds."""
        return frozenset(self._handlers)

    def __contains__(self, kind: object) -> bool:
        return kind in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._handlers))

    def __len__(self) -> int:
        return len(self._handlers)


def default_registry() -> JobRegistry:
    """The registry of callbridge's own job kinds (filled in as features land)."""
    return JobRegistry()
