"""Webhook intake: events/s and latency to the 202, next to a no-op endpoint of the same app.

    python benchmarks/ingest.py [--rounds 3] [--seconds 3] [--concurrency 16]
                                [--rate 500] [--latency-seconds 6] [--connections 64]
                                [--postgres postgresql://postgres@host/db] [--no-sqlite]
                                [--profile DIR]

The app runs in its own process under uvicorn on a loopback port (as ``callbridge serve`` runs
it), with one extra route added to this benchmark's instance only: ``POST /bench/noop``, which
reads the body and answers 202. The load generator runs in a third process (so it competes with
the server for the CPU no more than a PBX on another host would not at all): plain HTTP/1.1 on
keep-alive sockets, a few microseconds of client work per request. Both endpoints get the same
server, client, bodies, headers and concurrency, and their runs are interleaved round by round
(no-op, webhook, webhook, no-op, ...) so that load from other processes hits both alike.

Each request carries one event, as a dialplan sends them: calls of four events (started,
ringing, answered, ended) from many calls at once, each answered call queueing Bitrix24 jobs.
Two measurements per endpoint and database:

1. throughput: ``--concurrency`` connections send back to back for ``--seconds``, ``--rounds``
   times; the median round is reported, and the ratio is the webhook's median over the no-op's;
2. latency at ``--rate`` events/s for ``--latency-seconds`` (open loop: requests are due on a
   fixed schedule whatever the server does, and timed from when they were due, so a stalled
   server is not hidden by the client waiting for it). The achieved rate is printed next to it,
   with the client's own lag (how late it sent the p99 request): a run whose achieved rate is
   below the target, or whose client lag is not small, measured the client, not the server.

The machine is shared, so the rates move with other processes' load. ``cpu µs`` is the server
process's own CPU time (user + system) per request over the throughput rounds, which that load
hardly moves; ``cpu ratio`` (no-op's over the webhook's) is the rate ratio the app would reach on
a core of its own. (On PostgreSQL the database server's CPU is not in it.) The CPU per event of
every process taking part is printed too: the app, PostgreSQL's processes serving the benchmark's
database (read from ``/proc``, so as root or the server's user), and the load generator. From it
comes what the CPU allows each endpoint: the app's process uses one core at most, and all
processes share the machine's cores; ``cpu-bound ratio`` is the webhook's over the no-op's, the
best rate ratio this machine can show whatever the app overlaps.

After the runs the benchmark counts the stored events: every event answered 202 must be in
``pbx_events`` (accepted means committed). PostgreSQL is used when ``--postgres`` or
``CALLBRIDGE_TEST_POSTGRES_URL`` names a server; the benchmark creates its own database
(``cbbench_*``) there and drops it afterwards. ``--profile DIR`` writes the server's cProfile
stats there (one file per database) for ``python -m pstats``.
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
import cProfile
import json
import os
import signal
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
PROFILE_ENV = "CALLBRIDGE_BENCH_PROFILE"


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

    profile = os.environ.get(PROFILE_ENV)
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        # uvicorn re-raises the SIGTERM it caught once it has shut down: make that an exit
        # that runs ``finally`` (the default action would kill us before the stats are saved).
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        profiler.enable()
    try:
        uvicorn.run(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            log_config=None,
            lifespan="on",
        )
    finally:
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)


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
def server(
    database_url: str, var_dir: Path, profile: Path | None = None
) -> Iterator[tuple[str, int]]:
    """The app in a child process; its base URL and process id."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if profile is not None:
        env[PROFILE_ENV] = str(profile)
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", database_url, str(var_dir), str(port)], env=env
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
        yield base, child.pid
    finally:
        child.terminate()
        child.wait(timeout=30)


# -- load (the load generator's process) ---------------------------------------------------


