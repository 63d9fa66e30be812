"""The worker against a real database: outcomes, retries, ordering, shutdown, wake-ups."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callbridge.config import Settings
from callbridge.domain.errors import Permanent, RetryLater
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.job_queue import JobQueue, get_job
from callbridge.storage.models import Enterprise, Job, JobStatus
from callbridge.worker import JobContext, JobRegistry, RetryPolicy, Worker, build_worker

FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, jitter=0)


class Db:
    """A fresh database with an engine and a session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_engine(url)
        self.sessions: async_sessionmaker[AsyncSession] = create_session_factory(self.engine)

    async def enqueue(self, kind: str, payload: dict[str, Any] | None = None, **kw: Any) -> int:
        async with self.sessions() as session:
            job = await JobQueue(now=kw.pop("now", utc_now)).enqueue(session, kind, payload, **kw)
            await session.commit()
            return job.id

    async def job(self, job_id: int) -> Job:
        async with self.sessions() as session:
            return await get_job(session, job_id)

    async def count(self, status: JobStatus) -> int:
        async with self.sessions() as session:
            return (
                await session.scalar(
                    select(func.count()).select_from(Job).where(Job.status == status.value)
                )
                or 0
            )


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[Db]:
    database = Db(fresh_database_url)
    yield database
    await database.engine.dispose()


def utc_now() -> datetime:
    return datetime.now(UTC)


def make_worker(db: Db, registry: JobRegistry, **kw: Any) -> Worker:
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("retry_policy", FAST)
    kw.setdefault("concurrency", 4)
    return Worker(db.sessions, registry, **kw)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def finished(db: Db, job_id: int, status: JobStatus = JobStatus.SUCCEEDED) -> None:
    async def check() -> bool:
        return (await db.job(job_id)).status == status

    await eventually(check)


class TestOutcomes:
    async def test_runs_job_and_stores_result(self, db: Db):
        registry = JobRegistry()

        @registry.handler("test.echo")
        async def echo(job: JobContext) -> dict[str, Any]:
            return {"echo": job.payload["value"], "attempts": job.attempts}

        job_id = await db.enqueue("test.echo", {"value": 42})
        async with running(make_worker(db, registry)):
            await finished(db, job_id)

        job = await db.job(job_id)
        assert job.result == {"echo": 42, "attempts": 1}
        assert job.locked_by is None

    async def test_handler_writes_commit_with_success(self, db: Db):
        registry = JobRegistry()

        @registry.handler("test.create")
        async def create(job: JobContext) -> None:
            job.session.add(Enterprise(number=job.payload["number"]))
            if job.attempts == 1:
                await job.session.flush()
                raise RuntimeError("failed after writing")

        job_id = await db.enqueue("test.create", {"number": "100"})
        async with running(make_worker(db, registry)):
            await finished(db, job_id)

        async with db.sessions() as session:
            numbers = (await session.scalars(select(Enterprise.number))).all()
        # The first run's write was rolled back with its failure; the second committed once.
        assert numbers == ["100"]
        job = await db.job(job_id)
        assert job.attempts == 2
        assert job.last_error is not None
        assert job.last_error.startswith("RuntimeError: failed after writing")

    async def test_exhausted_retries_are_dead(self, db: Db):
        registry = JobRegistry()
        calls: list[int] = []

        @registry.handler("test.fail")
        async def fail(job: JobContext) -> None:
            calls.append(job.attempts)
            raise ValueError(f"nope {job.attempts}")

        job_id = await db.enqueue("test.fail", max_attempts=3)
        async with running(make_worker(db, registry)):
            await finished(db, job_id, JobStatus.DEAD)

        job = await db.job(job_id)
        assert calls == [1, 2, 3]
        assert job.attempts == 3
        assert job.last_error is not None
        assert job.last_error.splitlines()[0] == "ValueError: nope 3"

    async def test_permanent_error_is_dead_at_once(self, db: Db):
        registry = JobRegistry()

        @registry.handler("test.fail")
        async def fail(job: JobContext) -> None:
            raise Permanent("portal rejected the request")

        job_id = await db.enqueue("test.fail")
        async with running(make_worker(db, registry)):
            await finished(db, job_id, JobStatus.DEAD)

        assert (await db.job(job_id)).attempts == 1

    async def test_retry_later_keeps_attempts(self, db: Db):
        registry = JobRegistry()
        runs = 0

        @registry.handler("test.busy")
        async def busy(job: JobContext) -> None:
            nonlocal runs
            runs += 1
            if runs <= 5:
                raise RetryLater(0.01, "QUERY_LIMIT_EXCEEDED")

        job_id = await db.enqueue("test.busy", max_attempts=2)
        async with running(make_worker(db, registry)):
            await finished(db, job_id)

        # Five rate-limit answers did not use up the two attempts.
        assert runs == 6
        assert (await db.job(job_id)).attempts == 1

    async def test_unknown_kind_is_dead(self, db: Db):
        job_id = await db.enqueue("test.nobody_handles_this")
        async with running(make_worker(db, JobRegistry())):
            await finished(db, job_id, JobStatus.DEAD)

        job = await db.job(job_id)
        assert job.last_error is not None
        assert job.last_error.startswith("UnknownJobKindError")


