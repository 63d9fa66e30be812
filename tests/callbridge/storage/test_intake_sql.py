"""The intake's plain-SQL ports write what the SQLAlchemy ports write (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callbridge.domain.errors import JobNotFoundError
from callbridge.domain.events import (
    Answered,
    CallStarted,
    Direction,
    Disposition,
    Ended,
    Event,
    Ringing,
)
from callbridge.domain.ports import NewJob
from callbridge.services.call_tracking import (
    WEBHOOK_SOURCE,
    EventGroup,
    Outcome,
    track_event_groups,
)
from callbridge.storage.call_tracking import SqlRoutingSource, call_tracking_ports
from callbridge.storage.db import OneHopConnection, create_engine, create_session_factory
from callbridge.storage.intake_sql import IntakeStore, IntakeTransaction, PreloadedRouting
from callbridge.storage.job_queue import JobQueue
from callbridge.storage.models import Bitrix24Integration, Enterprise
from tests.callbridge.services.test_call_tracking import (
    BOX,
    Tenant,
    add_integration,
    make_tenant,
)

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
# SQLAlchemy's storage format for DateTime on SQLite, which the claim queries compare as text.
SQLITE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")


def answered_call(linkedid: str) -> list[Event]:
    common: dict[str, Any] = {"call_id": linkedid, "timestamp": T0}
    return [
        CallStarted(
            **common,
            event_id=f"{linkedid}:1",
            direction=Direction.INBOUND,
            external_number="84951234567",
            line="4951110101",
        ),
        Ringing(**common, event_id=f"{linkedid}:2", extensions=frozenset({"101", "102"})),
        Answered(
            call_id=linkedid,
            event_id=f"{linkedid}:3",
            timestamp=T0 + timedelta(seconds=5),
            extension="102",
        ),
        Ended(
            call_id=linkedid,
            event_id=f"{linkedid}:4",
            timestamp=T0 + timedelta(seconds=47, microseconds=250),
            disposition=Disposition.ANSWERED,
            talk_seconds=42,
        ),
    ]


def missed_call(linkedid: str) -> list[Event]:
    # A missed inbound call also queues a notification that depends on the call's finish.
    started, ringing, _, _ = answered_call(linkedid)
    ended = Ended(
        call_id=linkedid,
        event_id=f"{linkedid}:4",
        timestamp=T0 + timedelta(seconds=20),
        disposition=Disposition.NO_ANSWER,
    )
    return [started, ringing, ended]


@pytest.fixture
async def engine(fresh_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(fresh_database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_session_factory(engine)


async def tenants(factory: async_sessionmaker[AsyncSession], count: int) -> list[Tenant]:
    async with factory() as session, session.begin():
        return [await make_tenant(session) for _ in range(count)]


@asynccontextmanager
async def intake_store(engine: AsyncEngine, **options: Any) -> AsyncIterator[IntakeStore]:
    """An intake store whose connection is given back at the end."""
    store = IntakeStore(engine, **options)
    try:
        yield store
    finally:
        await store.release()


async def through_sqlalchemy(
    factory: async_sessionmaker[AsyncSession], tenant: Tenant, events: Sequence[Event]
) -> list[Outcome]:
    async with factory() as session, session.begin():
        ports = call_tracking_ports(session, BOX)
        (outcomes,) = await track_event_groups(ports, [EventGroup(tenant.enterprise_id, events)])
    return outcomes


async def preloaded(factory: async_sessionmaker[AsyncSession], tenant: Tenant) -> PreloadedRouting:
    """The tenant's routing, read once, as the intake is given it."""
    async with factory() as session:
        routing = await SqlRoutingSource(session, BOX).for_enterprise(tenant.enterprise_id)
    return PreloadedRouting({tenant.enterprise_id: routing})


