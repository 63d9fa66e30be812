"""The call-tracking use case on a real database: inbox, call row, jobs, in one transaction."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge.domain.call import Call, CallPolicy, Command
from callbridge.domain.commands import command_from_dict
from callbridge.domain.events import Direction, Disposition, Event, event_from_dict
from callbridge.domain.ports import CallRouting
from callbridge.services.call_tracking import (
    BITRIX24_COMMAND_JOB,
    Outcome,
    track_events,
)
from callbridge.storage.call_tracking import (
    RoutingCache,
    call_tracking_ports,
    policy_from_settings,
)
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import (
    Bitrix24Integration,
    Bitrix24User,
    Enterprise,
    IntegrationStatus,
    Job,
    PbxEvent,
)
from callbridge.storage.models import Call as CallRow
from tests.callbridge.domain.factories import DEFAULT, IVAN, MARIA, OLEG, Pbx

BOX = SecretBox([Fernet.generate_key()])
SETTINGS: dict[str, Any] = {"default_user_id": DEFAULT, "crm_sources": {"4951110101": "CALL"}}


@dataclass
class Tenant:
    enterprise_id: int
    integration_id: int | None


async def make_tenant(
    session: AsyncSession,
    *,
    integration: bool = True,
    status: IntegrationStatus = IntegrationStatus.ACTIVE,
    settings: dict[str, Any] | None = None,
) -> Tenant:
    """An enterprise, optionally linked to a portal with users 101 Ivan, 102 Maria, 103 Oleg."""
    enterprise = Enterprise(number=f"e-{uuid.uuid4().hex[:8]}")
    session.add(enterprise)
    await session.flush()
    if not integration:
        return Tenant(enterprise.id, None)
    row_id = await add_integration(session, enterprise.id, status=status, settings=settings)
    return Tenant(enterprise.id, row_id)


async def add_integration(
    session: AsyncSession,
    enterprise_id: int | None,
    *,
    status: IntegrationStatus = IntegrationStatus.ACTIVE,
    settings: dict[str, Any] | None = None,
    users: dict[str, int] | None = None,
) -> int:
    """A portal linked to the enterprise (if any); its users by extension (101 Ivan, …)."""
    row = Bitrix24Integration(
        enterprise_id=enterprise_id,
        member_id=uuid.uuid4().hex,
        domain="portal.test",
        client_endpoint="http://portal.test/rest/",
        status=status.value,
        settings=SETTINGS if settings is None else settings,
    )
    session.add(row)
    await session.flush()
    if users is None:
        users = {"101": IVAN, "102": MARIA, "103": OLEG}
    for extension, user in users.items():
        session.add(Bitrix24User(integration_id=row.id, user_id=user, extension=extension))
    await session.flush()
    return row.id


async def track(session: AsyncSession, tenant: Tenant, *events: Event) -> list[Outcome]:
    return await track_events(call_tracking_ports(session, BOX), tenant.enterprise_id, events)


async def jobs_of(session: AsyncSession, tenant: Tenant) -> list[Job]:
    statement = (
        select(Job)
        .join(CallRow, CallRow.id == Job.call_id)
        .where(CallRow.enterprise_id == tenant.enterprise_id, Job.kind == BITRIX24_COMMAND_JOB)
        .order_by(Job.id)
    )
    return list((await session.scalars(statement)).all())


def commands(jobs: Sequence[Job]) -> list[Command]:
    return [command_from_dict(job.payload["command"]) for job in jobs]


def kinds(jobs: Sequence[Job]) -> list[str]:
    return [job.payload["command"]["kind"] for job in jobs]


class TestInboundCall:
    async def test_answered_call_yields_register_show_finish_in_order(
        self, session: AsyncSession
    ) -> None:
        tenant = await make_tenant(session)
        pbx = Pbx()
        outcomes = await track(
            session,
            tenant,
            pbx.started(0),
            pbx.ringing(1, "101"),
            pbx.answered(5, "101"),
            pbx.ended(65),
        )
        assert outcomes == [Outcome.ACCEPTED] * 4
        jobs = await jobs_of(session, tenant)
        assert kinds(jobs) == ["register", "show", "finish"]
        call_row = await session.scalar(select(CallRow).where(CallRow.linkedid == pbx.call_id))
        assert call_row is not None
        for job in jobs:
            assert job.kind == BITRIX24_COMMAND_JOB
            assert job.ordering_key == f"call:{call_row.id}"
            assert job.integration_id == tenant.integration_id
            assert job.call_id == call_row.id
            assert job.payload["call_id"] == call_row.id
            assert job.payload["linkedid"] == pbx.call_id
            assert job.payload["enterprise_id"] == tenant.enterprise_id
            assert job.payload["leg"] == 0
            assert job.payload["external_call_id"] == f"{pbx.call_id}-0"
            assert job.payload["version"] == 1
        finish = commands(jobs)[-1]
        assert finish.user_id == IVAN  # type: ignore[union-attr]
        assert finish.duration == 60  # type: ignore[union-attr]
        assert finish.status_code == "200"  # type: ignore[union-attr]

    async def test_events_in_separate_transactions_give_the_same_jobs(
        self, session: AsyncSession
    ) -> None:
        tenant = await make_tenant(session)
        pbx = Pbx()
        for event in (pbx.started(0), pbx.ringing(1, "101"), pbx.answered(5, "101")):
            await track(session, tenant, event)
        await track(session, tenant, pbx.ended(65))
        assert kinds(await jobs_of(session, tenant)) == ["register", "show", "finish"]

    async def test_ring_group_shows_all_then_hides_the_others(self, session: AsyncSession) -> None:
        tenant = await make_tenant(session)
        pbx = Pbx()
        await track(
            session,
            tenant,
            pbx.started(0),
            pbx.ringing(1, "101", "102", "103"),
            pbx.answered(4, "102"),
            pbx.leg_ended(4, "101", Disposition.CANCELLED),
            pbx.leg_ended(4, "103", Disposition.CANCELLED),
            pbx.ended(30),
        )
        jobs = await jobs_of(session, tenant)
        assert kinds(jobs) == ["register", "show", "hide", "finish"]
        register, show, hide, finish = commands(jobs)
        assert show.user_ids == (IVAN, MARIA, OLEG)  # type: ignore[union-attr]
        assert hide.user_ids == (IVAN, OLEG)  # type: ignore[union-attr]
        assert finish.user_id == MARIA  # type: ignore[union-attr]
        assert register.crm_source == "CALL"  # type: ignore[union-attr]

    async def test_summary_columns_follow_the_model(self, session: AsyncSession) -> None:
        tenant = await make_tenant(session)
        pbx = Pbx()
        await track(session, tenant, pbx.started(0), pbx.ringing(1, "101", "102"))
        row = await session.scalar(select(CallRow).where(CallRow.linkedid == pbx.call_id))
        assert row is not None
        assert (row.state, row.direction, row.external_number) == (
            "active",
            "inbound",
            "+74951234567",
        )
        assert row.ringing == {"101": IVAN, "102": MARIA}
        await track(session, tenant, pbx.answered(3, "102"), pbx.ended(13))
        await session.refresh(row)
        assert (row.state, row.answered_by, row.status_code, row.talk_seconds) == (
            "ended",
            "102",
            "200",
            10,
        )
        assert row.ringing == {}
        assert Call.from_dict(row.model).answered


class TestDuplicates:
    async def test_a_repeat_is_acknowledged_and_changes_nothing(
        self, session: AsyncSession
    ) -> None:
        tenant = await make_tenant(session)
        pbx = Pbx()
        started = pbx.started(0)
        assert await track(session, tenant, started) == [Outcome.ACCEPTED]
        assert await track(session, tenant, started, started) == [Outcome.DUPLICATE] * 2
        assert kinds(await jobs_of(session, tenant)) == ["register"]
        stored = await session.scalars(
            select(PbxEvent).where(PbxEvent.enterprise_id == tenant.enterprise_id)
        )
        rows = list(stored.all())
        assert len(rows) == 1
        assert rows[0].handled_at is not None
        assert event_from_dict(rows[0].payload) == started

    async def test_a_repeat_inside_one_batch(self, session: AsyncSession) -> None:
        tenant = await make_tenant(session)
        started = Pbx().started(0)
        outcomes = await track(session, tenant, started, started)
        assert outcomes == [Outcome.ACCEPTED, Outcome.DUPLICATE]


class TestBatches:
    async def test_events_of_two_calls_apply_per_call_in_order(self, session: AsyncSession) -> None:
        tenant = await make_tenant(session)
        # Named so that the second call sorts first: locks go by linkedid, order by the batch.
        a, b = Pbx("1700000002.1"), Pbx("1700000001.1")
        await track(
            session,
            tenant,
            a.started(0),
            b.started(0),
            a.ringing(1, "101"),
            b.ringing(1, "102"),
            b.answered(2, "102"),
            a.ended(9, Disposition.NO_ANSWER),
        )
        jobs = await jobs_of(session, tenant)
        by_call: dict[str, list[str]] = {}
        for job in jobs:
            by_call.setdefault(job.payload["linkedid"], []).append(job.payload["command"]["kind"])
        assert by_call == {
            a.call_id: ["register", "show", "hide", "finish"],
            b.call_id: ["register", "show"],
        }
        assert len({job.ordering_key for job in jobs}) == 2

    async def test_events_before_the_start_are_held(self, session: AsyncSession) -> None:
        tenant = await make_tenant(session)
        pbx = Pbx()
        ringing, started = pbx.ringing(1, "101"), pbx.started(0)
        await track(session, tenant, ringing)
        assert await jobs_of(session, tenant) == []
        await track(session, tenant, started)
        assert kinds(await jobs_of(session, tenant)) == ["register", "show"]


class TestRouting:
    async def test_without_integration_events_are_stored_and_calls_tracked(
        self, session: AsyncSession, caplog: pytest.LogCaptureFixture
    ) -> None:
        tenant = await make_tenant(session, integration=False)
        pbx = Pbx()
        with caplog.at_level("INFO", logger="callbridge.services.call_tracking"):
            outcomes = await track(
                session, tenant, pbx.started(0), pbx.answered(2, "101"), pbx.ended(7)
            )
        assert outcomes == [Outcome.ACCEPTED] * 3
        assert await jobs_of(session, tenant) == []
        row = await session.scalar(
            select(CallRow).where(CallRow.enterprise_id == tenant.enterprise_id)
        )
        assert row is not None
        assert (row.state, row.status_code, row.talk_seconds) == ("ended", "200", 5)
        count = await session.scalar(
            select(PbxEvent.id).where(PbxEvent.enterprise_id == tenant.enterprise_id).limit(1)
        )
        assert count is not None
        assert "no live Bitrix24 integration" in caplog.text

    async def test_uninstalled_integration_gets_no_jobs(self, session: AsyncSession) -> None:
        tenant = await make_tenant(session, status=IntegrationStatus.UNINSTALLED)
        await track(session, tenant, Pbx().started(0))
        assert await jobs_of(session, tenant) == []

    async def test_paused_integration_keeps_its_jobs(self, session: AsyncSession) -> None:
        tenant = await make_tenant(session, status=IntegrationStatus.NEEDS_REAUTH)
        await track(session, tenant, Pbx().started(0))
        assert kinds(await jobs_of(session, tenant)) == ["register"]

    async def test_outbound_uses_the_callers_user(self, session: AsyncSession) -> None:
        tenant = await make_tenant(session)
        pbx = Pbx()
        await track(
            session,
            tenant,
            pbx.started(0, direction=Direction.OUTBOUND, extension="103", number="84951234567"),
        )
        (register,) = commands(await jobs_of(session, tenant))
        assert register.user_id == OLEG  # type: ignore[union-attr]
        assert register.phone_number == "+74951234567"  # type: ignore[union-attr]

    async def test_unknown_extension_falls_back_to_the_default_user(
        self, session: AsyncSession
    ) -> None:
        tenant = await make_tenant(session, settings={"default_user_id": 7})
        pbx = Pbx()
        await track(session, tenant, pbx.started(0), pbx.ringing(1, "999"))
        register, show = commands(await jobs_of(session, tenant))
        assert register.user_id == 7  # type: ignore[union-attr]
        assert show.user_ids == (7,)  # type: ignore[union-attr]


async def set_integration(session: AsyncSession, integration_id: int | None, **values: Any) -> None:
    row = await session.get_one(Bitrix24Integration, integration_id)
    for name, value in values.items():
        setattr(row, name, value)
    await session.flush()


async def call_row(session: AsyncSession, tenant: Tenant, linkedid: str) -> CallRow:
    row = await session.scalar(
        select(CallRow)
        .where(CallRow.enterprise_id == tenant.enterprise_id, CallRow.linkedid == linkedid)
        .execution_options(populate_existing=True)
    )
    assert row is not None
    return row


class TestACallKeepsItsIntegration:
    """A call's commands go where its first went (or nowhere), whatever the enterprise's link."""

    async def test_a_call_started_unlinked_gets_no_jobs_once_the_enterprise_is_linked(
        self, session: AsyncSession, caplog: pytest.LogCaptureFixture
    ) -> None:
        tenant = await make_tenant(session, integration=False)
        pbx, later = Pbx(), Pbx("later")
        await track(session, tenant, pbx.started(0), pbx.ringing(1, "101"))
        assert (await call_row(session, tenant, pbx.call_id)).integration_id is None
        integration_id = await add_integration(session, tenant.enterprise_id)
        with caplog.at_level("INFO", logger="callbridge.services.call_tracking"):
            outcomes = await track(
                session, tenant, pbx.answered(5, "101"), pbx.ended(65), pbx.recording(66)
            )
        assert outcomes == [Outcome.ACCEPTED] * 3
        # Its register was never sent: show, finish and attach would name no Bitrix24 call.
        assert await jobs_of(session, tenant) == []
        assert "calls tracked, 4 Bitrix24 commands not queued" in caplog.text
        row = await call_row(session, tenant, pbx.call_id)
        assert (row.state, row.integration_id) == ("ended", None)
        # A call that starts now is the new portal's.
        await track(session, tenant, later.started(70))
        jobs = await jobs_of(session, tenant)
        assert kinds(jobs) == ["register"]
        assert jobs[0].integration_id == integration_id

    async def test_a_call_held_before_its_start_goes_where_the_enterprise_is_when_it_starts(
        self, session: AsyncSession
    ) -> None:
        tenant = await make_tenant(session, integration=False)
        pbx = Pbx()
        await track(session, tenant, pbx.ringing(1, "101"))  # delivered before the start
        integration_id = await add_integration(session, tenant.enterprise_id)
        await track(session, tenant, pbx.started(0))
        jobs = await jobs_of(session, tenant)
        assert kinds(jobs) == ["register", "show"]
        assert {job.integration_id for job in jobs} == {integration_id}
        assert (await call_row(session, tenant, pbx.call_id)).integration_id == integration_id

    async def test_a_call_stays_on_its_portal_when_the_enterprise_moves_to_another(
        self, session: AsyncSession
    ) -> None:
        enterprise = Enterprise(number=f"e-{uuid.uuid4().hex[:8]}")
        session.add(enterprise)
        await session.flush()
        # B exists first (a lower id) but is linked later: it then comes first.
        b = await add_integration(session, None, settings={"default_user_id": 7}, users={"101": 71})
        a = await add_integration(session, enterprise.id)
        tenant = Tenant(enterprise.id, a)
        pbx, later = Pbx(), Pbx("later")
        await track(session, tenant, pbx.started(0), pbx.ringing(1, "101"))
        await set_integration(session, b, enterprise_id=enterprise.id)
        await track(session, tenant, pbx.answered(5, "101"), pbx.ended(65), later.started(70))
        jobs = await jobs_of(session, tenant)
        by_call = {
            linkedid: [
                (job.payload["command"]["kind"], job.integration_id)
                for job in jobs
                if job.payload["linkedid"] == linkedid
            ]
            for linkedid in (pbx.call_id, later.call_id)
        }
        assert by_call == {
            pbx.call_id: [("register", a), ("show", a), ("finish", a)],
            later.call_id: [("register", b)],
        }
        # With its own portal's users: Ivan is user 11 on A (71 on B).
        finish = commands(jobs)[2]
        assert finish.user_id == IVAN  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        "retire",
        [{"status": IntegrationStatus.UNINSTALLED.value}, {"enterprise_id": None}],
        ids=["uninstalled", "unlinked"],
    )
    async def test_a_call_whose_portal_is_gone_is_never_sent_to_the_new_one(
        self, session: AsyncSession, retire: dict[str, Any]
    ) -> None:
        tenant = await make_tenant(session)
        pbx = Pbx()
        await track(session, tenant, pbx.started(0), pbx.ringing(1, "101"))
        await set_integration(session, tenant.integration_id, **retire)
        b = await add_integration(session, tenant.enterprise_id)
        await track(session, tenant, pbx.answered(5, "101"), pbx.ended(65))
        jobs = await jobs_of(session, tenant)
        assert [
            (kind, job.integration_id) for kind, job in zip(kinds(jobs), jobs, strict=True)
        ] == [
            ("register", tenant.integration_id),
            ("show", tenant.integration_id),
        ]
        assert b not in {job.integration_id for job in jobs}

    async def test_a_call_whose_portal_went_away_is_not_sent_to_it_when_it_is_back(
        self, session: AsyncSession
    ) -> None:
        # Its finish was dropped meanwhile: a recording attached after it would name a call
        # Bitrix24 never saw end.
        tenant = await make_tenant(session)
        pbx = Pbx()
        await track(session, tenant, pbx.started(0), pbx.answered(5))
        before = kinds(await jobs_of(session, tenant))
        uninstalled = IntegrationStatus.UNINSTALLED.value
        await set_integration(session, tenant.integration_id, status=uninstalled)
        await track(session, tenant, pbx.ended(65))
        assert (await call_row(session, tenant, pbx.call_id)).integration_id is None
        active = IntegrationStatus.ACTIVE.value
        await set_integration(session, tenant.integration_id, status=active)
        await track(session, tenant, pbx.recording(70, url="https://pbx.test/rec.wav"))
        assert kinds(await jobs_of(session, tenant)) == before

    async def test_a_click_to_call_keeps_the_portal_it_started_on(
        self, session: AsyncSession
    ) -> None:
        # Registered by Bitrix24 (the click): its start queues nothing, yet the call is A's.
        tenant = await make_tenant(session)
        pbx = Pbx()
        started = pbx.started(
            0, direction=Direction.OUTBOUND, extension="101", bitrix24_call_id="externalCall.1"
        )
        await track(session, tenant, started)
        assert await jobs_of(session, tenant) == []
        assert (
            await call_row(session, tenant, pbx.call_id)
        ).integration_id == tenant.integration_id
        await set_integration(
            session, tenant.integration_id, status=IntegrationStatus.UNINSTALLED.value
        )
        await add_integration(session, tenant.enterprise_id)
        await track(session, tenant, pbx.answered(5), pbx.ended(65))
        assert await jobs_of(session, tenant) == []

    async def test_a_click_to_call_is_finished_on_its_portal(self, session: AsyncSession) -> None:
        tenant = await make_tenant(session)
        pbx = Pbx()
        started = pbx.started(
            0, direction=Direction.OUTBOUND, extension="101", bitrix24_call_id="externalCall.1"
        )
        await track(session, tenant, started)
        await track(session, tenant, pbx.answered(5), pbx.ended(65))
        jobs = await jobs_of(session, tenant)
        assert [
            (kind, job.integration_id) for kind, job in zip(kinds(jobs), jobs, strict=True)
        ] == [("finish", tenant.integration_id)]


class TestPolicyFromSettings:
    def test_defaults(self) -> None:
        policy = policy_from_settings({}, [])
        assert policy.default_user_id == 1
        assert (policy.show_card, policy.add_to_chat, policy.ignore_internal) == (True,) * 3

    def test_settings_and_users(self) -> None:
        users = [
            Bitrix24User(user_id=5, extension="101", mobile="8 (916) 123-45-67"),
            Bitrix24User(user_id=6, extension="102", mobile=None),
        ]
        policy = policy_from_settings(
            {
                "default_user_id": "3",
                "responsible_user_id": 4,
                "lead_creation": "ALL",
                "extension_users": {"102": 9, "200": "10"},
                "lines": [{"number": "74950001122", "pbx_line": "trunk-1", "crm_source": "ADS"}],
                "line_numbers": {"4951110101": "74951110101"},
                "show_card": "0",
            },
            users,
        )
        assert policy.default_user_id == 3
        assert policy.responsible_user_id == 4
        assert policy.lead_creation.value == "all"
        assert policy.users_by_extension == {"101": 5, "102": 9, "200": 10}
        assert policy.user_for_number("+79161234567") == 5
        assert policy.line_number("trunk-1") == "74950001122"
        assert policy.line_number("4951110101") == "74951110101"
        assert policy.crm_source("trunk-1") == "ADS"
        assert policy.show_card is False

    def test_bad_values_fall_back(self, caplog: pytest.LogCaptureFixture) -> None:
        policy = policy_from_settings(
            {"default_user_id": "x", "lead_creation": "sometimes", "show_card": "maybe"}, []
        )
        assert policy.default_user_id == 1
        assert policy.lead_creation.value == "inbound"
        assert policy.show_card is True
        assert "lead_creation" in caplog.text


@pytest.mark.postgres
class TestConcurrency:
    async def test_concurrent_events_of_one_call_apply_in_order_without_lost_updates(
        self, fresh_database_url: str
    ) -> None:
        if not fresh_database_url.startswith("postgresql"):
            pytest.skip("SQLite serialises writers; the row lock matters on PostgreSQL")
        engine = create_engine(fresh_database_url, pool_size=20)
        factory: async_sessionmaker[AsyncSession] = create_session_factory(engine)
        try:
            async with factory() as session, session.begin():
                tenant = await make_tenant(session)
            pbx = Pbx()
            async with factory() as session, session.begin():
                await track(session, tenant, pbx.started(0))
            # Each event rings a different set: every one of them changes the cards.
            events = [
                pbx.ringing(1 + i, *({"101", "102", "103"} - {("101", "102", "103")[i % 3]}))
                for i in range(30)
            ]

            async def deliver(event: Event) -> None:
                async with factory() as session, session.begin():
                    await track(session, tenant, event)

            await asyncio.gather(*(deliver(event) for event in events))

            async with factory() as session:
                row = await session.scalar(select(CallRow).where(CallRow.linkedid == pbx.call_id))
                assert row is not None
                stored = Call.from_dict(row.model)
                jobs = await jobs_of(session, tenant)
                inbox = (
                    await session.scalars(
                        select(PbxEvent)
                        .where(PbxEvent.linkedid == pbx.call_id)
                        .order_by(PbxEvent.id)
                    )
                ).all()
            # No lost update: every event is in the stored call.
            assert {event.event_id for event in events} <= stored.seen
            # In order: replaying the inbox in commit order gives exactly the queued commands.
            replay = Call.new(pbx.call_id)
            policy = policy_from_settings(SETTINGS, _users())
            expected: list[Command] = []
            for entry in inbox:
                expected.extend(replay.apply(event_from_dict(entry.payload), policy))
            assert commands(jobs) == expected
            assert replay.to_dict() == stored.to_dict()
        finally:
            await engine.dispose()


def _users() -> list[Bitrix24User]:
    return [
        Bitrix24User(user_id=user, extension=ext)
        for ext, user in (("101", IVAN), ("102", MARIA), ("103", OLEG))
    ]


class TestRoutingCache:
    def test_a_routing_is_due_for_a_read_before_it_expires(self) -> None:
        now = [0.0]
        cache = RoutingCache(ttl_seconds=10, refresh_after_seconds=5, clock=lambda: now[0])
        routing = CallRouting(integration_id=1, policy=CallPolicy(default_user_id=1))
        assert not cache.due(1)  # nothing cached: nothing to read behind
        cache.put(1, routing)
        now[0] = 4.9
        assert not cache.due(1)
        now[0] = 5.0
        assert cache.due(1)
        assert cache.get(1) is routing  # still served
        now[0] = 10.0
        assert cache.get(1) is None
        cache.put(1, routing)  # read anew: fresh again
        assert not cache.due(1)

    def test_a_routing_without_a_live_integration_is_not_kept(self) -> None:
        # Its calls would keep "no integration" to their end: a link must be seen at once.
        cache = RoutingCache()
        linked = CallRouting(integration_id=1, policy=CallPolicy(default_user_id=1))
        cache.put(1, linked)
        cache.put(1, CallRouting(integration_id=None, policy=CallPolicy(default_user_id=1)))
        assert cache.get(1) is None

    async def test_routing_is_reused_until_it_expires(self, session: AsyncSession) -> None:
        now = [0.0]
        cache = RoutingCache(ttl_seconds=10, clock=lambda: now[0])
        tenant = await make_tenant(session, settings={"default_user_id": 7})
        ports = call_tracking_ports(session, BOX, routing_cache=cache)
        first = await ports.routing.for_enterprise(tenant.enterprise_id)
        assert first.policy.default_user_id == 7
        integration = await session.get(Bitrix24Integration, tenant.integration_id)
        assert integration is not None
        integration.settings = {"default_user_id": 8}
        await session.flush()
        assert await ports.routing.for_enterprise(tenant.enterprise_id) is first
        now[0] = 10.0
        fresh = await ports.routing.for_enterprise(tenant.enterprise_id)
        assert fresh.policy.default_user_id == 8
