"""``callbridge enterprise``: PBX customers — add, list, show, rotate-token, set-recordings.

Each enterprise has a webhook token: the bearer token (and HMAC key) its PBX authenticates
``POST /pbx/{number}/events`` with. It is stored encrypted and printed only when it is made
(``add``, ``rotate-token``); ``show`` says whether one is set, never what it is.

Each enterprise may have recordings directories of its own (``add --recordings-dir``,
``set-recordings``): its recordings reported by path are then read only inside them. Each must
lie inside ``CALLBRIDGE_RECORDINGS_DIRS`` (the bridge's upper bound), and none may overlap
another enterprise's unless ``--allow-overlap`` says the sharing is meant.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge.cli.common import fail, run_in, settings_from
from callbridge.config import Settings
from callbridge.domain.errors import CallbridgeError
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import Enterprise
from callbridge.storage.repositories import EnterpriseRepository, IntegrationRepository

T = TypeVar("T")

#: Shorter tokens are refused: a webhook token is guessable over the network otherwise.
MIN_TOKEN_LENGTH = 16

enterprise_app = typer.Typer(
    name="enterprise",
    help="PBX customers: add, list, show, rotate the webhook token, set recordings directories.",
    no_args_is_help=True,
)


@dataclass
class _Context:
    settings: Settings
    session_factory: async_sessionmaker[AsyncSession]
    box: SecretBox


@asynccontextmanager
async def _open(settings: Settings) -> AsyncIterator[_Context]:
    engine = create_engine(settings.effective_database_url, pool_size=2)
    try:
        yield _Context(settings, create_session_factory(engine), SecretBox(settings.fernet_keys()))
    finally:
        await engine.dispose()


def _run(ctx: typer.Context, action: Callable[[_Context], Awaitable[T]]) -> T:
    return run_in(ctx, _open, action)


def _webhook_url(settings: Settings, number: str) -> str:
    return f"{settings.public_base_url}/pbx/{number}/events"


def _new_token(given: str | None) -> str:
    if given is None:
        return secrets.token_urlsafe(32)
    token = given.strip()
    if len(token) < MIN_TOKEN_LENGTH or any(ch.isspace() for ch in token):
        fail(f"--webhook-token needs at least {MIN_TOKEN_LENGTH} characters and no spaces")
    return token


def _print_token(settings: Settings, number: str, token: str) -> None:
    typer.echo(f"webhook URL:   {_webhook_url(settings, number)}")
    typer.echo(f"webhook token: {token}")
    typer.echo("The token is shown only now; configure it on the PBX (Authorization: Bearer …).")


def _recordings_dirs(given: Sequence[str], bridge: Sequence[Path]) -> list[str]:
    """The directories as stored (absolute, normalised, once each); refuses what cannot work."""
    if not bridge:
        fail(
            "CALLBRIDGE_RECORDINGS_DIRS is empty: no recording is read by path at all; "
            "set it to the directories the PBX records into first"
        )
    roots = [root.resolve(strict=False) for root in bridge]
    dirs: list[str] = []
    for raw in given:
        text = raw.strip()
        if not text or not os.path.isabs(text):
            fail(f"{raw!r} is not an absolute directory")
        # normpath folds ``..`` the way the operator wrote it; the check below resolves links.
        normal = os.path.normpath(text)
        resolved = Path(normal).resolve(strict=False)
        if not any(resolved.is_relative_to(root) for root in roots):
            fail(
                f"{normal} is not inside CALLBRIDGE_RECORDINGS_DIRS "
                f"({', '.join(str(root) for root in roots)}): recordings there would be "
                "refused; add it (or a parent) to CALLBRIDGE_RECORDINGS_DIRS first"
            )
        if normal not in dirs:
            dirs.append(normal)
    return dirs


def _overlaps(number: str, dirs: Sequence[str], others: Sequence[Enterprise]) -> list[str]:
    """Where ``dirs`` contain, or lie inside, another enterprise's directories."""
    found: list[str] = []
    for other in others:
        if other.number == number:
            continue
        for theirs in other.recordings_dirs or []:
            their_root = Path(theirs).resolve(strict=False)
            for ours in dirs:
                our_root = Path(ours).resolve(strict=False)
                if our_root.is_relative_to(their_root) or their_root.is_relative_to(our_root):
                    found.append(f"{ours} and enterprise {other.number}'s {theirs}")
    return found


