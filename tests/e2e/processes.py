"""Real processes for failure tests: the emulator, ``callbridge serve``, ``callbridge worker``.

Nothing runs in the test's process but a TCP proxy and the PBX: the emulator is ``python -m
bitrix24_emulator`` on its own port, callbridge's web app and worker are separate ``python -m
callbridge`` processes on one database (SQLite file or PostgreSQL), configured only through
``CALLBRIDGE_*`` variables. The set-up an operator does with the CLI (``migrate``, ``enterprise
add``, ``integration link``, ``users sync``) runs in this process with the same settings: four
more interpreters would cost half a minute on a loaded machine.

Why a proxy: the emulator keeps its portal in memory and cannot dump or restore it, so stopping
its process would lose the calls we want to count. Callbridge reaches the portal (REST and OAuth)
only through :class:`TcpProxy`, whose :meth:`~TcpProxy.down` closes the listening socket (new
connections are refused) and aborts every open connection (a request in flight loses its answer,
whether or not the portal processed it) — what callbridge sees when the portal's host goes away.
The emulator's own fault modes (``503``, ``reset``, ``timeout`` for a window) are there too
(:meth:`Stack.emulator_fault`). The control API is reached directly, never through the proxy.

:func:`run_outage` plays a call storm through an outage and a SIGKILL of the worker and counts
what reached the portal; ``tests/e2e/test_outage_e2e.py`` and ``benchmarks/outage.py`` use it.
With ``workers=N`` and ``ami_url`` the stack runs N workers listening to a PBX's AMI (one holds
the listener, the others wait), which ``tests/e2e/test_ami_failover_e2e.py`` kills one by one.
Every process is stopped when the stack's context exits, and killed when the interpreter exits
if that could not run.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import random
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from callbridge.config import ENV_PREFIX, Settings, load_settings
from callbridge.directory import sync_integration_users
from callbridge.domain.commands import split_portal_external_call_id
from callbridge.portals import Portals
from callbridge.services.call_tracking import BITRIX24_COMMAND_JOB
from callbridge.storage import migrate
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory, create_unpooled_engine
from callbridge.storage.models import Enterprise, Job, JobStatus
from callbridge.storage.repositories import EnterpriseRepository

HOST = "127.0.0.1"
ENTERPRISE = "100"
TOKEN = "outage-webhook-token-0123456789"
CLIENT_ID = "local.callbridge-outage"
CLIENT_SECRET = "callbridge-outage-secret"  # the emulator's app, nothing real
#: The seed's contact 1: a known caller, so no lead is created per call.
KNOWN_CALLER = "84951234567"
#: Extensions of the seed's active users 1..3 (104 was fired: Bitrix24 refuses to finish for them).
EXTENSIONS = ("101", "102", "103")
STATUS_ANSWERED, STATUS_MISSED = "200", "304"
SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- the proxy ------------------------------------------------------------------------------------


class TcpProxy:
    """Forwards a local port to the emulator; :meth:`down` makes the port refuse connections."""

    def __init__(self, port: int, upstream_port: int) -> None:
        self.port = port
        self.upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self.aborted_mid_request = 0  # connections cut by down() while a request awaited
        self.answers_held = 0  # answers of processed requests never delivered
        self._trap: asyncio.Future[None] | None = None

    async def up(self) -> None:
        """Listen (again) on the port."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, HOST, self.port, reuse_address=True
            )

    async def down(self) -> None:
        """Stop listening and cut every open connection (a reset, as a vanished host gives)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            self.aborted_mid_request += link.awaiting
            link.abort()
        self._links.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def close(self) -> None:
        """Stop for good."""
        await self.down()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, link, request=True),
                self._pump(up_reader, writer, link, request=False),
            )
        finally:
            self._links.discard(link)
            link.abort()

    async def catch_answer(self, within: float) -> bool:
        """Hold back the next answer the portal sends; whether one came within ``within`` s.

        The portal has processed that request, and its client never learns the outcome: the
        connection stays open and silent until :meth:`down` or the client's death cuts it.
        """
        trap: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._trap = trap
        try:
            await asyncio.wait_for(asyncio.shield(trap), within)
        except TimeoutError:
            return False
        finally:
            self._trap = None
        self.answers_held += 1
        return True

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        *,
        request: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                trap = self._trap
                if not request and trap is not None and not trap.done():
                    trap.set_result(None)
                    await link.closed.wait()
                    return
                link.awaiting = request
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            link.abort()


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    awaiting: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def abort(self) -> None:
        self.closed.set()
        self.client.transport.abort()
        self.upstream.transport.abort()


# --- the processes --------------------------------------------------------------------------------


@dataclass
class Stack:
    """The running processes, their ports and the handles to look inside."""

    tmp: Path
    database_url: str
    env: dict[str, str]
    emulator_port: int
    proxy: TcpProxy
    bridge_url: str
    emulator: asyncio.subprocess.Process | None = None
    web: asyncio.subprocess.Process | None = None
    #: Every ``callbridge worker`` started, in order (killed ones too).
    workers: list[asyncio.subprocess.Process] = field(default_factory=list)
    control: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.control = httpx.AsyncClient(
            base_url=f"http://{HOST}:{self.emulator_port}", timeout=30.0
        )

    @property
    def emulator_url(self) -> str:
        """Where callbridge reaches the portal: through the proxy."""
        return f"http://{HOST}:{self.proxy.port}"

    async def _spawn(self, name: str, *args: str) -> asyncio.subprocess.Process:
        log = (self.tmp / f"{name}.log").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        finally:
            log.close()
        _spawned[:] = [p for p in _spawned if p.returncode is None]
        _spawned.append(process)
        return process

    @property
    def worker(self) -> asyncio.subprocess.Process | None:
        """The worker started last."""
        return self.workers[-1] if self.workers else None

    async def start_worker(self) -> asyncio.subprocess.Process:
        """Start one more ``callbridge worker`` process (its log: ``worker<N>.log``)."""
        name = f"worker{len(self.workers) + 1}"
        process = await self._spawn(name, "-m", "callbridge", "worker")
        self.workers.append(process)
        return process

    def worker_log(self, process: asyncio.subprocess.Process) -> str:
        """What ``process`` (one of :attr:`workers`) has logged so far."""
        path = self.tmp / f"worker{self.workers.index(process) + 1}.log"
        return path.read_text(errors="replace")

    async def kill_worker(self, process: asyncio.subprocess.Process | None = None) -> None:
        """SIGKILL a worker (the last one started by default): no shutdown, no lease released,
        requests cut mid-way, its database connections closed by the kernel."""
        process = process or self.worker
        assert process is not None
        process.send_signal(signal.SIGKILL)
        await process.wait()

    async def emulator_fault(self, kind: str, seconds: float) -> None:
        """The emulator fails every REST and OAuth request with ``kind`` for ``seconds``."""
        now = time.time()
        response = await self.control.put(
            "/_emulator/faults",
            json={"outage_start": now, "outage_end": now + seconds, "outage_kind": kind},
        )
        response.raise_for_status()

    def logs(self, lines: int = 40) -> str:
        """The tail of every process's log (for a failing test)."""
        parts = []
        for path in sorted(self.tmp.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    async def stop(self) -> None:
        """Stop every process (gracefully, then by force) and the proxy."""
        processes = [*self.workers, self.web, self.emulator]
        for process in processes:
            if process is not None and process.returncode is None:
                process.terminate()
        for process in processes:
            if process is None:
                continue
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        await self.proxy.close()
        await self.control.aclose()


def tcp_ports(pid: int) -> set[int]:
    """Local ports of the TCP sockets process ``pid`` has open (Linux ``/proc``).

    Which process is at the other end of a connection the test sees (a PBX client, a
    PostgreSQL backend's ``client_port``): the one holding a socket bound to that port.
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cells = line.split()
                if len(cells) > 9 and cells[9] in inodes:
                    ports.add(int(cells[1].rsplit(":", 1)[1], 16))
    return ports


#: Every process any stack started: whatever a test's teardown could not stop (the event loop
#: torn down by a timeout, an interrupted run) is killed when the interpreter exits.
_spawned: list[asyncio.subprocess.Process] = []


@atexit.register
def _kill_leftovers() -> None:
    for process in _spawned:
        if process.returncode is None:
            # Each process leads its own session (start_new_session): kill its whole group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


def _overrides(env: dict[str, str]) -> dict[str, str]:
    """The stack's ``CALLBRIDGE_*`` variables as settings (what the processes read)."""
    return {
        k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)
    }


