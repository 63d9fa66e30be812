"""The dispatcher's claim of whole call chains, and its handling of per-command failures."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from callbridge.crm.bitrix24.errors import QueryLimitExceeded
from callbridge.crm.bitrix24.rate_limit import NoRateLimit, RatePlan
from callbridge.domain.commands import split_portal_external_call_id
from callbridge.domain.ports import NewJob
from callbridge.pbx.webhook import parse_events_json
from callbridge.portals import Portals
from callbridge.services.call_tracking import track_events
from callbridge.storage.bitrix24 import DatabaseTokenStore
from callbridge.storage.call_tracking import call_tracking_ports
from callbridge.storage.job_queue import JobQueue
from callbridge.storage.models import (
    Bitrix24Call,
    Bitrix24Integration,
    Bitrix24User,
    Enterprise,
    Job,
    JobStatus,
)
from callbridge.worker.dispatcher import (
    DISPATCHER_KIND,
    Dispatcher,
    _hook_commits,
    _listening,
    _Mirrors,
)
from tests.callbridge.crm.bitrix24.harness import ScaledRateLimiter
from tests.e2e.test_calls_e2e import (
    KNOWN_CALLER,
    Env,
    environment,
    ev,
    inbound_answered,
    outbound_started,
)


async def ids(queue: JobQueue, session: AsyncSession, **kw: object) -> list[int]:
    jobs = await queue.claim_chains(session, "w1", **kw)  # type: ignore[arg-type]
    return [job.id for job in jobs]


class TestClaimKeys:
    async def test_takes_each_asked_keys_run_of_ready_jobs(self, session: AsyncSession) -> None:
        queue = JobQueue()
        a = [await queue.enqueue(session, "x.y", ordering_key="call:1") for _ in range(2)]
        b = await queue.enqueue(session, "x.y", ordering_key="call:2")
        await queue.enqueue(session, "x.y", ordering_key="call:3")
        claimed = await queue.claim_keys(session, "w1", ["call:1", "call:2"], kind="x.y")
        assert [job.id for job in claimed] == [a[0].id, a[1].id, b.id]

    async def test_a_pending_job_not_held_ends_its_keys_run(self, session: AsyncSession) -> None:
        queue = JobQueue()
        first = await queue.enqueue(session, "x.y", ordering_key="call:1")
        await queue.claim(session, "other", limit=1)
        second = await queue.enqueue(session, "x.y", ordering_key="call:1")
        other_kind = await queue.enqueue(session, "x.z", ordering_key="call:1")
        await queue.enqueue(session, "x.y", ordering_key="call:1")
        assert await queue.claim_keys(session, "w1", ["call:1"], kind="x.y") == []
        # Held by this worker: stepped over, up to the job of another kind.
        claimed = await queue.claim_keys(session, "w1", ["call:1"], kind="x.y", holding=[first.id])
        assert [job.id for job in claimed] == [second.id]
        assert other_kind.id > second.id

    async def test_limit_and_condition(self, session: AsyncSession) -> None:
        queue = JobQueue()
        a = [await queue.enqueue(session, "x.y", ordering_key="call:1") for _ in range(3)]
        never = select(Job.id).where(Job.id < 0).exists()
        assert await queue.claim_keys(session, "w1", ["call:1"], kind="x.y", only_if=never) == []
        claimed = await queue.claim_keys(session, "w1", ["call:1"], kind="x.y", limit=2)
        assert [job.id for job in claimed] == [a[0].id, a[1].id]


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
        await env.post(
            outbound_started(bad, extension=await env.add_fired_user()),
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


class LoseAnswer(httpx.AsyncBaseTransport):
    """Passes requests on, but loses the answer to the first one that calls ``method``.

    The portal has applied the request; callbridge sees a dropped connection (at-least-once
    delivery then sends it again).
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, method: str) -> None:
        self.inner = inner
        self.method = method
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        rest = request.url.path.startswith("/rest")
        names = self.method in request.url.path or self.method in request.content.decode()
        if rest and names and not self.lost:
            await response.aread()
            self.lost += 1
            raise httpx.ReadError("connection reset after the portal answered", request=request)
        return response


