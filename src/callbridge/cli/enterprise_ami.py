"""``callbridge enterprise set-ami`` and ``callbridge enterprise status``.

``set-ami`` stores an enterprise's AMI URL (``ami://user:secret@host:5038``) encrypted; the
worker's AMI supervisor connects within its poll interval. ``status`` shows, for every
enterprise, what its AMI listener last reported (connected, unreachable with the error...),
whether a webhook token is set and which portals are linked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, TypeVar

import typer

from callbridge.cli.common import fail, run_or_fail, settings_from
from callbridge.cli.enterprise import enterprise_app
from callbridge.config import Settings
from callbridge.domain.errors import CallbridgeError
from callbridge.pbx.ami.listener import AmiUrl
from callbridge.storage.ami import STATUS_STALE_AFTER, AmiStatusRepository
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import AmiStatus
from callbridge.storage.repositories import EnterpriseRepository, IntegrationRepository
from callbridge.storage.types import utcnow

__all__ = ["set_ami_command", "status_command"]

T = TypeVar("T")


def _run(ctx: typer.Context, action: Callable[[Settings, SecretBox], Awaitable[T]]) -> T:
    settings = settings_from(ctx)

    async def main() -> T:
        return await action(settings, SecretBox(settings.fernet_keys()))

    return run_or_fail(main())


@enterprise_app.command("set-ami")
def set_ami_command(
    ctx: typer.Context,
    number: Annotated[str, typer.Argument(help="The enterprise number.")],
    url: Annotated[
        str | None,
        typer.Argument(help="ami://user:secret@host:5038 (the manager.conf account)."),
    ] = None,
    remove: Annotated[
        bool, typer.Option("--remove", help="Stop listening to this enterprise's AMI.")
    ] = False,
) -> None:
    """Set (or --remove) the enterprise's AMI URL; the secret is stored encrypted."""
    if (url is None) == (not remove):
        fail("give either an AMI URL (ami://user:secret@host:5038) or --remove")
    try:
        parsed = AmiUrl.parse(url) if url is not None else None
    except CallbridgeError as err:
        fail(err.message)

    async def action(settings: Settings, box: SecretBox) -> None:
        engine = create_engine(settings.effective_database_url, pool_size=2)
        try:
            async with create_session_factory(engine)() as session, session.begin():
                repo = EnterpriseRepository(session)
                row = await repo.by_number(number)
                if row is None:
                    raise CallbridgeError(
                        f"no enterprise {number} (see `callbridge enterprise list`)"
                    )
                stored = box.encrypt(url.strip()) if url is not None else None
                await repo.update(row, ami_url_enc=stored)
        finally:
            await engine.dispose()

    _run(ctx, action)
    if parsed is None:
        typer.echo(f"enterprise {number}: AMI removed; its listener stops within a few seconds")
        return
    typer.echo(f"enterprise {number}: AMI {parsed.masked()}")
    typer.echo("The worker connects within its poll interval; see `callbridge enterprise status`.")


@dataclass(frozen=True)
class _Line:
    number: str
    name: str
    ami_url: str | None
    status: AmiStatus | None
    webhook: bool
    portals: list[str]


@enterprise_app.command("status")
def status_command(ctx: typer.Context) -> None:
    """Every enterprise: AMI connection, last event and error, webhook, linked portals."""

    async def action(settings: Settings, box: SecretBox) -> list[_Line]:
        engine = create_engine(settings.effective_database_url, pool_size=2)
        try:
            async with create_session_factory(engine)() as session:
                statuses = await AmiStatusRepository(session).by_enterprise()
                integrations = IntegrationRepository(session, box)
                lines = []
                for row in await EnterpriseRepository(session).list_all():
                    url = _masked(box, row.ami_url_enc)
                    portals = [
                        f"{p.domain} ({p.status})"
                        for p in await integrations.for_enterprise(row.id)
                    ]
                    lines.append(
                        _Line(
                            row.number,
                            row.name,
                            url,
                            statuses.get(row.id),
                            row.webhook_secret_enc is not None,
                            portals,
                        )
                    )
                return lines
        finally:
            await engine.dispose()

    lines = _run(ctx, action)
    if not lines:
        typer.echo("no enterprises (add one with `callbridge enterprise add NUMBER`)")
        return
    now = utcnow()
    typer.echo(f"{'NUMBER':<16} {'AMI':<22} {'LAST EVENT':<20} {'WEBHOOK':<8} PORTALS")
    details: list[str] = []
    for line in lines:
        state = _state(line, now)
        last_event = "-"
        if line.status is not None and line.status.last_event_at is not None:
            last_event = _when(line.status.last_event_at)
        portals = ", ".join(line.portals) if line.portals else "none linked"
        webhook = "yes" if line.webhook else "no"
        typer.echo(f"{line.number:<16} {state:<22} {last_event:<20} {webhook:<8} {portals}")
        details.extend(_details(line))
    if details:
        typer.echo("")
        for detail in details:
            typer.echo(detail)


def _masked(box: SecretBox, ciphertext: str | None) -> str | None:
    if ciphertext is None:
        return None
    try:
        return AmiUrl.parse(box.decrypt(ciphertext)).masked()
    except CallbridgeError as err:
        return f"(unusable: {err.message})"


def _state(line: _Line, now: datetime) -> str:
    status = line.status
    if line.ami_url is None:
        return "not configured"
    if status is None:
        return "not started"
    if status.state != "stopped" and now - status.updated_at > STATUS_STALE_AFTER:
        return f"stale ({status.state})"
    return status.state


def _details(line: _Line) -> list[str]:
    status = line.status
    if line.ami_url is None:
        return []
    out = [f"{line.number}: {line.ami_url}"]
    if status is not None:
        held = f", held by {status.holder}" if status.holder else ""
        out.append(
            f"  {status.state} since {_when(status.since)}{held}; "
            f"{status.events_in} events, {status.reconnects} reconnects; "
            f"reported {_when(status.updated_at)}"
        )
        if status.last_error:
            out.append(f"  last error: {status.last_error}")
    return out


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")
