"""A worker process for the crash-safety test, and the bookkeeping the test checks.

Run as ``python -m tests.callbridge.worker._crash_worker URL [--lease S] [--concurrency N]``;
it drains ``crash.step`` jobs until SIGTERM (graceful) or SIGKILL (the point of the test).

Every execution of a job writes two rows:

- ``crash_starts``: committed on its own *before* the job's work, so it counts every execution,
  including those a killed worker never finished (that is the "executions beyond one");
- ``crash_effects``: written in the job's own transaction, so it commits only with the job's
  success: exactly one per job, or the queue lost or duplicated a job.

Both tables number their rows with an auto-incremented ``seq``, a global order of events.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.job_queue import JobQueue
from callbridge.worker import JobContext, JobRegistry, RetryPolicy, Worker

KIND = "crash.step"


async def create_tables(connection: AsyncConnection) -> None:
    """The two bookkeeping tables, on either backend."""
    if connection.dialect.name == "postgresql":
        seq = "seq BIGSERIAL PRIMARY KEY"
    else:
        seq = "seq INTEGER PRIMARY KEY AUTOINCREMENT"
    for table in ("crash_starts", "crash_effects"):
        await connection.execute(
            text(
                f"CREATE TABLE {table} ({seq}, job_id BIGINT NOT NULL, "
                "key TEXT NOT NULL, n INTEGER NOT NULL, worker TEXT NOT NULL)"
            )
        )


async def enqueue_steps(sessions: async_sessionmaker[AsyncSession], jobs: int, keys: int) -> None:
    """``jobs`` jobs, round-robin over ``keys`` ordering keys; ``n`` numbers them per key."""
    queue = JobQueue()
    async with sessions() as session:
        for i in range(jobs):
            key = f"call:{i % keys}"
            await queue.enqueue(session, KIND, {"key": key, "n": i // keys}, ordering_key=key)
        await session.commit()


def registry_for(sessions: async_sessionmaker[AsyncSession]) -> JobRegistry:
    """A registry whose ``crash.step`` records its start (committed) and its effect (atomic)."""
    registry = JobRegistry()

    @registry.handler(KIND)
    async def step(job: JobContext) -> None:
        row = {"job_id": job.id, "key": job.payload["key"], "n": job.payload["n"]}
        async with sessions() as own:
            await own.execute(
                text(
                    "INSERT INTO crash_starts (job_id, key, n, worker) "
                    "VALUES (:job_id, :key, :n, :worker)"
                ),
                {**row, "worker": job.worker},
            )
            await own.commit()
        await asyncio.sleep(random.uniform(0, 0.003))
        await job.session.execute(
            text(
                "INSERT INTO crash_effects (job_id, key, n, worker) "
                "VALUES (:job_id, :key, :n, :worker)"
            ),
            {**row, "worker": job.worker},
        )

    return registry


@dataclass
class Report:
    """What the crash test checks and prints."""

    jobs: int
    executions: int
    effects: int
    problems: list[str]

    @property
    def executions_beyond_one(self) -> int:
        """Runs a job had on top of its one successful run (re-runs after a crash)."""
        return self.executions - self.jobs


async def check(sessions: async_sessionmaker[AsyncSession], jobs: int) -> Report:
    """Every job succeeded once, in order within its key, never two of a key at once."""
    async with sessions() as session:
        starts = (
            await session.execute(text("SELECT seq, job_id, key, n FROM crash_starts ORDER BY seq"))
        ).all()
        effects = (
            await session.execute(
                text("SELECT seq, job_id, key, n FROM crash_effects ORDER BY seq")
            )
        ).all()
        statuses = dict(
            (await session.execute(text("SELECT status, count(*) FROM jobs GROUP BY status"))).all()
        )
    problems: list[str] = []
    if statuses != {"succeeded": jobs}:
        problems.append(f"job statuses {statuses}, expected all {jobs} succeeded")
    effect_ids = [row.job_id for row in effects]
    if len(effect_ids) != jobs or len(set(effect_ids)) != jobs:
        problems.append(f"{len(effect_ids)} effects for {len(set(effect_ids))} jobs of {jobs}")
    effect_seq: dict[tuple[str, int], int] = {}
    last_effect: dict[str, int] = {}
    for row in effects:
        effect_seq[(row.key, row.n)] = row.seq
        if row.n != last_effect.get(row.key, -1) + 1:
            problems.append(
                f"{row.key}: effect of step {row.n} after step {last_effect.get(row.key)}"
            )
        last_effect[row.key] = row.n
    last_start: dict[str, int] = {}
    for row in starts:
        if row.n < last_start.get(row.key, -1):
            problems.append(f"{row.key}: step {row.n} started after step {last_start[row.key]}")
        last_start[row.key] = max(row.n, last_start.get(row.key, -1))
        previous = effect_seq.get((row.key, row.n - 1))
        if row.n > 0 and (previous is None or previous > row.seq):
            problems.append(f"{row.key}: step {row.n} started before step {row.n - 1} succeeded")
    return Report(jobs=jobs, executions=len(starts), effects=len(effects), problems=problems[:20])


async def _main(url: str, lease: float, concurrency: int) -> None:
    engine = create_engine(url)
    sessions = create_session_factory(engine)
    worker = Worker(
        sessions,
        registry_for(sessions),
        queue=JobQueue(lease_seconds=lease),
        retry_policy=RetryPolicy(max_attempts=50, base_delay=0.05, max_delay=0.5),
        concurrency=concurrency,
        poll_interval=0.1,
        shutdown_timeout=5,
        listen_url=url if engine.dialect.name == "postgresql" else None,
    )
    worker.install_signal_handlers()
    try:
        await worker.run()
    finally:
        await engine.dispose()


def main() -> None:
    """Parse the arguments and run a worker until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_main(args.url, args.lease, args.concurrency))


if __name__ == "__main__":
    main()
