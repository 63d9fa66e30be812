"""The log of every request sent to Bitrix24: what, for whom, how long, how it ended.

A record holds the method (or ``batch`` and its size), the integration, the start time, the
duration, the HTTP status, the error code and the method's ``time.operating``. It never holds
parameters, URLs or answers, so no token, webhook code or customer data can reach the log.

Writing a row per request inline would add a database round trip to every call; the client
hands records to an :class:`ApiLog`, and :class:`BufferedApiLog` writes them in batches from a
background task. Rows are purged after a retention period (``callbridge`` keeps 30 days unless
told otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

logger = logging.getLogger(__name__)

DEFAULT_RETENTION_DAYS = 30


@dataclass(frozen=True)
class ApiCallRecord:
    """One request to Bitrix24 as the log keeps it."""

    method: str
    started_at: datetime
    duration_ms: float
    integration_id: int | None = None
    batch_size: int = 0
    http_status: int | None = None
    error_code: str | None = None
    operating: float | None = None


class ApiLog(Protocol):
    """Takes records; must never block the request or raise."""

    def record(self, entry: ApiCallRecord) -> None:
        """Accept one record."""
        ...


class ApiLogWriter(Protocol):
    """Stores records (a database table)."""

    async def write(self, entries: Sequence[ApiCallRecord]) -> None:
        """Store these records."""
        ...


class NullApiLog:
    """Forgets everything."""

    def record(self, entry: ApiCallRecord) -> None:
        """Drop the record."""


@dataclass
class MemoryApiLog:
    """Keeps records in a list (tests, the CLI's ``ping``)."""

    entries: list[ApiCallRecord] = field(default_factory=list)

    def record(self, entry: ApiCallRecord) -> None:
        """Append the record."""
        self.entries.append(entry)


class BufferedApiLog:
    """Collects records and writes them in batches from one background task.

    Use as an async context manager (or call :meth:`start` and :meth:`aclose`). When the writer
    fails (database down), the batch is dropped with a warning: the log must not hold up calls,
    and an unbounded buffer would eat memory during a long outage.
    """

    def __init__(
        self, writer: ApiLogWriter, *, interval: float = 1.0, max_batch: int = 500
    ) -> None:
        self.writer = writer
        self.interval = interval
        self.max_batch = max_batch
        self._pending: list[ApiCallRecord] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def record(self, entry: ApiCallRecord) -> None:
        """Queue the record; a full batch wakes the writer early."""
        self._pending.append(entry)
        if len(self._pending) >= self.max_batch:
            self._wake.set()

    def start(self) -> None:
        """Start the background writer."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bitrix24-api-log")

    async def flush(self) -> None:
        """Write everything queued so far."""
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                await self.writer.write(batch)
            except Exception:  # the log must never break the caller
                logger.warning("dropped %d Bitrix24 API log records", len(batch), exc_info=True)

    async def _run(self) -> None:
        while not self._closing:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that arrives
            # as the event is set, and the flusher would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def aclose(self) -> None:
        """Stop the writer after a last flush."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()

    async def __aenter__(self) -> BufferedApiLog:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
