"""Portals announce every request of the process to a portal, whichever Portals sent it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from callbridge.crm.bitrix24.errors import QueryLimitExceeded
from callbridge.crm.bitrix24.rate_limit import (
    InMemoryRateLimiter,
    NoRateLimit,
    RateLimiter,
    RatePlan,
)
from callbridge.portals import AnnouncingLimiter, Portals, subscribe_requests
from tests.callbridge.crm.bitrix24.harness import (
    Harness,
    ScaledRateLimiter,
    installed_harness,
)


class Heard:
    """A request listener that writes down what it hears."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def request_sent(self, key: str, plan: RatePlan) -> None:
        self.events.append(("request", key))

    def bucket_full(self, key: str, plan: RatePlan) -> None:
        self.events.append(("full", key))


@pytest.fixture
async def h(fresh_database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with installed_harness(fresh_database_url, tmp_path) as both:
        yield both


@pytest.fixture
def heard() -> Iterator[Heard]:
    listener = Heard()
    unsubscribe = subscribe_requests(listener)
    yield listener
    unsubscribe()


def another(h: Harness, limiter: RateLimiter | None = None) -> Portals:
    return Portals(h.settings, h.session_factory, h.portals.http, h.box, limiter=limiter)


class TestRequestAnnouncements:
    async def test_each_request_of_every_portals_is_announced_once(
        self, h: Harness, heard: Heard
    ) -> None:
        member_id = h.emulator.portal.member_id
        portals = [
            h.portals,
            # Another Portals of the process (the users sync's, say).
            another(h),
            # Built on the first one's limiter (as the dispatcher does after a re-install).
            another(h, limiter=h.portals.limiter),
            # A limiter set later is announcing too.
            another(h),
        ]
        portals[3].limiter = InMemoryRateLimiter()
        for each in portals:
            await (await each.client(member_id)).call("profile")
        assert heard.events == [("request", member_id)] * len(portals)
        assert len(await h.requests("profile")) == len(portals)

    async def test_a_full_bucket_is_announced_with_each_try(self, h: Harness, heard: Heard) -> None:
        member_id = h.emulator.portal.member_id
        h.emulator.rate = ScaledRateLimiter(1, 0.001)
        # No client-side budget: the retries after a 503 go at once.
        client = await another(h, limiter=NoRateLimit()).client(member_id)
        await client.call("profile")
        with pytest.raises(QueryLimitExceeded):
            await client.call("profile")
        tries = 1 + client.max_rate_limit_retries
        assert (
            heard.events
            == [("request", member_id)]
            + [
                ("request", member_id),
                ("full", member_id),
            ]
            * tries
        )

    async def test_a_listener_that_fails_does_not_fail_the_request(
        self, h: Harness, heard: Heard, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Broken(Heard):
            def request_sent(self, key: str, plan: RatePlan) -> None:
                raise RuntimeError("bug")

        unsubscribe = subscribe_requests(Broken())
        try:
            await (await h.portals.client(h.emulator.portal.member_id)).call("profile")
        finally:
            unsubscribe()
        assert heard.events == [("request", h.emulator.portal.member_id)]
        assert "a listener of portal requests failed" in caplog.text


class TestInProcessBudget:
    async def test_the_portals_of_one_sqlite_database_share_one_budget(self, h: Harness) -> None:
        # Each with a budget of its own, the dispatcher, the users sync and the web app of one
        # process would together send up to three times what the portal allows.
        if not h.settings.is_sqlite:
            pytest.skip("PostgreSQL's budget is the database's, shared by every process")
        first, second = another(h), another(h)
        assert isinstance(first.limiter, AnnouncingLimiter)
        assert isinstance(second.limiter, AnnouncingLimiter)
        assert first.limiter.inner is second.limiter.inner
        other_database = async_sessionmaker(h.session_factory.kw["bind"])
        third = Portals(h.settings, other_database, h.portals.http, h.box)
        assert isinstance(third.limiter, AnnouncingLimiter)
        assert third.limiter.inner is not first.limiter.inner