async def _prepare_database(settings: Settings, box: SecretBox, ami_url: str | None) -> None:
    """``callbridge migrate`` and ``callbridge enterprise add``, in this process (quicker)."""
    await migrate.upgrade(settings.effective_database_url)
    engine = create_engine(settings.effective_database_url)
    try:
        async with create_session_factory(engine)() as session, session.begin():
            await EnterpriseRepository(session).add(
                Enterprise(
                    number=ENTERPRISE,
                    name="Outage",
                    webhook_secret_enc=box.encrypt(TOKEN),
                    ami_url_enc=box.encrypt(ami_url) if ami_url else None,
                )
            )
    finally:
        await engine.dispose()


async def _link_portal(settings: Settings, box: SecretBox, member_id: str) -> None:
    """``callbridge integration link`` and ``callbridge users sync``, in this process."""
    engine = create_engine(settings.effective_database_url)
    try:
        factory = create_session_factory(engine)
        async with httpx.AsyncClient(timeout=settings.http_timeout_seconds) as http:
            portals = Portals(settings, factory, http, box)
            async with factory() as session, session.begin():
                integration_id = (await portals.link(session, ENTERPRISE, member_id)).id
            await sync_integration_users(portals, integration_id)
    finally:
        await engine.dispose()


async def _wait_http(url: str, process: asyncio.subprocess.Process, what: str) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"the {what} exited with status {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the {what} did not start within 30 s")