async def through_intake(
    store: IntakeStore,
    factory: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    events: Sequence[Event],
) -> list[Outcome]:
    routing = await preloaded(factory, tenant)
    async with store.transaction() as transaction:
        ports = transaction.ports(routing)
        (outcomes,) = await track_event_groups(ports, [EventGroup(tenant.enterprise_id, events)])
    return outcomes


async def through_orm_groups(
    factory: async_sessionmaker[AsyncSession], tenant: Tenant, groups: Sequence[Sequence[Event]]
) -> list[list[Outcome]]:
    async with factory() as session, session.begin():
        ports = call_tracking_ports(session, BOX)
        return await track_event_groups(
            ports, [EventGroup(tenant.enterprise_id, events) for events in groups]
        )


async def through_admission(
    store: IntakeStore,
    factory: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    requests: Sequence[tuple[str, Sequence[Event]]],
    before_commit: Callable[[IntakeTransaction], Awaitable[None]] | None = None,
) -> tuple[list[bool], list[list[Outcome]]]:
    """As the webhook intake applies a group: each request admitted (or not) by its secret."""
    routing = await preloaded(factory, tenant)
    async with store.transaction() as transaction:
        admitted = await transaction.admit(
            [(tenant.enterprise_id, secret, events) for secret, events in requests],
            WEBHOOK_SOURCE,
        )
        outcomes = await track_event_groups(
            transaction.ports(routing),
            [
                EventGroup(tenant.enterprise_id, events)
                for (_, events), ok in zip(requests, admitted, strict=True)
                if ok
            ],
        )
        if before_commit is not None:
            await transaction.flush()
            await before_commit(transaction)
    return admitted, outcomes


async def with_secret(factory: async_sessionmaker[AsyncSession], tenant: Tenant) -> str:
    """Give the tenant's enterprise a webhook secret; the secret as stored."""
    async with factory() as session, session.begin():
        enterprise = await session.get_one(Enterprise, tenant.enterprise_id)
        enterprise.webhook_secret_enc = BOX.encrypt("token")
        return enterprise.webhook_secret_enc


async def tenants_without_integration(
    factory: async_sessionmaker[AsyncSession], count: int
) -> list[Tenant]:
    async with factory() as session, session.begin():
        return [await make_tenant(session, integration=False) for _ in range(count)]


async def make_portal(factory: async_sessionmaker[AsyncSession], enterprise_id: int | None) -> int:
    """A new portal, linked to the enterprise (if any); its integration id."""
    async with factory() as session, session.begin():
        return await add_integration(session, enterprise_id)


async def link_portal(
    factory: async_sessionmaker[AsyncSession], integration_id: int, enterprise_id: int
) -> None:
    async with factory() as session, session.begin():
        integration = await session.get_one(Bitrix24Integration, integration_id)
        integration.enterprise_id = enterprise_id


async def call_rows(engine: AsyncEngine, tenant: Tenant) -> list[dict[str, Any]]:
    """The tenant's calls, without their ids and the clock's times."""
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT * FROM calls WHERE enterprise_id = :e ORDER BY linkedid"),
                {"e": tenant.enterprise_id},
            )
        ).mappings()
        return [
            {
                name: _decoded(value) if name in ("model", "ringing") else value
                for name, value in row.items()
                if name not in ("id", "enterprise_id", "created_at", "updated_at")
            }
            for row in rows
        ]


async def apply_then_fail(
    store: IntakeStore,
    factory: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    events: Sequence[Event],
) -> None:
    routing = await preloaded(factory, tenant)
    async with store.transaction() as transaction:
        ports = transaction.ports(routing)
        await track_event_groups(ports, [EventGroup(tenant.enterprise_id, events)])
        raise RuntimeError("after applying")


