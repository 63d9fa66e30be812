"""Several worker processes on PostgreSQL against the emulator on a real port.

* forced expiry, 20 concurrent calls from 4 processes: exactly one refresh reaches the OAuth
  server and every call succeeds;
* 1,000 calls from 4 processes on a (scaled) plan: no QUERY_LIMIT_EXCEEDED, and the portal sees
  them within the plan's time plus 10 %. The full-size standard plan (50 / 2 per s, ~8 min) runs
  in ``benchmarks/client.py --plan standard``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from callbridge.crm.bitrix24.auth import Installation, TokenGrant
from callbridge.portals import Portals
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory
from tests.callbridge.crm.bitrix24.harness import CLIENT_ID, CLIENT_SECRET, callbridge_settings
from tests.conftest import Database

ROOT = Path(__file__).resolve().parents[4]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Emulator:
    url: str
    process: subprocess.Popen[bytes]

    def control(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0)


def start_emulator(capacity: int = 0, rate: float = 0.0) -> Emulator:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.callbridge.crm.bitrix24._emulator_server",
            "--port",
            str(port),
            "--capacity",
            str(capacity),
            "--rate",
            str(rate),
        ],
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/_emulator/state", timeout=1.0).status_code == 200:
                return Emulator(url, process)
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the emulator did not start")


@pytest.fixture
def emulators() -> Iterator[Callable[..., Emulator]]:
    """Start emulators on real ports (with a plan); all are stopped afterwards."""
    started: list[Emulator] = []

    def start(capacity: int = 0, rate: float = 0.0) -> Emulator:
        started.append(start_emulator(capacity, rate))
        return started[-1]

    yield start
    for emu in started:
        emu.process.terminate()
        emu.process.wait(10)


async def install(
    emulator: Emulator, database_url: str, key: str, tmp_path: Path, settings: dict[str, Any]
) -> str:
    """Install the app on the emulator and store the integration; returns the member_id."""
    with emulator.control() as control:
        control.post(
            "/_emulator/apps",
            json={
                "handler_url": "http://127.0.0.1:9/unreachable",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
        ).raise_for_status()
        installed = control.post(f"/_emulator/apps/{CLIENT_ID}/install").json()
        member_id = control.get("/_emulator/state").json()["member_id"]
    grant = TokenGrant(
        access_token=installed["access_token"],
        refresh_token=installed["refresh_token"],
        expires_at=datetime.now(UTC),
        member_id=member_id,
        domain=emulator.url.split("//")[1],
        client_endpoint=f"{emulator.url}/rest/",
        application_token=installed["app"]["application_token"],
        scope=",".join(installed["app"]["scopes"]),
    )
    cb_settings = callbridge_settings(database_url, tmp_path, encryption_keys=key)
    engine = create_engine(database_url)
    try:
        factory = create_session_factory(engine)
        async with httpx.AsyncClient() as http, factory() as session, session.begin():
            portals = Portals(cb_settings, factory, http, SecretBox([key.encode()]))
            result = await portals.install(session, Installation(grant, "event"))
            result.integration.settings = settings
    finally:
        await engine.dispose()
    return str(member_id)


def run_workers(
    count: int, emulator: Emulator, database_url: str, key: str, member_id: str, **options: Any
) -> list[dict[str, Any]]:
    start_at = time.time() + 4.0  # every process has imported and connected by then
    command = [
        sys.executable,
        "-m",
        "tests.callbridge.crm.bitrix24._portal_worker",
        "--db",
        database_url,
        "--key",
        key,
        "--emulator",
        emulator.url,
        "--member",
        member_id,
        "--client-id",
        CLIENT_ID,
        "--client-secret",
        CLIENT_SECRET,
        "--start-at",
        str(start_at),
    ]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
    processes = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, env=env) for _ in range(count)
    ]
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


def callbridge_key() -> str:
    return Fernet.generate_key().decode()


class TestProcesses:
    """On SQLite the processes queue on the database lock; on PostgreSQL on the row lock."""

    async def test_forced_expiry_one_refresh_across_four_processes(
        self, emulators: Callable[..., Emulator], fresh_database_url: str, tmp_path: Path
    ) -> None:
        emulator = emulators()
        key = callbridge_key()
        member_id = await install(emulator, fresh_database_url, key, tmp_path, {})
        with emulator.control() as control:
            control.post("/_emulator/faults/expire-tokens", json={}).raise_for_status()
        results = run_workers(
            4, emulator, fresh_database_url, key, member_id, calls=5, concurrency=5
        )
        assert [r["ok"] for r in results] == [5, 5, 5, 5]
        assert all(r["errors"] == {} for r in results)
        with emulator.control() as control:
            tokens = control.get(
                "/_emulator/requests", params={"method": "oauth.token", "limit": 100}
            ).json()
            profile = control.get(
                "/_emulator/requests", params={"method": "profile", "limit": 1000}
            ).json()
        # Exactly one refresh reached the OAuth server, and it succeeded: no used refresh token
        # was presented again (the emulator would have answered invalid_grant).
        assert [(t["status"], t["error"]) for t in tokens] == [(200, None)]
        assert sum(1 for p in profile if p["error"] == "expired_token") <= 20
        assert sum(1 for p in profile if p["status"] == 200) == 20

    @pytest.mark.slow
    async def test_thousand_calls_within_the_plan(
        self,
        emulators: Callable[..., Emulator],
        database: Database,
        fresh_database_url: str,
        tmp_path: Path,
    ) -> None:
        if database.backend == "sqlite":
            pytest.skip("several processes share one budget only on PostgreSQL")
        emulator = emulators(50, 40.0)
        key = callbridge_key()
        plan = {"rate_plan": {"capacity": 50, "rate": 40.0}}
        member_id = await install(emulator, fresh_database_url, key, tmp_path, plan)
        results = run_workers(
            4, emulator, fresh_database_url, key, member_id, calls=250, concurrency=10
        )
        assert sum(r["ok"] for r in results) == 1000, results
        with emulator.control() as control:
            seen = control.get(
                "/_emulator/requests", params={"method": "profile", "limit": 10_000}
            ).json()
        arrivals = [s["time"] for s in seen]
        limited = [round(s["time"] - min(arrivals), 3) for s in seen if s["status"] == 503]
        assert limited == []
        allowed = (1000 - 50) / 40.0 * 1.1
        span = max(arrivals) - min(arrivals)
        plan_time = allowed / 1.1
        print(
            f"1000 calls, 4 processes: {span:.2f} s (plan {plan_time:.2f} s, +10 % {allowed:.2f})"
        )
        assert span <= allowed
