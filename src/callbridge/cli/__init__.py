"""The ``callbridge`` command line.

Every command reads the settings once (environment, then the ``--config`` TOML file) and puts
them in ``ctx.obj`` for its subcommands. Errors are printed as one line on stderr that says what
to fix, with a non-zero exit code; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
import uvicorn
from alembic.util import CommandError
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy.exc import SQLAlchemyError
from typer.core import TyperGroup

import callbridge.cli.enterprise_ami  # noqa: F401  (registers `enterprise set-ami` and `enterprise status`)
from callbridge import __version__
from callbridge.cli.ami import ami_replay_command
from callbridge.cli.demo import demo_command
from callbridge.cli.emulator import emulator_command
from callbridge.cli.enterprise import enterprise_app
from callbridge.cli.integration import integration_app
from callbridge.cli.jobs import jobs_app
from callbridge.cli.lines import lines_app
from callbridge.cli.users import users_app
from callbridge.config import ENV_PREFIX, Settings, load_settings
from callbridge.domain.errors import CallbridgeError, ConfigurationError, StorageError
from callbridge.logging import configure_logging, get_logger
from callbridge.storage import migrate as migrations
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.probe import (
    SchemaStatus,
    connection_error,
    ensure_ready,
    safe_url,
    schema_status,
)
from callbridge.web.app import create_app
from callbridge.web.background import WorkerFactory
from callbridge.worker import build_worker

logger = get_logger(__name__)

_DEBUG = "callbridge.debug"
_ARGS = "callbridge.args"
_HELP_OPTIONS = ("-h", "--help")
# Seconds uvicorn waits for open requests on shutdown before closing them.
_HTTP_SHUTDOWN_TIMEOUT_SECONDS = 10


class _CallbridgeGroup(TyperGroup):
    """Turns callbridge's errors into one line on stderr and a non-zero exit."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        # Remembered so the callback can tell that a subcommand's --help was asked for.
        ctx.meta[_ARGS] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]  # typer.Context is the runtime class
        try:
            return super().invoke(ctx)
        except CallbridgeError as err:
            _fail(ctx, err.message)
        except BrokenPipeError:
            # Whoever read our output left (`callbridge jobs list | head`): not a failure of
            # ours, and certainly not a database error (BrokenPipeError is a ConnectionError).
            _discard_stdout()
            raise typer.Exit(0) from None
        except (SQLAlchemyError, ConnectionError, socket.gaierror) as err:
            # A database failure that escaped the storage boundary: still one readable line.
            settings = ctx.obj if isinstance(ctx.obj, Settings) else None
            url = settings.effective_database_url if settings else "(unknown)"
            _fail(ctx, connection_error(url, err).message)
        except OSError as err:
            if err.filename is None:
                raise
            _fail(
                ctx,
                f"cannot use {err.filename} ({err.strerror}); "
                f"check {ENV_PREFIX}VAR_DIR and {ENV_PREFIX}DATABASE_URL",
            )


def _discard_stdout() -> None:
    # Python flushes stdout at exit and would report the broken pipe again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _fail(ctx: typer.Context, message: str) -> NoReturn:
    if ctx.meta.get(_DEBUG):
        traceback.print_exc(file=sys.stderr)
    one_line = " ".join(message.split())
    typer.echo(f"Error: {one_line}", err=True)
    raise typer.Exit(1) from None


app = typer.Typer(
    name="callbridge",
    cls=_CallbridgeGroup,
    help="callbridge connects Asterisk PBXs to Bitrix24 CRM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": list(_HELP_OPTIONS)},
)
config_app = typer.Typer(
    name="config",
    help="Inspect the settings.",
    no_args_is_help=True,
    context_settings={"help_option_names": list(_HELP_OPTIONS)},
)
app.add_typer(config_app)
app.add_typer(jobs_app, name="jobs")
app.add_typer(enterprise_app, name="enterprise")
app.add_typer(integration_app, name="integration")
app.add_typer(lines_app, name="lines")
app.add_typer(users_app, name="users")
app.add_typer(ami_replay_command, name="ami-replay")
app.command(
    "emulator",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)(emulator_command)
