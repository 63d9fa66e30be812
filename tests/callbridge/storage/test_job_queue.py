"""The job queue on a real database: claim, leases, ordering keys, dependencies, operations."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.domain.errors import JobNotFoundError, JobStateError, LeaseLostError
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.job_queue import (
    NOTIFY_CHANNEL,
    ClaimedJob,
    JobQueue,
    blocked_by,
    counts_by_status,
    get_job,
    list_jobs,
    listen_for_jobs,
)
from callbridge.storage.models import Job, JobStatus

START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class FakeClock:
    """The only mock: time, moved by hand."""

    def __init__(self, start: datetime = START) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(clock: FakeClock) -> JobQueue:
    return JobQueue(now=clock, lease_seconds=60)


async def claim_ids(queue: JobQueue, session: AsyncSession, worker: str = "w1", **kw) -> list[int]:
    return [job.id for job in await queue.claim(session, worker, limit=kw.pop("limit", 10), **kw)]


async def refreshed(session: AsyncSession, job: Job) -> Job:
    await session.refresh(job)
    return job


class TestEnqueue:
    async def test_defaults(self, session: AsyncSession, queue: JobQueue, clock: FakeClock):
        job = await queue.enqueue(session, "calls.register", {"call": 1})

        assert job.id is not None
        assert job.status == JobStatus.QUEUED
        assert job.attempts == 0
        assert job.max_attempts == 10
        assert job.run_after == clock()
        assert job.payload == {"call": 1}

    async def test_does_not_commit(self, session: AsyncSession, queue: JobQueue):
        await queue.enqueue(session, "calls.register")

        # Still inside the caller's transaction: the caller decides whether it happens.
        assert session.in_transaction()
        await session.rollback()
        assert await list_jobs(session) == []

    async def test_unknown_dependency(self, session: AsyncSession, queue: JobQueue):
        with pytest.raises(JobNotFoundError):
            await queue.enqueue(session, "calls.finish", depends_on=10**9)

    async def test_dependency_already_cancelled(self, session: AsyncSession, queue: JobQueue):
        first = await queue.enqueue(session, "calls.register")
        await queue.cancel_job(session, first.id)

        second = await queue.enqueue(session, "calls.finish", depends_on=first)

        assert second.status == JobStatus.CANCELLED


class TestClaim:
    async def test_marks_running_with_lease(
        self, session: AsyncSession, queue: JobQueue, clock: FakeClock
    ):
        job = await queue.enqueue(session, "calls.register", {"a": 1}, call_id=None)

        [claimed] = await queue.claim(session, "w1")

        assert claimed.id == job.id
        assert claimed.payload == {"a": 1}
        assert claimed.attempts == 1
        assert claimed.locked_by == "w1"
        assert claimed.lease_expires_at == clock() + timedelta(seconds=60)
        job = await refreshed(session, job)
        assert job.status == JobStatus.RUNNING
        assert await queue.claim(session, "w2") == []

    async def test_respects_run_after(
        self, session: AsyncSession, queue: JobQueue, clock: FakeClock
    ):
        job = await queue.enqueue(
            session, "calls.register", run_after=clock() + timedelta(seconds=30)
        )

        assert await claim_ids(queue, session) == []
        clock.advance(30)
        assert await claim_ids(queue, session) == [job.id]

    async def test_limit_and_filters(self, session: AsyncSession, queue: JobQueue):
        a = await queue.enqueue(session, "calls.register")
        b = await queue.enqueue(session, "users.sync")
        c = await queue.enqueue(session, "calls.register")

        assert await claim_ids(queue, session, kinds=["users.sync"]) == [b.id]
        assert await claim_ids(queue, session, limit=1) == [a.id]
        assert await claim_ids(queue, session) == [c.id]

    async def test_integration_filter(self, session: AsyncSession, queue: JobQueue):
        await queue.enqueue(session, "calls.register")

        assert await claim_ids(queue, session, integration_id=12345) == []


class TestLeases:
    async def test_expired_lease_is_claimed_again(
        self, session: AsyncSession, queue: JobQueue, clock: FakeClock
    ):
        job = await queue.enqueue(session, "calls.register")
        [first] = await queue.claim(session, "dead-worker")

        clock.advance(59)
        assert await claim_ids(queue, session, "w2") == []
        clock.advance(2)
        [second] = await queue.claim(session, "w2")

        assert second.id == job.id
        assert second.attempts == 2  # the crash counted as an attempt
        assert second.locked_by == "w2"
        with pytest.raises(LeaseLostError):
            await queue.complete(session, first)
        await queue.complete(session, second, {"ok": True})
        assert (await refreshed(session, job)).status == JobStatus.SUCCEEDED

    async def test_crash_on_last_attempt_is_dead(
        self, session: AsyncSession, queue: JobQueue, clock: FakeClock
    ):
        job = await queue.enqueue(session, "calls.register", max_attempts=1)
        await queue.claim(session, "dead-worker")
        clock.advance(61)

        assert await queue.recover_expired(session) == 1

        job = await refreshed(session, job)
        assert job.status == JobStatus.DEAD
        assert job.last_error is not None
        assert "lease expired" in job.last_error

    async def test_heartbeat_extends_lease(
        self, session: AsyncSession, queue: JobQueue, clock: FakeClock
    ):
        await queue.enqueue(session, "calls.register")
        [claimed] = await queue.claim(session, "w1")

        clock.advance(50)
        assert await queue.extend_leases(session, "w1", [claimed]) == {claimed.id}
        clock.advance(50)

        assert await claim_ids(queue, session, "w2") == []
        assert await queue.extend_leases(session, "w2", [claimed]) == set()

    async def test_heartbeat_after_takeover(
        self, session: AsyncSession, queue: JobQueue, clock: FakeClock
    ):
        await queue.enqueue(session, "calls.register")
        [claimed] = await queue.claim(session, "w1")
        clock.advance(61)
        await queue.claim(session, "w1")  # the same worker, a later claim: a new fence

        assert await queue.extend_leases(session, "w1", [claimed]) == set()


class TestOutcomes:
    async def test_complete_stores_result(self, session: AsyncSession, queue: JobQueue):
        job = await queue.enqueue(session, "calls.register")
        [claimed] = await queue.claim(session, "w1")

        await queue.complete(session, claimed, {"CALL_ID": "X1"})

        job = await refreshed(session, job)
        assert job.status == JobStatus.SUCCEEDED
        assert job.result == {"CALL_ID": "X1"}
        assert job.finished_at is not None
        assert job.locked_by is None

    async def test_fail_and_retry_later(
        self, session: AsyncSession, queue: JobQueue, clock: FakeClock
    ):
        job = await queue.enqueue(session, "calls.register")
        [claimed] = await queue.claim(session, "w1")

        await queue.fail(session, claimed, "boom", retry_at=clock() + timedelta(seconds=5))

        job = await refreshed(session, job)
        assert (job.status, job.attempts, job.last_error) == (JobStatus.QUEUED, 1, "boom")
        assert await claim_ids(queue, session) == []
        clock.advance(5)
        assert await claim_ids(queue, session) == [job.id]

    async def test_fail_without_spending_an_attempt(
        self, session: AsyncSession, queue: JobQueue, clock: FakeClock
    ):
        job = await queue.enqueue(session, "calls.register")
        [claimed] = await queue.claim(session, "w1")

        await queue.fail(session, claimed, "rate limited", retry_at=clock(), spend_attempt=False)

        assert (await refreshed(session, job)).attempts == 0

    async def test_fail_dead(self, session: AsyncSession, queue: JobQueue):
        job = await queue.enqueue(session, "calls.register")
        [claimed] = await queue.claim(session, "w1")

        await queue.fail(session, claimed, "Permanent: no such user", retry_at=None)

        job = await refreshed(session, job)
        assert job.status == JobStatus.DEAD
        assert job.last_error == "Permanent: no such user"
        assert await claim_ids(queue, session) == []


class TestOrderingKey:
    async def test_one_at_a_time_in_order(self, session: AsyncSession, queue: JobQueue):
        first = await queue.enqueue(session, "calls.register", ordering_key="call:1")
        second = await queue.enqueue(session, "calls.finish", ordering_key="call:1")
        other = await queue.enqueue(session, "calls.register", ordering_key="call:2")

        claimed = await queue.claim(session, "w1", limit=10)
        assert [job.id for job in claimed] == [first.id, other.id]
        assert await claim_ids(queue, session) == []

        await queue.complete(session, claimed[0])
        assert await claim_ids(queue, session) == [second.id]

    async def test_retrying_predecessor_keeps_blocking(
        self, session: AsyncSession, queue: JobQueue, clock: FakeClock
    ):
        await queue.enqueue(session, "calls.register", ordering_key="k")
        second = await queue.enqueue(session, "calls.finish", ordering_key="k")
        [claimed] = await queue.claim(session, "w1")
        await queue.fail(session, claimed, "boom", retry_at=clock() + timedelta(seconds=60))

        # The predecessor waits for its retry; its successor must not overtake it.
        clock.advance(30)
        assert await claim_ids(queue, session) == []
        assert await blocked_by(session, await get_job(session, second.id)) is not None

    async def test_dead_predecessor_blocks_until_retried(
        self, session: AsyncSession, queue: JobQueue
    ):
        first = await queue.enqueue(session, "calls.register", ordering_key="k")
        second = await queue.enqueue(session, "calls.finish", ordering_key="k")
        [claimed] = await queue.claim(session, "w1")
        await queue.fail(session, claimed, "boom", retry_at=None)

        assert await claim_ids(queue, session) == []
        reason = await blocked_by(session, await get_job(session, second.id))
        assert reason is not None
        assert f"job {first.id}" in reason
        assert "dead" in reason

        await queue.retry_job(session, first.id)
        [again] = await queue.claim(session, "w1")
        assert again.id == first.id
        await queue.complete(session, again)
        assert await claim_ids(queue, session) == [second.id]

    async def test_cancelled_predecessor_does_not_block(
        self, session: AsyncSession, queue: JobQueue
    ):
        first = await queue.enqueue(session, "calls.register", ordering_key="k")
        second = await queue.enqueue(session, "calls.finish", ordering_key="k")

        await queue.cancel_job(session, first.id)

        assert await claim_ids(queue, session) == [second.id]


class TestDependsOn:
    async def test_waits_for_success(self, session: AsyncSession, queue: JobQueue):
        first = await queue.enqueue(session, "calls.register")
        second = await queue.enqueue(session, "calls.attach_record", depends_on=first.id)

        [claimed] = await queue.claim(session, "w1", limit=10)
        assert claimed.id == first.id
        assert await claim_ids(queue, session) == []

        await queue.complete(session, claimed, {"CALL_ID": "X"})
        [dependent] = await queue.claim(session, "w1")
        assert (dependent.id, dependent.depends_on) == (second.id, first.id)

    async def test_dead_dependency_blocks_visibly(self, session: AsyncSession, queue: JobQueue):
        first = await queue.enqueue(session, "calls.register")
        second = await queue.enqueue(session, "calls.finish", depends_on=first.id)
        [claimed] = await queue.claim(session, "w1")
        await queue.fail(session, claimed, "boom", retry_at=None)

        assert await claim_ids(queue, session) == []
        second = await get_job(session, second.id)
        assert second.status == JobStatus.QUEUED
        assert await blocked_by(session, second) == (
            f"waiting for job {first.id} (calls.register, dead)"
        )

    async def test_cancelled_dependency_cancels_dependents(
        self, session: AsyncSession, queue: JobQueue
    ):
        first = await queue.enqueue(session, "calls.register")
        second = await queue.enqueue(session, "calls.finish", depends_on=first.id)
        third = await queue.enqueue(session, "calls.attach_record", depends_on=second.id)
        unrelated = await queue.enqueue(session, "users.sync")

        cancelled = await queue.cancel_job(session, first.id, "integration removed")

        assert cancelled == [first.id, second.id, third.id]
        for job in (first, second, third):
            assert (await refreshed(session, job)).status == JobStatus.CANCELLED
        assert (await refreshed(session, first)).last_error == "cancelled: integration removed"
        assert (await refreshed(session, unrelated)).status == JobStatus.QUEUED

    async def test_cannot_cancel_running(self, session: AsyncSession, queue: JobQueue):
        job = await queue.enqueue(session, "calls.register")
        await queue.claim(session, "w1")

        with pytest.raises(JobStateError):
            await queue.cancel_job(session, job.id)


class TestOperations:
    async def test_get_missing(self, session: AsyncSession):
        with pytest.raises(JobNotFoundError):
            await get_job(session, 10**9)

    async def test_retry_only_dead(self, session: AsyncSession, queue: JobQueue):
        job = await queue.enqueue(session, "calls.register")

        with pytest.raises(JobStateError):
            await queue.retry_job(session, job.id)

    async def test_retry_resets_attempts_and_keeps_error(
        self, session: AsyncSession, queue: JobQueue, clock: FakeClock
    ):
        job = await queue.enqueue(session, "calls.register", max_attempts=1)
        [claimed] = await queue.claim(session, "w1")
        await queue.fail(session, claimed, "boom", retry_at=None)
        clock.advance(3600)

        job = await queue.retry_job(session, job.id)

        assert (job.status, job.attempts, job.last_error) == (JobStatus.QUEUED, 0, "boom")
        assert job.run_after == clock()
        assert job.finished_at is None

    async def test_retry_dead(self, session: AsyncSession, queue: JobQueue):
        jobs = [await queue.enqueue(session, "calls.register") for _ in range(3)]
        claimed = await queue.claim(session, "w1", limit=2)
        for job in claimed:
            await queue.fail(session, job, "boom", retry_at=None)

        assert await queue.retry_dead(session) == 2

        counts = await counts_by_status(session)
        assert counts[JobStatus.QUEUED] == 3
        assert counts[JobStatus.DEAD] == 0
        assert {job.status for job in [await refreshed(session, j) for j in jobs]} == {"queued"}

    async def test_list_filters_newest_first(self, session: AsyncSession, queue: JobQueue):
        a = await queue.enqueue(session, "calls.register")
        b = await queue.enqueue(session, "users.sync")
        c = await queue.enqueue(session, "calls.register")
        [claimed] = await queue.claim(session, "w1", kinds=["users.sync"])
        await queue.fail(session, claimed, "boom", retry_at=None)

        assert [job.id for job in await list_jobs(session)] == [c.id, b.id, a.id]
        assert [job.id for job in await list_jobs(session, status="dead")] == [b.id]
        assert [job.id for job in await list_jobs(session, kind="calls.register", limit=1)] == [
            c.id
        ]

    async def test_purge_old_finished(
        self, session: AsyncSession, queue: JobQueue, clock: FakeClock
    ):
        old = await queue.enqueue(session, "calls.register")
        dead = await queue.enqueue(session, "calls.register")
        for claimed in await queue.claim(session, "w1", limit=2):
            if claimed.id == old.id:
                await queue.complete(session, claimed)
            else:
                await queue.fail(session, claimed, "boom", retry_at=None)
        clock.advance(8 * 86400)
        recent = await queue.enqueue(session, "calls.register")
        [claimed] = await queue.claim(session, "w1")
        await queue.complete(session, claimed)
        waiting = await queue.enqueue(session, "calls.register")

        assert await queue.purge(session, timedelta(days=7)) == 1

        remaining = {job.id for job in await list_jobs(session)}
        assert remaining == {dead.id, recent.id, waiting.id}

    async def test_purge_refuses_unfinished(self, session: AsyncSession, queue: JobQueue):
        with pytest.raises(JobStateError):
            await queue.purge(session, timedelta(days=1), statuses=[JobStatus.QUEUED])

    async def test_counts_by_status(self, session: AsyncSession, queue: JobQueue):
        await queue.enqueue(session, "calls.register")
        await queue.enqueue(session, "calls.register")
        await queue.claim(session, "w1", limit=1)

        counts = await counts_by_status(session)

        assert counts[JobStatus.QUEUED] == 1
        assert counts[JobStatus.RUNNING] == 1
        assert counts[JobStatus.SUCCEEDED] == 0


class TestConcurrentClaims:
    """Several sessions claiming at once never get the same job or two jobs of one key."""

    async def test_no_double_claims(self, fresh_database_url: str):
        engine = create_engine(fresh_database_url)
        factory = create_session_factory(engine)
        queue = JobQueue()
        try:
            async with factory() as session:
                for i in range(200):
                    await queue.enqueue(session, "test.job", ordering_key=f"k{i % 20}")
                await session.commit()

            async def claimer(name: str) -> list[ClaimedJob]:
                async with factory() as session:
                    jobs = await queue.claim(session, name, limit=15)
                    await session.commit()
                    return jobs

            batches = await asyncio.gather(*(claimer(f"w{i}") for i in range(4)))
            claimed = [job for batch in batches for job in batch]
            ids = [job.id for job in claimed]
            keys = [job.ordering_key for job in claimed]
            assert len(ids) == len(set(ids))
            assert len(keys) == len(set(keys)) == 20  # one head per key, all of them
        finally:
            await engine.dispose()

    async def test_no_double_claims_of_whole_runs_without_waiting_for_the_disk(
        self, fresh_database_url: str
    ):
        engine = create_engine(fresh_database_url)
        factory = create_session_factory(engine)
        queue = JobQueue()
        try:
            async with factory() as session:
                for i in range(120):
                    await queue.enqueue(session, "test.job", ordering_key=f"k{i % 20}")
                await session.commit()

            async def claimer(name: str) -> list[ClaimedJob]:
                claimed: list[ClaimedJob] = []
                while True:
                    async with factory() as session:
                        jobs = await queue.claim_chains(
                            session,
                            name,
                            limit=7,
                            holding=[job.id for job in claimed],
                            durable=False,
                        )
                        await session.commit()
                    if not jobs:
                        return claimed
                    claimed += jobs

            batches = await asyncio.gather(*(claimer(f"w{i}") for i in range(4)))
            ids = [job.id for batch in batches for job in batch]
            assert len(ids) == len(set(ids)) == 120
            # A key's jobs went to one claimer: a run is never split between two.
            owners: dict[str | None, set[str]] = {}
            for batch in batches:
                for job in batch:
                    owners.setdefault(job.ordering_key, set()).add(job.locked_by or "")
            assert all(len(names) == 1 for names in owners.values())
        finally:
            await engine.dispose()


POSTGRES_ONLY = pytest.mark.parametrize(
    "database", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@POSTGRES_ONLY
class TestNotify:
    async def test_enqueue_notifies_on_commit(self, fresh_database_url: str):
        woken = asyncio.Event()
        connected = asyncio.Event()
        listener = asyncio.create_task(
            listen_for_jobs(fresh_database_url, woken.set, connected=connected)
        )
        engine = create_engine(fresh_database_url)
        try:
            await asyncio.wait_for(connected.wait(), 5)
            woken.clear()  # the listener wakes once on connecting
            async with create_session_factory(engine)() as session:
                await JobQueue().enqueue(session, "test.job")
                await JobQueue().enqueue(session, "test.job")
                await asyncio.sleep(0.1)
                assert not woken.is_set()  # nothing before the commit
                await session.commit()
            await asyncio.wait_for(woken.wait(), 2)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await engine.dispose()

    async def test_listener_reconnects(self, fresh_database_url: str):
        woken = asyncio.Event()
        connected = asyncio.Event()
        listener = asyncio.create_task(
            listen_for_jobs(fresh_database_url, woken.set, connected=connected, reconnect_delay=0.1)
        )
        dsn = make_url(fresh_database_url).set(drivername="postgresql")
        admin = await asyncpg.connect(dsn.render_as_string(hide_password=False))
        try:
            await asyncio.wait_for(connected.wait(), 5)
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = current_database()"
            )
            await asyncio.sleep(0.5)
            await asyncio.wait_for(connected.wait(), 5)
            woken.clear()
            await admin.execute(f"NOTIFY {NOTIFY_CHANNEL}")
            await asyncio.wait_for(woken.wait(), 2)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await admin.close()


@POSTGRES_ONLY
class TestNonDurableClaims:
    async def test_only_the_claims_transaction_skips_the_wait_for_the_disk(
        self, fresh_database_url: str
    ):
        engine = create_engine(fresh_database_url, pool_size=1)
        factory = create_session_factory(engine)
        queue = JobQueue()
        show = text("SHOW synchronous_commit")
        try:
            async with factory() as session:
                await queue.enqueue(session, "test.job", ordering_key="k1")
                await queue.enqueue(session, "test.job", ordering_key="k2")
                await session.commit()
            async with factory() as session:
                assert len(await queue.claim_chains(session, "w1", limit=1, durable=False)) == 1
                assert await session.scalar(show) == "off"
                await session.commit()
                # The next transaction on the same connection waits for the disk again.
                assert await session.scalar(show) == "on"
            async with factory() as session:
                assert len(await queue.claim_chains(session, "w1", limit=1)) == 1
                assert await session.scalar(show) == "on"
                await session.commit()
        finally:
            await engine.dispose()