class Calls:
    """Endless calls of four events each, as request bodies."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.count = 0

    def call(self) -> list[bytes]:
        """The four events of a new inbound call answered on one extension."""
        self.count += 1
        linkedid = f"{self.prefix}.{self.count}"
        extension = EXTENSIONS[self.count % len(EXTENSIONS)]
        now = datetime.now(UTC).isoformat()

        def event(kind: str, step: int, **fields: Any) -> bytes:
            body = {
                "type": kind,
                "call_id": linkedid,
                "event_id": f"{linkedid}:{step}",
                "timestamp": now,
                **fields,
            }
            return json.dumps(body).encode()

        return [
            event("call.started", 1, direction="inbound", external_number="84951234567"),
            event("call.ringing", 2, extensions=[extension]),
            event("call.answered", 3, extension=extension),
            event("call.ended", 4, disposition="answered", talk_seconds=30),
        ]


# The first error answer, shown once (the rest are counted).
ERRORS_SEEN: list[str] = []


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON bodies and reads the status."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        """Connect to the server on the loopback."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def post(self, path: str, body: bytes) -> int:
        """Send one request and read its whole response; its status code."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        content = await self.reader.readexactly(length) if length else b""
        if status != 202 and not ERRORS_SEEN:
            ERRORS_SEEN.append(f"{path}: {status} {content[:200]!r}")
            print(ERRORS_SEEN[0], file=sys.stderr)
        return status

    def close(self) -> None:
        """Close the socket."""
        self.writer.close()


async def throughput(port: int, path: str, seconds: float, concurrency: int) -> dict[str, Any]:
    """Events/s with ``concurrency`` connections, each sending its calls' events in turn."""
    calls = Calls(f"tp{uuid.uuid4().hex[:6]}")
    connections = [await Connection.open(port) for _ in range(concurrency)]
    accepted = errors = 0

    async def worker(connection: Connection, deadline: float) -> None:
        nonlocal accepted, errors
        while time.perf_counter() < deadline:
            for body in calls.call():
                if await connection.post(path, body) == 202:
                    accepted += 1
                else:
                    errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(c, started + seconds) for c in connections))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return {"events_per_second": accepted / elapsed, "accepted": accepted, "errors": errors}