async def _store_recordings(
    session: AsyncSession, row: Enterprise, dirs: list[str], allow_overlap: bool
) -> None:
    repo = EnterpriseRepository(session)
    clashes = _overlaps(row.number, dirs, await repo.list_all())
    if clashes and not allow_overlap:
        raise CallbridgeError(
            f"overlapping recordings directories: {'; '.join(clashes)}. Either enterprise "
            "could upload the other's recordings: give each a directory of its own (or "
            "pass --allow-overlap if they share recordings on purpose)"
        )
    await repo.update(row, recordings_dirs=dirs)


def _describe_recordings(settings: Settings, dirs: Sequence[str], enterprises: int) -> str:
    bridge = ", ".join(str(d) for d in settings.recordings_dirs) or "none"
    if dirs:
        return ", ".join(dirs)
    text = f"the bridge's (CALLBRIDGE_RECORDINGS_DIRS: {bridge})"
    if enterprises > 1:
        text += (
            "; this bridge serves several enterprises, so give this one its own with "
            "`callbridge enterprise set-recordings`"
        )
    return text


RecordingsDirOption = Annotated[
    list[str] | None,
    typer.Option(
        "--recordings-dir",
        help="A directory this enterprise's recordings by path are read from (repeatable); "
        "inside CALLBRIDGE_RECORDINGS_DIRS.",
    ),
]
AllowOverlapOption = Annotated[
    bool,
    typer.Option(
        "--allow-overlap",
        help="Allow directories that contain or lie inside another enterprise's.",
    ),
]


TokenOption = Annotated[
    str | None,
    typer.Option(
        "--webhook-token",
        help="Use this token instead of generating one (at least 16 characters).",
    ),
]


@enterprise_app.command("add")
def add_command(
    ctx: typer.Context,
    number: Annotated[str, typer.Argument(help="The enterprise number (used in webhook URLs).")],
    name: Annotated[str, typer.Option("--name", help="A readable name.")] = "",
    webhook_token: TokenOption = None,
    recordings_dir: RecordingsDirOption = None,
    allow_overlap: AllowOverlapOption = False,
) -> None:
    """Add an enterprise and print its webhook token (once)."""
    number = number.strip()
    if not number or len(number) > 64 or "/" in number:
        fail("NUMBER must be 1 to 64 characters without '/'")
    token = _new_token(webhook_token)
    dirs = (
        _recordings_dirs(recordings_dir, settings_from(ctx).recordings_dirs)
        if recordings_dir
        else []
    )

    async def action(context: _Context) -> int:
        async with context.session_factory() as session, session.begin():
            repo = EnterpriseRepository(session)
            if await repo.by_number(number) is not None:
                raise CallbridgeError(f"enterprise {number} already exists (see `show {number}`)")
            row = Enterprise(
                number=number, name=name, webhook_secret_enc=context.box.encrypt(token)
            )
            await repo.add(row)
            if dirs:
                await _store_recordings(session, row, dirs, allow_overlap)
            return row.id

    enterprise_id = _run(ctx, action)
    typer.echo(f"enterprise {number} added (id {enterprise_id})")
    if dirs:
        typer.echo(f"recordings:    {', '.join(dirs)}")
    _print_token(settings_from(ctx), number, token)


@enterprise_app.command("list")
def list_command(ctx: typer.Context) -> None:
    """List every enterprise."""

    async def action(context: _Context) -> list[tuple[Enterprise, int]]:
        async with context.session_factory() as session:
            integrations = IntegrationRepository(session, context.box)
            rows = await EnterpriseRepository(session).list_all()
            return [(row, len(await integrations.for_enterprise(row.id))) for row in rows]

    rows = _run(ctx, action)
    if not rows:
        typer.echo("no enterprises (add one with `callbridge enterprise add NUMBER`)")
        return
    typer.echo(f"{'ID':>4}  {'NUMBER':<16} {'ACTIVE':<7} {'TOKEN':<6} {'PORTALS':>7}  NAME")
    for row, portals in rows:
        typer.echo(
            f"{row.id:>4}  {row.number:<16} {'yes' if row.active else 'no':<7} "
            f"{'set' if row.webhook_secret_enc else '-':<6} {portals:>7}  {row.name}"
        )


