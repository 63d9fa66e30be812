"""The dispatcher's claim of whole call chains, and its handling of per-command failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.storage.job_queue import JobQueue
from callbridge.storage.models import Bitrix24User, Job, JobStatus
from tests.e2e.test_calls_e2e import Env, environment, ev, inbound_answered


async def ids(queue: JobQueue, session: AsyncSession, **kw: object) -> list[int]:
    jobs = await queue.claim_chains(session, "w1", **kw)  # type: ignore[arg-type]
    return [job.id for job in jobs]


class TestClaimChains:
    async def test_takes_a_keys_whole_run_of_ready_jobs(self, session: AsyncSession) -> None:
        queue = JobQueue()
        a = [await queue.enqueue(session, "x.y", ordering_key="call:1") for _ in range(3)]
        b = await queue.enqueue(session, "x.y", ordering_key="call:2")
        assert await ids(queue, session, limit=10) == [a[0].id, a[1].id, a[2].id, b.id]

    async def test_a_running_job_of_another_worker_holds_its_key(
        self, session: AsyncSession
    ) -> None:
        queue = JobQueue()
        first = await queue.enqueue(session, "x.y", ordering_key="call:1")
        await queue.claim(session, "other", limit=1)
        await queue.enqueue(session, "x.y", ordering_key="call:1")
        assert await ids(queue, session, limit=10) == []
        # ... unless this worker holds it: then its successors may join.
        assert len(await ids(queue, session, limit=10, holding=[first.id])) == 1

    async def test_a_dead_or_not_yet_due_job_ends_the_run(self, session: AsyncSession) -> None:
        queue = JobQueue()
        first = await queue.enqueue(session, "x.y", ordering_key="call:1")
        claimed = await queue.claim(session, "w0", limit=1)
        await queue.fail(session, claimed[0], "boom", retry_at=None)
        await queue.enqueue(session, "x.y", ordering_key="call:1")
        assert await ids(queue, session, limit=10) == []
        await queue.retry_job(session, first.id)
        assert len(await ids(queue, session, limit=10)) == 2

    async def test_limit_cuts_the_last_run_to_a_prefix(self, session: AsyncSession) -> None:
        queue = JobQueue()
        a = [await queue.enqueue(session, "x.y", ordering_key="call:1") for _ in range(2)]
        b = [await queue.enqueue(session, "x.y", ordering_key="call:2") for _ in range(3)]
        assert await ids(queue, session, limit=3) == [a[0].id, a[1].id, b[0].id]
        # The rest of call 2 waits for its first job.
        assert await ids(queue, session, limit=3) == []

    async def test_only_the_kinds_and_portal_asked_for(self, session: AsyncSession) -> None:
        queue = JobQueue()
        await queue.enqueue(session, "x.y", ordering_key="call:1")
        mine = await queue.enqueue(session, "x.z", ordering_key="call:2")
        assert await ids(queue, session, limit=10, kinds=["x.z"]) == [mine.id]
        assert await ids(queue, session, limit=10, integration_id=99) == []


@pytest.fixture
async def env(fresh_database_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    async with environment(fresh_database_url, tmp_path) as built:
        yield built


class TestPerCommandFailures:
    async def test_a_refused_register_stops_its_call_and_not_the_others(self, env: Env) -> None:
        bad = "1764160000.1"
        async with env.h.session_factory() as session, session.begin():
            integration = await env.h.integration()
            assert integration is not None
            # The seed's user 4 was fired: Bitrix24 refuses to register a call for them.
            session.add(Bitrix24User(integration_id=integration.id, user_id=4, extension="104"))
        await env.post(
            ev(
                "call.started",
                bad,
                1,
                0,
                direction="outbound",
                external_number="84951234567",
                extension="104",
            ),
            ev("call.ended", bad, 2, 10, disposition="no_answer"),
            *inbound_answered("1764160000.2"),
        )
        for _ in range(300):
            jobs = await env.jobs()
            if any(j.status == JobStatus.DEAD for j in jobs) and all(
                j.status != JobStatus.RUNNING for j in jobs
            ):
                good = [j for j in jobs if j.payload["linkedid"] == "1764160000.2"]
                if all(j.status == JobStatus.SUCCEEDED for j in good):
                    break
            await asyncio.sleep(0.02)
        jobs = await env.jobs()
        register, finish = [j for j in jobs if j.payload["linkedid"] == bad]
        assert register.status == JobStatus.DEAD
        assert register.last_error is not None
        assert "User is not found" in register.last_error
        # Its finish never ran: it waits behind the dead register (visible, retryable).
        assert finish.status == JobStatus.QUEUED
        assert finish.attempts == 0
        good = [j for j in jobs if j.payload["linkedid"] == "1764160000.2"]
        assert {j.status for j in good} == {JobStatus.SUCCEEDED}
        calls = await env.calls()
        assert calls["1764160000.2-0"]["state"] == "finished"
        assert f"{bad}-0" not in calls


class TestAnswerLost:
    async def test_a_finish_sent_again_after_its_answer_was_lost_is_done(self, env: Env) -> None:
        linkedid = "1764170000.1"
        await env.post(*inbound_answered(linkedid))
        await env.settle()
        (finish,) = [j for j in await env.jobs() if j.payload["command"]["kind"] == "finish"]
        # The worker died after Bitrix24 finished the call and before it recorded the answer:
        # the lease ran out and the finish is in the queue again.
        async with env.h.session_factory() as session, session.begin():
            await session.execute(
                update(Job)
                .where(Job.id == finish.id)
                .values(
                    status=JobStatus.QUEUED.value,
                    locked_by=None,
                    lease_expires_at=None,
                    result=None,
                )
            )
        env.dispatcher.wake()
        await env.settle()

        (again,) = [j for j in await env.jobs() if j.id == finish.id]
        # Bitrix24 answered "Call is not found": the call is finished, which is what was asked.
        assert again.status == JobStatus.SUCCEEDED, again.last_error
        assert again.result == {"already_finished": True}
        call = (await env.calls())[f"{linkedid}-0"]
        assert call["state"] == "finished"
        assert call["STATUS_CODE"] == "200"