@asynccontextmanager
async def stack(
    database_url: str,
    tmp: Path,
    *,
    lease_seconds: float = 10.0,
    latency_ms: float = 0.0,
    plan: str = "standard",
    workers: int = 1,
    ami_url: str | None = None,
) -> AsyncIterator[Stack]:
    """Emulator, proxy, web app and ``workers`` workers running on ``database_url``, the app
    installed; with ``ami_url`` the enterprise has it and the workers listen to its AMI."""
    os.makedirs(tmp, exist_ok=True)
    emulator_port, proxy_port, bridge_port = free_port(), free_port(), free_port()
    bridge_url = f"http://{HOST}:{bridge_port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")},
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
        "CALLBRIDGE_DATABASE_URL": database_url,
        "CALLBRIDGE_VAR_DIR": str(tmp / "var"),
        "CALLBRIDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "CALLBRIDGE_HOST": HOST,
        "CALLBRIDGE_PORT": str(bridge_port),
        "CALLBRIDGE_PUBLIC_BASE_URL": bridge_url,
        "CALLBRIDGE_BITRIX24_CLIENT_ID": CLIENT_ID,
        "CALLBRIDGE_BITRIX24_CLIENT_SECRET": CLIENT_SECRET,
        "CALLBRIDGE_BITRIX24_OAUTH_SERVER_URL": f"http://{HOST}:{proxy_port}",
        "CALLBRIDGE_WORKER_POLL_INTERVAL_SECONDS": "0.2",
        "CALLBRIDGE_JOB_LEASE_SECONDS": f"{lease_seconds:g}",
        "CALLBRIDGE_HTTP_TIMEOUT_SECONDS": "5",
        "CALLBRIDGE_WORKER_SHUTDOWN_TIMEOUT_SECONDS": "5",
        "CALLBRIDGE_AMI_ENABLED": "true" if ami_url else "false",
        "CALLBRIDGE_LOG_LEVEL": "INFO",
    }
    s = Stack(
        tmp, database_url, env, emulator_port, TcpProxy(proxy_port, emulator_port), bridge_url
    )
    try:
        emulator_args = [
            "-m",
            "bitrix24_emulator",
            "--host",
            HOST,
            "--port",
            str(emulator_port),
            "--base-url",
            s.emulator_url,
            "--plan",
            plan,
        ]
        if latency_ms:
            emulator_args += ["--latency-ms", f"{latency_ms:g}", "--latency-dist", "uniform"]
        s.emulator = await s._spawn("emulator", *emulator_args)
        await s.proxy.up()
        settings = load_settings(**_overrides(env))
        box = SecretBox(settings.fernet_keys())
        await _prepare_database(settings, box, ami_url)
        s.web = await s._spawn("web", "-m", "callbridge", "serve")
        await _wait_http(f"http://{HOST}:{emulator_port}/_emulator/state", s.emulator, "emulator")
        await _wait_http(f"{bridge_url}/readyz", s.web, "web app")
        response = await s.control.post(
            "/_emulator/apps",
            json={
                "handler_url": f"{bridge_url}/bitrix24/install",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "name": "callbridge (outage)",
            },
        )
        response.raise_for_status()
        response = await s.control.post(f"/_emulator/apps/{CLIENT_ID}/install", json={"user_id": 1})
        response.raise_for_status()
        member_id = str((await s.control.get("/_emulator/state")).json()["member_id"])
        await _link_portal(settings, box, member_id)
        for _ in range(workers):
            await s.start_worker()
        yield s
    finally:
        await s.stop()


