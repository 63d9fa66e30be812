"""``callbridge integration``: Bitrix24 portals — list, show, link, link-code, add-webhook, ping,
rotate-keys.

The main app mounts this with ``app.add_typer(integration_app, name="integration")`` and puts
the loaded :class:`~callbridge.config.Settings` in ``ctx.obj``. Errors print one line and exit 1.
Secrets are never printed: ``show`` says whether a token is stored, not what it is.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import httpx
import typer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge import __version__
from callbridge.cli.common import run_in
from callbridge.config import Settings
from callbridge.crm.bitrix24.errors import Bitrix24Error
from callbridge.domain.errors import CallbridgeError
from callbridge.portals import Portals, is_webhook
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import Bitrix24Integration
from callbridge.storage.repositories import EnterpriseRepository, IntegrationRepository

T = TypeVar("T")

integration_app = typer.Typer(
    name="integration",
    help="Bitrix24 portals: list, show, link to an enterprise, ping, rotate encryption keys.",
    no_args_is_help=True,
)


@dataclass
class _Context:
    settings: Settings
    session_factory: async_sessionmaker[AsyncSession]
    box: SecretBox
    http: httpx.AsyncClient

    def portals(self) -> Portals:
        return Portals(self.settings, self.session_factory, self.http, self.box)


@asynccontextmanager
async def _open(settings: Settings) -> AsyncIterator[_Context]:
    engine = create_engine(settings.effective_database_url, pool_size=2)
    timeout = httpx.Timeout(settings.http_timeout_seconds, connect=5.0)
    try:
        async with httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            headers={"User-Agent": f"callbridge/{__version__}"},
        ) as http:
            yield _Context(
                settings, create_session_factory(engine), SecretBox(settings.fernet_keys()), http
            )
    finally:
        await engine.dispose()


def _run(ctx: typer.Context, action: Callable[[_Context], Awaitable[T]]) -> T:
    return run_in(ctx, _open, action)


async def _in_transaction(context: _Context, action: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async with context.session_factory() as session, session.begin():
        return await action(session)


async def pick_integration(
    session: AsyncSession, context: _Context, integration: int | None
) -> Bitrix24Integration:
    """The integration with this id, or the only one there is."""
    repo = IntegrationRepository(session, context.box)
    if integration is not None:
        row = await repo.get(integration)
        if row is None:
            raise CallbridgeError(f"no integration with id {integration}")
        return row
    rows = list(await repo.all(repo.select().order_by(Bitrix24Integration.id)))
    if len(rows) != 1:
        raise CallbridgeError(
            f"there are {len(rows)} integrations; choose one with --integration ID"
        )
    return rows[0]


def _mode(row: Bitrix24Integration) -> str:
    return "webhook" if is_webhook(row) else "app"


@integration_app.command("list")
def list_command(ctx: typer.Context) -> None:
    """List every Bitrix24 integration."""

    async def action(context: _Context) -> list[Bitrix24Integration]:
        async with context.session_factory() as session:
            repo = IntegrationRepository(session, context.box)
            return list(await repo.all(repo.select().order_by(Bitrix24Integration.id)))

    rows = _run(ctx, action)
    if not rows:
        typer.echo("no integrations (install the callbridge app on a Bitrix24 portal)")
        return
    typer.echo(f"{'ID':>4}  {'DOMAIN':<32} {'STATUS':<14} {'MODE':<8} {'ENTERPRISE':<10} SCOPE")
    for row in rows:
        enterprise = str(row.enterprise_id) if row.enterprise_id is not None else "-"
        typer.echo(
            f"{row.id:>4}  {row.domain:<32} {row.status:<14} {_mode(row):<8} "
            f"{enterprise:<10} {row.scope}"
        )


@integration_app.command("show")
def show_command(
    ctx: typer.Context,
    portal: Annotated[str, typer.Argument(help="Domain or member_id.")],
) -> None:
    """Show one integration (whether tokens are stored, never their values)."""

    async def action(context: _Context) -> dict[str, Any]:
        async with context.session_factory() as session:
            row = await context.portals().find(session, portal)
            return {
                "id": row.id,
                "domain": row.domain,
                "member_id": row.member_id,
                "enterprise_id": row.enterprise_id,
                "status": row.status,
                "status_reason": row.status_reason or "-",
                "mode": _mode(row),
                "client_endpoint": row.client_endpoint,
                "server_endpoint": row.server_endpoint or "-",
                "scope": row.scope,
                "access_token": "stored" if row.access_token_enc else "none",
                "refresh_token": "stored" if row.refresh_token_enc else "none",
                "application_token": "stored" if row.application_token_enc else "none",
                "expires_at": row.expires_at.isoformat() if row.expires_at else "-",
                "settings": row.settings,
            }

    for key, value in _run(ctx, action).items():
        typer.echo(f"{key + ':':<19} {value}")


@integration_app.command("link")
def link_command(
    ctx: typer.Context,
    enterprise: Annotated[str, typer.Option("--enterprise", help="Enterprise number or id.")],
    portal: Annotated[str, typer.Option("--portal", help="Portal domain or member_id.")],
) -> None:
    """Link a portal to an enterprise."""

    async def action(context: _Context) -> Bitrix24Integration:
        return await _in_transaction(
            context, lambda session: context.portals().link(session, enterprise, portal)
        )

    row = _run(ctx, action)
    typer.echo(f"linked {row.domain} to enterprise {row.enterprise_id}")


@integration_app.command("link-code")
def link_code_command(
    ctx: typer.Context,
    enterprise: Annotated[str, typer.Option("--enterprise", help="Enterprise number or id.")],
) -> None:
    """Make a one-time code (valid 24 h) that a portal admin enters on the app's page."""

    async def action(context: _Context) -> str:
        return await _in_transaction(
            context, lambda session: context.portals().create_link_code(session, enterprise)
        )

    typer.echo(_run(ctx, action))


