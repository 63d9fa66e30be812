"""Leaky bucket (503 QUERY_LIMIT_EXCEEDED) and operating-time budget (429 OPERATION_TIME_LIMIT)."""

from __future__ import annotations

import httpx
import pytest
from tests.bitrix24_emulator.conftest import WEBHOOK, Installed, call, install_app

from bitrix24_emulator.clock import FakeClock
from bitrix24_emulator.limits import LeakyBucket, OperatingBudget


def _client(app) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p")


class TestLeakyBucket:
    def test_fills_then_refuses_then_drains(self) -> None:
        bucket = LeakyBucket(50, 2.0)
        assert all(bucket.try_acquire(100.0) for _ in range(50))
        assert not bucket.try_acquire(100.0)
        assert not bucket.try_acquire(100.49)
        assert bucket.try_acquire(100.5)
        assert not bucket.try_acquire(100.5)

    def test_refused_requests_do_not_count(self) -> None:
        bucket = LeakyBucket(2, 1.0)
        bucket.try_acquire(0)
        bucket.try_acquire(0)
        for _ in range(10):
            assert not bucket.try_acquire(0)
        assert bucket.try_acquire(1.0)


class TestRateLimitOverHttp:
    async def test_51st_request_is_503_then_recovers(
        self, client: httpx.AsyncClient, clock: FakeClock
    ) -> None:
        for _ in range(50):
            assert (await client.get(f"{WEBHOOK}/app.info")).status_code == 200
        response = await client.get(f"{WEBHOOK}/app.info")
        assert response.status_code == 503
        assert response.json() == {
            "error": "QUERY_LIMIT_EXCEEDED",
            "error_description": "Too many requests",
        }
        clock.advance(0.5)
        assert (await client.get(f"{WEBHOOK}/app.info")).status_code == 200
        assert (await client.get(f"{WEBHOOK}/app.info")).status_code == 503

    async def test_batch_of_50_costs_one_request(
        self, client: httpx.AsyncClient, installed: Installed
    ) -> None:
        # install_app used no REST calls, so the bucket is empty: 50 batches of 50 all pass.
        for _ in range(50):
            response = await call(
                client, "batch", installed.access_token, cmd={str(i): "app.info" for i in range(50)}
            )
            assert response.status_code == 200
        assert (await call(client, "app.info", installed.access_token)).status_code == 503

    async def test_enterprise_plan(self, make_app) -> None:  # type: ignore[no-untyped-def]
        async with _client(make_app(plan="enterprise")) as c:
            codes = [(await c.get(f"{WEBHOOK}/app.info")).status_code for _ in range(251)]
        assert codes[:250] == [200] * 250
        assert codes[250] == 503

    async def test_unlimited_plan(self, make_app) -> None:  # type: ignore[no-untyped-def]
        async with _client(make_app(plan="unlimited")) as c:
            codes = {(await c.get(f"{WEBHOOK}/app.info")).status_code for _ in range(300)}
        assert codes == {200}

    async def test_plan_switch_via_control(self, client: httpx.AsyncClient) -> None:
        assert (await client.put("/_emulator/plan", json={"plan": "unlimited"})).status_code == 200
        codes = {(await client.get(f"{WEBHOOK}/app.info")).status_code for _ in range(60)}
        assert codes == {200}


class TestOperatingBudget:
    def test_sliding_window(self) -> None:
        budget = OperatingBudget(limit=10, window=600)
        budget.charge("app", "m", 0.0, 6)
        budget.charge("app", "m", 30.0, 6)
        assert budget.operating("app", "m", 30.0) == 12
        assert budget.blocked("app", "m", 30.0)
        assert not budget.blocked("app", "other", 30.0)
        assert not budget.blocked("other", "m", 30.0)
        assert budget.reset_at("app", "m", 30.0) == 600
        budget.charge("app", "m", 70.0, 1)  # a new one-minute slot
        assert budget.operating("app", "m", 600.0) == 1
        assert not budget.blocked("app", "m", 600.0)

    async def test_429_when_spent(self, make_app, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
        app = make_app(method_costs={"im.notify": 200.0}, plan="unlimited")
        async with _client(app) as c:
            inst = await install_app(c)
            codes = []
            for _ in range(4):
                r = await call(c, "im.notify", inst.access_token, USER_ID=1, MESSAGE="x")
                codes.append(r.status_code)
            assert codes == [200, 200, 200, 429]
            blocked = await call(c, "im.notify", inst.access_token, USER_ID=1, MESSAGE="x")
            assert blocked.json() == {
                "error": "OPERATION_TIME_LIMIT",
                "error_description": "Method is blocked due to operation time limit.",
            }
            assert (await call(c, "app.info", inst.access_token)).status_code == 200
            clock.advance(600)
            ok = await call(c, "im.notify", inst.access_token, USER_ID=1, MESSAGE="x")
            assert ok.status_code == 200
            assert ok.json()["time"]["operating"] == pytest.approx(200.0)

    async def test_batch_charges_sub_methods(self, make_app) -> None:  # type: ignore[no-untyped-def]
        app = make_app(method_costs={"app.info": 100.0}, plan="unlimited")
        async with _client(app) as c:
            inst = await install_app(c)
            body = (await call(c, "batch", inst.access_token, cmd=[*(["app.info"] * 6)])).json()[
                "result"
            ]
            # 4 x 100 s = 400, the 5th brings it to 500 > 480, so the 6th is blocked.
            assert len(body["result"]) == 5
            assert body["result_error"] == {
                "5": {
                    "error": "OPERATION_TIME_LIMIT",
                    "error_description": "Method is blocked due to operation time limit.",
                }
            }
            stats = (await c.get("/_emulator/stats")).json()
            assert stats["operating"][inst.client_id] == {"app.info": 500.0}
