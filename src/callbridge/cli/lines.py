"""``callbridge lines``: the portal's external lines (DIDs / trunks) — list, add, remove.

A line maps a PBX line (the DID or trunk a call arrives on) to the Bitrix24 ``LINE_NUMBER`` that
calls are registered with, optionally with the CRM source for leads it creates. Lines live in the
integration setting ``lines``; ``add`` also creates the line in Bitrix24
(``telephony.externalLine.add``; a line that already exists there counts as done).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.cli.integration import _Context, _in_transaction, _run, pick_integration
from callbridge.crm.bitrix24.auth import SetupReport
from callbridge.domain.errors import CallbridgeError

LINES_SETTING = "lines"

lines_app = typer.Typer(
    name="lines",
    help="External lines: which DID or trunk becomes which Bitrix24 line.",
    no_args_is_help=True,
)

IntegrationOption = Annotated[
    int | None, typer.Option("--integration", help="Integration id (see `integration list`).")
]


def _lines(settings: dict[str, Any] | None) -> list[dict[str, str]]:
    return [dict(line) for line in (settings or {}).get(LINES_SETTING, [])]


LineChange = Callable[[list[dict[str, str]]], list[dict[str, str]]]


async def _edit(
    context: _Context, integration: int | None, change: LineChange
) -> tuple[str, str, list[dict[str, str]]]:
    async def work(session: AsyncSession) -> tuple[str, str, list[dict[str, str]]]:
        row = await pick_integration(session, context, integration)
        settings = dict(row.settings or {})
        lines = change(_lines(settings))
        settings[LINES_SETTING] = lines
        row.settings = settings  # a new dict: the JSON column sees the change
        await session.flush()
        return row.domain, row.member_id, lines

    result: tuple[str, str, list[dict[str, str]]] = await _in_transaction(context, work)
    return result


@lines_app.command("list")
def list_command(ctx: typer.Context, integration: IntegrationOption = None) -> None:
    """List the configured lines."""

    async def action(context: _Context) -> tuple[str, list[dict[str, str]]]:
        async with context.session_factory() as session:
            row = await pick_integration(session, context, integration)
            return row.domain, _lines(row.settings)

    domain, lines = _run(ctx, action)
    if not lines:
        typer.echo(f"{domain}: no lines configured")
        return
    typer.echo(f"{'LINE_NUMBER':<16} {'PBX LINE':<16} {'CRM SOURCE':<12} NAME")
    for line in lines:
        typer.echo(
            f"{line['number']:<16} {line.get('pbx_line', line['number']):<16} "
            f"{line.get('crm_source', '-'):<12} {line.get('name', '')}"
        )


@lines_app.command("add")
def add_command(
    ctx: typer.Context,
    number: Annotated[str, typer.Argument(help="LINE_NUMBER as Bitrix24 shows it.")],
    name: Annotated[str, typer.Option(help="Line name shown in Bitrix24.")] = "",
    pbx_line: Annotated[
        str, typer.Option("--pbx-line", help="The DID/trunk the PBX reports, if different.")
    ] = "",
    crm_source: Annotated[
        str, typer.Option("--crm-source", help="CRM source (STATUS_ID) for leads, e.g. CALL.")
    ] = "",
    push: Annotated[
        bool, typer.Option("--push/--no-push", help="Also create the line in Bitrix24 now.")
    ] = True,
    integration: IntegrationOption = None,
) -> None:
    """Add or replace a line, and create it in Bitrix24."""
    number = number.strip()
    if not number:
        raise typer.BadParameter("the line number is empty", param_hint="NUMBER")
    line = {"number": number, "name": name.strip() or number}
    if pbx_line.strip():
        line["pbx_line"] = pbx_line.strip()
    if crm_source.strip():
        line["crm_source"] = crm_source.strip()

    def change(lines: list[dict[str, str]]) -> list[dict[str, str]]:
        return [old for old in lines if old["number"] != number] + [line]

    async def action(context: _Context) -> tuple[str, SetupReport | None]:
        domain, member_id, _ = await _edit(context, integration, change)
        report = await context.portals().setup(member_id) if push else None
        return domain, report

    domain, report = _run(ctx, action)
    typer.echo(f"{domain}: line {number} saved")
    if report is not None:
        failed = {key: error for key, error in report.errors.items() if key.startswith("line_")}
        if failed or number not in report.lines:
            reason = "; ".join(failed.values()) or "not confirmed by the portal"
            typer.echo(
                f"Error: Bitrix24 did not create line {number}: {reason}; "
                "fix it, then run `callbridge lines add` again",
                err=True,
            )
            raise typer.Exit(1)
        typer.echo(f"{domain}: line {number} exists in Bitrix24")


@lines_app.command("remove")
def remove_command(
    ctx: typer.Context,
    number: Annotated[str, typer.Argument(help="LINE_NUMBER to remove.")],
    integration: IntegrationOption = None,
) -> None:
    """Remove a line from the configuration (Bitrix24 keeps its line and call history)."""
    number = number.strip()

    def change(lines: list[dict[str, str]]) -> list[dict[str, str]]:
        kept = [old for old in lines if old["number"] != number]
        if len(kept) == len(lines):
            raise CallbridgeError(f"line {number} is not configured; see `callbridge lines list`")
        return kept

    async def action(context: _Context) -> str:
        domain, _, _ = await _edit(context, integration, change)
        return domain

    typer.echo(f"{_run(ctx, action)}: line {number} removed")