async def stored(engine: AsyncEngine, tenant: Tenant) -> dict[str, list[dict[str, Any]]]:
    """Every row the tenant's events made, with its own ids and the clock's times masked."""
    async with engine.connect() as connection:
        integrations = await connection.scalars(
            text("SELECT id FROM bitrix24_integrations WHERE enterprise_id = :e ORDER BY id"),
            {"e": tenant.enterprise_id},
        )
        # The enterprise's integrations, in the order they were made.
        integration = {row_id: f"integration-{n}" for n, row_id in enumerate(integrations)}
        calls = (
            await connection.execute(
                text("SELECT * FROM calls WHERE enterprise_id = :e ORDER BY linkedid"),
                {"e": tenant.enterprise_id},
            )
        ).mappings()
        calls_rows = [dict(row) for row in calls]
        ids = {row["id"]: f"call-{index}" for index, row in enumerate(calls_rows)}
        events = (
            await connection.execute(
                text("SELECT * FROM pbx_events WHERE enterprise_id = :e ORDER BY event_id"),
                {"e": tenant.enterprise_id},
            )
        ).mappings()
        jobs = (
            await connection.execute(
                text(
                    "SELECT jobs.* FROM jobs JOIN calls ON calls.id = jobs.call_id "
                    "WHERE calls.enterprise_id = :e ORDER BY jobs.id"
                ),
                {"e": tenant.enterprise_id},
            )
        ).mappings()
        jobs_rows = [dict(row) for row in jobs]
    job_ids = {row["id"]: f"job-{index}" for index, row in enumerate(jobs_rows)}
    enterprise = {tenant.enterprise_id: "enterprise"}
    clock = {"created_at", "updated_at", "received_at", "handled_at", "run_after", "finished_at"}

    def mask(table: str, row: dict[str, Any]) -> dict[str, Any]:
        masked: dict[str, Any] = {}
        for name, value in row.items():
            if name in clock and value is not None:
                if isinstance(value, str):
                    assert SQLITE_TIME.fullmatch(value), (table, name, value)
                value = "<now>"
            elif name == "id":
                value = None
            elif name in ("call_id", "depends_on") and table == "jobs":
                value = (
                    ids.get(value, job_ids.get(value)) if name == "call_id" else job_ids.get(value)
                )
            elif name == "ordering_key" and value is not None:
                value = ids[int(value.removeprefix("call:"))]
            elif name == "enterprise_id":
                value = enterprise.get(value, value)
            elif name == "integration_id":
                value = integration.get(value, value)
            elif name == "payload" and table == "jobs":
                value = _masked_payload(value, ids, enterprise)
            elif name in ("model", "ringing", "payload", "result"):
                # The same document; SQLite keeps the text, which may be spelled differently.
                value = _decoded(value)
            masked[name] = value
        return masked

    return {
        "calls": [mask("calls", row) for row in calls_rows],
        "pbx_events": [mask("pbx_events", dict(row)) for row in events],
        "jobs": [mask("jobs", row) for row in jobs_rows],
    }


async def assert_as_if_by_orm(
    engine: AsyncEngine,
    factory: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    events: Sequence[Event],
) -> None:
    """The tenant's calls and jobs are those the ORM ports make of ``events`` for a new tenant."""
    (other,) = await tenants(factory, 1)
    await through_sqlalchemy(factory, other, events)
    mine, theirs = await stored(engine, tenant), await stored(engine, other)
    assert mine["calls"] == theirs["calls"]
    assert [job["payload"] for job in mine["jobs"]] == [job["payload"] for job in theirs["jobs"]]


def _masked_payload(value: Any, ids: dict[int, str], enterprise: dict[int, str]) -> Any:
    payload = dict(_decoded(value))
    payload["call_id"] = ids.get(payload.get("call_id"), payload.get("call_id"))
    payload["enterprise_id"] = enterprise.get(payload["enterprise_id"], payload["enterprise_id"])
    return payload


def _decoded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