class TestLostAnswers:
    """A command Bitrix24 applied but whose answer was lost is sent again, and counts as done."""

    @pytest.mark.parametrize(
        "method",
        [
            "telephony.externalCall.register",
            "telephony.externalCall.hide",
            "telephony.externalCall.finish",
        ],
    )
    async def test_the_retry_finds_it_done_and_the_call_ends_once(
        self, fresh_database_url: str, tmp_path: Path, method: str
    ) -> None:
        lose: list[LoseAnswer] = []

        def wrap(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
            lose.append(LoseAnswer(inner, method))
            return lose[0]

        linkedid = "1764170000.1"
        async with environment(fresh_database_url, tmp_path, wrap_transport=wrap) as env:
            # One event at a time, so that each command goes in a request of its own.
            steps = [
                ev(
                    "call.started",
                    linkedid,
                    1,
                    0,
                    direction="inbound",
                    external_number=KNOWN_CALLER,
                ),
                ev("call.ringing", linkedid, 2, 1, extensions=["101", "102"]),
                ev("call.answered", linkedid, 3, 5, extension="102"),
                ev("call.ended", linkedid, 4, 35, disposition="answered", talk_seconds=30),
            ]
            for step in steps:
                await env.post(step)
                await env.settle(20)
            assert lose[0].lost == 1
            jobs = await env.jobs()
            assert [j.payload["command"]["kind"] for j in jobs] == [
                "register",
                "show",
                "hide",
                "finish",
            ]
            assert {j.status for j in jobs} == {JobStatus.SUCCEEDED}
            portal = [c for c in (await env.calls()).values() if c["PHONE_NUMBER"]]
            # Registered once (the retried register got the same CALL_ID), finished once.
            assert len(portal) == 1
            (call,) = portal
            assert (call["state"], call["STATUS_CODE"], call["DURATION"]) == ("finished", "200", 30)
            assert 1 in call["cards_hidden"]
            finish = jobs[3]
            if method.endswith("finish"):
                assert finish.result == {"already_finished": True}
            async with env.h.session_factory() as session:
                leg = (await session.scalars(select(Bitrix24Call))).one()
            assert (leg.bitrix24_call_id, leg.status) == (call["CALL_ID"], "finished")


class TestOperationTimeLimit:
    async def test_a_blocked_method_pauses_alone_and_the_others_keep_flowing(
        self, env: Env
    ) -> None:
        # One finish uses up the method's execution-time budget (480 s per 10 minutes).
        env.h.emulator.config.method_costs["telephony.externalcall.finish"] = 500.0
        await env.post(*inbound_answered("1764180000.1"))
        await env.settle()
        await env.post(*inbound_answered("1764180000.2"))
        await env.wait_for_jobs(
            lambda jobs: any(
                j.payload["linkedid"] == "1764180000.2"
                and j.payload["command"]["kind"] == "finish"
                and j.status == JobStatus.QUEUED
                and j.last_error
                for j in jobs
            ),
        )
        # Registers still go: the portal is not paused, only the finish method.
        await env.post(inbound_answered("1764180000.3")[0])
        await env.wait_for_jobs(
            lambda jobs: any(
                j.payload["linkedid"] == "1764180000.3" and j.status == JobStatus.SUCCEEDED
                for j in jobs
            ),
            seconds=5.0,
        )
        finish = next(
            j
            for j in await env.jobs()
            if j.payload["linkedid"] == "1764180000.2" and j.payload["command"]["kind"] == "finish"
        )
        assert finish.status == JobStatus.QUEUED
        assert finish.attempts == 0
        assert finish.last_error is not None
        assert "OPERATION_TIME_LIMIT" in finish.last_error
        # It waits for the method's budget (its reset time unknown here: a minute, the shortest
        # wait that can help), not for the portal's backoff of a second or two.
        assert finish.run_after is not None
        wait = finish.run_after.replace(tzinfo=UTC) - datetime.now(UTC)
        assert wait > timedelta(seconds=45)
        finishes = [
            r
            for r in await env.rest_requests()
            if "finish" in str(r.get("method")) or "finish" in str(r.get("batch"))
        ]
        # Sent twice: the first finish, then the refused one; no retry loop.
        assert len(finishes) == 2
        calls = await env.calls()
        assert calls["1764180000.2-0"]["state"] == "registered"
        assert calls["1764180000.3-0"]["state"] == "registered"


class TestExternalCallIds:
    async def test_two_enterprises_with_the_same_linkedid_on_one_portal_stay_apart(
        self, env: Env
    ) -> None:
        other_token = "pbx-token-other-0123456789"
        async with env.h.session_factory() as session, session.begin():
            first = await env.h.integration()
            assert first is not None
            enterprise = Enterprise(number="200", webhook_secret_enc=env.h.box.encrypt(other_token))
            session.add(enterprise)
            await session.flush()
            # The same portal, reached with the same app's tokens, for a second PBX.
            second = Bitrix24Integration(
                enterprise_id=enterprise.id,
                member_id=f"{first.member_id}-second",
                domain=first.domain,
                client_endpoint=first.client_endpoint,
                server_endpoint=first.server_endpoint,
                access_token_enc=first.access_token_enc,
                refresh_token_enc=first.refresh_token_enc,
                expires_at=first.expires_at,
                application_token_enc=first.application_token_enc,
                scope=first.scope,
                settings=dict(first.settings),
            )
            session.add(second)
            await session.flush()
            session.add(Bitrix24User(integration_id=second.id, user_id=1, extension="101"))
        linkedid = "1700000000.1"
        await env.post(*inbound_answered(linkedid))
        response = await env.h.callbridge_http.post(
            f"/pbx/{enterprise.number}/events",
            json=inbound_answered(linkedid, talk=7),
            headers={"Authorization": f"Bearer {other_token}"},
        )
        assert response.status_code == 202, response.text
        await env.settle()

        portal = (await env.h.emulator_http.get("/_emulator/calls")).json()
        ours = {
            c["EXTERNAL_CALL_ID"]: c for c in portal if linkedid in (c["EXTERNAL_CALL_ID"] or "")
        }
        assert sorted(ours) == [f"100/{linkedid}-0", f"200/{linkedid}-0"]
        # Two registrations (no dedup onto the other PBX's call), each finished with its own talk.
        assert ours[f"100/{linkedid}-0"]["CALL_ID"] != ours[f"200/{linkedid}-0"]["CALL_ID"]
        assert (ours[f"100/{linkedid}-0"]["state"], ours[f"100/{linkedid}-0"]["DURATION"]) == (
            "finished",
            42,
        )
        assert (ours[f"200/{linkedid}-0"]["state"], ours[f"200/{linkedid}-0"]["DURATION"]) == (
            "finished",
            7,
        )
        async with env.h.session_factory() as session:
            legs = (await session.scalars(select(Bitrix24Call))).all()
        assert sorted(leg.external_call_id for leg in legs) == sorted(ours)
        assert {j.status for j in await env.jobs()} == {JobStatus.SUCCEEDED}
        for value in ours:
            assert split_portal_external_call_id(value) == (value[:3], f"{linkedid}-0")
        assert split_portal_external_call_id(f"{linkedid}-0") == (None, f"{linkedid}-0")

    async def test_a_leg_registered_before_ids_were_qualified_keeps_its_id(self, env: Env) -> None:
        linkedid = "1764190000.1"
        events = inbound_answered(linkedid)
        await env.post(*events[:2])
        await env.settle()
        # As stored by an earlier version: the bare leg id.
        async with env.h.session_factory() as session, session.begin():
            leg = (await session.scalars(select(Bitrix24Call))).one()
            leg.external_call_id = f"{linkedid}-0"
        await env.post(*events[2:])
        await env.settle()
        async with env.h.session_factory() as session:
            leg = (await session.scalars(select(Bitrix24Call))).one()
        assert (leg.external_call_id, leg.status, leg.duration) == (f"{linkedid}-0", "finished", 42)
        assert (await env.calls())[f"{linkedid}-0"]["state"] == "finished"


class Recorder:
    """Stands in for a running dispatcher: what the commit hook tells it."""

    def __init__(self) -> None:
        self.told: list[set[int | None]] = []

    def wake_threadsafe(self, integration_ids: set[int | None] | None = None) -> None:
        self.told.append(set(integration_ids or ()))


class TestCommitWakeUps:
    async def test_jobs_enqueued_in_bulk_wake_their_portals_lane_on_commit(self, env: Env) -> None:
        integration = await env.h.integration()
        assert integration is not None
        recorder = Recorder()
        _hook_commits()
        _listening.add(recorder)  # type: ignore[arg-type]
        try:
            async with env.h.session_factory() as session:
                await JobQueue().enqueue_many(
                    session,
                    [NewJob(kind=DISPATCHER_KIND, payload={}, integration_id=integration.id)],
                )
                assert recorder.told == []  # not before the commit
                await session.commit()
        finally:
            _listening.discard(recorder)  # type: ignore[arg-type]
        assert recorder.told == [{integration.id}]


async def handed_over_without_a_claim(
    env: Env, monkeypatch: pytest.MonkeyPatch, enterprise_id: int, linkedid: str
) -> Job:
    """Start a call in a Session's transaction; check its register was claimed with the
    commit (never queued for the dispatcher to find) and sent before any claim; the register."""
    claims: list[float] = []
    claim = env.dispatcher._claim

    async def counted(*args: Any, **kwargs: Any) -> Any:
        claims.append(time.time())
        return await claim(*args, **kwargs)

    monkeypatch.setattr(env.dispatcher, "_claim", counted)
    facts = [e.to_domain() for e in parse_events_json(json.dumps([inbound_answered(linkedid)[0]]))]
    async with env.h.session_factory() as session, session.begin():
        await track_events(call_tracking_ports(session, env.h.box), enterprise_id, facts)
    (register,) = [j for j in await env.jobs() if j.payload["linkedid"] == linkedid]
    assert register.status in (JobStatus.RUNNING, JobStatus.SUCCEEDED)
    await env.settle()
    registered_at = (await env.calls())[f"{linkedid}-0"]["registered_at"]
    assert [t for t in claims if t < registered_at] == []
    return register


class TestHandOff:
    """A register enqueued for a portal the dispatcher serves is claimed before the commit."""

    async def test_the_register_of_a_new_call_goes_without_a_claim_transaction(
        self, env: Env, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await env.post(*inbound_answered("1764170000.1"))  # the lane gets to know its portal
        await env.settle()
        integration = await env.h.integration()
        assert integration is not None
        assert integration.enterprise_id is not None
        # Applied in a Session's transaction, as the AMI listener applies its facts (the
        # webhook's plain-SQL intake wakes the lane after its commit instead).
        register = await handed_over_without_a_claim(
            env, monkeypatch, integration.enterprise_id, "1764170000.2"
        )
        assert register.locked_by in (env.dispatcher.name, None)

    async def test_nothing_is_claimed_for_a_paused_portal(self, env: Env) -> None:
        await env.post(*inbound_answered("1764170000.3"))
        await env.settle()
        async with env.h.session_factory() as session, session.begin():
            await session.execute(update(Bitrix24Integration).values(status="needs_reauth"))
        linkedid = "1764170000.4"
        await env.post(inbound_answered(linkedid)[0])
        (register,) = [j for j in await env.jobs() if j.payload["linkedid"] == linkedid]
        assert (register.status, register.attempts) == (JobStatus.QUEUED, 0)

    async def test_a_commit_that_fails_hands_nothing_over(
        self, env: Env, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await env.post(*inbound_answered("1764170000.5"))
        await env.settle()
        integration = await env.h.integration()
        assert integration is not None
        received: list[object] = []
        monkeypatch.setattr(env.dispatcher, "receive", received.append)

        def refuse(_session: Session) -> None:
            raise RuntimeError("the commit fails")

        register = {"command": {"kind": "register"}}
        async with env.h.session_factory() as session:
            await JobQueue().enqueue_many(
                session,
                [NewJob(kind=DISPATCHER_KIND, payload=register, integration_id=integration.id)],
            )
            # After the dispatcher's hook: it has claimed when the commit fails.
            event.listen(Session, "before_commit", refuse)
            try:
                with pytest.raises(RuntimeError):
                    await session.commit()
            finally:
                event.remove(Session, "before_commit", refuse)
            await session.rollback()
            # The session's next transaction must not deliver the rolled-back claim.
            await session.execute(select(Job.id).limit(1))
            await session.commit()
        assert received == []
        assert [j for j in await env.jobs() if not j.payload.get("linkedid")] == []

    async def test_a_hand_off_to_a_lingering_lane_does_not_block_the_loop(self, env: Env) -> None:
        integration = await env.h.integration()
        assert integration is not None
        linkedid = "1764170000.7"
        answered = inbound_answered(linkedid)
        await env.post(*answered[:3])
        await env.settle()
        await env.post(answered[3])  # its finish lingers for company
        for _ in range(100):
            if any(lane.held for lane in env.dispatcher._lanes.values()):
                break
            await asyncio.sleep(0.01)
        # What a hand-off does to a running lane: work is there, no claim needed.
        env.dispatcher._start_lanes([integration.id], claim=False)
        gaps: list[float] = []
        last = time.monotonic()
        for _ in range(20):
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        assert max(gaps) < 0.5, f"the event loop stalled {max(gaps):.2f}s"
        await env.settle()
        assert (await env.calls())[f"{linkedid}-0"]["state"] == "finished"


class TestStop:
    async def test_a_cancel_that_arrives_with_a_wake_up_stops_the_dispatcher(
        self, env: Env
    ) -> None:
        # On Python 3.11, asyncio.wait_for returns normally when its task is cancelled in the
        # tick its awaited event is set: a dispatcher waiting that way never stopped.
        for _ in range(5):
            dispatcher = Dispatcher(
                env.dispatcher.settings,
                env.h.session_factory,
                portals=env.h.portals,
                poll_interval=30.0,
            )
            task = asyncio.create_task(dispatcher.run())
            await asyncio.sleep(0.05)  # let it settle in its wait for a wake-up
            dispatcher.wake()
            task.cancel()
            await asyncio.wait([task], timeout=5.0)
            assert task.done(), "the dispatcher ignored its cancellation"
            assert task.cancelled()


class TestWarmUp:
    """The first call after a start goes as fast as the next ones."""

    async def test_tokens_are_loaded_at_start_not_by_the_first_register(
        self, fresh_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        loads: list[str] = []
        load = DatabaseTokenStore.load

        async def counted(store: DatabaseTokenStore) -> Any:
            loads.append(store.member_id)
            return await load(store)

        monkeypatch.setattr(DatabaseTokenStore, "load", counted)
        async with environment(fresh_database_url, tmp_path) as env:
            async with asyncio.timeout(10):
                await env.dispatcher.warmed.wait()
            integration = await env.h.integration()
            assert integration is not None
            # Loaded by the warm-up (the install's set-up loaded them too, before).
            assert loads[-1] == integration.member_id
            loaded = len(loads)
            await env.post(inbound_answered("1764180000.1")[0])
            await env.settle()
            assert (await env.calls())["1764180000.1-0"]["state"] == "registered"
            assert len(loads) == loaded  # the register read no tokens

    async def test_the_first_register_is_handed_over_without_a_claim(
        self, env: Env, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # No call before this one: the warm-up made the portal's lane known.
        async with asyncio.timeout(10):
            await env.dispatcher.warmed.wait()
        integration = await env.h.integration()
        assert integration is not None
        assert integration.enterprise_id is not None
        lane = env.dispatcher._lanes.get(integration.id)
        assert lane is not None
        assert lane.row is not None
        await handed_over_without_a_claim(
            env, monkeypatch, integration.enterprise_id, "1764180000.2"
        )


class TestBucketMirror:
    """The lanes' view of a portal's bucket counts every request of the process, once."""

    async def test_a_lanes_requests_take_one_slot_each(
        self, fresh_database_url: str, tmp_path: Path
    ) -> None:
        # A bucket that drains a slot a minute: what the mirror counts stays while we look.
        plan = {"rate_plan": {"capacity": 50, "rate": 1 / 60}}
        async with environment(fresh_database_url, tmp_path, integration_settings=plan) as env:
            integration = await env.h.integration()
            assert integration is not None
            credentials = env.h.portals.credentials_for(integration)
            async with asyncio.timeout(10):
                await env.dispatcher.warmed.wait()
            sent_before = len(await env.rest_requests())
            free = env.dispatcher.free_slots(credentials)
            # A register alone, then a show and a finish in a batch.
            await env.post(inbound_answered("1764200000.1")[0])
            await env.settle()
            await env.post(*inbound_answered("1764200000.1")[1:])
            await env.settle()
            sent = len(await env.rest_requests()) - sent_before
            assert sent == 2
            used = free - env.dispatcher.free_slots(credentials)
            assert used == pytest.approx(sent, abs=0.1)

    async def test_a_full_bucket_met_outside_the_lanes_empties_their_view(self, env: Env) -> None:
        h = env.h
        integration = await h.integration()
        assert integration is not None
        credentials = h.portals.credentials_for(integration)
        async with asyncio.timeout(10):
            await env.dispatcher.warmed.wait()
        assert env.dispatcher.free_slots(credentials) > 40
        # Another Portals of the process (the users sync's, say) meets QUERY_LIMIT_EXCEEDED.
        h.emulator.rate = ScaledRateLimiter(1, 0.001)
        other = Portals(h.settings, h.session_factory, h.portals.http, h.box, limiter=NoRateLimit())
        client = other.client_for(integration)
        client.max_rate_limit_retries = 0
        await client.call("profile")
        with pytest.raises(QueryLimitExceeded):
            await client.call("profile")
        assert env.dispatcher.free_slots(credentials) < 0.1

    async def test_a_request_announced_from_another_thread_is_counted_on_the_loop(
        self,
    ) -> None:
        mirrors = _Mirrors()
        mirrors.loop = asyncio.get_running_loop()
        plan = RatePlan(50, 2.0)
        await asyncio.to_thread(mirrors.request_sent, "portal", plan)
        await asyncio.sleep(0)  # the loop runs what the thread handed it
        assert mirrors.get("portal", plan).free(time.monotonic()) == pytest.approx(44, abs=0.1)
