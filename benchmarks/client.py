"""How fast the Bitrix24 client is, and what it costs over raw httpx doing the same requests.

1. Over real HTTP against the emulator (one uvicorn worker, rate limit off): calls/s of
   ``Bitrix24Client.call("profile")`` next to raw ``httpx`` POSTing the same JSON body.
2. The client's own overhead per call (µs): both against an ``httpx.MockTransport`` answering a
   canned envelope, so the network and the server drop out of the difference.
3. With ``--standard-plan DATABASE_URL`` (PostgreSQL): 1,000 calls from 4 worker processes
   against the emulator's standard plan (bucket 50, 2 per s; about 8 minutes), counting
   QUERY_LIMIT_EXCEEDED answers and comparing the time with the plan's minimum.

Usage::

    .venv/bin/python benchmarks/client.py [--calls 2000] [--concurrency 16]
    .venv/bin/python benchmarks/client.py --standard-plan postgresql+asyncpg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# This directory holds ``queue.py``, which would shadow the standard library's ``queue``.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import httpx  # noqa: E402

from callbridge.crm.bitrix24.client import Bitrix24Client  # noqa: E402
from callbridge.crm.bitrix24.rate_limit import PLANS, NoRateLimit  # noqa: E402

CLIENT_ID = "local.bench.0001"
CLIENT_SECRET = "bench-secret"


class Token:
    """Fixed credentials: the benchmark measures calls, not refreshes."""

    app_context = True

    def __init__(self, endpoint: str, token: str) -> None:
        self._endpoint, self.token = endpoint, token
        self.key, self.integration_id, self.plan = "bench", None, PLANS["standard"]

    async def endpoint(self) -> str:
        return self._endpoint

    async def access_token(self) -> str | None:
        return self.token

    async def refresh(self, rejected: str | None) -> None:
        raise RuntimeError("the benchmark token never expires")

    async def moved(self, client_endpoint: str) -> None:
        self._endpoint = client_endpoint


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_emulator(port: int) -> subprocess.Popen[bytes]:
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bitrix24_emulator",
            "--port",
            str(port),
            "--no-rate-limit",
            "--base-url",
            base,
            "--domain",
            f"127.0.0.1:{port}",
            "--operating-limit",
            "1000000",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/_emulator/state", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the emulator did not start")


def install(base: str) -> str:
    """Register and install an app; returns its access token."""
    with httpx.Client(base_url=base) as control:
        control.post(
            "/_emulator/apps",
            json={
                "handler_url": "http://127.0.0.1:9/none",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
        ).raise_for_status()
        return str(control.post(f"/_emulator/apps/{CLIENT_ID}/install").json()["access_token"])


async def timed(calls: int, concurrency: int, one: Callable[[], Awaitable[Any]]) -> float:
    """Seconds to run ``calls`` calls of ``one`` with ``concurrency`` at a time."""
    remaining = calls

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - started


async def over_http(base: str, token: str, calls: int, concurrency: int) -> None:
    url = f"{base}/rest/profile.json"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:

        async def raw() -> Any:
            response = await http.post(url, json={"auth": token}, timeout=30.0)
            return response.json()["result"]

        client = Bitrix24Client(http, Token(f"{base}/rest/", token), NoRateLimit())
        await timed(200, concurrency, raw)  # warm up connections and the server
        # Alternate the two and keep each one's best round: the server's state drifts.
        raw_s = client_s = float("inf")
        for _ in range(3):
            raw_s = min(raw_s, await timed(calls, concurrency, raw))
            client_s = min(
                client_s, await timed(calls, concurrency, lambda: client.call("profile"))
            )
    print(
        f"against the emulator over HTTP ({calls} calls of profile, {concurrency} at a time, "
        "best of 3):"
    )
    print(f"  raw httpx          {calls / raw_s:8.0f} calls/s")
    print(f"  Bitrix24Client     {calls / client_s:8.0f} calls/s")


async def overhead(calls: int) -> None:
    canned = json.dumps(
        {
            "result": {"ID": "1", "NAME": "Ivan", "ADMIN": True},
            "time": {"start": 1.0, "finish": 1.001, "duration": 0.001, "operating": 0.0},
        }
    ).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=canned, headers={"content-type": "application/json"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        url = "https://portal.test/rest/profile.json"

        async def raw() -> Any:
            response = await http.post(url, json={"auth": "t"}, timeout=30.0)
            return response.json()["result"]

        client = Bitrix24Client(http, Token("https://portal.test/rest/", "t"), NoRateLimit())
        raw_s = client_s = float("inf")
        for _ in range(3):
            raw_s = min(raw_s, await timed(calls, 1, raw))
            client_s = min(client_s, await timed(calls, 1, lambda: client.call("profile")))
    per_raw = raw_s / calls * 1e6
    per_client = client_s / calls * 1e6
    print(f"against httpx.MockTransport ({calls} sequential calls, best of 3):")
    print(f"  raw httpx          {per_raw:8.1f} µs/call")
    print(f"  Bitrix24Client     {per_client:8.1f} µs/call")
    print(f"  client overhead    {per_client - per_raw:8.1f} µs/call")


async def standard_plan(database_url: str) -> None:
    """1,000 calls from 4 processes against the standard plan (about 8 minutes)."""
    from cryptography.fernet import Fernet
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from tests.callbridge.crm.bitrix24.test_processes import install as store
    from tests.callbridge.crm.bitrix24.test_processes import run_workers, start_emulator

    from callbridge.storage import migrate
    from callbridge.storage.db import create_unpooled_engine

    async def admin(sql: str) -> None:
        engine = create_unpooled_engine(database_url)
        try:
            async with engine.connect() as connection:
                connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text(sql))
        finally:
            await engine.dispose()

    name = f"cbbench_{uuid.uuid4().hex[:12]}"
    await admin(f'CREATE DATABASE "{name}"')
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    emulator = start_emulator(50, 2.0)
    try:
        await migrate.upgrade(url)
        key = Fernet.generate_key().decode()
        member = await store(emulator, url, key, Path("/tmp"), {"rate_plan": "standard"})
        results = await asyncio.to_thread(
            run_workers, 4, emulator, url, key, member, calls=250, concurrency=10
        )
        with emulator.control() as control:
            seen = control.get(
                "/_emulator/requests", params={"method": "profile", "limit": 10_000}
            ).json()
    finally:
        emulator.process.terminate()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    arrivals = [s["time"] for s in seen]
    span = max(arrivals) - min(arrivals)
    plan = (1000 - 50) / 2.0
    print("1,000 calls from 4 processes on the standard plan (50, 2 per s):")
    print(f"  succeeded          {sum(r['ok'] for r in results):8d}")
    print(f"  QUERY_LIMIT        {sum(1 for s in seen if s['status'] == 503):8d}")
    print(f"  took               {span:8.1f} s (plan {plan:.1f} s, +10 % {plan * 1.1:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--overhead-calls", type=int, default=20000)
    parser.add_argument("--standard-plan", metavar="DATABASE_URL")
    args = parser.parse_args()
    if args.standard_plan:
        asyncio.run(standard_plan(args.standard_plan))
        return
    port = free_port()
    process = start_emulator(port)
    try:
        base = f"http://127.0.0.1:{port}"
        asyncio.run(over_http(base, install(base), args.calls, args.concurrency))
    finally:
        process.terminate()
        process.wait(10)
    asyncio.run(overhead(args.overhead_calls))


if __name__ == "__main__":
    main()