class TestBackoffWithFakeClock:
    async def test_failed_job_waits_for_its_backoff(self, db: Db):
        clock_now = [datetime(2026, 11, 26, 12, 0, tzinfo=UTC)]
        queue = JobQueue(now=lambda: clock_now[0])
        registry = JobRegistry()
        runs: list[datetime] = []

        @registry.handler("test.flaky")
        async def flaky(job: JobContext) -> None:
            runs.append(clock_now[0])
            if job.attempts == 1:
                raise ConnectionError("portal unreachable")

        policy = RetryPolicy(max_attempts=5, base_delay=30, max_delay=600, jitter=0.5)
        worker = make_worker(db, registry, queue=queue, retry_policy=policy, rand=lambda: 0.5)
        job_id = await db.enqueue("test.flaky", now=lambda: clock_now[0])
        async with running(worker):
            await eventually(lambda: _status_is(db, job_id, JobStatus.QUEUED, attempts=1))
            job = await db.job(job_id)
            # 30 s backoff, shortened by jitter 0.5 x random 0.5 = 25%.
            assert job.run_after == clock_now[0] + timedelta(seconds=22.5)
            await asyncio.sleep(0.3)  # several polls: not due yet
            assert len(runs) == 1
            clock_now[0] += timedelta(seconds=22.5)
            worker.wake()
            await finished(db, job_id)
        assert runs == [datetime(2026, 11, 26, 12, 0, tzinfo=UTC), clock_now[0]]


async def _status_is(db: Db, job_id: int, status: JobStatus, attempts: int) -> bool:
    job = await db.job(job_id)
    return job.status == status and job.attempts == attempts


class TestOrdering:
    async def test_per_key_order_under_concurrency(self, db: Db):
        registry = JobRegistry()
        active: set[str] = set()
        seen: dict[str, list[int]] = {}
        overlaps: list[str] = []

        @registry.handler("test.step")
        async def step(job: JobContext) -> None:
            key = job.payload["key"]
            if key in active:
                overlaps.append(key)
            active.add(key)
            await asyncio.sleep(0.001 * (job.id % 5))
            seen.setdefault(key, []).append(job.payload["n"])
            active.discard(key)

        async with db.sessions() as session:
            queue = JobQueue()
            for n in range(20):
                for k in range(10):
                    await queue.enqueue(
                        session, "test.step", {"key": f"k{k}", "n": n}, ordering_key=f"k{k}"
                    )
            await session.commit()

        async with running(make_worker(db, registry, concurrency=8)):
            await eventually(lambda: _all_done(db, 200), within=30)

        assert overlaps == []
        assert seen == {f"k{k}": list(range(20)) for k in range(10)}

    async def test_depends_on_runs_after_success(self, db: Db):
        registry = JobRegistry()
        order: list[str] = []

        @registry.handler("test.register")
        async def register(job: JobContext) -> dict[str, Any]:
            await asyncio.sleep(0.1)
            order.append("register")
            return {"CALL_ID": "externalCall.1"}

        @registry.handler("test.attach")
        async def attach(job: JobContext) -> dict[str, Any] | None:
            order.append("attach")
            return await job.dependency_result()

        first = await db.enqueue("test.register")
        second = await db.enqueue("test.attach", depends_on=first)
        async with running(make_worker(db, registry)):
            await finished(db, second)

        assert order == ["register", "attach"]
        assert (await db.job(second)).result == {"CALL_ID": "externalCall.1"}


async def _all_done(db: Db, total: int) -> bool:
    return await db.count(JobStatus.SUCCEEDED) == total


