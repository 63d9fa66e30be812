"""The group-commit writer of PBX webhooks, on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import sqlalchemy
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge.domain.errors import CallStateError, StorageError
from callbridge.domain.events import Answered, CallStarted, Direction, Event
from callbridge.services.call_tracking import Outcome
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory, create_unpooled_engine
from callbridge.storage.models import (
    Bitrix24Integration,
    Enterprise,
    IntegrationStatus,
    Job,
    PbxEvent,
)
from callbridge.storage.models import Call as CallRow
from callbridge.web.intake import CredentialCache, CredentialsChangedError, IntakeWriter
from tests.callbridge.services.test_call_tracking import make_tenant
from tests.callbridge.worker.test_ami_supervisor import until
from tests.conftest import Database

BOX = SecretBox([Fernet.generate_key()])
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
# Long enough for a writer that does not wait for the held lock to have committed.
SETTLE_SECONDS = 0.3


def started(linkedid: str) -> Event:
    return CallStarted(
        call_id=linkedid,
        event_id=f"{linkedid}:1",
        timestamp=T0,
        direction=Direction.INBOUND,
        external_number="84951234567",
    )


def answered(linkedid: str) -> Event:
    return Answered(call_id=linkedid, event_id=f"{linkedid}:2", timestamp=T0, extension="101")


@dataclass
class Env:
    writer: IntakeWriter
    factory: async_sessionmaker[AsyncSession]
    enterprise_id: int
    secret_enc: str
    url: str
    backend: str

    def submit(self, *events: Event) -> asyncio.Task[list[Outcome]]:
        coroutine = self.writer.submit(self.enterprise_id, self.secret_enc, list(events))
        return asyncio.create_task(coroutine)

    async def count(self, model: type[object]) -> int:
        async with self.factory() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
async def env(database: Database, fresh_database_url: str) -> AsyncIterator[Env]:
    engine = create_engine(fresh_database_url)
    factory = create_session_factory(engine)
    async with factory() as session, session.begin():
        tenant = await make_tenant(session)
        enterprise = await session.get_one(Enterprise, tenant.enterprise_id)
        enterprise.webhook_secret_enc = BOX.encrypt("token")
        secret_enc = enterprise.webhook_secret_enc
    writer = IntakeWriter(factory, BOX)
    try:
        yield Env(
            writer, factory, tenant.enterprise_id, secret_enc, fresh_database_url, database.backend
        )
    finally:
        await writer.close()
        await engine.dispose()


@contextlib.asynccontextmanager
async def writes_held(url: str, backend: str) -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """Block the writer's transactions from another connection; yields a count of stored events.

    SQLite: this connection holds the write lock (``BEGIN IMMEDIATE``). PostgreSQL: it holds an
    exclusive lock on ``pbx_events``, which the writer's insert waits for.
    """
    engine = create_unpooled_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.begin()
            if backend == "postgres":
                await connection.execute(text("LOCK TABLE pbx_events IN EXCLUSIVE MODE"))
            else:
                await connection.execute(text("SELECT 1"))

            async def count() -> int:
                result = await connection.execute(text("SELECT count(*) FROM pbx_events"))
                return int(result.scalar_one())

            yield count
            await connection.rollback()
    finally:
        await engine.dispose()


class TestGroupCommit:
    async def test_requests_waiting_together_share_one_transaction(self, env: Env) -> None:
        async with writes_held(env.url, env.backend) as stored:
            first = env.submit(started("c0"))
            await asyncio.sleep(SETTLE_SECONDS)
            others = [env.submit(started(f"c{n}"), answered(f"c{n}")) for n in range(1, 10)]
            await asyncio.sleep(SETTLE_SECONDS)
            # Nothing is answered before it is committed, and nothing is committed yet.
            assert not any(task.done() for task in [first, *others])
            assert await stored() == 0
        assert await first == [Outcome.ACCEPTED]
        for task in others:
            assert await task == [Outcome.ACCEPTED, Outcome.ACCEPTED]
        # The first request alone, then the nine that queued behind it in one transaction.
        assert (env.writer.commits, env.writer.committed_requests) == (2, 10)
        assert await env.count(PbxEvent) == 19
        assert await env.count(CallRow) == 10

    async def test_later_requests_see_earlier_ones_in_the_same_group(self, env: Env) -> None:
        async with writes_held(env.url, env.backend):
            blocker = env.submit(started("other"))
            await asyncio.sleep(SETTLE_SECONDS)
            begin = env.submit(started("c1"))
            answer = env.submit(answered("c1"))
            again = env.submit(started("c1"))
            await asyncio.sleep(SETTLE_SECONDS)
        await blocker
        assert await begin == [Outcome.ACCEPTED]
        assert await answer == [Outcome.ACCEPTED]
        # A repeat in the same group is acknowledged as a duplicate, not applied twice.
        assert await again == [Outcome.DUPLICATE]
        async with env.factory() as session:
            call = (await session.scalars(select(CallRow).where(CallRow.linkedid == "c1"))).one()
            jobs = (await session.scalars(select(Job).where(Job.call_id == call.id))).all()
        assert call.state == "active"
        assert call.answered_by == "101"
        # The answer was applied to the call the first request started (its card is shown).
        kinds = [job.payload["command"]["kind"] for job in sorted(jobs, key=lambda j: j.id)]
        assert kinds == ["register", "show"]

    async def test_a_failing_request_fails_alone(self, env: Env) -> None:
        async with env.factory() as session, session.begin():
            # A stored call the model cannot read: applying an event to it raises.
            session.add(CallRow(enterprise_id=env.enterprise_id, linkedid="bad", model={"v": 9}))
        async with writes_held(env.url, env.backend):
            blocker = env.submit(started("c0"))
            await asyncio.sleep(SETTLE_SECONDS)
            good = [env.submit(started("c1")), env.submit(started("c2"))]
            bad = env.submit(started("c3"), started("bad"))
            more = env.submit(started("c4"))
            await asyncio.sleep(SETTLE_SECONDS)
        await blocker
        for task in [*good, more]:
            assert await task == [Outcome.ACCEPTED]
        with pytest.raises(CallStateError):
            await bad
        # The bad request's good event went with it: a request is accepted whole or not at all.
        async with env.factory() as session:
            ids = set((await session.scalars(select(PbxEvent.event_id))).all())
        assert ids == {"c0:1", "c1:1", "c2:1", "c4:1"}

    async def test_consecutive_groups_share_a_checkout_and_give_it_back(self, env: Env) -> None:
        checkouts = []
        pool = env.factory.kw["bind"].sync_engine.pool
        sqlalchemy.event.listen(pool, "checkout", lambda *_: checkouts.append(1))
        env.writer.max_events = 1
        async with writes_held(env.url, env.backend):
            blocker = env.submit(started("c0"))
            await asyncio.sleep(SETTLE_SECONDS)
            queued = [env.submit(started(f"c{n}")) for n in range(1, 5)]
            await asyncio.sleep(SETTLE_SECONDS)
        for task in [blocker, *queued]:
            assert await task == [Outcome.ACCEPTED]
        assert env.writer.commits == 5
        # One checkout for the blocker, one for the four that followed it at once.
        # One checkout for the routing read (on SQLite it waited for the lock too, so all five
        # were waiting by then), and one for the five transactions that followed each other.
        assert len(checkouts) == 2
        assert env.writer._task is not None
        await env.writer._task
        if env.backend == "sqlite":
            # Back in the pool once no request waits (SQLite's one connection).
            assert pool.checkedout() == 0

    async def test_a_kept_connection_is_given_back_for_a_routing_read(
        self, env: Env, fresh_database_url: str
    ) -> None:
        # SQLite has one connection: a group whose routing is not cached must not wait for
        # the connection the writer itself keeps.
        async with env.factory() as session, session.begin():
            other = await make_tenant(session)
            enterprise = await session.get_one(Enterprise, other.enterprise_id)
            enterprise.webhook_secret_enc = BOX.encrypt("token")
            other_secret = enterprise.webhook_secret_enc
        env.writer.max_events = 1
        async with asyncio.timeout(20):
            async with writes_held(env.url, env.backend):
                blocker = env.submit(started("c0"))
                await asyncio.sleep(SETTLE_SECONDS)
                first = env.submit(started("c1"))
                second = asyncio.create_task(
                    env.writer.submit(other.enterprise_id, other_secret, [started("c2")])
                )
                await asyncio.sleep(SETTLE_SECONDS)
            assert await blocker == [Outcome.ACCEPTED]
            assert await first == [Outcome.ACCEPTED]
            assert await second == [Outcome.ACCEPTED]

    async def test_a_writer_stopped_mid_transaction_accepts_nothing(self, env: Env) -> None:
        async with writes_held(env.url, env.backend):
            first = env.submit(started("c1"))
            await asyncio.sleep(SETTLE_SECONDS)
            queued = env.submit(started("c2"))
            await asyncio.sleep(SETTLE_SECONDS)
            assert env.writer._task is not None
            env.writer._task.cancel()
        for task in (first, queued):
            with pytest.raises(StorageError):
                await task
        assert await env.count(PbxEvent) == 0
        # The next request starts a writer again.
        assert await env.submit(started("c3")) == [Outcome.ACCEPTED]

    async def test_no_connection_stays_checked_out_once_the_requests_stop(self, env: Env) -> None:
        # A writer nobody closes (an app without a lifespan) must not leak its connection.
        assert await env.submit(started("c1")) == [Outcome.ACCEPTED]
        assert env.writer._task is not None
        await env.writer._task
        assert env.factory.kw["bind"].sync_engine.pool.checkedout() == 0

    async def test_a_changed_secret_refuses_the_request_and_stores_nothing(self, env: Env) -> None:
        async with env.factory() as session, session.begin():
            enterprise = await session.get_one(Enterprise, env.enterprise_id)
            enterprise.webhook_secret_enc = BOX.encrypt("rotated")
        with pytest.raises(CredentialsChangedError):
            await env.submit(started("c1"))
        assert await env.count(PbxEvent) == 0

    async def test_a_stale_secret_refuses_only_its_own_request_of_a_group(self, env: Env) -> None:
        stale = BOX.encrypt("rotated")
        async with writes_held(env.url, env.backend):
            blocker = env.submit(started("other"))
            await asyncio.sleep(SETTLE_SECONDS)
            refused = asyncio.create_task(
                env.writer.submit(env.enterprise_id, stale, [started("c1")])
            )
            accepted = env.submit(started("c2"), answered("c2"))
            await asyncio.sleep(SETTLE_SECONDS)
        assert await blocker == [Outcome.ACCEPTED]
        with pytest.raises(CredentialsChangedError):
            await refused
        assert await accepted == [Outcome.ACCEPTED, Outcome.ACCEPTED]
        assert (env.writer.commits, env.writer.committed_requests) == (2, 3)
        async with env.factory() as session:
            linkedids = set((await session.scalars(select(CallRow.linkedid))).all())
        assert linkedids == {"other", "c2"}
        assert await env.count(PbxEvent) == 3

    @pytest.mark.postgres
    async def test_a_connection_lost_before_the_commit_answers_no_202(self, env: Env) -> None:
        if env.backend != "postgres":
            pytest.skip("kills the writer's PostgreSQL backend")
        async with writes_held(env.url, env.backend) as stored:
            tasks = [env.submit(started(f"c{n}")) for n in range(5)]
            await asyncio.sleep(SETTLE_SECONDS)
            assert await stored() == 0
            engine = create_unpooled_engine(env.url)
            try:
                async with engine.connect() as killer:
                    killed = await killer.scalars(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                            "AND query NOT LIKE 'LOCK TABLE%' AND query NOT LIKE 'SELECT count%'"
                        )
                    )
                    # The writer's connection, blocked in its transaction, was among them.
                    assert any(killed.all())
            finally:
                await engine.dispose()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        async with env.factory() as session:
            ids = set((await session.scalars(select(PbxEvent.event_id))).all())
        # Whatever was answered was committed (the writer may retry on a new connection), and
        # whatever failed left nothing behind.
        for n, result in enumerate(results):
            if isinstance(result, BaseException):
                assert f"c{n}:1" not in ids
            else:
                assert result == [Outcome.ACCEPTED]
                assert f"c{n}:1" in ids


class TestRoutingAndCredentials:
    async def test_warm_up_reads_each_webhook_enterprise_before_its_first_request(
        self, env: Env
    ) -> None:
        async with env.factory() as session, session.begin():
            # An enterprise that only listens over AMI has no webhook to warm up for.
            await make_tenant(session)
        credentials = CredentialCache()

        assert await env.writer.warm_up(credentials) == 1

        async with env.factory() as session:
            number = (await session.get_one(Enterprise, env.enterprise_id)).number
        credential = credentials.get(number)
        assert credential is not None
        assert (credential.enterprise_id, credential.secret) == (env.enterprise_id, "token")
        routing = env.writer.routing_cache.get(env.enterprise_id)
        assert routing is not None
        assert routing.integration_id is not None

    async def test_warm_up_leaves_an_enterprise_without_a_portal_to_its_first_request(
        self, env: Env
    ) -> None:
        async with env.factory() as session, session.begin():
            await session.execute(
                sqlalchemy.update(Bitrix24Integration).values(
                    status=IntegrationStatus.UNINSTALLED.value
                )
            )
        assert await env.writer.warm_up(CredentialCache()) == 1
        assert env.writer.routing_cache.get(env.enterprise_id) is None

        # Linked after the start: its first call goes to the portal.
        async with env.factory() as session, session.begin():
            await session.execute(
                sqlalchemy.update(Bitrix24Integration).values(status=IntegrationStatus.ACTIVE.value)
            )
        await env.submit(started("a"))
        assert await env.count(Job) > 0

    async def test_a_routing_due_for_a_read_is_served_and_read_anew_behind(self, env: Env) -> None:
        now = [0.0]
        cache = env.writer.routing_cache
        cache.clock = lambda: now[0]
        await env.submit(started("a"))
        routed = cache.get(env.enterprise_id)
        assert routed is not None
        assert routed.integration_id is not None
        async with env.factory() as session, session.begin():
            await session.execute(
                sqlalchemy.update(Bitrix24Integration).values(
                    status=IntegrationStatus.UNINSTALLED.value
                )
            )

        now[0] = cache.refresh_after_seconds / 2  # fresh: served, not read again
        await env.submit(started("b"))
        assert cache.get(env.enterprise_id) is routed

        now[0] = cache.refresh_after_seconds + 0.1  # due: served, and read anew behind
        jobs = await env.count(Job)
        assert await env.submit(started("c")) == [Outcome.ACCEPTED]
        assert await env.count(Job) > jobs  # routed to the portal: it did not wait for the read
        # Read anew without a live portal: nothing is kept (see RoutingCache.put).
        await until(lambda: cache.get(env.enterprise_id) is None)

        # Read anew: the uninstalled portal gets nothing of the next call.
        jobs = await env.count(Job)
        assert await env.submit(started("d")) == [Outcome.ACCEPTED]
        assert await env.count(Job) == jobs
