"""``callbridge demo``: the whole system on one machine, in one command (what ``make run`` runs).

It starts the Bitrix24 emulator (``python -m bitrix24_emulator``, a subprocess: callbridge never
imports it) and the AMI replayer (``python -m callbridge ami-replay``, the recorded scenarios in a
loop over TCP), migrates a fresh demo SQLite database under ``VAR_DIR/demo/``, then runs the
bridge (web app and worker, as ``callbridge run``). Once the bridge listens it registers and
installs our app in the emulator (the emulator POSTs the install to ``/bitrix24/install``), links
the portal to the demo enterprise, syncs the portal's users and gives the enterprise the
replayer's AMI URL. It prints where to look and one line per finished call. Ctrl-C or SIGTERM
stops the bridge, then its children.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Annotated, Any

import httpx
import typer
import uvicorn
from pydantic import SecretStr

from callbridge import __version__
from callbridge.config import Settings
from callbridge.demo import streams
from callbridge.directory import sync_integration_users
from callbridge.domain.errors import CallbridgeError
from callbridge.logging import configure_logging, get_logger
from callbridge.portals import Portals
from callbridge.storage import migrate as migrations
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import Enterprise
from callbridge.storage.repositories import EnterpriseRepository
from callbridge.web.app import create_app
from callbridge.worker import build_worker

logger = get_logger(__name__)

HOST = "127.0.0.1"
ENTERPRISE = "100"
CLIENT_ID = "local.callbridge-demo"
CLIENT_SECRET = "callbridge-demo-secret"  # the emulator's app, nothing real
AMI_USER, AMI_SECRET = "crm", "crm-secret"  # the replayer's default account
DEFAULT_PORTS = {"bridge": 8000, "emulator": 8090, "ami": 5038}
_START_TIMEOUT_SECONDS = 30.0
_STOP_TIMEOUT_SECONDS = 10.0
_POLL_SECONDS = 1.0
_DIRECTIONS = {1: "outbound", 2: "inbound", 3: "inbound→redirect", 4: "callback"}


class _Stopped(Exception):
    """Ctrl-C or SIGTERM arrived before the bridge was serving."""


@dataclass
class _Run:
    """What the demo started, so that it can stop all of it."""

    stop: threading.Event = field(default_factory=threading.Event)
    server: uvicorn.Server | None = None
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)

    def on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.stop.set()
        if self.server is not None:
            self.server.should_exit = True

    def check(self) -> None:
        if self.stop.is_set():
            raise _Stopped

    def spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        out = log.open("ab")
        self.logs.append(out)
        # A session of their own: Ctrl-C reaches the demo only, which stops them in order.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.children.append(process)
        return process

    def stop_children(self) -> None:
        for process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
        for process in reversed(self.children):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for out in self.logs:
            out.close()


@contextlib.contextmanager
def _signals(run: _Run) -> Iterator[None]:
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, run.on_signal) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _free_port(preferred: int, taken: set[int]) -> int:
    """``preferred`` when it is free (0: any), else a free port the system picks."""
    for candidate in (preferred, 0) if preferred else (0,):
        if candidate in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, candidate))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
            if port not in taken:
                taken.add(port)
                return port
    return _free_port(0, taken)


def _wait_http(run: _Run, process: subprocess.Popen[bytes], url: str, what: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        run.check()
        if process.poll() is not None:
            raise CallbridgeError(f"the {what} exited with status {process.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise CallbridgeError(f"the {what} did not start within {_START_TIMEOUT_SECONDS:g} s")


def _wait_tcp(run: _Run, process: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        run.check()
        if process.poll() is not None:
            raise CallbridgeError(f"the {what} exited with status {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise CallbridgeError(f"the {what} did not start within {_START_TIMEOUT_SECONDS:g} s")


async def _prepare_database(settings: Settings, box: SecretBox) -> None:
    """Migrate the demo database and create the demo enterprise (no AMI URL yet)."""
    await migrations.upgrade(settings.effective_database_url, "head")
    engine = create_engine(settings.effective_database_url)
    try:
        async with create_session_factory(engine)() as session, session.begin():
            if await EnterpriseRepository(session).by_number(ENTERPRISE) is None:
                session.add(
                    Enterprise(
                        number=ENTERPRISE,
                        name="Demo enterprise",
                        webhook_secret_enc=box.encrypt("demo-webhook-token"),
                    )
                )
    finally:
        await engine.dispose()


async def _connect_portal(settings: Settings, box: SecretBox, emulator_url: str, ami: str) -> str:
    """Install our app in the emulator, link it to the demo enterprise, point it at the AMI."""
    async with httpx.AsyncClient(base_url=emulator_url, timeout=30.0) as control:
        response = await control.post(
            "/_emulator/apps",
            json={
                "handler_url": f"{settings.public_base_url}/bitrix24/install",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "name": "callbridge (demo)",
            },
        )
        response.raise_for_status()
        response = await control.post(f"/_emulator/apps/{CLIENT_ID}/install", json={"user_id": 1})
        response.raise_for_status()
        member_id = str((await control.get("/_emulator/state")).json()["member_id"])
    engine = create_engine(settings.effective_database_url)
    try:
        factory = create_session_factory(engine)
        async with httpx.AsyncClient(timeout=settings.http_timeout_seconds) as http:
            portals = Portals(settings, factory, http, box)
            async with factory() as session, session.begin():
                try:
                    row = await portals.link(session, ENTERPRISE, member_id)
                except CallbridgeError as err:
                    raise CallbridgeError(
                        f"the emulator's install did not reach the bridge ({err.message}); "
                        f"see {settings.var_dir / 'demo' / 'callbridge.log'}"
                    ) from err
                row.settings = {**(row.settings or {}), "default_user_id": 1}
                integration_id = row.id
            await sync_integration_users(portals, integration_id)
        async with factory() as session, session.begin():
            repo = EnterpriseRepository(session)
            enterprise = await repo.by_number(ENTERPRISE)
            assert enterprise is not None
            await repo.update(enterprise, ami_url_enc=box.encrypt(ami))
    finally:
        await engine.dispose()
    return member_id


def _summary(call: dict[str, Any]) -> str:
    """One line for a finished call of the emulator's ``/_emulator/calls``."""
    clock = time.strftime("%H:%M:%S")  # when the portal had it finished (to the second)
    direction = _DIRECTIONS.get(int(call.get("TYPE") or 0), str(call.get("TYPE")))
    number = call.get("PHONE_NUMBER") or "?"
    shown = ",".join(str(u) for u in call.get("cards_shown") or []) or "-"
    status = call.get("STATUS_CODE") or "?"
    answered = str(call.get("USER_ID")) if status == "200" else "-"
    crm = "-"
    if call.get("CRM_ENTITY_TYPE"):
        crm = f"{call['CRM_ENTITY_TYPE'].lower()} {call.get('CRM_ENTITY_ID')}"
        if call.get("CRM_CREATED_LEAD"):
            crm += " (new)"
    return (
        f"{clock}  {direction:<9} {number:<14} shown to {shown:<7} answered by {answered:<3} "
        f"status {status}  {int(call.get('DURATION') or 0):>3} s  {crm}"
    )