# --- the PBX --------------------------------------------------------------------------------------


@dataclass
class PbxCall:
    """One call the PBX reports: its events and when each is sent (unix time)."""

    linkedid: str
    answered: bool
    events: list[tuple[float, dict[str, Any]]]

    @property
    def expected_status(self) -> str:
        """The STATUS_CODE Bitrix24 must end up with."""
        return STATUS_ANSWERED if self.answered else STATUS_MISSED


def pbx_call(linkedid: str, start: float, rng: random.Random) -> PbxCall:
    """An inbound call ringing 1-3 employees, answered (70 %) or missed."""
    ringing = rng.sample(EXTENSIONS, rng.randint(1, 3))
    answered = rng.random() < 0.7
    ring_for = rng.uniform(1.0, 4.0)
    talk = rng.uniform(2.0, 8.0) if answered else 0.0
    events: list[tuple[float, dict[str, Any]]] = []

    def add(offset: float, type_: str, **fields: Any) -> None:
        when = start + offset
        stamp = datetime.fromtimestamp(when, UTC).isoformat()
        event_id = f"{linkedid}:{len(events)}"
        event = {"type": type_, "call_id": linkedid, "event_id": event_id, "timestamp": stamp}
        events.append((when, {**event, **fields}))

    add(0, "call.started", direction="inbound", external_number=KNOWN_CALLER, line="4951110101")
    add(0.2, "call.ringing", extensions=ringing)
    if answered:
        add(ring_for, "call.answered", extension=ringing[0])
        add(ring_for + talk, "call.ended", disposition="answered", talk_seconds=int(talk))
    else:
        add(ring_for, "call.ended", disposition="no_answer", hangup_cause=19)
    return PbxCall(linkedid, answered, events)


@dataclass
class PbxStats:
    """What the PBX saw of callbridge's webhook."""

    posted: int = 0
    refused: Counter[int] = field(default_factory=Counter)  # status → count, retried
    network_errors: int = 0


