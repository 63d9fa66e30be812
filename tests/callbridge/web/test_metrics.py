"""``GET /metrics``: real state in the database, scraped and parsed as Prometheus does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge import __version__
from callbridge.crm.bitrix24.api_log import ApiCallRecord
from callbridge.storage.ami import AmiStatusRepository, StatusUpdate
from callbridge.storage.bitrix24 import DatabaseApiLogWriter
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.job_queue import JobQueue
from callbridge.storage.models import (
    AmiStatus,
    Bitrix24Integration,
    Call,
    Enterprise,
    IntegrationStatus,
    Job,
)
from callbridge.storage.types import utcnow
from callbridge.web.app import create_app
from tests.callbridge.web.test_app import make_settings, serve

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def sample_key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


async def scrape(client: httpx.AsyncClient) -> Samples:
    """Every sample of one scrape, parsed by prometheus_client's own text parser."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample_key(sample.name, **sample.labels)] = sample.value
    return samples


def of(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (metric, labels), value in samples.items() if metric == name}


@pytest.fixture
async def factory(fresh_database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(fresh_database_url)
    yield create_session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def client(fresh_database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(make_settings(tmp_path, fresh_database_url))) as client:
        yield client


async def add_enterprise(
    factory: async_sessionmaker[AsyncSession], number: str, *, ami: bool = True
) -> int:
    async with factory() as session, session.begin():
        enterprise = Enterprise(number=number, ami_url_enc="encrypted-url" if ami else None)
        session.add(enterprise)
        await session.flush()
        return enterprise.id


def status_update(state: str, *, last_event_ago: float | None = None) -> StatusUpdate:
    now = utcnow()
    return StatusUpdate(
        state=state,
        pbx="pbx.example:5038",
        holder="host:1",
        last_error="connection refused" if state == "unreachable" else None,
        reconnects=3,
        events_in=4321,
        last_event_at=None if last_event_ago is None else now - timedelta(seconds=last_event_ago),
        since=now,
    )


async def report(
    factory: async_sessionmaker[AsyncSession], enterprise_id: int, update_: StatusUpdate
) -> None:
    async with factory() as session, session.begin():
        await AmiStatusRepository(session).report(enterprise_id, update_)


class TestScrape:
    async def test_an_empty_deployment_parses_with_its_constant_series(
        self, client: httpx.AsyncClient
    ) -> None:
        samples = await scrape(client)

        assert samples[sample_key("callbridge_build_info", version=__version__)] == 1
        assert samples[sample_key("callbridge_jobs_oldest_queued_age_seconds")] == 0
        assert samples[sample_key("callbridge_bitrix24_api_window_seconds")] == 300
        assert of(samples, "callbridge_jobs") == {}
        assert of(samples, "callbridge_ami_up") == {}


class TestJobs:
    async def test_counts_pending_jobs_by_kind_and_status_as_the_queue_moves(
        self, client: httpx.AsyncClient, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        queue = JobQueue()
        async with factory() as session, session.begin():
            old = await queue.enqueue(session, "bitrix24.command", {"n": 1})
            await queue.enqueue(session, "bitrix24.command", {"n": 2})
            await queue.enqueue(session, "bitrix24.command", {"n": 3})
            await queue.enqueue(session, "users.sync", {})
            await queue.enqueue(session, "calls.finish", {})
            # Enqueued two minutes ago: the oldest queued job.
            old.created_at = utcnow() - timedelta(seconds=120)
        async with factory() as session, session.begin():
            [running] = await queue.claim(session, "w1", kinds=["bitrix24.command"])
            [dying] = await queue.claim(session, "w1", kinds=["users.sync"])
            [done] = await queue.claim(session, "w1", kinds=["calls.finish"])
            await queue.fail(session, dying, "permanent: portal said no", retry_at=None)
            await queue.complete(session, done)

        samples = await scrape(client)

        jobs = of(samples, "callbridge_jobs")
        command = [("kind", "bitrix24.command")]
        assert jobs[frozenset([*command, ("status", "queued")])] == 2
        assert jobs[frozenset([*command, ("status", "running")])] == 1
        assert jobs[frozenset([*command, ("status", "dead")])] == 0
        assert jobs[frozenset([("kind", "users.sync"), ("status", "dead")])] == 1
        assert jobs[frozenset([("kind", "users.sync"), ("status", "queued")])] == 0
        # Succeeded jobs are history, not counted.
        assert not any(dict(labels)["kind"] == "calls.finish" for labels in jobs)
        age = samples[sample_key("callbridge_jobs_oldest_queued_age_seconds")]
        if running.id == old.id:
            assert 0 <= age < 60  # the old one was claimed; the others are new
        else:
            assert 120 <= age < 180

        async with factory() as session, session.begin():
            await queue.complete(session, running)
            await session.execute(update(Job).where(Job.status == "queued").values(status="dead"))

        samples = await scrape(client)

        jobs = of(samples, "callbridge_jobs")
        assert jobs[frozenset([*command, ("status", "running")])] == 0
        assert jobs[frozenset([*command, ("status", "queued")])] == 0
        assert jobs[frozenset([*command, ("status", "dead")])] == 2
        assert samples[sample_key("callbridge_jobs_oldest_queued_age_seconds")] == 0


class TestAmi:
    async def test_a_connected_listener_is_up_with_its_last_event_age(
        self, client: httpx.AsyncClient, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        enterprise = await add_enterprise(factory, "100")
        await report(factory, enterprise, status_update("connected", last_event_ago=30))

        samples = await scrape(client)

        assert samples[sample_key("callbridge_ami_up", enterprise="100")] == 1
        assert samples[sample_key("callbridge_ami_state", enterprise="100", state="connected")] == 1
        assert samples[sample_key("callbridge_ami_state", enterprise="100", state="stale")] == 0
        since = samples[sample_key("callbridge_ami_seconds_since_last_event", enterprise="100")]
        assert 30 <= since < 90
        assert samples[sample_key("callbridge_ami_reconnects", enterprise="100")] == 3
        assert samples[sample_key("callbridge_ami_events_received", enterprise="100")] == 4321

    async def test_an_unreachable_pbx_shows_down_with_its_state(
        self, client: httpx.AsyncClient, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        enterprise = await add_enterprise(factory, "100")
        await report(factory, enterprise, status_update("connected", last_event_ago=5))
        assert (await scrape(client))[sample_key("callbridge_ami_up", enterprise="100")] == 1

        await report(factory, enterprise, status_update("unreachable"))

        samples = await scrape(client)
        assert samples[sample_key("callbridge_ami_up", enterprise="100")] == 0
        states = of(samples, "callbridge_ami_state")
        current = [dict(labels)["state"] for labels, value in states.items() if value == 1]
        assert current == ["unreachable"]
        # It never received an event under this listener report: no age is made up.
        assert of(samples, "callbridge_ami_seconds_since_last_event") == {}

    async def test_a_listener_that_stopped_reporting_is_stale_and_down(
        self, client: httpx.AsyncClient, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        enterprise = await add_enterprise(factory, "100")
        await report(factory, enterprise, status_update("connected", last_event_ago=200))
        async with factory() as session, session.begin():
            await session.execute(
                update(AmiStatus).values(updated_at=utcnow() - timedelta(seconds=120))
            )

        samples = await scrape(client)

        assert samples[sample_key("callbridge_ami_up", enterprise="100")] == 0
        assert samples[sample_key("callbridge_ami_state", enterprise="100", state="stale")] == 1
        assert samples[sample_key("callbridge_ami_state", enterprise="100", state="connected")] == 0

    async def test_a_configured_pbx_without_a_listener_is_down_and_not_started(
        self, client: httpx.AsyncClient, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        await add_enterprise(factory, "200")
        await add_enterprise(factory, "300", ami=False)  # webhooks only: no AMI series

        samples = await scrape(client)

        assert of(samples, "callbridge_ami_up") == {frozenset([("enterprise", "200")]): 0}
        state = sample_key("callbridge_ami_state", enterprise="200", state="not_started")
        assert samples[state] == 1


class TestIntegrations:
    async def test_each_integration_reports_its_current_status(
        self, client: httpx.AsyncClient, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        enterprise = await add_enterprise(factory, "100", ami=False)
        async with factory() as session, session.begin():
            for domain, status in (("a.bitrix24.ru", "active"), ("b.bitrix24.ru", "needs_reauth")):
                session.add(
                    Bitrix24Integration(
                        enterprise_id=enterprise,
                        member_id=f"m-{domain}",
                        domain=domain,
                        client_endpoint=f"https://{domain}/rest/",
                        status=status,
                    )
                )

        def current(samples: Samples) -> dict[str, str]:
            rows = of(samples, "callbridge_integration_status")
            assert len(rows) == 2 * len(IntegrationStatus)
            return {
                dict(labels)["domain"]: dict(labels)["status"]
                for labels, value in rows.items()
                if value == 1
            }

        assert current(await scrape(client)) == {
            "a.bitrix24.ru": "active",
            "b.bitrix24.ru": "needs_reauth",
        }
        labels = sample_key(
            "callbridge_integration_status",
            domain="a.bitrix24.ru",
            member_id="m-a.bitrix24.ru",
            enterprise="100",
            status="uninstalled",
        )
        assert (await scrape(client))[labels] == 0

        async with factory() as session, session.begin():
            await session.execute(
                update(Bitrix24Integration)
                .where(Bitrix24Integration.domain == "a.bitrix24.ru")
                .values(status="uninstalled")
            )

        samples = await scrape(client)
        assert current(samples)["a.bitrix24.ru"] == "uninstalled"
        assert samples[labels] == 1


class TestBitrix24Requests:
    async def test_counts_requests_of_the_window_by_method_and_error(
        self, client: httpx.AsyncClient, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        now = utcnow()

        def record(method: str, ago: float, status: int | None, code: str | None) -> ApiCallRecord:
            started = now - timedelta(seconds=ago)
            return ApiCallRecord(method, started, 250.0, http_status=status, error_code=code)

        register = "telephony.externalcall.register"
        await DatabaseApiLogWriter(factory).write(
            [
                record(register, 10, 200, None),
                record(register, 20, 200, None),
                record(register, 30, 503, "QUERY_LIMIT_EXCEEDED"),
                record(register, 40, 500, None),
                record("batch", 50, None, "ConnectTimeout"),
                record(register, 600, 200, None),  # before the window
            ]
        )

        samples = await scrape(client)

        assert of(samples, "callbridge_bitrix24_api_calls") == {
            frozenset([("method", register), ("error", "")]): 2,
            frozenset([("method", register), ("error", "QUERY_LIMIT_EXCEEDED")]): 1,
            frozenset([("method", register), ("error", "HTTP_500")]): 1,
            frozenset([("method", "batch"), ("error", "ConnectTimeout")]): 1,
        }
        spent = sample_key("callbridge_bitrix24_api_time_seconds", method=register, error="")
        assert samples[spent] == pytest.approx(0.5)


class TestCalls:
    async def test_counts_calls_that_have_not_ended_by_enterprise(
        self, client: httpx.AsyncClient, factory: async_sessionmaker[AsyncSession]
    ) -> None:
        first = await add_enterprise(factory, "100", ami=False)
        second = await add_enterprise(factory, "200", ami=False)
        async with factory() as session, session.begin():
            for enterprise, linkedid, state in (
                (first, "1.1", "new"),
                (first, "1.2", "active"),
                (first, "1.3", "ended"),
                (second, "2.1", "active"),
            ):
                session.add(Call(enterprise_id=enterprise, linkedid=linkedid, state=state))

        samples = await scrape(client)
        assert of(samples, "callbridge_calls_in_progress") == {
            frozenset([("enterprise", "100")]): 2,
            frozenset([("enterprise", "200")]): 1,
        }

        async with factory() as session, session.begin():
            await session.execute(update(Call).values(state="ended"))

        assert of(await scrape(client), "callbridge_calls_in_progress") == {}


class TestToken:
    async def test_with_a_token_set_only_a_scrape_that_sends_it_is_answered(
        self, fresh_database_url: str, tmp_path: Path
    ) -> None:
        settings = make_settings(tmp_path, fresh_database_url, metrics_token="scrape-secret")
        async with serve(create_app(settings)) as client:
            missing = await client.get("/metrics")
            wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
            basic = await client.get("/metrics", headers={"Authorization": "Basic scrape-secret"})
            right = await client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})

        for refused in (missing, wrong, basic):
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "unauthorized"
            assert refused.headers["www-authenticate"].startswith("Bearer")
        assert right.status_code == 200
        assert "callbridge_jobs_oldest_queued_age_seconds 0.0" in right.text
