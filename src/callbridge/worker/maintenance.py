"""Housekeeping that keeps the database small: old API log rows, finished jobs, used codes.

Runs as a worker side task. Dead jobs are never purged here: they stay visible until an operator
retries or purges them (`callbridge jobs purge`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge.logging import get_logger
from callbridge.storage.job_queue import FINISHED_STATUSES, JobQueue
from callbridge.storage.repositories import ApiCallRepository
from callbridge.storage.repositories.one_time_codes import OneTimeCodeRepository
from callbridge.storage.types import utcnow

logger = get_logger(__name__)


@dataclass(frozen=True)
class Retention:
    """How long each kind of row is kept."""

    api_log: timedelta
    finished_jobs: timedelta


@dataclass(frozen=True)
class Purged:
    """How many rows one maintenance pass deleted."""

    api_calls: int
    jobs: int
    one_time_codes: int


async def maintain_once(
    session_factory: async_sessionmaker[AsyncSession],
    retention: Retention,
    *,
    now: datetime | None = None,
) -> Purged:
    """One pass: each purge in its own short transaction (SQLite has one writer)."""
    now = now or utcnow()
    async with session_factory() as session, session.begin():
        api_calls = await ApiCallRepository(session).purge_older_than(now - retention.api_log)
    async with session_factory() as session, session.begin():
        jobs = await JobQueue(now=lambda: now).purge(
            session, retention.finished_jobs, FINISHED_STATUSES
        )
    async with session_factory() as session, session.begin():
        codes = await OneTimeCodeRepository(session).purge_expired(now=now)
    return Purged(api_calls=api_calls, jobs=jobs, one_time_codes=codes)


async def run_maintenance(
    session_factory: async_sessionmaker[AsyncSession],
    retention: Retention,
    interval_seconds: float,
) -> None:
    """Purge now and then every ``interval_seconds``, until cancelled; failures are logged."""
    while True:
        try:
            purged = await maintain_once(session_factory, retention)
        except Exception:  # housekeeping must never stop the worker
            logger.exception("maintenance pass failed; retrying at the next interval")
        else:
            if purged.api_calls or purged.jobs or purged.one_time_codes:
                logger.info(
                    "maintenance purged old rows",
                    api_calls=purged.api_calls,
                    jobs=purged.jobs,
                    one_time_codes=purged.one_time_codes,
                )
        await asyncio.sleep(interval_seconds)