app.command("demo")(demo_command)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"callbridge {__version__}")
        raise typer.Exit()


# Commands that must work with broken settings (they are how you fix them).
_NO_SETTINGS_COMMANDS = frozenset({"keygen", "ami-replay", "emulator"})


@app.callback()
def _main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="CALLBRIDGE_CONFIG",
            help="TOML file with settings (environment variables take precedence).",
            dir_okay=False,
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks when a command fails.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Show the version and exit.",
        ),
    ] = False,
) -> None:
    """callbridge connects Asterisk PBXs to Bitrix24 CRM."""
    ctx.meta[_DEBUG] = debug
    if ctx.invoked_subcommand in _NO_SETTINGS_COMMANDS:
        return
    try:
        ctx.obj = load_settings(config)
    except ConfigurationError:
        # `callbridge migrate --help` must work even when the settings do not.
        if any(arg in _HELP_OPTIONS for arg in ctx.meta.get(_ARGS, ())):
            return
        raise


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    if not isinstance(settings, Settings):  # pragma: no cover - the callback always sets it
        raise ConfigurationError("settings are not loaded")
    return settings


def _setup_logging(settings: Settings) -> None:
    configure_logging(settings.log_format, settings.log_level)


# --- migrate ---------------------------------------------------------------------------------


def _revision_name(revision: str | None) -> str:
    return revision or "an empty database"


async def _status(settings: Settings) -> SchemaStatus:
    engine = create_engine(settings.effective_database_url)
    try:
        return await schema_status(engine)
    finally:
        await engine.dispose()


async def _upgrade(settings: Settings, revision: str) -> tuple[SchemaStatus, SchemaStatus]:
    before = await _status(settings)  # also proves the database is reachable
    url = settings.effective_database_url
    try:
        await migrations.upgrade(url, revision)
    except CommandError as err:
        raise ConfigurationError(f"cannot migrate to revision {revision!r}: {err}") from err
    except StorageError as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        raise StorageError(
            f"migration failed on {safe_url(url)}: {str(cause).splitlines()[0]}"
        ) from err
    return before, await _status(settings)


def _report_migration(before: SchemaStatus, after: SchemaStatus) -> None:
    if before.current == after.current:
        typer.echo(f"Database is already at revision {_revision_name(after.current)}.")
    else:
        typer.echo(
            f"Database migrated from {_revision_name(before.current)} "
            f"to revision {_revision_name(after.current)}."
        )


@app.command()
def migrate(
    ctx: typer.Context,
    revision: Annotated[
        str, typer.Option("--revision", help="Upgrade to this revision instead of the newest.")
    ] = "head",
) -> None:
    """Upgrade the database schema (to the newest revision by default)."""
    settings = _settings(ctx)
    _setup_logging(settings)
    before, after = asyncio.run(_upgrade(settings, revision))
    _report_migration(before, after)


# --- serving ---------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigurationError(
            f"cannot listen on {host}:{port} ({err.strerror or err}); "
            f"set {ENV_PREFIX}HOST and {ENV_PREFIX}PORT, or stop the program that uses this port"
        ) from err
    return sock


def _local_url(settings: Settings) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


