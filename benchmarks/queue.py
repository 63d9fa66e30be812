"""Job queue throughput: enqueue and drain rates on SQLite and PostgreSQL, 1 and 4 workers.

    python benchmarks/queue.py [--jobs 2000] [--postgres postgresql+asyncpg://postgres@host/db]

PostgreSQL is used when ``--postgres`` or ``CALLBRIDGE_TEST_POSTGRES_URL`` names a server; the
benchmark creates its own database there (``cbbench_*``) and drops it afterwards.

Each run enqueues ``--jobs`` no-op jobs in one transaction (the enqueue rate), over ordering keys
of five jobs each (one call's register/show/hide/finish/attach), while idle workers poll, then
times from that commit until every job has succeeded (the drain rate). Workers run with
concurrency 8. "4 workers" means four worker processes on PostgreSQL, and four ``Worker``
objects in one process on SQLite (SQLite runs everything in one process, DESIGN §5).
Every drain stops after ``--timeout`` seconds, so the whole run is bounded.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file shares its name with the stdlib's ``queue``, which asyncio imports. Run as a script,
# its directory heads sys.path and would shadow the stdlib module: take it off first.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge.storage import migrate
from callbridge.storage.db import (
    create_engine,
    create_session_factory,
    create_unpooled_engine,
)
from callbridge.storage.job_queue import JobQueue
from callbridge.storage.models import Job, JobStatus
from callbridge.worker import JobContext, JobRegistry, Worker

KIND = "bench.noop"
CONCURRENCY = 8
JOBS_PER_KEY = 5


@dataclass
class Result:
    """One line of the report."""

    backend: str
    workers: str
    jobs: int
    enqueue_seconds: float
    drain_seconds: float | None

    def line(self) -> str:
        """The result as a table row."""
        enqueue = f"{self.jobs / self.enqueue_seconds:>10.0f}"
        drain = f"{self.jobs / self.drain_seconds:>10.0f}" if self.drain_seconds else "  timed out"
        return f"{self.backend:<10} {self.workers:<28} {self.jobs:>6} {enqueue} {drain}"


def registry() -> JobRegistry:
    """A registry whose only job does nothing: the queue's overhead is what is measured."""
    jobs = JobRegistry()

    @jobs.handler(KIND)
    async def noop(job: JobContext) -> None:
        return None

    return jobs


def make_worker(sessions: async_sessionmaker[AsyncSession], url: str) -> Worker:
    """A worker as callbridge runs one, polling every 0.2 s and listening on PostgreSQL."""
    return Worker(
        sessions,
        registry(),
        concurrency=CONCURRENCY,
        poll_interval=0.2,
        listen_url=url if url.startswith("postgresql") else None,
    )


async def enqueue(sessions: async_sessionmaker[AsyncSession], jobs: int) -> float:
    """Enqueue ``jobs`` jobs in one transaction; returns the seconds it took, commit included."""
    queue = JobQueue()
    batch = uuid.uuid4().hex[:6]
    began = time.perf_counter()
    async with sessions() as session:
        for i in range(jobs):
            await queue.enqueue(
                session, KIND, {"i": i}, ordering_key=f"{batch}:{i // JOBS_PER_KEY}"
            )
        await session.commit()
    return time.perf_counter() - began


async def wait_drained(
    sessions: async_sessionmaker[AsyncSession], total: int, limit: float
) -> float | None:
    """Seconds until ``total`` jobs have succeeded, or None after ``limit`` seconds."""
    began = time.perf_counter()
    while time.perf_counter() - began < limit:
        async with sessions() as session:
            done = await session.scalar(
                select(func.count()).select_from(Job).where(Job.status == JobStatus.SUCCEEDED)
            )
        if done is not None and done >= total:
            return time.perf_counter() - began
        # Every transaction takes the write lock on SQLite: a tight poll would slow the drain.
        await asyncio.sleep(0.25)
    return None