@enterprise_app.command("show")
def show_command(
    ctx: typer.Context,
    number: Annotated[str, typer.Argument(help="The enterprise number.")],
) -> None:
    """Show an enterprise, its webhook URL and its linked portals (never the token)."""

    async def action(context: _Context) -> tuple[Enterprise, list[str], int]:
        async with context.session_factory() as session:
            repo = EnterpriseRepository(session)
            row = await repo.by_number(number)
            if row is None:
                raise CallbridgeError(f"no enterprise {number} (see `callbridge enterprise list`)")
            portals = await IntegrationRepository(session, context.box).for_enterprise(row.id)
            described = [f"{p.domain} (integration {p.id}, {p.status})" for p in portals]
            return row, described, await repo.count()

    row, portals, enterprises = _run(ctx, action)
    typer.echo(f"id:            {row.id}")
    typer.echo(f"number:        {row.number}")
    typer.echo(f"name:          {row.name}")
    typer.echo(f"active:        {'yes' if row.active else 'no'}")
    typer.echo(f"webhook URL:   {_webhook_url(settings_from(ctx), row.number)}")
    token = "set (rotate it to see a new one)" if row.webhook_secret_enc else "not set"
    typer.echo(f"webhook token: {token}")
    typer.echo(f"portals:       {', '.join(portals) if portals else 'none linked'}")
    recordings = _describe_recordings(settings_from(ctx), row.recordings_dirs or [], enterprises)
    typer.echo(f"recordings:    {recordings}")


@enterprise_app.command("rotate-token")
def rotate_token_command(
    ctx: typer.Context,
    number: Annotated[str, typer.Argument(help="The enterprise number.")],
    webhook_token: TokenOption = None,
) -> None:
    """Replace the webhook token (the old one stops working at once) and print the new one."""
    token = _new_token(webhook_token)

    async def action(context: _Context) -> None:
        async with context.session_factory() as session, session.begin():
            repo = EnterpriseRepository(session)
            row = await repo.by_number(number)
            if row is None:
                raise CallbridgeError(f"no enterprise {number} (see `callbridge enterprise list`)")
            await repo.update(row, webhook_secret_enc=context.box.encrypt(token))

    _run(ctx, action)
    typer.echo(f"enterprise {number}: new webhook token")
    _print_token(settings_from(ctx), number, token)


@enterprise_app.command("set-recordings")
def set_recordings_command(
    ctx: typer.Context,
    number: Annotated[str, typer.Argument(help="The enterprise number.")],
    dirs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Directories its recordings by path are read from, inside "
            "CALLBRIDGE_RECORDINGS_DIRS (they replace the ones set before)."
        ),
    ] = None,
    clear: Annotated[
        bool,
        typer.Option("--clear", help="Forget its own directories: the bridge's apply again."),
    ] = False,
    allow_overlap: AllowOverlapOption = False,
) -> None:
    """Set (or --clear) the directories this enterprise's recordings by path are read from."""
    if bool(dirs) == clear:
        fail("give either the recordings directories (DIR...) or --clear")
    settings = settings_from(ctx)
    chosen = _recordings_dirs(dirs, settings.recordings_dirs) if dirs else []

    async def action(context: _Context) -> int:
        async with context.session_factory() as session, session.begin():
            repo = EnterpriseRepository(session)
            row = await repo.by_number(number)
            if row is None:
                raise CallbridgeError(f"no enterprise {number} (see `callbridge enterprise list`)")
            await _store_recordings(session, row, chosen, allow_overlap)
            return await repo.count()

    enterprises = _run(ctx, action)
    missing = [d for d in chosen if not Path(d).is_dir()]
    typer.echo(
        f"enterprise {number}: recordings read from "
        f"{_describe_recordings(settings, chosen, enterprises)}"
    )
    if missing:
        typer.echo(f"note: not a directory here (yet): {', '.join(missing)}")
    typer.echo("The worker applies it to the next upload; no restart needed.")
