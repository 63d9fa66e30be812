"""``callbridge enterprise``: PBX customers — add, list, show, rotate-token.

Each enterprise has a webhook token: the bearer token (and HMAC key) its PBX authenticates
``POST /pbx/{number}/events`` with. It is stored encrypted and printed only when it is made
(``add``, ``rotate-token``); ``show`` says whether one is set, never what it is.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, NoReturn, TypeVar

import typer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge.config import Settings, load_settings
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
    help="PBX customers: add, list, show, rotate the webhook token.",
    no_args_is_help=True,
)


@dataclass
class _Context:
    settings: Settings
    session_factory: async_sessionmaker[AsyncSession]
    box: SecretBox


def _settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_object(Settings)
    return obj if obj is not None else load_settings()


@asynccontextmanager
async def _open(settings: Settings) -> AsyncIterator[_Context]:
    engine = create_engine(settings.effective_database_url, pool_size=2)
    try:
        yield _Context(settings, create_session_factory(engine), SecretBox(settings.fernet_keys()))
    finally:
        await engine.dispose()


def _fail(message: str) -> NoReturn:
    typer.echo(f"Error: {' '.join(message.split())}", err=True)
    raise typer.Exit(1)


def _run(ctx: typer.Context, action: Callable[[_Context], Awaitable[T]]) -> T:
    async def main() -> T:
        async with _open(_settings(ctx)) as context:
            return await action(context)

    try:
        return asyncio.run(main())
    except CallbridgeError as err:
        _fail(err.message)
    except SQLAlchemyError as err:
        detail = str(getattr(err, "orig", None) or err).splitlines()[0]
        _fail(f"database error: {detail} (is the database reachable and migrated?)")


def _webhook_url(settings: Settings, number: str) -> str:
    return f"{settings.public_base_url}/pbx/{number}/events"


def _new_token(given: str | None) -> str:
    if given is None:
        return secrets.token_urlsafe(32)
    token = given.strip()
    if len(token) < MIN_TOKEN_LENGTH or any(ch.isspace() for ch in token):
        _fail(f"--webhook-token needs at least {MIN_TOKEN_LENGTH} characters and no spaces")
    return token


def _print_token(settings: Settings, number: str, token: str) -> None:
    typer.echo(f"webhook URL:   {_webhook_url(settings, number)}")
    typer.echo(f"webhook token: {token}")
    typer.echo("The token is shown only now; configure it on the PBX (Authorization: Bearer …).")


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
) -> None:
    """Add an enterprise and print its webhook token (once)."""
    number = number.strip()
    if not number or len(number) > 64 or "/" in number:
        _fail("NUMBER must be 1 to 64 characters without '/'")
    token = _new_token(webhook_token)

    async def action(context: _Context) -> int:
        async with context.session_factory() as session, session.begin():
            repo = EnterpriseRepository(session)
            if await repo.by_number(number) is not None:
                raise CallbridgeError(f"enterprise {number} already exists (see `show {number}`)")
            row = Enterprise(
                number=number, name=name, webhook_secret_enc=context.box.encrypt(token)
            )
            await repo.add(row)
            return row.id

    enterprise_id = _run(ctx, action)
    typer.echo(f"enterprise {number} added (id {enterprise_id})")
    _print_token(_settings(ctx), number, token)


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

    async def action(context: _Context) -> tuple[Enterprise, list[str]]:
        async with context.session_factory() as session:
            row = await EnterpriseRepository(session).by_number(number)
            if row is None:
                raise CallbridgeError(f"no enterprise {number} (see `callbridge enterprise list`)")
            portals = await IntegrationRepository(session, context.box).for_enterprise(row.id)
            return row, [f"{p.domain} (integration {p.id}, {p.status})" for p in portals]

    row, portals = _run(ctx, action)
    typer.echo(f"id:            {row.id}")
    typer.echo(f"number:        {row.number}")
    typer.echo(f"name:          {row.name}")
    typer.echo(f"active:        {'yes' if row.active else 'no'}")
    typer.echo(f"webhook URL:   {_webhook_url(_settings(ctx), row.number)}")
    token = "set (rotate it to see a new one)" if row.webhook_secret_enc else "not set"
    typer.echo(f"webhook token: {token}")
    typer.echo(f"portals:       {', '.join(portals) if portals else 'none linked'}")


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
    _print_token(_settings(ctx), number, token)