async def _print_calls(emulator_url: str) -> None:
    """Print each call once, when the emulator has it finished."""
    printed: set[str] = set()
    async with httpx.AsyncClient(base_url=emulator_url, timeout=5.0) as client:
        while True:
            await asyncio.sleep(_POLL_SECONDS)
            try:
                calls = (await client.get("/_emulator/calls")).json()
            except (httpx.HTTPError, ValueError):
                continue
            for call in calls:
                key = str(call.get("CALL_ID"))
                if call.get("state") == "finished" and key not in printed:
                    printed.add(key)
                    typer.echo(_summary(call))


def _where_to_look(settings: Settings, emulator_url: str, ami_port: int, logs: Path) -> None:
    base = settings.public_base_url
    typer.echo(f"callbridge {__version__} demo is running.")
    typer.echo(f"  What an employee sees (the emulated Bitrix24): {emulator_url}/")
    typer.echo(f"  callbridge API docs:     {base}/docs   (health: {base}/healthz)")
    typer.echo(f"  Emulator control API:    {emulator_url}/_emulator/docs")
    typer.echo(
        f"  AMI replayer:            ami://{AMI_USER}:***@{HOST}:{ami_port} (recorded calls)"
    )
    typer.echo(f"  Logs:                    {logs}/callbridge.log, emulator.log, ami-replay.log")
    typer.echo(f"  Enterprise {ENTERPRISE} is linked to the portal; `callbridge enterprise status`")
    typer.echo(f"    with CALLBRIDGE_DATABASE_URL={settings.effective_database_url}")
    typer.echo("Calls as they finish (time, direction, number, cards, answered, status, CRM):")
    typer.echo("Press Ctrl+C to stop.")