async def play_call(
    http: httpx.AsyncClient, call: PbxCall, stats: PbxStats, deadline: float
) -> bool:
    """Send a call's events at their times, one request at a time, retrying as a PBX does."""
    for when, event in call.events:
        delay = when - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        while True:
            try:
                response = await http.post(
                    f"/pbx/{ENTERPRISE}/events",
                    json=event,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
            except httpx.HTTPError:
                stats.network_errors += 1
            else:
                if response.status_code == 202:
                    stats.posted += 1
                    break
                stats.refused[response.status_code] += 1
                if response.status_code < 500:
                    raise RuntimeError(f"webhook refused {event}: {response.text}")
            if time.time() > deadline:
                return False
            await asyncio.sleep(0.5)
    return True


# --- the scenario ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A storm of ``calls`` over ``seconds``, an outage, and a SIGKILL of the worker."""

    calls: int = 60
    seconds: float = 24.0
    outage_at: float = 4.0  # seconds into the storm
    outage_seconds: float = 10.0
    #: ``refuse``: the proxy refuses connections and cuts open ones; or an emulator fault kind
    #: (``503``, ``reset``, ``timeout``, ``500``, ``502``) answered to every request.
    outage_kind: str = "refuse"
    kill_at: float = 16.0
    #: From ``outage_at`` and ``kill_at``, wait up to this long for an answer to cut.
    kill_wait: float = 10.0
    restart_after: float = 2.0
    drain_timeout: float = 120.0
    seed: int = 11


@dataclass
class Report:
    """What reached the portal, and what it took."""

    scenario: Scenario
    sent: int = 0  # calls whose every event callbridge accepted (202)
    not_accepted: int = 0
    registered: int = 0  # calls with one Bitrix24 registration
    finished_right: int = 0  # ... finished with the expected STATUS_CODE
    not_registered: list[str] = field(default_factory=list)
    not_finished: list[str] = field(default_factory=list)
    wrong_status: list[str] = field(default_factory=list)
    registered_twice: list[str] = field(default_factory=list)  # two CALL_IDs for one call
    register_resent: int = 0  # register accepted again for a leg (same CALL_ID: harmless)
    cards_left_open: list[str] = field(default_factory=list)  # finished, a card still shown
    dead_jobs: list[str] = field(default_factory=list)
    stuck_jobs: int = 0  # queued or running when the drain timed out
    portal_503s: int = 0  # rate-limit answers (QUERY_LIMIT_EXCEEDED)
    faulted: int = 0  # requests failed by the emulator's fault injection
    requests: int = 0  # REST requests that reached the portal
    aborted_mid_request: int = 0
    killed_mid_request: bool = False
    killed_at: float = 0.0  # seconds into the storm
    outage_cut_answer: bool = False
    outage_started_at: float = 0.0  # seconds into the storm
    webhook_refused: dict[int, int] = field(default_factory=dict)
    webhook_network_errors: int = 0
    outage_end: float = 0.0
    restarted_at: float = 0.0
    last_pbx_event: float = 0.0
    idle_at: float = 0.0
    first_success_after_outage: float | None = None
    #: Seconds from the portal's return (the worker's restart) until the last call that had
    #: ended before it was finished in Bitrix24: how long the backlog took to go out.
    backlog_after_outage: float = 0.0
    backlog_after_restart: float = 0.0
    elapsed: float = 0.0

    @property
    def lost(self) -> int:
        """Accepted calls that are not registered once and finished with the right status."""
        return len({*self.not_registered, *self.not_finished, *self.wrong_status})

    @property
    def duplicates(self) -> int:
        """Calls registered twice in Bitrix24."""
        return len(self.registered_twice)

    def lines(self) -> list[str]:
        """The report as printable lines."""
        s = self.scenario
        down = "port refuses, open connections cut" if s.outage_kind == "refuse" else s.outage_kind
        resumed = (
            f"{self.first_success_after_outage - self.outage_end:.1f} s"
            if self.first_success_after_outage is not None
            else "never"
        )
        refused = ", ".join(f"{k}: {v}" for k, v in sorted(self.webhook_refused.items())) or "none"
        return [
            f"storm: {s.calls} calls over {s.seconds:g} s",
            f"portal down at {self.outage_started_at:.1f} s for {s.outage_seconds:g} s ({down})"
            + (", cutting the answer of a processed request" if self.outage_cut_answer else ""),
            f"worker SIGKILLed at {self.killed_at:.1f} s"
            + (
                " while the portal's answer to a processed request was on its way"
                if self.killed_mid_request
                else " (no request in flight)"
            )
            + f", restarted {s.restart_after:g} s later",
            f"sent by the PBX (all events accepted): {self.sent}"
            + (f" (+{self.not_accepted} not accepted)" if self.not_accepted else ""),
            f"registered: {self.registered}; finished with the right status "
            f"(answered 200 / missed 304): {self.finished_right}",
            f"lost: {self.lost} (not registered {len(self.not_registered)}, not finished "
            f"{len(self.not_finished)}, wrong status {len(self.wrong_status)})",
            f"duplicates: {self.duplicates} (calls registered twice); register re-sent after a "
            f"lost answer: {self.register_resent} (same CALL_ID back)",
            f"dead jobs: {len(self.dead_jobs)}; stuck jobs: {self.stuck_jobs}; finished calls "
            f"with a card still shown: {len(self.cards_left_open)}",
            f"portal requests: {self.requests}; 503 QUERY_LIMIT_EXCEEDED: {self.portal_503s}; "
            f"failed by the outage fault: {self.faulted}; connections cut mid-request by the "
            f"outage: {self.aborted_mid_request}",
            f"webhook: non-202 answers {refused}, network errors {self.webhook_network_errors}",
            f"first portal request accepted after the outage: {resumed} after it ended",
            f"backlog delivered: calls ended during the outage finished in Bitrix24 within "
            f"{self.backlog_after_outage:.1f} s of its end; calls ended before the restart "
            f"within {self.backlog_after_restart:.1f} s of the restart",
            f"drain: queue idle {self.idle_at - self.last_pbx_event:.1f} s after the last PBX "
            f"event",
            f"total run: {self.elapsed:.1f} s",
        ]


async def _command_jobs(database_url: str) -> tuple[int, list[str]]:
    """(queued or running command jobs, dead ones described)."""
    engine = create_unpooled_engine(database_url)
    try:
        async with engine.connect() as conn:
            pending = await conn.scalar(
                select(func.count())
                .select_from(Job)
                .where(
                    Job.kind == BITRIX24_COMMAND_JOB,
                    Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
                )
            )
            dead = (
                await conn.execute(
                    select(Job.id, Job.payload, Job.last_error).where(
                        Job.status == JobStatus.DEAD.value
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    described = [
        f"job {row.id} {(row.payload or {}).get('linkedid')} "
        f"{((row.payload or {}).get('command') or {}).get('kind')}: {row.last_error}"
        for row in dead
    ]
    return int(pending or 0), described


async def wait_idle(database_url: str, within: float) -> int:
    """Wait until no command job is queued or running; how many still are after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        pending, _ = await _command_jobs(database_url)
        if pending == 0 or time.monotonic() > deadline:
            return pending
        await asyncio.sleep(0.25)


async def portal_requests(control: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every request the emulator logged, oldest first."""
    seen: list[dict[str, Any]] = []
    since = 0
    while True:
        page = (
            await control.get("/_emulator/requests", params={"limit": 5000, "since_id": since})
        ).json()
        seen += page
        if len(page) < 5000:
            return seen
        since = page[-1]["id"]


def accepted_commands(request: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(method in lower case, parameters) of each command a request carried that the portal
    accepted: the request itself, or each successful command of a ``batch``."""
    params = request.get("params") or {}
    method = str(request.get("method") or "").lower()
    if method != "batch":
        if request.get("status") != 200 or not method:
            return []
        return [(method, {str(k): str(v) for k, v in params.items()})]
    ok = {sub["id"] for sub in request.get("batch") or [] if not sub.get("error")}
    commands = params.get("cmd") or params.get("CMD") or {}
    if isinstance(commands, list):
        commands = {str(i): c for i, c in enumerate(commands)}
    out = []
    for name, command in commands.items():
        sub, _, query = str(command).partition("?")
        if name in ok:
            out.append((sub.lower(), dict(parse_qsl(query))))
    return out


def _registers(request: dict[str, Any]) -> list[str]:
    """EXTERNAL_CALL_IDs of the registers a request carried that the portal accepted."""
    return [
        params.get("EXTERNAL_CALL_ID", "")
        for method, params in accepted_commands(request)
        if method == "telephony.externalcall.register"
    ]


async def run_outage(s: Stack, scenario: Scenario) -> Report:
    """Play the scenario on a running stack and count what reached the portal."""
    report = Report(scenario)
    began = time.monotonic()
    rng = random.Random(scenario.seed)
    begin = time.time() + 0.5
    calls = [
        pbx_call(f"outage.{n}", begin + rng.uniform(0, scenario.seconds), rng)
        for n in range(scenario.calls)
    ]
    report.last_pbx_event = max(when for call in calls for when, _ in call.events)
    stats = PbxStats()
    deadline = report.last_pbx_event + scenario.drain_timeout
    async with httpx.AsyncClient(base_url=s.bridge_url, timeout=30.0) as http:
        players = [asyncio.create_task(play_call(http, call, stats, deadline)) for call in calls]

        async def at(offset: float) -> None:
            await asyncio.sleep(max(0.0, begin + offset - time.time()))

        await at(scenario.outage_at)
        if scenario.outage_kind == "refuse":
            # The worst moment: the portal has done what a request asked, its answer is on the way.
            report.outage_cut_answer = await s.proxy.catch_answer(scenario.kill_wait)
            report.outage_started_at = time.time() - begin
            await s.proxy.down()
            await asyncio.sleep(scenario.outage_seconds)
            await s.proxy.up()
        else:
            report.outage_started_at = time.time() - begin
            await s.emulator_fault(scenario.outage_kind, scenario.outage_seconds)
            await asyncio.sleep(scenario.outage_seconds)
        report.outage_end = time.time()
        await at(scenario.kill_at)
        # The worst moment again: the request is done, the worker dies before it hears so.
        report.killed_mid_request = await s.proxy.catch_answer(scenario.kill_wait)
        report.killed_at = time.time() - begin
        await s.kill_worker()
        await asyncio.sleep(scenario.restart_after)
        await s.start_worker()
        report.restarted_at = time.time()
        delivered = await asyncio.gather(*players)
    report.sent = sum(delivered)
    report.not_accepted = len(calls) - report.sent
    report.webhook_refused = dict(stats.refused)
    report.webhook_network_errors = stats.network_errors
    report.stuck_jobs = await wait_idle(s.database_url, scenario.drain_timeout)
    report.idle_at = time.time()
    report.aborted_mid_request = s.proxy.aborted_mid_request
    _pending, report.dead_jobs = await _command_jobs(s.database_url)

    portal_calls = (await s.control.get("/_emulator/calls")).json()
    by_linkedid: dict[str, list[dict[str, Any]]] = {}
    for call in portal_calls:
        external = str(call.get("EXTERNAL_CALL_ID") or "")
        # ``<enterprise number>/<linkedid>-<leg>``
        leg_id = split_portal_external_call_id(external)[1]
        by_linkedid.setdefault(leg_id.rsplit("-", 1)[0], []).append(call)
    for call, ok in zip(calls, delivered, strict=True):
        if not ok:
            continue
        mine = by_linkedid.get(call.linkedid, [])
        ended = call.events[-1][0]
        done = max((float(c.get("finished_at") or 0.0) for c in mine), default=0.0)
        if done and ended < report.outage_end:
            report.backlog_after_outage = max(report.backlog_after_outage, done - report.outage_end)
        if done and ended < report.restarted_at:
            lag = done - report.restarted_at
            report.backlog_after_restart = max(report.backlog_after_restart, lag)
        if not mine:
            report.not_registered.append(call.linkedid)
            continue
        report.registered += 1
        if len({c["CALL_ID"] for c in mine}) > 1:
            report.registered_twice.append(call.linkedid)
        if any(c.get("cards_visible") for c in mine if c["state"] == "finished"):
            report.cards_left_open.append(call.linkedid)
        if any(c["state"] != "finished" for c in mine):
            report.not_finished.append(call.linkedid)
        elif any(str(c.get("STATUS_CODE")) != call.expected_status for c in mine):
            report.wrong_status.append(call.linkedid)
        else:
            report.finished_right += 1

    requests = [r for r in await portal_requests(s.control) if str(r["path"]).startswith("/rest")]
    report.requests = sum(1 for r in requests if not str(r.get("method")).startswith("fault:"))
    report.faulted = sum(1 for r in requests if str(r.get("method")).startswith("fault:"))
    report.portal_503s = sum(1 for r in requests if r.get("error") == "QUERY_LIMIT_EXCEEDED")
    accepted = Counter(ext for r in requests for ext in _registers(r))
    report.register_resent = sum(n - 1 for n in accepted.values() if n > 1)
    after = [
        r["time"] for r in requests if r["time"] >= report.outage_end and r.get("status") == 200
    ]
    report.first_success_after_outage = min(after, default=None)
    report.elapsed = time.monotonic() - began
    return report


# --- databases ------------------------------------------------------------------------------------


@asynccontextmanager
async def postgres_database(admin_url: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database on ``admin_url``'s server, dropped afterwards."""
    name = f"cboutage_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        engine = create_engine(admin_url)
        try:
            async with engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    await admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def dump(report: Report) -> str:
    """The report as JSON (for a failing assertion's message)."""
    return json.dumps(
        {k: v for k, v in report.__dict__.items() if k != "scenario"}, default=str, indent=1
    )
