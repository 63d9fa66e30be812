"""Crash safety: workers die mid-job and still every job runs, once effectively, in key order.

On PostgreSQL, four worker *processes* drain 10,000 jobs over 500 ordering keys while one of
them is killed with SIGKILL. On every backend (SQLite included), one process with concurrency
drains 500 jobs over 50 keys while a "dead worker" holds claimed jobs it never finishes.
The number of executions beyond one per job is printed (``-s``) and recorded as a property.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.job_queue import JobQueue
from callbridge.storage.models import Job, JobStatus
from callbridge.worker import RetryPolicy, Worker
from tests.callbridge.worker import _crash_worker as crash

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
async def engine_and_sessions(
    fresh_database_url: str,
) -> AsyncIterator[tuple[AsyncEngine, async_sessionmaker[AsyncSession]]]:
    engine = create_engine(fresh_database_url)
    async with engine.begin() as connection:
        await crash.create_tables(connection)
    yield engine, create_session_factory(engine)
    await engine.dispose()


async def succeeded(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Job).where(Job.status == JobStatus.SUCCEEDED.value)
        )
        return count or 0


async def until_succeeded(
    sessions: async_sessionmaker[AsyncSession], count: int, within: float
) -> None:
    """Return once ``count`` jobs succeeded, or after ``within`` seconds (the check then fails)."""
    deadline = time.monotonic() + within
    done = await succeeded(sessions)
    while done < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        done = await succeeded(sessions)


async def ghost_claims(sessions: async_sessionmaker[AsyncSession], lease: float, n: int) -> int:
    """A worker that claims ``n`` jobs, starts them, and dies: nothing more ever happens."""
    async with sessions() as session:
        jobs = await JobQueue(lease_seconds=lease).claim(session, "ghost", limit=n)
        await session.commit()
    async with sessions() as session:
        for job in jobs:
            await session.execute(
                text(
                    "INSERT INTO crash_starts (job_id, key, n, worker) "
                    "VALUES (:job_id, :key, :n, 'ghost')"
                ),
                {"job_id": job.id, "key": job.payload["key"], "n": job.payload["n"]},
            )
        await session.commit()
    return len(jobs)


def report_line(label: str, report: crash.Report, seconds: float) -> str:
    return (
        f"{label}: {report.jobs} jobs, {report.executions} executions, "
        f"{report.executions_beyond_one} beyond one per job, {seconds:.1f}s"
    )


class TestAbandonedClaims:
    """One process, concurrency 4; a dead worker's claims come back after their lease."""

    async def test_all_jobs_once_in_order(
        self,
        engine_and_sessions: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
        record_property: Callable[[str, object], None],
    ):
        engine, sessions = engine_and_sessions
        jobs, keys, lease = 500, 50, 1.0
        await crash.enqueue_steps(sessions, jobs, keys)
        began = time.monotonic()
        abandoned = await ghost_claims(sessions, lease, 10)
        worker = Worker(
            sessions,
            crash.registry_for(sessions),
            queue=JobQueue(lease_seconds=lease),
            retry_policy=RetryPolicy(max_attempts=20, base_delay=0.01, max_delay=0.1),
            concurrency=4,
            poll_interval=0.05,
        )
        task = asyncio.create_task(worker.run())
        try:
            await until_succeeded(sessions, jobs // 2, within=60)
            abandoned += await ghost_claims(sessions, lease, 10)  # a second death, midway
            await until_succeeded(sessions, jobs, within=60)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)

        report = await crash.check(sessions, jobs)
        line = report_line(f"{engine.dialect.name} 1 process", report, time.monotonic() - began)
        print(line)
        record_property("executions_beyond_one", report.executions_beyond_one)
        assert report.problems == [], line
        assert abandoned == 20
        assert report.executions_beyond_one == abandoned, line


POSTGRES_ONLY = pytest.mark.parametrize(
    "database", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@POSTGRES_ONLY
@pytest.mark.slow
class TestSigkill:
    """Four worker processes on PostgreSQL; one is killed with SIGKILL midway."""

    async def test_every_job_completes_in_order(
        self,
        fresh_database_url: str,
        engine_and_sessions: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
        record_property: Callable[[str, object], None],
    ):
        _engine, sessions = engine_and_sessions
        jobs, keys = 10_000, 500
        await crash.enqueue_steps(sessions, jobs, keys)
        began = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        command = [sys.executable, "-m", "tests.callbridge.worker._crash_worker"]
        processes = [
            subprocess.Popen(  # noqa: ASYNC220 - started once, waited for below
                [*command, fresh_database_url, "--lease", "2", "--concurrency", "8"],
                cwd=REPO_ROOT,
                env=env,
            )
            for _ in range(4)
        ]
        killed_at = None
        try:
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                done = await succeeded(sessions)
                if killed_at is None and done >= jobs * 0.4:
                    processes[0].send_signal(signal.SIGKILL)
                    killed_at = done
                if done >= jobs:
                    break
                for process in processes[1:]:
                    assert process.poll() is None, "a surviving worker exited"
                await asyncio.sleep(0.1)
        finally:
            for process in processes[1:]:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    await asyncio.to_thread(process.wait, 30)
                except subprocess.TimeoutExpired:
                    process.kill()
        seconds = time.monotonic() - began

        report = await crash.check(sessions, jobs)
        line = report_line("postgres 4 processes, 1 SIGKILLed", report, seconds)
        line += f" (killed after {killed_at} jobs had succeeded)"
        print(line)
        record_property("executions_beyond_one", report.executions_beyond_one)
        assert killed_at is not None, line
        assert processes[0].returncode == -signal.SIGKILL
        assert report.problems == [], line
        assert [process.returncode for process in processes[1:]] == [0, 0, 0], line
