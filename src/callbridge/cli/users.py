"""``callbridge users``: Bitrix24 users and extensions — sync, list, map, unmap.

``map`` and ``unmap`` edit manual extension → user overrides (the integration setting
``extension_users``), which win over the extensions synced from ``UF_PHONE_INNER``. Running
web processes pick changes up within their routing cache's 10 seconds.
"""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.cli.integration import _Context, _in_transaction, _run, pick_integration
from callbridge.directory import active_integrations, responsible_extension_table
from callbridge.directory import sync_integration_users as sync_one
from callbridge.domain.errors import CallbridgeError
from callbridge.services.user_sync import EXTENSION_OVERRIDES_SETTING, SyncReport
from callbridge.storage.repositories.bitrix24_users import Bitrix24UserRepository

users_app = typer.Typer(
    name="users",
    help="Bitrix24 users and extensions: sync from the portal, list, manual overrides.",
    no_args_is_help=True,
)

IntegrationOption = Annotated[
    int | None, typer.Option("--integration", help="Integration id (see `integration list`).")
]


@users_app.command("sync")
def sync_command(ctx: typer.Context, integration: IntegrationOption = None) -> None:
    """Read users from Bitrix24 now (every active integration, or one)."""

    async def action(context: _Context) -> list[tuple[str, SyncReport]]:
        portals = context.portals()
        if integration is not None:
            async with context.session_factory() as session:
                rows = [await pick_integration(session, context, integration)]
        else:
            rows = await active_integrations(context.session_factory, portals)
        return [(row.domain, await sync_one(portals, row.id)) for row in rows]

    reports = _run(ctx, action)
    if not reports:
        typer.echo("no active integrations")
    for domain, report in reports:
        typer.echo(
            f"{domain}: {report.seen} users ({report.active} active), {report.added} added, "
            f"{report.updated} updated, {report.deactivated} deactivated"
        )


@users_app.command("list")
def list_command(ctx: typer.Context, integration: IntegrationOption = None) -> None:
    """List synced users with their effective extension (overrides marked *)."""

    async def action(context: _Context) -> list[str]:
        async with context.session_factory() as session:
            row = await pick_integration(session, context, integration)
            users = await Bitrix24UserRepository(session).for_integration(row.id)
        settings = row.settings or {}
        table = responsible_extension_table(users, settings)
        overridden = set((settings.get(EXTENSION_OVERRIDES_SETTING) or {}).keys())
        lines = [f"{'USER':>6}  {'EXT':<8} {'MOBILE':<16} {'ACTIVE':<6} NAME"]
        for user in users:
            extension = table.get(user.user_id, "-")
            mark = "*" if extension in overridden else ""
            lines.append(
                f"{user.user_id:>6}  {extension + mark:<8} {user.mobile or '-':<16} "
                f"{'yes' if user.active else 'no':<6} {user.name}"
            )
        return lines

    for line in _run(ctx, action):
        typer.echo(line)


def _edit_overrides(
    ctx: typer.Context, integration: int | None, extension: str, user_id: int | None
) -> str:
    async def action(context: _Context) -> str:
        async def work(session: AsyncSession) -> str:
            row = await pick_integration(session, context, integration)
            settings = dict(row.settings or {})
            overrides = dict(settings.get(EXTENSION_OVERRIDES_SETTING) or {})
            if user_id is None:
                if overrides.pop(extension, None) is None:
                    raise CallbridgeError(f"extension {extension} has no manual mapping")
            else:
                overrides[extension] = user_id
            settings[EXTENSION_OVERRIDES_SETTING] = overrides
            row.settings = settings  # a new dict: the JSON column sees the change
            await session.flush()
            return row.domain

        return await _in_transaction(context, work)

    return _run(ctx, action)


@users_app.command("map")
def map_command(
    ctx: typer.Context,
    extension: Annotated[str, typer.Argument(help="The PBX extension.")],
    user_id: Annotated[int, typer.Argument(min=1, help="The Bitrix24 user id.")],
    integration: IntegrationOption = None,
) -> None:
    """Route an extension to a Bitrix24 user, whatever the portal's UF_PHONE_INNER says."""
    domain = _edit_overrides(ctx, integration, extension.strip(), user_id)
    typer.echo(f"{domain}: extension {extension.strip()} → user {user_id}")


@users_app.command("unmap")
def unmap_command(
    ctx: typer.Context,
    extension: Annotated[str, typer.Argument(help="The PBX extension.")],
    integration: IntegrationOption = None,
) -> None:
    """Remove a manual mapping; the synced extension applies again."""
    domain = _edit_overrides(ctx, integration, extension.strip(), None)
    typer.echo(f"{domain}: extension {extension.strip()} follows the synced users again")
