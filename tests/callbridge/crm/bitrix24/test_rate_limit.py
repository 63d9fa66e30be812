"""The per-portal budget: GCRA arithmetic, in-process and shared in the database."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.crm.bitrix24.rate_limit import (
    MIN_SLOWDOWN,
    PLANS,
    Headroom,
    InMemoryRateLimiter,
    RatePlan,
    SharedRateLimiter,
    effective_slowdown,
    penalise,
    reserve,
)
from callbridge.storage.bitrix24 import DatabaseRateBudget
from callbridge.storage.db import create_session_factory

EXACT = Headroom(burst_fraction=0.0, rate_factor=1.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


class TestRatePlan:
    def test_named_plans(self) -> None:
        assert RatePlan.from_settings({}) == RatePlan(50, 2.0)
        assert RatePlan.from_settings({"rate_plan": "enterprise"}) == RatePlan(250, 5.0)
        assert RatePlan.from_settings({"rate_plan": {"capacity": 10, "rate": 4}}) == RatePlan(
            10, 4.0
        )

    def test_unknown_plan(self) -> None:
        with pytest.raises(ValueError, match="unknown rate plan"):
            RatePlan.from_settings({"rate_plan": "gold"})

    def test_client_side_aims_lower(self) -> None:
        assert PLANS["standard"].client_side() == RatePlan(45, 2.0 * 0.95)
        assert PLANS["enterprise"].client_side() == RatePlan(225, 5.0 * 0.95)


class TestGcra:
    def test_burst_then_interval(self) -> None:
        plan, tat, waits = RatePlan(3, 2.0), 0.0, []
        for _ in range(6):
            tat, wait = reserve(tat, 100.0, plan, 1.0)
            waits.append(wait)
        assert waits == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5]

    def test_drains_while_idle(self) -> None:
        plan, tat = RatePlan(2, 1.0), 0.0
        for _ in range(2):
            tat, _ = reserve(tat, 100.0, plan, 1.0)
        assert reserve(tat, 101.0, plan, 1.0)[1] == 0.0

    def test_penalty_fills_the_bucket_and_slows(self) -> None:
        plan = RatePlan(10, 2.0)
        tat, slowdown = penalise(0.0, 100.0, plan, 1.0)
        assert slowdown == pytest.approx(0.8)
        assert reserve(tat, 100.0, plan, slowdown)[1] == pytest.approx(1 / (2.0 * 0.8))
        assert effective_slowdown(MIN_SLOWDOWN, 100.0, 100.0) == MIN_SLOWDOWN
        assert effective_slowdown(0.25, 100.0, 1000.0) == 1.0


class TestInMemoryRateLimiter:
    async def test_waits_after_the_burst(self) -> None:
        clock = FakeClock()
        limiter = InMemoryRateLimiter(headroom=EXACT, clock=clock, sleep=clock.sleep)
        plan = RatePlan(2, 2.0)
        waits = [await limiter.acquire("p", plan) for _ in range(4)]
        assert waits == [0.0, 0.0, 0.5, 1.0]
        assert clock.slept == [0.5, 1.0]
        assert await limiter.acquire("other", plan) == 0.0

    async def test_penalise_slows_down(self) -> None:
        clock = FakeClock()
        limiter = InMemoryRateLimiter(headroom=EXACT, clock=clock, sleep=clock.sleep)
        plan = RatePlan(2, 2.0)
        await limiter.penalise("p", plan)
        assert await limiter.acquire("p", plan) == pytest.approx(0.5 / 0.8)


class TestSharedRateLimiter:
    async def test_budget_is_shared_through_the_database(self, fresh_database_url: str) -> None:
        from callbridge.storage.db import create_engine

        engine: AsyncEngine = create_engine(fresh_database_url)
        try:
            factory = create_session_factory(engine)
            slept: list[float] = []

            async def sleep(seconds: float) -> None:
                slept.append(seconds)

            # Two limiters = two processes; one row = one budget.
            first = SharedRateLimiter(DatabaseRateBudget(factory), EXACT, sleep)
            second = SharedRateLimiter(DatabaseRateBudget(factory), EXACT, sleep)
            plan = RatePlan(4, 10.0)
            waits = [await (first if i % 2 else second).acquire("p", plan) for i in range(8)]
            assert waits[:4] == [0.0] * 4
            # The next four are spaced 0.1 s apart (minus the few ms the loop took).
            for index, wait in enumerate(waits[4:], start=1):
                assert wait == pytest.approx(0.1 * index, abs=0.05)
            await first.penalise("p", plan)
            after = await second.acquire("p", plan)
            # Unpenalised it would be 0.5; the slowdown stretches the next slot to 0.125.
            assert after == pytest.approx(0.525, abs=0.06)
        finally:
            await engine.dispose()

    async def test_concurrent_reservations_are_distinct(self, fresh_database_url: str) -> None:
        from callbridge.storage.db import create_engine

        engine = create_engine(fresh_database_url)
        try:
            budget = DatabaseRateBudget(create_session_factory(engine))
            waits = await asyncio.gather(*(budget.reserve("q", 1, 100.0, 0.0) for _ in range(10)))
            # Each reservation took its own slot: waits are 0, 0.01, ..., 0.09 (some drained).
            assert len({round(w, 4) for w in waits}) == len(waits) or max(waits) > 0.05
        finally:
            await engine.dispose()