@integration_app.command("add-webhook")
def add_webhook_command(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="https://portal/rest/<user>/<code>/")],
    enterprise: Annotated[
        str | None, typer.Option("--enterprise", help="Link to this enterprise.")
    ] = None,
) -> None:
    """Connect an on-premise portal through an incoming webhook (no app-only methods)."""

    async def action(context: _Context) -> Bitrix24Integration:
        async def work(session: AsyncSession) -> Bitrix24Integration:
            portals = context.portals()
            row = await portals.add_webhook(session, url)
            if enterprise is not None:
                await portals.link(session, enterprise, row.member_id)
            return row

        return await _in_transaction(context, work)

    row = _run(ctx, action)
    typer.echo(
        f"added {row.domain} in webhook mode; calls cannot be registered this way "
        "(telephony.externalCall.* and event.bind need the installed app)"
    )


@integration_app.command("ping")
def ping_command(
    ctx: typer.Context,
    portal: Annotated[str, typer.Argument(help="Domain or member_id.")],
) -> None:
    """Call ``app.info`` and ``profile``; print each latency and the granted scope."""

    async def action(context: _Context) -> list[str]:
        portals = context.portals()
        async with context.session_factory() as session:
            row = await portals.find(session, portal)
        # No transaction stays open across the calls (on SQLite it would hold the write lock).
        client = portals.client_for(row)
        methods = ("app.info", "profile") if client.credentials.app_context else ("profile",)
        lines = []
        for method in methods:
            started = time.perf_counter()
            try:
                await client.call(method)
            except Bitrix24Error as err:
                lines.append(f"{method:<9} failed: {err.message}")
                continue
            lines.append(f"{method:<9} {(time.perf_counter() - started) * 1000:7.1f} ms")
        try:
            granted = await client.call("scope")
            scope = ",".join(granted) if isinstance(granted, list) else str(granted)
        except Bitrix24Error:
            scope = f"{row.scope or 'unknown'} (as granted at install; the portal has no `scope`)"
        lines.append(f"scope     {scope}")
        return lines

    for line in _run(ctx, action):
        typer.echo(line)


@integration_app.command("rotate-keys")
def rotate_keys_command(ctx: typer.Context) -> None:
    """Re-encrypt every stored secret with the newest key of CALLBRIDGE_ENCRYPTION_KEYS."""

    async def action(context: _Context) -> tuple[int, int]:
        async def work(session: AsyncSession) -> tuple[int, int]:
            integrations = await IntegrationRepository(session, context.box).rotate_secrets()
            enterprises = 0
            for row in await EnterpriseRepository(session).list_all():
                for column in ("webhook_secret_enc", "ami_url_enc"):
                    value = getattr(row, column)
                    if value is not None:
                        setattr(row, column, context.box.rotate(value))
                enterprises += 1
            await session.flush()
            return integrations, enterprises

        return await _in_transaction(context, work)

    integrations, enterprises = _run(ctx, action)
    typer.echo(
        f"re-encrypted the secrets of {integrations} integrations and {enterprises} enterprises "
        "with the newest key; older keys can now be removed"
    )
