"""The AMI supervisor: listeners follow the configuration; one per PBX across processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callbridge.pbx.ami.client import Backoff
from callbridge.pbx.ami.replay import AmiReplayServer, Recording
from callbridge.storage.ami import ADVISORY_LOCK_CLASS, AmiStatusRepository
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import AmiStatus, Call, Enterprise
from callbridge.worker.ami import AmiSupervisor
from tests.callbridge.pbx.ami.conftest import delayed, stream
from tests.conftest import Database

TIMEOUT = 15
A2 = "a2_inbound_answered_timestamps"
#: a2 played up to here: the call is answered and talking.
TALKING = 40
BOX = SecretBox([Fernet.generate_key()])
FAST: dict[str, Any] = {
    "ping_interval": None,
    "connect_timeout": 2.0,
    "backoff": Backoff(initial=0.05, maximum=0.2, jitter=0.0),
}


async def until(predicate: Callable[[], bool], within: float = TIMEOUT) -> None:
    """Poll ``predicate`` until it holds, for at most ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


async def until_async(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Poll an async ``predicate`` until it holds."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.05)


@dataclass
class Process:
    """One supervisor on engines of its own, as in a separate worker process."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    supervisor: AmiSupervisor
    task: asyncio.Task[None] | None = None

    @property
    def holding(self) -> bool:
        return bool(self.supervisor.listeners)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        await self.engine.dispose()


@dataclass
class Cluster:
    url: str
    observer: AsyncEngine
    processes: list[Process] = field(default_factory=list)
    servers: list[AmiReplayServer] = field(default_factory=list)

    def sessions(self) -> AsyncSession:
        return create_session_factory(self.observer)()

    def start(self, holder: str) -> Process:
        engine = create_engine(self.url)
        sessions = create_session_factory(engine)
        supervisor = AmiSupervisor(
            sessions,
            engine,
            BOX,
            holder=holder,
            poll_interval=0.2,
            lock_retry_interval=0.2,
            lock_check_interval=0.2,
            status_interval=0.2,
            client_options=FAST,
        )
        process = Process(engine, sessions, supervisor)
        process.task = asyncio.create_task(supervisor.run())
        self.processes.append(process)
        return process

    async def server(self, recording: Recording | None = None, **kwargs: Any) -> AmiReplayServer:
        kwargs.setdefault("speed", 0)
        kwargs.setdefault("gap", 0)
        kwargs.setdefault("add_timestamps", True)
        replay = AmiReplayServer([recording or stream(A2)], **kwargs)
        await replay.start("127.0.0.1", 0)
        self.servers.append(replay)
        return replay

    async def add_enterprise(self, ami_url: str | None) -> int:
        async with self.sessions() as session, session.begin():
            row = Enterprise(
                number=f"e-{uuid.uuid4().hex[:6]}",
                ami_url_enc=BOX.encrypt(ami_url) if ami_url else None,
            )
            session.add(row)
            await session.flush()
            return row.id

    async def set_url(self, enterprise_id: int, ami_url: str | None) -> None:
        async with self.sessions() as session, session.begin():
            row = await session.get(Enterprise, enterprise_id)
            assert row is not None
            row.ami_url_enc = BOX.encrypt(ami_url) if ami_url else None

    async def status(self, enterprise_id: int) -> AmiStatus | None:
        async with self.sessions() as session:
            return (await AmiStatusRepository(session).by_enterprise()).get(enterprise_id)

    async def calls(self) -> list[Call]:
        async with self.sessions() as session:
            return list((await session.scalars(select(Call))).all())


@pytest.fixture
async def cluster(fresh_database_url: str) -> AsyncIterator[Cluster]:
    result = Cluster(fresh_database_url, create_engine(fresh_database_url))
    try:
        yield result
    finally:
        for process in result.processes:
            await process.stop()
        for server in result.servers:
            await server.close()
        await result.observer.dispose()


def ami_url(replay: AmiReplayServer) -> str:
    return f"ami://crm:crm-secret@127.0.0.1:{replay.port}"


class TestSupervisor:
    async def test_listens_to_every_configured_pbx_and_follows_changes(
        self, cluster: Cluster
    ) -> None:
        replay = await cluster.server()
        enterprise_id = await cluster.add_enterprise(ami_url(replay))
        await cluster.add_enterprise(None)  # no AMI: no listener
        process = cluster.start("a")
        await until(lambda: enterprise_id in process.supervisor.listeners)
        assert len(process.supervisor.listeners) == 1

        calls: list[Call] = []

        async def ended() -> bool:
            calls[:] = await cluster.calls()
            return bool(calls) and calls[0].state == "ended"

        await until_async(ended)
        assert calls[0].answered_by == "101"

        async def counted() -> bool:
            status = await cluster.status(enterprise_id)
            # Connected once caught up with the PBX's channels, which it lists after the events
            # it sent before (at speed 0, the whole call): those count while it connects.
            return status is not None and status.events_in > 0 and status.state == "connected"

        await until_async(counted)
        status = await cluster.status(enterprise_id)
        assert status is not None
        assert status.state == "connected"
        assert status.holder == "a"

        # A new URL restarts the listener against the new PBX.
        other = await cluster.server()
        before = process.supervisor.listeners[enterprise_id]
        await cluster.set_url(enterprise_id, ami_url(other))
        await until(
            lambda: (
                enterprise_id in process.supervisor.listeners
                and process.supervisor.listeners[enterprise_id] is not before
            )
        )
        assert process.supervisor.listeners[enterprise_id].url.port == other.port

        # No URL: the listener stops and says so.
        await cluster.set_url(enterprise_id, None)
        await until(lambda: not process.supervisor.listeners)
        await asyncio.sleep(0.1)
        status = await cluster.status(enterprise_id)
        assert status is not None
        assert status.state == "stopped"

    async def test_a_restarted_worker_ends_a_call_as_of_the_last_heartbeat(
        self, cluster: Cluster
    ) -> None:
        # The call talks a minute longer than recorded: the PBX's clock does not cap its end.
        replay = await cluster.server(
            delayed(A2, TALKING, 60.0), hold_at=0, pause_without_clients=False
        )
        enterprise_id = await cluster.add_enterprise(ami_url(replay))
        first = cluster.start("a")
        await until(lambda: enterprise_id in first.supervisor.listeners)
        async with asyncio.timeout(TIMEOUT):
            await first.supervisor.listeners[enterprise_id].connected.wait()
        replay.resume(hold_at=TALKING)
        calls: list[Call] = []

        async def in_state(state: str) -> bool:
            calls[:] = await cluster.calls()
            return bool(calls) and calls[0].state == state and calls[0].answered_by == "101"

        await until_async(lambda: in_state("active"))
        answered_at = calls[0].answered_at
        assert answered_at is not None

        async def talked_two_seconds() -> bool:
            status = await cluster.status(enterprise_id)
            return (
                status is not None
                and status.heartbeat_at is not None
                and (status.heartbeat_at - answered_at).total_seconds() >= 2
            )

        await until_async(talked_two_seconds)
        await first.stop()  # the worker dies mid-call
        replay.resume()  # the call hangs up while nobody listens
        async with asyncio.timeout(TIMEOUT):
            await replay.finished.wait()
        cluster.start("b")
        await until_async(lambda: in_state("ended"))
        # Alive at the dead worker's last heartbeat: not ended as of its answer.
        assert 2 <= calls[0].talk_seconds < 60

    async def test_a_bad_url_is_reported_not_fatal(self, cluster: Cluster) -> None:
        enterprise_id = await cluster.add_enterprise("http://not-ami")
        process = cluster.start("a")

        async def reported() -> bool:
            return await cluster.status(enterprise_id) is not None

        await until_async(reported)
        status = await cluster.status(enterprise_id)
        assert status is not None
        assert status.state == "refused"
        assert "ami://" in (status.last_error or "")
        assert process.task is not None
        assert not process.task.done()


@pytest.mark.postgres
class TestOneListenerPerPbx:
    @pytest.fixture(autouse=True)
    def _postgres_only(self, database: Database) -> None:
        if database.backend != "postgres":
            pytest.skip("the advisory lock is PostgreSQL's; SQLite runs one process")

    async def test_only_one_supervisor_listens_and_a_standby_takes_over(
        self, cluster: Cluster
    ) -> None:
        replay = await cluster.server()
        enterprise_id = await cluster.add_enterprise(ami_url(replay))
        first = cluster.start("a")
        second = cluster.start("b")
        await until(lambda: first.holding or second.holding)
        await asyncio.sleep(1.0)  # several lock retries of the standby
        assert [first.holding, second.holding].count(True) == 1
        assert replay.clients == 1
        holder, standby = (first, second) if first.holding else (second, first)

        await holder.stop()  # the holding process dies: its lock connection closes
        await until(lambda: standby.holding, within=5)
        await until(lambda: replay.clients == 1, within=5)
        status = await cluster.status(enterprise_id)
        assert status is not None
        await until(lambda: standby.supervisor.listeners[enterprise_id].connected.is_set())

    async def test_a_holder_that_loses_its_lock_connection_stops_listening(
        self, cluster: Cluster
    ) -> None:
        replay = await cluster.server()
        await cluster.add_enterprise(ami_url(replay))
        first = cluster.start("a")
        second = cluster.start("b")
        await until(lambda: first.holding or second.holding)
        holder = first if first.holding else second
        listener = next(iter(holder.supervisor.listeners.values()))

        # The database drops the holder's lock connection (a restart, a network cut). Only in
        # this test's database: the server may run other bridges' listeners.
        async with cluster.observer.connect() as connection:
            await connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND classid = :cls AND granted AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"cls": ADVISORY_LOCK_CLASS},
            )
            await connection.commit()
        await until(
            lambda: all(
                listener is not other
                for p in (first, second)
                for other in p.supervisor.listeners.values()
            ),
            within=5,
        )
        await until(lambda: first.holding or second.holding, within=5)
        await asyncio.sleep(0.5)
        assert [first.holding, second.holding].count(True) == 1
        await until(lambda: replay.clients == 1, within=5)