async def _bridge(
    run: _Run, settings: Settings, box: SecretBox, emulator_url: str, ami_port: int, logs: Path
) -> None:
    # Imported here: the package imports this module.
    from callbridge.cli import _bind

    sock = _bind(settings.host, settings.port)
    config = uvicorn.Config(
        create_app(settings, worker_factory=build_worker),
        log_config=None,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    run.server = server
    if run.stop.is_set():
        return

    async def after_start() -> None:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.05)
        ami = f"ami://{AMI_USER}:{AMI_SECRET}@{HOST}:{ami_port}"
        await _connect_portal(settings, box, emulator_url, ami)
        _where_to_look(settings, emulator_url, ami_port, logs)
        await _print_calls(emulator_url)

    try:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        side = asyncio.create_task(after_start())
        await asyncio.wait({serving, side}, return_when=asyncio.FIRST_COMPLETED)
        failure = side.exception() if side.done() else None
        if failure is not None:
            server.should_exit = True
        await serving
        side.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await side
    finally:
        sock.close()
    if failure is not None:
        raise failure
    if not server.started and not run.stop.is_set():
        raise CallbridgeError(f"the web app did not start; see {logs / 'callbridge.log'}")


def demo_command(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="callbridge's port (taken: a free one).")] = 8000,
    emulator_port: Annotated[int, typer.Option(help="The emulator's port.")] = 8090,
    ami_port: Annotated[int, typer.Option(help="The AMI replayer's port.")] = 5038,
    speed: Annotated[
        float, typer.Option(min=0.0, help="Replay pace: 1.0 = as recorded, 10 = ten times faster.")
    ] = 1.0,
) -> None:
    """Run the demo: emulated Bitrix24, recorded PBX calls over AMI, and callbridge between them."""
    base = ctx.find_root().obj
    if not isinstance(base, Settings):  # pragma: no cover - the callback always sets it
        raise CallbridgeError("settings are not loaded")
    logs = base.var_dir / "demo"
    logs.mkdir(parents=True, exist_ok=True)
    database = logs / "demo.db"
    for stale in (database, logs / "demo.db-wal", logs / "demo.db-shm"):
        stale.unlink(missing_ok=True)  # the emulator starts empty every time: so does the demo
    taken: set[int] = set()
    ports = {
        "bridge": _free_port(port, taken),
        "emulator": _free_port(emulator_port, taken),
        "ami": _free_port(ami_port, taken),
    }
    emulator_url = f"http://{HOST}:{ports['emulator']}"
    settings = base.model_copy(
        update={
            "host": HOST,
            "port": ports["bridge"],
            "public_base_url": f"http://{HOST}:{ports['bridge']}",
            "database_url": f"sqlite+aiosqlite:///{database}",
            "bitrix24_client_id": CLIENT_ID,
            "bitrix24_client_secret": SecretStr(CLIENT_SECRET),
            "bitrix24_oauth_server_url": emulator_url,
            "ami_enabled": True,
            "ami_poll_interval_seconds": 1.0,
            "worker_poll_interval_seconds": 0.2,
        }
    )
    for name, wanted in (("bridge", port), ("emulator", emulator_port), ("ami", ami_port)):
        if wanted and ports[name] != wanted:
            typer.echo(f"port {wanted} is taken; the {name} uses {ports[name]}")
    log_file = (logs / "callbridge.log").open("a", encoding="utf-8")
    configure_logging(settings.log_format, settings.log_level, stream=log_file)
    box = SecretBox(settings.fernet_keys())
    run = _Run()
    try:
        with _signals(run):
            typer.echo(f"Starting the Bitrix24 emulator on {emulator_url} ...")
            emulator = run.spawn(
                [
                    sys.executable,
                    "-m",
                    "bitrix24_emulator",
                    "--host",
                    HOST,
                    "--port",
                    str(ports["emulator"]),
                    "--base-url",
                    emulator_url,
                    "--plan",
                    "standard",
                ],
                logs / "emulator.log",
            )
            typer.echo(f"Starting the AMI replayer on {HOST}:{ports['ami']} ...")
            replayer = run.spawn(
                [
                    sys.executable,
                    "-m",
                    "callbridge",
                    "ami-replay",
                    *(str(path) for path in streams()),
                    "--host",
                    HOST,
                    "--port",
                    str(ports["ami"]),
                    "--speed",
                    f"{speed:g}",
                    "--loop",
                    "--timestamps",
                    "--rebase",
                ],
                logs / "ami-replay.log",
            )
            _wait_http(run, emulator, f"{emulator_url}/_emulator/state", "emulator")
            _wait_tcp(run, replayer, ports["ami"], "AMI replayer")
            run.check()
            asyncio.run(_prepare_database(settings, box))
            run.check()
            typer.echo(f"Starting callbridge on {settings.public_base_url} ...")
            asyncio.run(_bridge(run, settings, box, emulator_url, ports["ami"], logs))
    except _Stopped:
        pass
    finally:
        typer.echo("Stopping ...")
        run.stop_children()
        log_file.close()
    typer.echo("Stopped.")
