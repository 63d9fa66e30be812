"""Injected faults: latency, error statuses, connection reset, timeout, outage window."""

from __future__ import annotations

import httpx
import pytest
from tests.bitrix24_emulator.conftest import WEBHOOK

from bitrix24_emulator.clock import FakeClock
from bitrix24_emulator.faults import FaultConfig, FaultInjector


class TestInjector:
    def test_distributions(self) -> None:
        fixed = FaultInjector(FaultConfig(latency_mode="fixed", latency_ms=250))
        assert fixed.delay() == 0.25
        uniform = FaultInjector(
            FaultConfig(latency_mode="uniform", latency_min_ms=10, latency_max_ms=20), seed=1
        )
        assert all(0.01 <= uniform.delay() <= 0.02 for _ in range(100))
        normal = FaultInjector(
            FaultConfig(latency_mode="normal", latency_ms=50, latency_stddev_ms=10), seed=1
        )
        draws = [normal.delay() for _ in range(2000)]
        assert 0.045 < sum(draws) / len(draws) < 0.055
        assert min(draws) >= 0

    def test_error_rate(self) -> None:
        injector = FaultInjector(FaultConfig(error_rate=0.3, error_kinds=["502"]), seed=7)
        kinds = [injector.decide(0).kind for _ in range(5000)]
        assert 0.27 < kinds.count("502") / 5000 < 0.33

    def test_outage_window(self) -> None:
        injector = FaultInjector(FaultConfig(outage_start=100, outage_end=200))
        assert injector.decide(99).kind is None
        assert injector.decide(100).kind == "503"
        assert injector.decide(200).kind is None


class TestOverHttp:
    async def test_latency_uses_the_clock(
        self, client: httpx.AsyncClient, clock: FakeClock
    ) -> None:
        await client.put("/_emulator/faults", json={"latency_mode": "fixed", "latency_ms": 300})
        assert (await client.get(f"{WEBHOOK}/app.info")).status_code == 200
        assert clock.slept == [0.3]
        await client.get("/_emulator/state")  # the control API is never delayed
        assert clock.slept == [0.3]

    @pytest.mark.parametrize("kind", ["500", "502", "503"])
    async def test_error_statuses(self, client: httpx.AsyncClient, kind: str) -> None:
        await client.put("/_emulator/faults", json={"error_rate": 1, "error_kinds": [kind]})
        response = await client.get(f"{WEBHOOK}/app.info")
        assert response.status_code == int(kind)
        if kind == "500":
            assert response.json()["error"] == "INTERNAL_SERVER_ERROR"
        log = (await client.get("/_emulator/requests")).json()
        assert log[-1]["method"] == f"fault:{kind}"

    async def test_reset(self, client: httpx.AsyncClient) -> None:
        await client.put("/_emulator/faults", json={"error_rate": 1, "error_kinds": ["reset"]})
        with pytest.raises(httpx.ReadError):
            await client.get(f"{WEBHOOK}/app.info")

    async def test_timeout_hangs_then_drops(
        self, client: httpx.AsyncClient, clock: FakeClock
    ) -> None:
        await client.put(
            "/_emulator/faults",
            json={"error_rate": 1, "error_kinds": ["timeout"], "hang_seconds": 90},
        )
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/oauth/token/", data={})
        assert clock.slept == [90]

    async def test_outage_for_a_while(self, client: httpx.AsyncClient, clock: FakeClock) -> None:
        await client.put("/_emulator/faults", json={"outage_seconds": 10})
        assert (await client.get(f"{WEBHOOK}/app.info")).status_code == 503
        clock.advance(10)
        assert (await client.get(f"{WEBHOOK}/app.info")).status_code == 200

    async def test_clear(self, client: httpx.AsyncClient) -> None:
        await client.put("/_emulator/faults", json={"error_rate": 1})
        await client.put("/_emulator/faults", json={"clear": True})
        assert (await client.get(f"{WEBHOOK}/app.info")).status_code == 200
