"""The client against the emulator over ASGI: refresh, batch size, rate budget, API log."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from callbridge.crm.bitrix24.api_log import BufferedApiLog
from callbridge.crm.bitrix24.client import Bitrix24Client
from callbridge.crm.bitrix24.rate_limit import InMemoryRateLimiter
from callbridge.storage.bitrix24 import DatabaseApiLogWriter, purge_api_log
from callbridge.storage.models import ApiCall
from callbridge.storage.repositories import IntegrationRepository
from tests.callbridge.crm.bitrix24.harness import (
    Harness,
    ScaledRateLimiter,
    installed_harness,
)


@pytest.fixture
async def h(fresh_database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with installed_harness(fresh_database_url, tmp_path) as both:
        yield both


async def client(h: Harness) -> Bitrix24Client:
    return await h.portals.client(h.emulator.portal.member_id)


class TestCalls:
    async def test_call_records_operating_time(self, h: Harness) -> None:
        bitrix = await client(h)
        profile = await bitrix.call("profile")
        assert profile["ID"]
        assert "profile" in bitrix.operating
        assert h.api_log.entries[-1].method == "profile"
        assert h.api_log.entries[-1].http_status == 200

    async def test_list_pages(self, h: Harness) -> None:
        bitrix = await client(h)
        users = [u async for u in bitrix.iterate("user.get", {"FILTER": {"ACTIVE": True}})]
        assert users
        assert len({u["ID"] for u in users}) == len(users)


class TestRefresh:
    async def test_forced_expiry_one_refresh_for_twenty_callers(self, h: Harness) -> None:
        before = await h.integration()
        assert before is not None
        (await h.emulator_http.post("/_emulator/faults/expire-tokens", json={})).raise_for_status()
        bitrix = await client(h)
        results = await asyncio.gather(*(bitrix.call("profile") for _ in range(20)))
        assert len(results) == 20
        refreshes = await h.requests("oauth.token")
        assert [r["status"] for r in refreshes] == [200]
        after = await h.integration()
        assert after is not None
        assert after.refresh_token_enc != before.refresh_token_enc
        assert after.expires_at is not None
        assert before.expires_at is not None
        assert after.expires_at >= before.expires_at

    async def test_refreshed_pair_is_what_the_next_process_uses(self, h: Harness) -> None:
        await h.emulator_http.post("/_emulator/faults/expire-tokens", json={})
        await (await client(h)).call("profile")
        # A fresh Portals (another process) reads the stored pair and needs no refresh.
        async with h.session_factory() as session:
            repo = IntegrationRepository(session, h.box)
            row = await repo.by_member_id(h.emulator.portal.member_id)
        # (No transaction may stay open across a call: on SQLite it would hold the write lock.)
        assert row is not None
        other = type(h.portals)(h.settings, h.session_factory, h.emulator_http, h.box)
        await other.client_for(row).call("profile")
        assert len(await h.requests("oauth.token")) == 1


class TestBatch:
    async def test_thousand_commands_at_most_21_requests(self, h: Harness) -> None:
        bitrix = await client(h)
        setup_batches = len(await h.requests("batch"))  # the post-install setup's
        outcome = await bitrix.batch([("profile", {}) for _ in range(1000)])
        assert outcome.ok, outcome.errors
        assert len(outcome.results) == 1000
        batches = (await h.requests("batch"))[setup_batches:]
        assert len(batches) <= 21
        assert len(batches) == outcome.requests == 20

    async def test_references_and_errors(self, h: Harness) -> None:
        bitrix = await client(h)
        outcome = await bitrix.batch(
            {
                "me": ("profile", {}),
                "user": ("user.get", {"FILTER": {"ID": "$result[me][ID]"}}),
                "bad": ("telephony.externalCall.register", {"TYPE": 9}),
            }
        )
        assert outcome["user"][0]["ID"] == str(outcome["me"]["ID"])
        assert outcome.errors["bad"].code == "ERROR_CORE"


class TestRateBudget:
    async def test_scaled_plan_without_query_limit_exceeded(self, h: Harness) -> None:
        # The standard plan's burst (50) with a drain 25 times faster: the client's headroom
        # (5 requests) is what absorbs requests that reach the portal bunched. A burst of 10
        # left a headroom of 1, which one pause of the test process (a full garbage
        # collection late in a long run) could exceed.
        capacity, rate, calls = 50, 50.0, 200
        gc.collect()
        h.emulator.rate = ScaledRateLimiter(capacity, rate)
        async with h.session_factory() as session, session.begin():
            row = await h.portals.find(session, h.emulator.portal.member_id)
            row.settings = {"rate_plan": {"capacity": capacity, "rate": rate}}
        h.portals.limiter = InMemoryRateLimiter()
        h.portals._credentials.clear()
        bitrix = await client(h)
        started = time.perf_counter()
        await asyncio.gather(*(bitrix.call("profile") for _ in range(calls)))
        elapsed = time.perf_counter() - started
        seen = await h.requests("profile")
        statuses = [r["status"] for r in seen]
        assert statuses.count(503) == 0
        assert len(statuses) == calls
        # The plan lets the portal take ``capacity`` at once, then ``rate`` per second: the
        # requests must arrive within that time plus 10 % (as the portal sees them).
        arrivals = [r["time"] for r in seen]
        allowed = (calls - capacity) / rate * 1.1
        assert max(arrivals) - min(arrivals) <= allowed
        assert elapsed <= allowed + 0.5

    async def test_limit_exceeded_slows_down_and_recovers(self, h: Harness) -> None:
        # The portal's bucket is smaller than we believe: we get 503s, slow down, and finish.
        h.emulator.rate = ScaledRateLimiter(5, 50.0)
        async with h.session_factory() as session, session.begin():
            row = await h.portals.find(session, h.emulator.portal.member_id)
            row.settings = {"rate_plan": {"capacity": 20, "rate": 50.0}}
        h.portals._credentials.clear()
        bitrix = await client(h)
        bitrix.limiter = InMemoryRateLimiter()
        bitrix.max_rate_limit_retries = 20
        await asyncio.gather(*(bitrix.call("profile") for _ in range(30)))
        statuses = [r["status"] for r in await h.requests("profile")]
        assert statuses.count(200) == 30
        assert statuses.count(503) > 0


class TestApiLog:
    async def test_rows_written_and_purged(self, h: Harness) -> None:
        async with BufferedApiLog(DatabaseApiLogWriter(h.session_factory)) as log:
            bitrix = await client(h)
            bitrix.api_log = log
            await bitrix.call("profile")
            await bitrix.batch([("profile", {})] * 3)
        async with h.session_factory() as session:
            rows = (await session.scalars(select(ApiCall).order_by(ApiCall.id))).all()
            assert [(r.method, r.batch_size, r.http_status) for r in rows] == [
                ("profile", 0, 200),
                ("batch", 3, 200),
            ]
            assert rows[0].integration_id is not None
            assert rows[0].operating is not None
        assert await purge_api_log(h.session_factory, retention_days=0) == 2
        async with h.session_factory() as session:
            assert await session.scalar(select(func.count()).select_from(ApiCall)) == 0