async def latency(
    port: int, path: str, rate: float, seconds: float, connections: int
) -> dict[str, Any]:
    """Latencies at a fixed arrival rate (open loop), timed from when each request was due."""
    calls = Calls(f"lt{uuid.uuid4().hex[:6]}")
    # Interleave calls the way a busy PBX does: a few dozen in progress at once, so one call's
    # events are ~60 ms apart at 500 events/s.
    in_flight = [calls.call() for _ in range(32)]
    total = int(rate * seconds)
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await Connection.open(port))
    latencies: list[float] = []
    lags: list[float] = []
    done_at: list[float] = []
    errors = 0

    async def one(due: float, body: bytes) -> None:
        nonlocal errors
        # Waiting for a free connection counts: it is the server being slow.
        connection = await idle.get()
        try:
            status = await connection.post(path, body)
        finally:
            idle.put_nowait(connection)
        now = time.perf_counter()
        if status != 202:
            errors += 1
            return
        latencies.append((now - due) * 1000)
        done_at.append(now)

    tasks = []
    start = time.perf_counter() + 0.05
    for index in range(total):
        slot = index % len(in_flight)
        body = in_flight[slot].pop(0)
        if not in_flight[slot]:
            in_flight[slot] = calls.call()
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append((time.perf_counter() - due) * 1000)
        tasks.append(asyncio.create_task(one(due, body)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait().close()
    return {
        "latencies": latencies or [float("nan")],
        "client_lag_p99": _percentile(lags, 0.99),
        "achieved_rate": len(latencies) / (max(done_at, default=start + 1) - start),
        "accepted": len(latencies),
        "errors": errors,
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def generate(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement the orchestrator asked for (the load generator's process)."""
    started = time.process_time()
    if spec["kind"] == "throughput":
        result = await throughput(spec["port"], spec["path"], spec["seconds"], spec["concurrency"])
    else:
        result = await latency(
            spec["port"], spec["path"], spec["rate"], spec["seconds"], spec["connections"]
        )
    # Its own CPU: part of what the machine spends on each request.
    result["cpu_seconds"] = time.process_time() - started
    return result


def load_main(spec_json: str) -> None:
    """The load generator's entry point: one spec in, one JSON result out."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        runner = asyncio.run
    else:
        runner = uvloop.run
    print(json.dumps(runner(generate(json.loads(spec_json)))))


# -- the orchestrator -------------------------------------------------------------------------


def load(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in a fresh load-generator process."""
    result = subprocess.run(
        [sys.executable, __file__, "--load", json.dumps(spec)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(result.stdout))


@dataclass
class Row:
    """One measured endpoint."""

    backend: str
    endpoint: str
    rounds: list[float]
    p50: float
    p99: float
    achieved_rate: float
    client_lag_p99: float
    errors: int
    cpu_us: float
    #: CPU per request of the database server's processes (PostgreSQL; None: not measured).
    database_cpu_us: float | None
    #: CPU per request of the load generator.
    client_cpu_us: float

    @property
    def machine_cpu_us(self) -> float:
        """CPU per request of every process taking part."""
        return self.cpu_us + (self.database_cpu_us or 0.0) + self.client_cpu_us

    def cpu_bound(self, cores: int) -> float:
        """Events/s the CPU allows: the cores shared by all, one of them the app's at most."""
        return min(1e6 / self.cpu_us, cores * 1e6 / self.machine_cpu_us)

    @property
    def events_per_second(self) -> float:
        """The median round."""
        return sorted(self.rounds)[len(self.rounds) // 2]

    def line(self) -> str:
        """The row, formatted."""
        spread = "/".join(f"{value:.0f}" for value in self.rounds)
        return (
            f"{self.backend:<9} {self.endpoint:<8} {self.events_per_second:>9.0f} "
            f"{self.p50:>7.1f} {self.p99:>7.1f} {self.achieved_rate:>9.0f} "
            f"{self.client_lag_p99:>8.1f} {self.errors:>6} {self.cpu_us:>7.0f}   {spread}"
        )


async def count_events(url: str) -> int:
    """How many PBX events the database holds."""
    engine = create_unpooled_engine(url)
    try:
        async with engine.connect() as connection:
            return int(
                (await connection.execute(text("SELECT count(*) FROM pbx_events"))).scalar_one()
            )
    finally:
        await engine.dispose()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _database_pids(url: str) -> list[int]:
    """PostgreSQL's processes that work for this database: its backends, and the server's
    own (WAL writer, checkpointer and the like, which belong to no database)."""
    import asyncpg  # type: ignore[import-untyped]

    parsed = make_url(url)
    connection = await asyncpg.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database,
    )
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE (datname = current_database()"
            " OR datname IS NULL) AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    return [row["pid"] for row in rows]


class DatabaseCpu:
    """CPU time of the PostgreSQL processes that serve the benchmark's database.

    Readable when the benchmark runs as root or as the server's user; otherwise (and on
    SQLite, which runs inside the app's process) it measures nothing.
    """

    def __init__(self, url: str) -> None:
        self.url = url if make_url(url).get_backend_name() == "postgresql" else None

    def snapshot(self) -> dict[int, float] | None:
        """Each process's CPU time so far; None when not measured."""
        if self.url is None:
            return None
        times = {}
        for pid in asyncio.run(_database_pids(self.url)):
            try:
                times[pid] = _cpu_seconds(pid)
            except (OSError, IndexError, ValueError):
                return None
        return times

    def since(self, before: dict[int, float] | None) -> float | None:
        """CPU time used since ``before`` (a process started since counts whole)."""
        after = self.snapshot()
        if before is None or after is None:
            return None
        return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def measure(
    backend: str, port: int, pid: int, database_cpu: DatabaseCpu, options: argparse.Namespace
) -> tuple[list[Row], int]:
    """Both endpoints on one server, interleaved; the rows and the webhook's 202 count."""
    endpoints = {"no-op": NOOP, "webhook": WEBHOOK}
    rounds: dict[str, list[float]] = {name: [] for name in endpoints}
    errors = dict.fromkeys(endpoints, 0)
    cpu = dict.fromkeys(endpoints, 0.0)
    client_cpu = dict.fromkeys(endpoints, 0.0)
    db_cpu: dict[str, float | None] = dict.fromkeys(endpoints, 0.0)
    handled = dict.fromkeys(endpoints, 0)
    latencies: dict[str, dict[str, Any]] = {}
    accepted = 0
    for name, path in endpoints.items():  # warm-up
        warm = load(
            {
                "kind": "throughput",
                "port": port,
                "path": path,
                "seconds": 1.0,
                "concurrency": options.concurrency,
            }
        )
        accepted += warm["accepted"] if name == "webhook" else 0
    for index in range(options.rounds):
        order = list(endpoints) if index % 2 == 0 else list(reversed(endpoints))
        for name in order:
            before = _cpu_seconds(pid)
            db_before = database_cpu.snapshot()
            result = load(
                {
                    "kind": "throughput",
                    "port": port,
                    "path": endpoints[name],
                    "seconds": options.seconds,
                    "concurrency": options.concurrency,
                }
            )
            cpu[name] += _cpu_seconds(pid) - before
            used = database_cpu.since(db_before)
            so_far = db_cpu[name]
            db_cpu[name] = None if used is None or so_far is None else so_far + used
            client_cpu[name] += result["cpu_seconds"]
            handled[name] += result["accepted"] + result["errors"]
            rounds[name].append(result["events_per_second"])
            errors[name] += result["errors"]
            accepted += result["accepted"] if name == "webhook" else 0
    for name in ("webhook", "no-op"):
        result = load(
            {
                "kind": "latency",
                "port": port,
                "path": endpoints[name],
                "rate": options.rate,
                "seconds": options.latency_seconds,
                "connections": options.connections,
            }
        )
        latencies[name] = result
        errors[name] += result["errors"]
        accepted += result["accepted"] if name == "webhook" else 0
    rows = [
        Row(
            backend,
            name,
            rounds[name],
            _percentile(latencies[name]["latencies"], 0.5),
            _percentile(latencies[name]["latencies"], 0.99),
            latencies[name]["achieved_rate"],
            latencies[name]["client_lag_p99"],
            errors[name],
            cpu[name] / max(1, handled[name]) * 1e6,
            _per_request(db_cpu[name], handled[name]),
            client_cpu[name] / max(1, handled[name]) * 1e6,
        )
        for name in endpoints
    ]
    return rows, accepted


def _per_request(seconds: float | None, requests: int) -> float | None:
    return None if seconds is None else seconds / max(1, requests) * 1e6


async def _prepare(
    backend: str, admin: str | None, tmp: Path, stack: contextlib.AsyncExitStack
) -> str:
    return await stack.enter_async_context(database(backend, admin, tmp))


def run(options: argparse.Namespace) -> None:
    """Every backend, one after the other."""
    admin = options.postgres or os.environ.get("CALLBRIDGE_TEST_POSTGRES_URL")
    if admin:
        admin = _asyncpg_url(admin)
    backends = ([] if options.no_sqlite else ["sqlite"]) + (["postgres"] if admin else [])
    print(
        f"one event per request; throughput: {options.concurrency} connections back to back, "
        f"{options.rounds} interleaved rounds of {options.seconds:.0f} s (median; all rounds "
        f"at the end of the row); latency: open loop at {options.rate:.0f} events/s for "
        f"{options.latency_seconds:.0f} s on up to {options.connections} connections, timed "
        "from when each request was due; load generator in its own process"
    )
    print(
        f"{'database':<9} {'endpoint':<8} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'achieved':>9} {'lag p99':>8} {'errors':>6} {'cpu µs':>7}   rounds"
    )
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="cbbench-") as tmp_dir:
            tmp = Path(tmp_dir)
            loop = asyncio.new_event_loop()
            try:
                stack = contextlib.AsyncExitStack()
                url = loop.run_until_complete(_prepare(backend, admin, tmp, stack))
                try:
                    profile = (
                        Path(options.profile).resolve() / f"ingest-{backend}.prof"
                        if options.profile
                        else None
                    )
                    with server(url, tmp / "var", profile) as (base, pid):
                        port = int(base.rsplit(":", 1)[1])
                        rows, accepted = measure(backend, port, pid, DatabaseCpu(url), options)
                    stored = loop.run_until_complete(count_events(url))
                finally:
                    loop.run_until_complete(stack.aclose())
            finally:
                loop.close()
        noop, webhook = rows
        print(noop.line())
        print(webhook.line())
        ratio = webhook.events_per_second / noop.events_per_second
        per_round = " ".join(
            f"{w / n:.2f}" for w, n in zip(webhook.rounds, noop.rounds, strict=True)
        )
        print(
            f"{backend:<9} ratio: {ratio:.2f} (webhook events/s over no-op events/s; "
            f"per round {per_round})"
        )
        print(
            f"{backend:<9} cpu ratio: {noop.cpu_us / webhook.cpu_us:.2f} (no-op's server CPU "
            "per request over the webhook's: the rate ratio on a core of its own)"
        )
        cores = len(os.sched_getaffinity(0))
        for row in rows:
            database_part = (
                "" if row.database_cpu_us is None else f" + database {row.database_cpu_us:.0f}"
            )
            print(
                f"{backend:<9} {row.endpoint:<8} cpu µs/event: app {row.cpu_us:.0f}"
                f"{database_part} + load generator {row.client_cpu_us:.0f}"
                f" = {row.machine_cpu_us:.0f}; the CPU allows {row.cpu_bound(cores):.0f}/s"
                f" on {cores} cores"
            )
        print(
            f"{backend:<9} cpu-bound ratio: {webhook.cpu_bound(cores) / noop.cpu_bound(cores):.2f}"
            " (the ratio this machine's CPU allows: the app's one core, and every process's"
            " CPU shared out over all cores)"
        )
        verdict = "ok" if stored == accepted else "LOST EVENTS"
        print(f"{backend:<9} durable: {stored} events stored, {accepted} answered 202 ({verdict})")
        if stored != accepted:
            raise SystemExit(1)
    if not admin:
        print("PostgreSQL skipped: pass --postgres URL or set CALLBRIDGE_TEST_POSTGRES_URL")


def _asyncpg_url(url: str) -> str:
    # callbridge talks to PostgreSQL through asyncpg; accept the plain URL a DBA would give.
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def main() -> None:
    """Parse the options and run."""
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--load":
        load_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each round")
    parser.add_argument("--concurrency", type=int, default=16, help="connections in a round")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s of the latency run")
    parser.add_argument(
        "--latency-seconds", type=float, default=6.0, help="length of the latency run"
    )
    parser.add_argument(
        "--connections", type=int, default=64, help="connections of the latency run"
    )
    parser.add_argument("--postgres", help="PostgreSQL server URL (a database is created)")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--profile", help="write the server's cProfile stats to this folder")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