async def run_in_process(url: str, backend: str, workers: int, jobs: int, limit: float) -> Result:
    """``workers`` Worker objects in this process."""
    engine = create_engine(url, pool_size=CONCURRENCY * workers + 4)
    sessions = create_session_factory(engine)
    try:
        async with sessions() as session:
            already = await session.scalar(select(func.count()).select_from(Job)) or 0
        running = [make_worker(sessions, url) for _ in range(workers)]
        tasks = [asyncio.create_task(worker.run()) for worker in running]
        await asyncio.sleep(0.5)
        enqueue_seconds = await enqueue(sessions, jobs)
        drain_seconds = await wait_drained(sessions, already + jobs, limit)
        for worker in running:
            worker.stop()
        await asyncio.gather(*tasks)
    finally:
        await engine.dispose()
    label = "1 worker" if workers == 1 else f"{workers} workers in one process"
    return Result(backend, label, jobs, enqueue_seconds, drain_seconds)


async def run_processes(url: str, backend: str, workers: int, jobs: int, limit: float) -> Result:
    """``workers`` worker processes (this script with ``--worker``)."""
    command = [sys.executable, __file__, "--worker", url]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220
        for _ in range(workers)
    ]
    engine = create_engine(url)
    sessions = create_session_factory(engine)
    try:
        for process in processes:
            assert process.stdout is not None
            await asyncio.to_thread(process.stdout.readline)  # "ready"
        async with sessions() as session:
            already = await session.scalar(select(func.count()).select_from(Job)) or 0
        enqueue_seconds = await enqueue(sessions, jobs)
        drain_seconds = await wait_drained(sessions, already + jobs, limit)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await asyncio.to_thread(process.wait)
        await engine.dispose()
    return Result(backend, f"{workers} worker processes", jobs, enqueue_seconds, drain_seconds)


async def worker_process(url: str) -> None:
    """The body of one ``--worker`` process: run until SIGTERM."""
    engine = create_engine(url, pool_size=CONCURRENCY + 4)
    worker = make_worker(create_session_factory(engine), url)
    worker.install_signal_handlers()
    task = asyncio.create_task(worker.run())
    if worker.listen_url is not None:
        await asyncio.wait_for(worker.listening.wait(), 10)
    print("ready", flush=True)
    await task
    await engine.dispose()


async def _admin(admin_url: str, sql: str) -> None:
    engine = create_unpooled_engine(admin_url)
    try:
        async with engine.connect() as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(sql))
    finally:
        await engine.dispose()


async def bench_sqlite(jobs: int, limit: float) -> list[Result]:
    """1 worker, then 4 Worker objects in one process, on a fresh SQLite file."""
    with tempfile.TemporaryDirectory(prefix="cbbench_") as directory:
        url = f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}"
        await migrate.upgrade(url)
        return [
            await run_in_process(url, "sqlite", 1, jobs, limit),
            await run_in_process(url, "sqlite", 4, jobs, limit),
        ]


async def bench_postgres(admin_url: str, jobs: int, limit: float) -> list[Result]:
    """1 worker process, then 4, on a database of its own (created and dropped here)."""
    name = f"cbbench_{uuid.uuid4().hex[:10]}"
    await _admin(admin_url, f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        await migrate.upgrade(url)
        return [
            await run_processes(url, "postgres", 1, jobs, limit),
            await run_processes(url, "postgres", 4, jobs, limit),
        ]
    finally:
        await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def main(jobs: int, postgres: str | None, limit: float) -> None:
    """Run every configuration and print the table."""
    print(
        f"{'backend':<10} {'workers (concurrency 8)':<28} {'jobs':>6} {'enqueue/s':>10} "
        f"{'drain/s':>10}"
    )
    for result in await bench_sqlite(jobs, limit):
        print(result.line(), flush=True)
    if postgres:
        for result in await bench_postgres(postgres, jobs, limit):
            print(result.line(), flush=True)
    else:
        print("postgres   skipped: give --postgres URL or set CALLBRIDGE_TEST_POSTGRES_URL")
    print(f"(machine: {os.cpu_count()} CPUs; enqueue = one transaction of {jobs} jobs)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--postgres", default=os.environ.get("CALLBRIDGE_TEST_POSTGRES_URL"))
    parser.add_argument("--timeout", type=float, default=60.0, help="Max seconds per drain.")
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker_process(args.worker))
    else:
        asyncio.run(main(args.jobs, args.postgres, args.timeout))
