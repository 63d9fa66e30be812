"""Webhook intake: events/s and latency to the 202, next to a no-op endpoint of the same app.

    python benchmarks/ingest.py [--events 4000] [--rate 500] [--seconds 6]
                                [--postgres postgresql+asyncpg://postgres@host/db]

The app runs in its own process under uvicorn on a loopback port (as ``callbridge serve`` runs
it), with one extra route added to this benchmark's instance only: ``POST /bench/noop``, which
reads the body and answers 202. The load generator (httpx, keep-alive connections) runs here.

Each request carries one event, as a dialplan sends them: calls of four events (started,
ringing, answered, ended) from many calls at once, each answered call queueing three Bitrix24
jobs (register, show, finish). Two measurements per endpoint and database:

1. throughput: ``--concurrency`` clients send back to back until ``--events`` are accepted;
2. latency at ``--rate`` events/s for ``--seconds`` (open loop: a request is timed from when it
   was due, so a stalled server is not hidden by the client waiting for it).

The ratio is the webhook's throughput over the no-op's: the cost of durable intake (auth,
inbox, call row lock, model, jobs, commit). PostgreSQL is used when ``--postgres`` or
``CALLBRIDGE_TEST_POSTGRES_URL`` names a server; the benchmark creates its own database
(``cbbench_*``) there and drops it afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/queue.py shares its name with the stdlib's ``queue``. Run as a script, this
# directory heads sys.path and would shadow the stdlib module: take it off first.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import make_url

from callbridge.storage import migrate
from callbridge.storage.db import create_engine, create_session_factory, create_unpooled_engine

TOKEN = "bench-token-0123456789abcdef"
NUMBER = "bench"
WEBHOOK = f"/pbx/{NUMBER}/events"
NOOP = "/bench/noop"
EXTENSIONS = ("101", "102", "103", "104")


# -- the server process ----------------------------------------------------------------------


def serve(database_url: str, var_dir: str, port: int) -> None:
    """Run the app with the benchmark's no-op route (the child process)."""
    import uvicorn

    from callbridge.config import load_settings
    from callbridge.logging import configure_logging
    from callbridge.web.app import create_app

    settings = load_settings(var_dir=Path(var_dir), database_url=database_url, log_level="WARNING")
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)

    @app.post(NOOP, status_code=202, include_in_schema=False)
    async def noop(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"accepted": 1}, status_code=202)

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        log_config=None,
        lifespan="on",
    )


# -- set-up ----------------------------------------------------------------------------------


async def seed(database_url: str, var_dir: Path) -> None:
    """An enterprise with a portal and four mapped users."""
    from callbridge.config import load_settings
    from callbridge.storage.crypto import SecretBox
    from callbridge.storage.models import Bitrix24Integration, Bitrix24User, Enterprise

    await migrate.upgrade(database_url)
    box = SecretBox(load_settings(var_dir=var_dir, database_url=database_url).fernet_keys())
    engine = create_engine(database_url)
    try:
        async with create_session_factory(engine)() as session, session.begin():
            enterprise = Enterprise(number=NUMBER, webhook_secret_enc=box.encrypt(TOKEN))
            session.add(enterprise)
            await session.flush()
            integration = Bitrix24Integration(
                enterprise_id=enterprise.id,
                member_id=uuid.uuid4().hex,
                domain="bench.bitrix24.test",
                client_endpoint="http://bench.bitrix24.test/rest/",
                settings={"default_user_id": 1},
            )
            session.add(integration)
            await session.flush()
            for index, extension in enumerate(EXTENSIONS):
                session.add(
                    Bitrix24User(
                        integration_id=integration.id, user_id=10 + index, extension=extension
                    )
                )
    finally:
        await engine.dispose()


async def _pg_admin(admin_url: str, sql: str) -> None:
    engine = create_unpooled_engine(admin_url)
    try:
        async with engine.connect() as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(sql))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def database(backend: str, admin_url: str | None, tmp: Path) -> AsyncIterator[str]:
    """A fresh, migrated, seeded database."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'ingest.db'}"
        await seed(url, tmp / "var")
        yield url
        return
    assert admin_url is not None
    name = f"cbbench_{uuid.uuid4().hex[:10]}"
    await _pg_admin(admin_url, f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        await seed(url, tmp / "var")
        yield url
    finally:
        await _pg_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(database_url: str, var_dir: Path) -> Iterator[str]:
    """The app in a child process; its base URL."""
    port = _free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", database_url, str(var_dir), str(port)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or child.poll() is not None:
                raise RuntimeError("the app did not start")
            time.sleep(0.1)
        yield base
    finally:
        child.terminate()
        child.wait(timeout=30)


# -- load ------------------------------------------------------------------------------------


class Calls:
    """Endless calls of four events each; ``next()`` gives the next event of some call."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.count = 0

    def call(self) -> list[dict[str, Any]]:
        """The four events of a new inbound call answered on one extension."""
        self.count += 1
        linkedid = f"{self.prefix}.{self.count}"
        extension = EXTENSIONS[self.count % len(EXTENSIONS)]
        now = datetime.now(UTC).isoformat()

        def event(kind: str, step: int, **fields: Any) -> dict[str, Any]:
            return {
                "type": kind,
                "call_id": linkedid,
                "event_id": f"{linkedid}:{step}",
                "timestamp": now,
                **fields,
            }

        return [
            event("call.started", 1, direction="inbound", external_number="84951234567"),
            event("call.ringing", 2, extensions=[extension]),
            event("call.answered", 3, extension=extension),
            event("call.ended", 4, disposition="answered", talk_seconds=30),
        ]


HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


async def _post(client: httpx.AsyncClient, path: str, event: dict[str, Any]) -> None:
    response = await client.post(path, content=json.dumps(event).encode(), headers=HEADERS)
    if response.status_code != 202:
        raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")


async def throughput(base: str, path: str, events: int, concurrency: int) -> float:
    """Events/s with ``concurrency`` clients sending each call's events in turn."""
    calls = Calls(f"tp{uuid.uuid4().hex[:6]}")
    remaining = events
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                for event in calls.call():
                    remaining -= 1
                    await _post(client, path, event)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return (events - remaining) / elapsed


async def latency(base: str, path: str, rate: float, seconds: float) -> list[float]:
    """Latencies (ms) at a fixed arrival rate, timed from when each request was due."""
    calls = Calls(f"lt{uuid.uuid4().hex[:6]}")
    # Interleave calls the way a busy PBX does: a few dozen in progress at once.
    in_flight = [calls.call() for _ in range(32)]
    total = int(rate * seconds)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def one(due: float, event: dict[str, Any]) -> None:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await _post(client, path, event)
            latencies.append((time.perf_counter() - due) * 1000)

        # Open connections before the clock starts.
        await asyncio.gather(*(client.get("/healthz") for _ in range(32)))
        start = time.perf_counter() + 0.05
        tasks = []
        for index in range(total):
            slot = index % len(in_flight)
            event = in_flight[slot].pop(0)
            if not in_flight[slot]:
                in_flight[slot] = calls.call()
            tasks.append(asyncio.create_task(one(start + index / rate, event)))
        await asyncio.gather(*tasks)
    return latencies


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Row:
    """One measured endpoint."""

    backend: str
    endpoint: str
    events_per_second: float
    p50: float
    p99: float

    def line(self) -> str:
        """The row, formatted."""
        return (
            f"{self.backend:<10} {self.endpoint:<8} {self.events_per_second:>10.0f} "
            f"{self.p50:>9.1f} {self.p99:>9.1f}"
        )


async def measure(backend: str, base: str, options: argparse.Namespace) -> list[Row]:
    """Throughput and latency of the no-op and the webhook, on one server."""
    rows = []
    for name, path in (("no-op", NOOP), ("webhook", WEBHOOK)):
        await throughput(base, path, 200, options.concurrency)  # warm-up
        rate = await throughput(base, path, options.events, options.concurrency)
        values = await latency(base, path, options.rate, options.seconds)
        rows.append(Row(backend, name, rate, _percentile(values, 0.5), _percentile(values, 0.99)))
    return rows


async def run(options: argparse.Namespace) -> None:
    """Every backend, one after the other."""
    admin = options.postgres or os.environ.get("CALLBRIDGE_TEST_POSTGRES_URL")
    backends = ["sqlite"] + (["postgres"] if admin else [])
    print(
        f"one event per request; throughput with {options.concurrency} clients "
        f"({options.events} events); latency at {options.rate:.0f} events/s for "
        f"{options.seconds:.0f} s, timed from when each request was due"
    )
    print(f"{'database':<10} {'endpoint':<8} {'events/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="cbbench-") as tmp_dir:
            tmp = Path(tmp_dir)
            async with database(backend, admin, tmp) as url:
                with server(url, tmp / "var") as base:
                    noop, webhook = await measure(backend, base, options)
        print(noop.line())
        print(webhook.line())
        ratio = webhook.events_per_second / noop.events_per_second
        print(f"{backend:<10} ratio: {ratio:.2f} (webhook events/s over no-op events/s)")
    if not admin:
        print("PostgreSQL skipped: pass --postgres URL or set CALLBRIDGE_TEST_POSTGRES_URL")


def main() -> None:
    """Parse the options and run."""
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000, help="events in the throughput run")
    parser.add_argument("--concurrency", type=int, default=16, help="clients in that run")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s of the latency run")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the latency run")
    parser.add_argument("--postgres", help="PostgreSQL server URL (a database is created)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
