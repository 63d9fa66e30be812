"""``callbridge jobs``: look at the job queue and act on it (list, show, retry, cancel, purge).

The main app mounts this with ``app.add_typer(jobs_app, name="jobs")`` and puts the loaded
:class:`~callbridge.config.Settings` in ``ctx.obj``. Errors print one line and exit 1.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.cli.common import run_or_fail, settings_from
from callbridge.config import Settings
from callbridge.storage import job_queue
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import Job, JobStatus

T = TypeVar("T")

jobs_app = typer.Typer(
    name="jobs",
    help="Inspect and operate the job queue: list, show, retry, cancel, purge.",
    no_args_is_help=True,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``7d``, ``2w`` → a timedelta."""
    match = _DURATION.match(value)
    if match is None:
        raise typer.BadParameter(f"{value!r} is not a duration like 30s, 15m, 12h, 7d or 2w")
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNITS[unit])


@asynccontextmanager
async def open_session(settings: Settings) -> AsyncIterator[AsyncSession]:
    """A session on the configured database; the command commits what it changes."""
    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        async with create_session_factory(engine)() as session:
            yield session
    finally:
        await engine.dispose()


def run_with_session(ctx: typer.Context, action: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``action`` in a session; any error becomes one line on stderr and exit status 1."""

    async def main() -> T:
        async with open_session(settings_from(ctx)) as session:
            result = await action(session)
            await session.commit()
            return result

    try:
        return run_or_fail(main(), _fail)
    except OSError as err:
        _fail(f"cannot reach the database: {err}")


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(1)


@jobs_app.command("list")
def list_command(
    ctx: typer.Context,
    status: Annotated[
        JobStatus | None, typer.Option("--status", "-s", help="Only jobs in this status.")
    ] = None,
    kind: Annotated[str | None, typer.Option("--kind", "-k", help="Only this job kind.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List jobs, newest first, with a count per status."""

    async def action(session: AsyncSession) -> tuple[list[Job], dict[JobStatus, int]]:
        jobs = await job_queue.list_jobs(session, status=status, kind=kind, limit=limit)
        return jobs, await job_queue.counts_by_status(session)

    jobs, counts = run_with_session(ctx, action)
    if as_json:
        for job in jobs:
            typer.echo(json.dumps(job_to_dict(job), sort_keys=True))
        return
    rows = [
        [
            str(job.id),
            job.status,
            job.kind,
            job.ordering_key or "",
            f"{job.attempts}/{job.max_attempts}",
            _time(job.run_after if job.status == JobStatus.QUEUED else job.updated_at),
            _first_line(job.last_error, 60),
        ]
        for job in jobs
    ]
    typer.echo(table(["ID", "STATUS", "KIND", "KEY", "TRIES", "WHEN", "LAST ERROR"], rows))
    typer.echo(
        f"\n{len(jobs)} shown; "
        + ", ".join(f"{value} {status.value}" for status, value in counts.items())
    )


@jobs_app.command("show")
def show_command(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(metavar="ID", help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,
) -> None:
    """Show one job: its data, its last error, and what it waits for."""

    async def action(session: AsyncSession) -> tuple[Job, str | None]:
        job = await job_queue.get_job(session, job_id)
        return job, await job_queue.blocked_by(session, job)

    job, blocked = run_with_session(ctx, action)
    data = job_to_dict(job)
    data["blocked_by"] = blocked
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    width = max(len(key) for key in data)
    for key, value in data.items():
        if key in ("payload", "result", "last_error"):
            continue
        if value is not None:
            typer.echo(f"{key:<{width}}  {value}")
    typer.echo(f"{'payload':<{width}}  {json.dumps(job.payload, sort_keys=True)}")
    if job.result is not None:
        typer.echo(f"{'result':<{width}}  {json.dumps(job.result, sort_keys=True)}")
    if job.last_error:
        typer.echo(f"last_error:\n{job.last_error.rstrip()}")


@jobs_app.command("retry")
def retry_command(
    ctx: typer.Context,
    job_id: Annotated[
        int | None, typer.Argument(metavar="[ID]", help="The dead job to run again.")
    ] = None,
    all_dead: Annotated[bool, typer.Option("--all-dead", help="Every dead job.")] = False,
    kind: Annotated[
        str | None, typer.Option("--kind", "-k", help="With --all-dead: only this kind.")
    ] = None,
) -> None:
    """Put a dead job (or every dead job) back in the queue, attempts reset."""
    if (job_id is None) == (not all_dead):
        _fail("give a job ID or --all-dead (not both)")

    async def action(session: AsyncSession) -> int:
        if job_id is not None:
            await job_queue.retry_job(session, job_id)
            return 1
        return await job_queue.retry_dead(session, kind=kind)

    count = run_with_session(ctx, action)
    if job_id is not None:
        typer.echo(f"job {job_id} queued again")
    else:
        typer.echo(f"{count} dead job{'s' if count != 1 else ''} queued again")


@jobs_app.command("cancel")
def cancel_command(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(metavar="ID", help="The queued or dead job.")],
    reason: Annotated[str, typer.Option("--reason", help="Why, kept as its last error.")] = "",
) -> None:
    """Cancel a queued or dead job and the jobs that depend on it."""
    cancelled = run_with_session(ctx, lambda session: job_queue.cancel_job(session, job_id, reason))
    typer.echo(f"cancelled job{'s' if len(cancelled) != 1 else ''} {_ids(cancelled)}")


@jobs_app.command("purge")
def purge_command(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age of finished jobs to delete: 30s, 12h, 7d.")
    ] = "7d",
    status: Annotated[
        list[JobStatus] | None,
        typer.Option("--status", "-s", help="Statuses to purge (default succeeded, cancelled)."),
    ] = None,
) -> None:
    """Delete finished jobs older than a given age."""
    age = parse_duration(older_than)
    statuses = tuple(status) if status else job_queue.FINISHED_STATUSES
    count = run_with_session(ctx, lambda session: job_queue.purge(session, age, statuses))
    typer.echo(f"purged {count} job{'s' if count != 1 else ''} finished more than {older_than} ago")


def job_to_dict(job: Job) -> dict[str, Any]:
    """A job as plain JSON-able data."""
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "ordering_key": job.ordering_key,
        "depends_on": job.depends_on,
        "integration_id": job.integration_id,
        "call_id": job.call_id,
        "run_after": _iso(job.run_after),
        "locked_by": job.locked_by,
        "lease_expires_at": _iso(job.lease_expires_at),
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "finished_at": _iso(job.finished_at),
        "payload": job.payload,
        "result": job.result,
        "last_error": job.last_error,
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with columns padded to their widest cell."""
    if not rows:
        return "no jobs"
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(headers, widths, strict=True))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _first_line(text: str | None, width: int) -> str:
    if not text:
        return ""
    line = text.splitlines()[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(str(job_id) for job_id in ids)
