"""``callbridge jobs`` against a real database, through Typer's CliRunner."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import typer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from callbridge.cli.jobs import jobs_app, parse_duration
from callbridge.config import Settings
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.job_queue import JobQueue, get_job
from callbridge.storage.models import JobStatus


class Cli:
    """The jobs sub-app mounted as the main app mounts it, on a fresh database."""

    def __init__(self, url: str, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self.app = typer.Typer()

        @self.app.callback()
        def main(ctx: typer.Context) -> None:
            ctx.obj = Settings(database_url=url)

        self.app.add_typer(jobs_app, name="jobs")

    async def __call__(self, *args: str) -> Result:
        # The commands run their own event loop: give them a thread of their own.
        return await asyncio.to_thread(CliRunner().invoke, self.app, ["jobs", *args])

    async def dead_job(self, kind: str = "calls.register", **kw: object) -> int:
        queue = JobQueue()
        async with self.sessions() as session:
            job = await queue.enqueue(session, kind, {"call": 7}, **kw)  # type: ignore[arg-type]
            await session.flush()
            [claimed] = await queue.claim(session, "w1", kinds=[kind])
            await queue.fail(
                session, claimed, "Permanent: user 12 not found\nTraceback...", retry_at=None
            )
            await session.commit()
            return job.id

    async def queued_job(self, kind: str = "users.sync", **kw: object) -> int:
        async with self.sessions() as session:
            job = await JobQueue().enqueue(session, kind, **kw)  # type: ignore[arg-type]
            await session.commit()
            return job.id

    async def status(self, job_id: int) -> str:
        async with self.sessions() as session:
            return (await get_job(session, job_id)).status


@pytest.fixture
async def cli(fresh_database_url: str) -> AsyncIterator[Cli]:
    engine = create_engine(fresh_database_url)
    yield Cli(fresh_database_url, create_session_factory(engine))
    await engine.dispose()


class TestList:
    async def test_table(self, cli: Cli):
        dead = await cli.dead_job()
        queued = await cli.queued_job(ordering_key="call:9")

        result = await cli("list")

        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0].split() == ["ID", "STATUS", "KIND", "KEY", "TRIES", "WHEN", "LAST", "ERROR"]
        assert lines[1].split()[:5] == [str(queued), "queued", "users.sync", "call:9", "0/10"]
        assert lines[2].split()[:4] == [str(dead), "dead", "calls.register", "1/10"]
        assert lines[2].endswith("Permanent: user 12 not found")
        assert "1 queued, 0 running, 0 succeeded, 1 dead, 0 cancelled" in result.output

    async def test_filters_and_json(self, cli: Cli):
        dead = await cli.dead_job()
        await cli.queued_job()

        result = await cli("list", "--status", "dead", "--json")

        assert result.exit_code == 0, result.output
        [line] = result.output.splitlines()
        job = json.loads(line)
        assert (job["id"], job["status"], job["payload"]) == (dead, "dead", {"call": 7})

    async def test_empty(self, cli: Cli):
        result = await cli("list", "--kind", "nothing.here")

        assert result.exit_code == 0
        assert result.output.startswith("no jobs")

    async def test_bad_status(self, cli: Cli):
        result = await cli("list", "--status", "lost")

        assert result.exit_code == 2


class TestShow:
    async def test_shows_error_and_blocker(self, cli: Cli):
        dead = await cli.dead_job(ordering_key="call:1")
        waiting = await cli.queued_job("calls.finish", ordering_key="call:1")

        result = await cli("show", str(waiting))

        assert result.exit_code == 0, result.output
        assert f"after job {dead} (calls.register, dead) of ordering key 'call:1'" in result.output
        shown = await cli("show", str(dead))
        assert "last_error:\nPermanent: user 12 not found\nTraceback..." in shown.output
        assert ["payload", '{"call": 7}'] in [
            line.split(None, 1) for line in shown.output.splitlines()
        ]

    async def test_missing_job_is_one_line(self, cli: Cli):
        result = await cli("show", "999999")

        assert result.exit_code == 1
        assert result.output == "error: no job with id 999999\n"


class TestRetry:
    async def test_one(self, cli: Cli):
        dead = await cli.dead_job()

        result = await cli("retry", str(dead))

        assert (result.exit_code, result.output) == (0, f"job {dead} queued again\n")
        assert await cli.status(dead) == JobStatus.QUEUED

    async def test_all_dead(self, cli: Cli):
        first = await cli.dead_job()
        second = await cli.dead_job("users.sync")

        result = await cli("retry", "--all-dead")

        assert (result.exit_code, result.output) == (0, "2 dead jobs queued again\n")
        assert {await cli.status(first), await cli.status(second)} == {JobStatus.QUEUED}

    async def test_not_dead(self, cli: Cli):
        queued = await cli.queued_job()

        result = await cli("retry", str(queued))

        assert result.exit_code == 1
        assert result.output == (f"error: job {queued} is queued; only dead jobs can be retried\n")

    async def test_needs_id_or_all(self, cli: Cli):
        result = await cli("retry")

        assert result.exit_code == 1
        assert "give a job ID or --all-dead" in result.output


class TestCancel:
    async def test_cancels_dependents(self, cli: Cli):
        dead = await cli.dead_job()
        dependent = await cli.queued_job("calls.finish", depends_on=dead)

        result = await cli("cancel", str(dead), "--reason", "portal removed")

        assert (result.exit_code, result.output) == (0, f"cancelled jobs {dead}, {dependent}\n")
        assert await cli.status(dependent) == JobStatus.CANCELLED


class TestPurge:
    async def test_purges_old_finished(self, cli: Cli):
        async with cli.sessions() as session:
            past = datetime.now(UTC) - timedelta(days=10)
            queue = JobQueue(now=lambda: past)
            old = (await queue.enqueue(session, "users.sync")).id
            [claimed] = await queue.claim(session, "w1")
            await queue.complete(session, claimed)
            await session.commit()
        dead = await cli.dead_job()

        result = await cli("purge", "--older-than", "7d")

        assert (result.exit_code, result.output) == (
            0,
            "purged 1 job finished more than 7d ago\n",
        )
        listed = await cli("list", "--json")
        assert [json.loads(line)["id"] for line in listed.output.splitlines()] == [dead]
        assert old != dead

    async def test_bad_duration(self, cli: Cli):
        result = await cli("purge", "--older-than", "a week")

        assert result.exit_code == 2
        assert "is not a duration" in result.output


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("30s", 30),
            ("15m", 900),
            ("12h", 43200),
            ("7d", 604800),
            ("2w", 1209600),
            ("1.5h", 5400),
        ],
    )
    def test_units(self, text: str, seconds: float):
        assert parse_duration(text) == timedelta(seconds=seconds)