class TestLifecycle:
    async def test_graceful_stop_lets_running_jobs_finish(self, db: Db):
        registry = JobRegistry()
        started = asyncio.Event()

        @registry.handler("test.slow")
        async def slow(job: JobContext) -> None:
            started.set()
            await asyncio.sleep(0.3)

        job_id = await db.enqueue("test.slow")
        worker = make_worker(db, registry, shutdown_timeout=5)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 5)
        worker.stop()
        await asyncio.wait_for(task, 5)

        assert (await db.job(job_id)).status == JobStatus.SUCCEEDED

    async def test_shutdown_timeout_abandons_to_lease_expiry(self, db: Db):
        registry = JobRegistry()
        started = asyncio.Event()
        cancelled = asyncio.Event()

        @registry.handler("test.stuck")
        async def stuck(job: JobContext) -> None:
            started.set()
            job.session.add(Enterprise(number="never"))
            await job.session.flush()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        job_id = await db.enqueue("test.stuck")
        worker = make_worker(db, registry, shutdown_timeout=0.2)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 5)
        began = time.monotonic()
        worker.stop()
        await asyncio.wait_for(task, 5)

        assert time.monotonic() - began < 2
        assert cancelled.is_set()
        job = await db.job(job_id)
        assert job.status == JobStatus.RUNNING  # until its lease runs out
        async with db.sessions() as session:
            assert (await session.scalars(select(Enterprise))).all() == []

    async def test_cancelling_run_stops_gracefully(self, db: Db):
        registry = JobRegistry()
        started = asyncio.Event()

        @registry.handler("test.slow")
        async def slow(job: JobContext) -> None:
            started.set()
            await asyncio.sleep(0.2)

        job_id = await db.enqueue("test.slow")
        worker = make_worker(db, registry)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert worker.stopping
        assert (await db.job(job_id)).status == JobStatus.SUCCEEDED

    async def test_dying_side_task_stops_the_worker(self, db: Db):
        async def ami_listener() -> None:
            await asyncio.sleep(0.05)
            raise ConnectionError("AMI connection refused")

        worker = make_worker(db, JobRegistry())
        worker.add_side_task("ami-listener", ami_listener)

        await asyncio.wait_for(worker.run(), 5)

        assert worker.stopping

    async def test_side_tasks_are_cancelled_on_stop(self, db: Db):
        cancelled = asyncio.Event()

        async def forever() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        worker = make_worker(db, JobRegistry())
        worker.add_side_task("token-refresher", forever)
        async with running(worker):
            await asyncio.sleep(0.1)

        assert cancelled.is_set()

    async def test_sigterm_stops_the_worker(self, db: Db):
        worker = make_worker(db, JobRegistry())
        task = asyncio.create_task(worker.run())
        worker.install_signal_handlers()
        await asyncio.sleep(0.1)

        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, 5)

        assert worker.stopping

    async def test_lost_lease_cancels_the_run(self, db: Db):
        registry = JobRegistry()
        started = asyncio.Event()
        cancelled = asyncio.Event()

        @registry.handler("test.long")
        async def long(job: JobContext) -> None:
            started.set()
            job.session.add(Enterprise(number="lost"))
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        job_id = await db.enqueue("test.long")
        worker = make_worker(db, registry, heartbeat_interval=0.05)
        async with running(worker):
            await asyncio.wait_for(started.wait(), 5)
            async with db.sessions() as session:
                # Another worker took the job over (as after an expired lease).
                await session.execute(update(Job).where(Job.id == job_id).values(locked_by="thief"))
                await session.commit()
            await asyncio.wait_for(cancelled.wait(), 5)

        assert (await db.job(job_id)).locked_by == "thief"
        async with db.sessions() as session:
            assert (await session.scalars(select(Enterprise))).all() == []

    async def test_heartbeat_keeps_long_jobs(self, db: Db):
        registry = JobRegistry()

        @registry.handler("test.long")
        async def long(job: JobContext) -> None:
            await asyncio.sleep(1.0)

        job_id = await db.enqueue("test.long")
        # The lease is shorter than the job: only the heartbeat keeps the job from a second run.
        worker = make_worker(db, registry, queue=JobQueue(lease_seconds=0.3))
        other = make_worker(db, registry, queue=JobQueue(lease_seconds=0.3))
        async with running(worker), running(other):
            await finished(db, job_id)

        assert (await db.job(job_id)).attempts == 1


POSTGRES_ONLY = pytest.mark.parametrize(
    "database", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@POSTGRES_ONLY
class TestNotifyWakeUp:
    async def test_notify_wakes_idle_worker_before_poll(self, db: Db):
        registry = JobRegistry()
        done = asyncio.Event()

        @registry.handler("test.ping")
        async def ping(job: JobContext) -> None:
            done.set()

        worker = make_worker(db, registry, poll_interval=30, listen_url=db.url)
        async with running(worker):
            await asyncio.wait_for(worker.listening.wait(), 5)
            await asyncio.sleep(0.2)  # idle: the first poll found nothing
            began = time.monotonic()
            await db.enqueue("test.ping")
            await asyncio.wait_for(done.wait(), 5)
            latency = time.monotonic() - began

        print(f"NOTIFY wake-up latency: {latency * 1000:.1f} ms (poll interval 30 s)")
        assert latency < 2


class TestBuildWorker:
    async def test_from_settings(self, db: Db):
        settings = Settings(
            database_url=db.url,
            worker_concurrency=3,
            worker_poll_interval_seconds=0.5,
            worker_shutdown_timeout_seconds=7,
            job_lease_seconds=45,
        )

        worker = build_worker(settings, db.sessions, db.engine)

        assert worker.concurrency == 3
        assert worker.poll_interval == 0.5
        assert worker.shutdown_timeout == 7
        assert worker.queue.lease_seconds == 45
        assert (worker.listen_url is not None) == (db.engine.dialect.name == "postgresql")
        assert set(worker.registry) == {
            "bitrix24.notify_missed",
            "bitrix24.click_to_call",
            "bitrix24.callback_request",
        }