@contextmanager
def _quiet_signal_replay() -> Iterator[None]:
    """Let uvicorn's graceful shutdown on SIGINT/SIGTERM end in a clean exit (status 0).

    uvicorn handles the signal, shuts down, then raises the same signal again for the previous
    handler. With the default handlers that would kill the process (SIGTERM) or print a
    KeyboardInterrupt traceback (SIGINT); this handler just records it.
    """
    received: list[int] = []

    def _record(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _record) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(settings: Settings, worker_factory: WorkerFactory | None) -> None:
    # Fail here, with one line, rather than inside the app's start-up (uvicorn prints a traceback).
    settings.fernet_keys()
    sock = _bind(settings.host, settings.port)
    web_app = create_app(settings, worker_factory=worker_factory)
    config = uvicorn.Config(
        web_app,
        log_config=None,  # our logging set-up handles uvicorn's loggers
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=_HTTP_SHUTDOWN_TIMEOUT_SECONDS,
    )
    server = uvicorn.Server(config)
    base = _local_url(settings)
    mode = "web app and worker" if worker_factory is not None else "web app"
    typer.echo(f"callbridge {__version__}: {mode} listening on {base}")
    typer.echo(f"  API docs: {base}/docs")
    typer.echo(f"  Health:   {base}/healthz  Ready: {base}/readyz")
    typer.echo("Press Ctrl+C to stop.")
    try:
        with _quiet_signal_replay():
            asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    if not server.started:
        raise CallbridgeError("the web app did not start; see the log above")


@app.command()
def run(ctx: typer.Context) -> None:
    """Migrate the database if needed, then run the web app and the worker in one process."""
    settings = _settings(ctx)
    _setup_logging(settings)
    status = asyncio.run(_status(settings))
    if not status.at_head:
        before, after = asyncio.run(_upgrade(settings, "head"))
        _report_migration(before, after)
    _serve(settings, worker_factory=build_worker)


@app.command()
def serve(ctx: typer.Context) -> None:
    """Run the web app only (run workers with `callbridge worker`)."""
    settings = _settings(ctx)
    _setup_logging(settings)
    status = asyncio.run(_status(settings))
    if not status.at_head:
        logger.warning(
            "database schema is not current; /readyz answers 503 until `callbridge migrate` runs",
            current=status.current,
            expected=status.head,
        )
    _serve(settings, worker_factory=None)


@app.command("worker")
def worker_command(ctx: typer.Context) -> None:
    """Run the worker only: deliver queued jobs until SIGTERM or Ctrl+C."""
    settings = _settings(ctx)
    _setup_logging(settings)
    asyncio.run(_run_worker(settings))


async def _run_worker(settings: Settings) -> None:
    engine = create_engine(settings.effective_database_url)
    try:
        await ensure_ready(engine)
        worker = build_worker(settings, create_session_factory(engine), engine)
        # Our own handlers (not worker.install_signal_handlers()): they also record that the stop
        # was asked for, so a worker that stops on its own exits non-zero and gets restarted.
        signals_received: list[signal.Signals] = []
        loop = asyncio.get_running_loop()

        def _on_signal(sig: signal.Signals) -> None:
            signals_received.append(sig)
            worker.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, sig)
        try:
            await worker.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if not signals_received:
            raise CallbridgeError("the worker stopped on its own (see the log above); restart it")
    finally:
        await engine.dispose()


# --- keys and settings -----------------------------------------------------------------------


@app.command()
def keygen() -> None:
    """Print a new encryption key for CALLBRIDGE_ENCRYPTION_KEYS."""
    typer.echo(Fernet.generate_key().decode())


_MASK = "********"


def _display(name: str, value: Any, settings: Settings) -> str:
    if name == "database_url":
        shown = safe_url(settings.effective_database_url)
        return shown if value else f"{shown} (default)"
    if isinstance(value, SecretStr):
        return _MASK if value.get_secret_value() else ""
    if isinstance(value, list | tuple):
        return ",".join(_display(name, item, settings) for item in value)
    if hasattr(value, "value"):  # enums
        return str(value.value)
    return str(value)


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective settings, one variable a line, with secrets masked."""
    settings = _settings(ctx)
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        typer.echo(f"{ENV_PREFIX}{name.upper()}={_display(name, value, settings)}")


def main() -> None:
    """Entry point of the ``callbridge`` command."""
    app(prog_name="callbridge")