class TestSameRowsAsTheOrmPorts:
    async def test_calls_events_and_jobs_are_written_alike(
        self, engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        orm, plain = await tenants(factory, 2)
        events = [*answered_call("L1"), *missed_call("L2")]
        async with intake_store(engine) as store:
            expected = await through_sqlalchemy(factory, orm, events)
            assert await through_intake(store, factory, plain, events) == expected
            # Repeats are duplicates on both, and change nothing.
            assert (
                await through_intake(store, factory, plain, events[:2]) == [Outcome.DUPLICATE] * 2
            )
        want, got = await stored(engine, orm), await stored(engine, plain)
        assert len(want["calls"]) == 2
        assert len(want["pbx_events"]) == 7
        # The missed call's notification waits for its finish.
        assert any(job["depends_on"] is not None for job in want["jobs"])
        assert got == want

    async def test_a_call_saved_by_one_is_read_by_the_other(
        self, engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        (tenant,) = await tenants(factory, 1)
        first, second, third, fourth = answered_call("L1")
        async with intake_store(engine) as store:
            await through_intake(store, factory, tenant, [first])
            await through_sqlalchemy(factory, tenant, [second])
            await through_intake(store, factory, tenant, [third, fourth])
        await assert_as_if_by_orm(engine, factory, tenant, answered_call("L1"))

    async def test_calls_keep_the_integration_they_started_with_alike(
        self, engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        # L2 starts while the enterprise has no portal, L1 once it is linked to A; then it is
        # linked to B too, which comes first (made earlier, a lower id). L1's later commands
        # still go to A (where it is registered), L2's nowhere (never registered); only L3,
        # which starts after that, goes to B. Calls are read back by each path's lock
        # statement, and on PostgreSQL by the admission's too.
        orm, plain = await tenants_without_integration(factory, 2)
        secret = await with_secret(factory, plain)
        l1, l2, l3 = answered_call("L1"), answered_call("L2"), answered_call("L3")
        async with intake_store(engine) as store:

            async def apply(tenant: Tenant, events: list[Event], *, admit: bool = False) -> None:
                if tenant is orm:
                    await through_sqlalchemy(factory, tenant, events)
                elif admit:
                    admitted, _ = await through_admission(
                        store, factory, tenant, [(secret, events)]
                    )
                    assert admitted == [True]
                else:
                    await through_intake(store, factory, tenant, events)

            for tenant in (orm, plain):
                b = await make_portal(factory, None)
                await apply(tenant, l2[:2])
                await make_portal(factory, tenant.enterprise_id)
                await apply(tenant, l1[:2])
                await link_portal(factory, b, tenant.enterprise_id)
                await apply(tenant, [*l1[2:], *l2[2:], *l3], admit=True)
        want, got = await stored(engine, orm), await stored(engine, plain)
        routes = {(row["linkedid"], row["integration_id"]) for row in got["calls"]}
        b_name, a_name = "integration-0", "integration-1"
        assert routes == {("L1", a_name), ("L2", None), ("L3", b_name)}
        jobs = [
            (job["payload"]["linkedid"], job["payload"]["command"]["kind"], job["integration_id"])
            for job in got["jobs"]
        ]
        assert jobs == [
            ("L1", "register", a_name),
            ("L1", "show", a_name),
            ("L1", "hide", a_name),
            ("L1", "finish", a_name),
            ("L3", "register", b_name),
            ("L3", "show", b_name),
            ("L3", "hide", b_name),
            ("L3", "finish", b_name),
        ]
        assert got == want


class TestAdmission:
    async def test_admitted_requests_write_what_the_orm_ports_write(
        self, engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        orm, plain = await tenants(factory, 2)
        secret = await with_secret(factory, plain)
        first, second = answered_call("L1"), missed_call("L2")
        # The second request repeats an event of the first (a duplicate) and goes on with both
        # calls: later requests see what earlier ones did, in one transaction.
        groups = [[*first[:2], *second[:1]], [first[0], *first[2:], *second[1:]]]
        async with intake_store(engine) as store:
            expected = await through_orm_groups(factory, orm, groups)
            admitted, outcomes = await through_admission(
                store, factory, plain, [(secret, events) for events in groups]
            )
            assert admitted == [True, True]
            assert outcomes == expected
            assert Outcome.DUPLICATE in outcomes[1]
            # Repeated in a later transaction: duplicates, nothing changes.
            admitted, outcomes = await through_admission(store, factory, plain, [(secret, first)])
            assert outcomes == [[Outcome.DUPLICATE] * 4]
        want, got = await stored(engine, orm), await stored(engine, plain)
        assert len(want["pbx_events"]) == 7
        assert any(job["depends_on"] is not None for job in want["jobs"])
        assert got == want

    async def test_a_refused_request_stores_nothing_and_the_others_are_applied(
        self, engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        orm, plain = await tenants(factory, 2)
        secret = await with_secret(factory, plain)
        async with intake_store(engine) as store:
            admitted, outcomes = await through_admission(
                store,
                factory,
                plain,
                [(BOX.encrypt("rotated"), answered_call("L9")), (secret, answered_call("L1"))],
            )
        assert admitted == [False, True]
        assert outcomes == [[Outcome.ACCEPTED] * 4]
        await through_sqlalchemy(factory, orm, answered_call("L1"))
        want, got = await stored(engine, orm), await stored(engine, plain)
        # Not even the refused request's call row was created.
        assert [row["linkedid"] for row in got["calls"]] == ["L1"]
        assert got == want

    async def test_calls_without_jobs_are_written_before_the_commit(
        self, engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        orm, plain = await tenants_without_integration(factory, 2)
        events = answered_call("L1")
        async with intake_store(engine) as store:
            await through_sqlalchemy(factory, orm, events)
            assert await through_intake(store, factory, plain, events) == [Outcome.ACCEPTED] * 4
        mine = await call_rows(engine, plain)
        assert mine[0]["state"] == "ended"
        assert mine == await call_rows(engine, orm)

    async def test_a_call_saved_then_read_again_in_one_transaction_is_read_as_saved(
        self, engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        # No integration, so no jobs: nothing else writes the saved call before it is read.
        orm, plain = await tenants_without_integration(factory, 2)
        events = answered_call("L1")
        await through_sqlalchemy(factory, orm, events)
        routing = await preloaded(factory, plain)
        async with intake_store(engine) as store, store.transaction() as transaction:
            ports = transaction.ports(routing)
            for event in events:
                await track_event_groups(ports, [EventGroup(plain.enterprise_id, [event])])
        mine = await call_rows(engine, plain)
        assert mine[0]["state"] == "ended"
        assert mine == await call_rows(engine, orm)


class TestJobs:
    async def test_ids_ascend_in_the_order_given_and_dependencies_are_checked(
        self, engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        async with factory() as session, session.begin():
            cancelled = await JobQueue().enqueue(session, "k", {})
            await JobQueue().cancel_job(session, cancelled.id)
        async with intake_store(engine) as store:
            async with store.transaction() as transaction:
                ids = await transaction.enqueue_many(
                    [NewJob("k", {"n": n}, ordering_key="key") for n in range(600)]
                )
                later = await transaction.enqueue_many(
                    [NewJob("after", depends_on=ids[0]), NewJob("dead", depends_on=cancelled.id)]
                )
            with pytest.raises(JobNotFoundError):
                async with store.transaction() as transaction:
                    await transaction.enqueue_many([NewJob("k", depends_on=10**9)])
        assert ids == sorted(ids)
        assert len(set(ids)) == 600
        async with engine.connect() as connection:
            rows = (
                await connection.execute(text("SELECT id, kind, payload, status FROM jobs"))
            ).all()
        by_id = {row.id: row for row in rows}
        assert [_decoded(by_id[job_id].payload)["n"] for job_id in ids] == list(range(600))
        assert [by_id[job_id].status for job_id in later] == ["queued", "cancelled"]
        # The failed transaction left nothing.
        assert len(rows) == 1 + 600 + 2


class TestCallCache:
    async def test_a_committed_call_is_not_decoded_again(
        self, engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        (tenant,) = await tenants(factory, 1)
        first, second, _, _ = answered_call("L1")
        key = (tenant.enterprise_id, "L1")
        async with intake_store(engine) as store:
            await through_intake(store, factory, tenant, [first])
            async with store.transaction() as transaction:
                kept = (await transaction.get_many([key]))[key].call
            async with store.transaction() as transaction:
                again = (await transaction.get_many([key]))[key].call
            assert kept is not None
            assert again is kept
            # Written by another path meanwhile: decoded from what is stored.
            await through_sqlalchemy(factory, tenant, [second])
            async with store.transaction() as transaction:
                fresh = (await transaction.get_many([key]))[key].call
            assert fresh is not kept
            assert fresh is not None
            assert fresh.to_dict() != kept.to_dict()

    async def test_a_failed_transaction_leaves_no_trace(
        self, engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        (tenant,) = await tenants(factory, 1)
        started, ringing, answered, ended = answered_call("L1")
        async with intake_store(engine) as store:
            await through_intake(store, factory, tenant, [started, ringing])
            # The end is applied to the call (it is over, in memory), then the transaction fails.
            with pytest.raises(RuntimeError, match="after applying"):
                await apply_then_fail(store, factory, tenant, [ended])
            outcomes = await through_intake(store, factory, tenant, [answered, ended])
            assert outcomes == [Outcome.ACCEPTED] * 2
        await assert_as_if_by_orm(engine, factory, tenant, answered_call("L1"))


class TestConnection:
    async def test_postgres_keeps_its_connection_between_close_transactions(
        self, engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        (tenant,) = await tenants(factory, 1)
        now = [100.0]
        postgres = engine.dialect.name == "postgresql"
        async with intake_store(engine, keep_seconds=1.0, clock=lambda: now[0]) as store:
            await through_intake(store, factory, tenant, answered_call("L1")[:1])
            # SQLite's one connection goes back at once: other sessions wait for it.
            assert engine.sync_engine.pool.checkedout() == (1 if postgres else 0)
            now[0] += 0.5
            await store.release_if_idle()
            await through_intake(store, factory, tenant, answered_call("L2")[:1])
            assert engine.sync_engine.pool.checkedout() == (1 if postgres else 0)
            now[0] += 1.0
            await store.release_if_idle()
            assert store.idle_seconds() is None
            assert engine.sync_engine.pool.checkedout() == 0

    async def test_postgres_begins_the_next_transaction_with_the_commit_when_one_follows(
        self, engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        if engine.dialect.name != "postgresql":
            pytest.skip("only PostgreSQL connections are kept")
        (tenant,) = await tenants(factory, 1)
        routing = await preloaded(factory, tenant)
        first, second, *_ = answered_call("L1")

        async def apply(store: IntakeStore, event: Event, *, more: bool) -> None:
            async with store.transaction(more=lambda: more) as transaction:
                ports = transaction.ports(routing)
                await track_event_groups(ports, [EventGroup(tenant.enterprise_id, [event])])

        async with intake_store(engine) as store:
            await apply(store, first, more=True)
            assert store._held_driver is not None
            driver = store._held_driver[1]
            # Committed, and the next transaction already begun on the kept connection.
            assert driver.is_in_transaction()
            await apply(store, second, more=False)
            assert store._held_driver[1] is driver
            assert not driver.is_in_transaction()
            # A begun transaction that nobody uses is rolled back before the pool gets it.
            await apply(store, answered_call("L2")[0], more=True)
            assert driver.is_in_transaction()
        assert not driver.is_in_transaction()
        async with engine.connect() as connection:
            count = await connection.scalar(
                text("SELECT count(*) FROM pbx_events WHERE enterprise_id = :e"),
                {"e": tenant.enterprise_id},
            )
        assert count == 3

    async def test_sqlite_commits_on_the_loop_s_thread_and_checkpoints_on_the_driver_s(
        self,
        engine: AsyncEngine,
        factory: async_sessionmaker[AsyncSession],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        if engine.dialect.name != "sqlite":
            pytest.skip("SQLite's commit")
        (tenant,) = await tenants(factory, 1)
        on_the_driver_s_thread: list[int] = []
        commit = OneHopConnection.commit

        async def counted(self: OneHopConnection) -> None:
            on_the_driver_s_thread.append(
                self.sqlite.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            )
            await commit(self)

        monkeypatch.setattr(OneHopConnection, "commit", counted)
        async with intake_store(engine) as store:
            store.commits_between_checkpoints = 2
            for n in range(6):
                await through_intake(store, factory, tenant, answered_call(f"L{n}")[:1])
        # Two of every three on the event loop's thread; the third on the driver's, with the
        # WAL's automatic checkpoint on (SQLite's default: 1000 pages).
        assert on_the_driver_s_thread == [1000, 1000]
        async with engine.connect() as connection:
            count = await connection.scalar(
                text("SELECT count(*) FROM pbx_events WHERE enterprise_id = :e"),
                {"e": tenant.enterprise_id},
            )
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver.sqlite.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        assert count == 6

    @pytest.mark.parametrize("loss", ["begin_fails_oddly", "backend_ended"])
    async def test_a_kept_connection_lost_meanwhile_is_replaced(
        self,
        engine: AsyncEngine,
        factory: async_sessionmaker[AsyncSession],
        monkeypatch: pytest.MonkeyPatch,
        loss: str,
    ) -> None:
        if engine.dialect.name != "postgresql":
            pytest.skip("only PostgreSQL connections are kept")
        from asyncpg.exceptions import InternalClientError

        (tenant,) = await tenants(factory, 1)
        async with intake_store(engine) as store:
            await through_intake(store, factory, tenant, answered_call("L1")[:1])
            kept = store._held
            assert kept is not None
            assert store.idle_seconds() is not None
            if loss == "backend_ended":
                async with engine.connect() as killer:
                    killed = await killer.scalars(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    )
                    assert any(killed.all())
            else:
                # asyncpg may report a backend ended while the connection was kept not as a
                # lost connection but as "another operation is in progress": still only
                # BEGIN was sent.
                begin_on = store._begin_on

                async def odd_on_the_kept(connection: Any) -> Any:
                    if connection is kept:
                        await connection.invalidate()
                        raise InternalClientError("cannot switch to state 15")
                    return await begin_on(connection)

                monkeypatch.setattr(store, "_begin_on", odd_on_the_kept)
            outcomes = await through_intake(store, factory, tenant, answered_call("L2")[:1])
            assert outcomes == [Outcome.ACCEPTED]
            assert store._held is not kept


class TestPlans:
    async def test_postgres_finds_rows_by_key_even_when_the_tables_look_small(
        self, engine: AsyncEngine, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        # A plan made while a table was small scanned all of it for every group later on,
        # dead row versions included, until autovacuum's next ANALYZE.
        if engine.dialect.name != "postgresql":
            pytest.skip("SQLite's statements name their rows by key")
        (tenant,) = await tenants(factory, 1)
        secret = await with_secret(factory, tenant)

        async def no_table_scanned(transaction: IntakeTransaction) -> None:
            scans = await transaction.driver.fetch(
                "SELECT relname, seq_scan FROM pg_stat_xact_user_tables WHERE seq_scan > 0"
            )
            assert {row[0]: row[1] for row in scans} == {}

        async with intake_store(engine) as store:
            # asyncpg prepares each statement once: PostgreSQL plans its first five runs for
            # their parameters, then settles on a generic plan.
            for number in range(12):
                requests = [(secret, answered_call(f"L{number}"))]
                await through_admission(store, factory, tenant, requests, no_table_scanned)
