"""The AMI listener against the replay server over TCP, into a migrated database (both backends)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callbridge.domain.events import Event as CallFact
from callbridge.pbx.ami.client import Backoff
from callbridge.pbx.ami.listener import (
    AmiListener,
    AmiUrl,
    InvalidAmiUrlError,
    ListenerState,
    ListenerStatus,
    OpenCall,
    OpenCalls,
    translator_config,
)
from callbridge.pbx.ami.replay import AmiReplayServer, Recording
from callbridge.services.call_tracking import track_events
from callbridge.storage.ami import AmiStatusRepository
from callbridge.storage.call_tracking import call_tracking_ports
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import (
    Bitrix24Integration,
    Bitrix24User,
    Call,
    Enterprise,
    Job,
    PbxEvent,
)
from tests.callbridge.pbx.ami.conftest import delayed, stream

TIMEOUT = 15
BOX = SecretBox([Fernet.generate_key()])
# a2 played up to here: the call is answered and talking (event 33 answers it).
TALKING = 40
# a2's talk time: BridgeEnter of PJSIP/101 at 1795711846.010, BridgeLeave at 1795711849.015.
RECORDED_TALK = 3
# a2 played up to here: both channels entered the bridge (events 47, 49); the next event, 3 s
# later, is the hang-up's.
BRIDGED = 53
A2 = "a2_inbound_answered_timestamps"


class TestAmiUrl:
    def test_parse(self) -> None:
        url = AmiUrl.parse("ami://crm:s%40cret@pbx.example:5039")
        assert url == AmiUrl("pbx.example", 5039, "crm", "s@cret")
        assert url.masked() == "ami://crm:***@pbx.example:5039"
        assert url.source == "ami:pbx.example:5039"

    def test_default_port_and_long_hosts(self) -> None:
        url = AmiUrl.parse("ami://crm:x@a-very-long-host-name.pbx.example.com")
        assert url.port == 5038
        assert url.source.startswith("ami:")
        assert len(url.source) <= 32

    @pytest.mark.parametrize(
        ("url", "says"),
        [
            ("http://crm:x@pbx:5038", "ami://"),
            ("ami://pbx:5038", "user and its secret"),
            ("ami://crm@pbx:5038", "user and its secret"),
            ("ami://crm:x@:5038", "no host"),
            ("ami://crm:x@pbx:99999", "invalid AMI URL"),
            ("ami://crm:x@pbx:5038/path", "no path"),
        ],
    )
    def test_invalid(self, url: str, says: str) -> None:
        with pytest.raises(InvalidAmiUrlError, match=says):
            AmiUrl.parse(url)

    def test_translator_settings(self) -> None:
        config = translator_config({"trunk_endpoints": ["provider"], "trunk_contexts": ["x-in"]})
        assert config.trunk_endpoints == frozenset({"provider"})
        assert config.trunk_contexts == ("x-in",)
        with pytest.raises(ValueError, match="unknown AMI setting"):
            translator_config({"trunks": []})


@dataclass
class Env:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    enterprise_id: int
    integration_id: int
    statuses: list[ListenerStatus] = field(default_factory=list)
    listeners: list[tuple[AmiListener, asyncio.Task[None]]] = field(default_factory=list)

    async def apply(self, facts: Sequence[CallFact], source: str) -> None:
        async with self.sessions() as session, session.begin():
            ports = call_tracking_ports(session, BOX)
            await track_events(ports, self.enterprise_id, facts, source=source)

    def start(self, port: int, **kwargs: Any) -> AmiListener:
        url = AmiUrl("127.0.0.1", port, "crm", "crm-secret")

        async def apply(facts: Sequence[CallFact]) -> None:
            await self.apply(facts, url.source)

        async def on_status(status: ListenerStatus) -> None:
            self.statuses.append(status)
            async with self.sessions() as session, session.begin():
                from callbridge.worker.ami import _update  # the supervisor's own mapping

                await AmiStatusRepository(session).report(
                    self.enterprise_id, _update(status, _Holder())
                )

        async def open_calls() -> OpenCalls:
            async with self.sessions() as session:
                repository = AmiStatusRepository(session)
                rows = await repository.open_calls(self.enterprise_id, url.source)
                heartbeat = await repository.heartbeat(self.enterprise_id, url.address)
            calls = [OpenCall(row.linkedid, row.answered, row.last_seen) for row in rows]
            return OpenCalls(calls, heartbeat)

        options: dict[str, Any] = {
            "ping_interval": None,
            "connect_timeout": 2.0,
            "backoff": Backoff(initial=0.05, maximum=0.2, jitter=0.0),
        }
        options.update(kwargs.pop("client_options", {}))
        listener = AmiListener(
            url,
            apply,
            name="test",
            on_status=on_status,
            open_calls=open_calls,
            status_interval=0.1,
            client_options=options,
            **kwargs,
        )
        task = asyncio.create_task(listener.run())
        self.listeners.append((listener, task))
        return listener

    async def stop(self, listener: AmiListener) -> None:
        for item in self.listeners:
            if item[0] is listener:
                self.listeners.remove(item)
                item[1].cancel()
                await asyncio.gather(item[1], return_exceptions=True)

    async def calls(self) -> list[Call]:
        async with self.sessions() as session:
            return list((await session.scalars(select(Call).order_by(Call.id))).all())

    async def jobs(self) -> list[Job]:
        async with self.sessions() as session:
            return list((await session.scalars(select(Job).order_by(Job.id))).all())

    async def inbox(self, kind: str) -> int:
        async with self.sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(PbxEvent).where(PbxEvent.kind == kind)
            )
            return int(count or 0)

    async def wait_call(self, state: str, answered_by: str | None = None) -> Call:
        async with asyncio.timeout(TIMEOUT):
            while True:
                calls = await self.calls()
                if (
                    calls
                    and calls[-1].state == state
                    and (answered_by is None or calls[-1].answered_by == answered_by)
                ):
                    return calls[-1]
                await asyncio.sleep(0.05)


class _Holder:
    holder = "test"


@pytest.fixture
async def env(fresh_database_url: str) -> AsyncIterator[Env]:
    engine = create_engine(fresh_database_url)
    sessions = create_session_factory(engine)
    async with sessions() as session, session.begin():
        enterprise = Enterprise(number=f"e-{uuid.uuid4().hex[:8]}")
        session.add(enterprise)
        await session.flush()
        integration = Bitrix24Integration(
            enterprise_id=enterprise.id,
            member_id=uuid.uuid4().hex,
            domain="portal.test",
            client_endpoint="http://portal.test/rest/",
            settings={"default_user_id": 1},
        )
        session.add(integration)
        await session.flush()
        session.add(Bitrix24User(integration_id=integration.id, user_id=7, extension="101"))
    result = Env(engine, sessions, enterprise.id, integration.id)
    try:
        yield result
    finally:
        for listener, _task in list(result.listeners):
            await result.stop(listener)
        await engine.dispose()


@pytest.fixture
async def server() -> AsyncIterator[list[AmiReplayServer]]:
    servers: list[AmiReplayServer] = []
    yield servers
    for item in servers:
        await item.close()


async def start_server(
    servers: list[AmiReplayServer], *files: Path | Recording, **kwargs: Any
) -> AmiReplayServer:
    kwargs.setdefault("speed", 0)
    kwargs.setdefault("gap", 0)
    kwargs.setdefault("add_timestamps", True)
    replay = AmiReplayServer(files, **kwargs)
    await replay.start("127.0.0.1", 0)
    servers.append(replay)
    return replay


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` until it holds (bounded by TIMEOUT)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TestListener:
    async def test_an_inbound_call_is_tracked_and_its_jobs_queued(
        self, env: Env, server: list[AmiReplayServer]
    ) -> None:
        replay = await start_server(server, stream("a2_inbound_answered_timestamps"))
        listener = env.start(replay.port)
        call = await env.wait_call("ended")
        assert call.direction == "inbound"
        assert call.answered_by == "101"
        assert call.talk_seconds > 0
        kinds = [job.payload["command"]["kind"] for job in await env.jobs()]
        assert kinds[0] == "register"
        assert "finish" in kinds
        assert {job.integration_id for job in await env.jobs()} == {env.integration_id}
        status = listener.status
        assert status.state is ListenerState.CONNECTED
        assert status.events_in > 0
        assert status.last_event_at is not None
        assert listener.connected.is_set()
        async with env.sessions() as session:
            row = (await AmiStatusRepository(session).by_enterprise())[env.enterprise_id]
        assert row.pbx == f"127.0.0.1:{replay.port}"
        assert row.state in ("connecting", "connected")

    async def test_a_call_that_ends_while_disconnected_is_ended_after_the_reconnect(
        self, env: Env, server: list[AmiReplayServer]
    ) -> None:
        replay = await start_server(
            server,
            stream("a2_inbound_answered_timestamps"),
            hold_at=0,
            pause_without_clients=False,
        )
        gate = asyncio.Event()

        async def gated_sleep(_delay: float) -> None:
            await gate.wait()

        listener = env.start(replay.port, client_options={"sleep": gated_sleep})
        async with asyncio.timeout(TIMEOUT):
            await listener.connected.wait()
            replay.resume(hold_at=TALKING)
            await replay.wait_played(TALKING)
        await env.wait_call("active", answered_by="101")

        replay.drop_connections()
        replay.resume()  # the call hangs up while nobody listens
        async with asyncio.timeout(TIMEOUT):
            await replay.finished.wait()
        await until(lambda: listener.status.state is ListenerState.DISCONNECTED)
        assert listener.status.last_error
        gate.set()

        call = await env.wait_call("ended")
        assert call.answered_by == "101"
        # Ended as of the PBX's last event we saw (its clock: the recording's), not hours later
        # in ours: a2 talked 3 s, of which we saw next to nothing before the drop.
        assert 0 <= call.talk_seconds <= RECORDED_TALK
        assert listener.status.reconnects == 1
        assert listener.status.state is ListenerState.CONNECTED
        finishes = [j for j in await env.jobs() if j.payload["command"]["kind"] == "finish"]
        assert len(finishes) == 1
        assert await env.inbox("call.ended") == 1
        assert len(await env.calls()) == 1

    async def test_a_fresh_listener_ends_calls_that_ended_while_nobody_listened(
        self, env: Env, server: list[AmiReplayServer]
    ) -> None:
        replay = await start_server(
            server,
            stream("a2_inbound_answered_timestamps"),
            hold_at=0,
            pause_without_clients=False,
        )
        first = env.start(replay.port)
        async with asyncio.timeout(TIMEOUT):
            await first.connected.wait()
        replay.resume(hold_at=TALKING)
        await env.wait_call("active", answered_by="101")
        await env.stop(first)  # the holder dies mid-call
        replay.resume()
        async with asyncio.timeout(TIMEOUT):
            await replay.finished.wait()

        second = env.start(replay.port)  # the standby takes over
        call = await env.wait_call("ended")
        assert call.answered_by == "101"
        # As of the call's last stored event (the PBX's clock), not the takeover's wall clock.
        assert 0 <= call.talk_seconds <= RECORDED_TALK
        async with asyncio.timeout(TIMEOUT):
            await second.connected.wait()
        finishes = [j for j in await env.jobs() if j.payload["command"]["kind"] == "finish"]
        assert len(finishes) == 1

    async def test_replaying_the_same_call_again_changes_nothing(
        self, env: Env, server: list[AmiReplayServer]
    ) -> None:
        replay = await start_server(server, stream("a2_inbound_answered_timestamps"))
        first = env.start(replay.port)
        await env.wait_call("ended")
        jobs = len(await env.jobs())
        await env.stop(first)
        again = await start_server(server, stream("a2_inbound_answered_timestamps"))
        second = env.start(again.port)
        async with asyncio.timeout(TIMEOUT):
            await again.finished.wait()
        await until(lambda: second.status.events_in >= 90)
        await asyncio.sleep(0.2)
        assert len(await env.jobs()) == jobs
        assert len(await env.calls()) == 1

    async def test_an_unreachable_pbx_shows_in_the_status(self, env: Env) -> None:
        listener = env.start(free_port())
        await until(lambda: any(s.state is ListenerState.UNREACHABLE for s in env.statuses))
        status = listener.status
        assert status.state is ListenerState.UNREACHABLE
        assert status.last_error is not None
        assert "cannot connect" in status.last_error
        async with asyncio.timeout(TIMEOUT):
            while True:
                async with env.sessions() as session:
                    rows = await AmiStatusRepository(session).by_enterprise()
                row = rows.get(env.enterprise_id)
                if row is not None and row.state == "unreachable":
                    break
                await asyncio.sleep(0.02)
        assert "cannot connect" in (row.last_error or "")

    async def test_a_refused_login_shows_in_the_status(
        self, env: Env, server: list[AmiReplayServer]
    ) -> None:
        replay = await start_server(server, users={"crm": "another-secret"})
        listener = env.start(replay.port)
        await until(lambda: listener.status.state is ListenerState.REFUSED)
        assert "refused the login" in (listener.status.last_error or "")

    async def test_facts_the_store_refuses_are_dropped_not_retried_forever(
        self, env: Env, server: list[AmiReplayServer]
    ) -> None:
        from callbridge.domain.errors import Permanent

        replay = await start_server(server, stream("a2_inbound_answered_timestamps"))
        seen: list[str] = []

        async def refuse_answers(facts: Sequence[CallFact]) -> None:
            if any(f.name == "call.answered" for f in facts):
                raise Permanent("no")
            seen.extend(f.name for f in facts)

        url = AmiUrl("127.0.0.1", replay.port, "crm", "crm-secret")
        listener = AmiListener(url, refuse_answers, client_options={"ping_interval": None})
        task = asyncio.create_task(listener.run())
        try:
            await until(lambda: "call.ended" in seen)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert "call.answered" not in seen
        assert "dropped call.answered" in (listener.status.last_error or "")
        assert listener.status.state is ListenerState.STOPPED


class TestCatchingUp:
    """At login the listener asks the PBX its clock (Ping) and its live channels."""

    async def test_events_sent_before_the_list_of_channels_are_applied_before_it(
        self, env: Env, server: list[AmiReplayServer]
    ) -> None:
        recording = Recording.load(stream(A2))
        newchannel = next(e.message for e in recording.events if e.message.name == "Newchannel")
        assert newchannel.timestamp is not None
        replay = await start_server(server, stream(A2), hold_at=0)
        # A busy PBX: the call begins, rings and is answered before it answers CoreShowChannels.
        replay.hold_answers("CoreShowChannels")
        listener = env.start(replay.port)
        async with asyncio.timeout(TIMEOUT):
            await replay.wait_actions("CoreShowChannels")
            replay.resume(hold_at=TALKING)
            await replay.wait_played(TALKING)
        replay.release_answers()
        async with asyncio.timeout(TIMEOUT):
            await listener.connected.wait()
        replay.resume()

        call = await env.wait_call("ended")
        # Started when its Newchannel, the older fact, says; the list of channels sent after
        # it (which dates the channel by its uniqueid's second, 1795711842) came later.
        assert call.started_at == datetime.fromtimestamp(newchannel.timestamp, UTC)
        assert call.answered_by == "101"
        assert call.talk_seconds == RECORDED_TALK
        assert len(await env.calls()) == 1
        finishes = [j for j in await env.jobs() if j.payload["command"]["kind"] == "finish"]
        assert len(finishes) == 1

    async def test_a_call_joined_mid_way_is_dated_in_the_pbx_clock(
        self, env: Env, server: list[AmiReplayServer]
    ) -> None:
        recording = Recording.load(stream(A2))
        created = recording.events[0].message.timestamp  # its first event, 1795711843.000
        bridged = recording.events[BRIDGED - 1].message.timestamp
        assert created is not None
        assert bridged is not None
        # The call is answered and talking before anyone listens; the PBX's clock (the
        # recording's) is hours away from ours.
        replay = await start_server(
            server, stream(A2), hold_at=BRIDGED, pause_without_clients=False
        )
        async with asyncio.timeout(TIMEOUT):
            await replay.wait_played(BRIDGED)
        listener = env.start(replay.port)
        async with asyncio.timeout(TIMEOUT):
            await listener.connected.wait()
        offset = listener.translator.clock_offset
        assert offset is not None
        assert abs(offset - (bridged - time.time())) < 5
        assert abs(offset) > 3600
        replay.resume()

        call = await env.wait_call("ended")
        assert call.started_at is not None
        # Created 3 s before the list (its Duration), in the second its uniqueid names.
        assert int(created) - 1 <= call.started_at.timestamp() <= created
        assert call.answered_by == "101"
        # Answered (for all we know) when the list showed it bridged, in the PBX's clock like
        # the hang-up: the recording's talk, not hours of our clock.
        assert call.answered_at is not None
        assert abs(call.answered_at.timestamp() - bridged) < 1
        assert call.talk_seconds == RECORDED_TALK

    async def test_lost_before_any_event_a_call_ends_in_the_pbx_clock(
        self, env: Env, server: list[AmiReplayServer]
    ) -> None:
        replay = await start_server(
            server, stream(A2), hold_at=BRIDGED, pause_without_clients=False
        )
        async with asyncio.timeout(TIMEOUT):
            await replay.wait_played(BRIDGED)
        gate = asyncio.Event()

        async def gated_sleep(_delay: float) -> None:
            await gate.wait()

        listener = env.start(replay.port, client_options={"sleep": gated_sleep})
        async with asyncio.timeout(TIMEOUT):
            await listener.connected.wait()
        await env.wait_call("active", answered_by="101")
        # Dropped before the PBX sent a single event: only its Ping told its clock.
        replay.drop_connections()
        replay.resume()  # the call hangs up while nobody listens
        async with asyncio.timeout(TIMEOUT):
            await replay.finished.wait()
        await until(lambda: listener.status.state is ListenerState.DISCONNECTED)
        gate.set()

        call = await env.wait_call("ended")
        # Ended as of when we lost sight of it, in the PBX's clock: not hours of ours.
        assert 0 <= call.talk_seconds <= RECORDED_TALK
        assert listener.status.reconnects == 1

    async def test_a_pbx_that_does_not_say_its_time_dates_by_the_uniqueid(
        self, env: Env, server: list[AmiReplayServer]
    ) -> None:
        recording = Recording.load(stream(A2))
        linkedid = recording.events[0].message["Linkedid"]  # 1795711842.304
        replay = await start_server(
            server,
            stream(A2),
            hold_at=BRIDGED,
            pause_without_clients=False,
            ping_timestamp=False,
        )
        async with asyncio.timeout(TIMEOUT):
            await replay.wait_played(BRIDGED)
        listener = env.start(replay.port)
        async with asyncio.timeout(TIMEOUT):
            await listener.connected.wait()
        assert listener.translator.clock_offset is None
        replay.resume()

        call = await env.wait_call("ended")
        assert call.started_at == datetime.fromtimestamp(int(float(linkedid)), UTC)


class Clock:
    """Our wall clock, ``ahead`` seconds in the future (the listener's and its client's)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.ahead)

    def epoch(self) -> float:
        return time.time() + self.ahead


class TestTakeover:
    """A listener that takes over ends the calls that ended while nobody listened."""

    #: Seconds of talk in the PBX's clock after the dead listener's last heartbeat.
    LATER = 60.0
    #: The dead listener's last heartbeat, seconds after the call was answered.
    HEARTBEAT = 40.0

    async def _heartbeat(self, env: Env, port: int) -> datetime | None:
        async with env.sessions() as session:
            return await AmiStatusRepository(session).heartbeat(
                env.enterprise_id, f"127.0.0.1:{port}"
            )

    async def _wait_heartbeat(self, env: Env, port: int, at_least: datetime) -> None:
        async with asyncio.timeout(TIMEOUT):
            while True:
                heartbeat = await self._heartbeat(env, port)
                if heartbeat is not None and heartbeat >= at_least:
                    return
                await asyncio.sleep(0.02)

    async def _talking(
        self, env: Env, server: list[AmiReplayServer], clock: Clock, **kwargs: Any
    ) -> tuple[AmiReplayServer, AmiListener, Call]:
        replay = await start_server(
            server, delayed(A2, TALKING, self.LATER), hold_at=0, pause_without_clients=False
        )
        options = {"wall_clock": clock.epoch, **kwargs.pop("client_options", {})}
        first = env.start(replay.port, clock=clock.now, client_options=options, **kwargs)
        async with asyncio.timeout(TIMEOUT):
            await first.connected.wait()
        replay.resume(hold_at=TALKING)
        call = await env.wait_call("active", answered_by="101")
        assert call.answered_at is not None
        # Nothing in the store is later than the answer: the PBX is quiet while they talk.
        await self._wait_heartbeat(env, replay.port, call.answered_at)
        return replay, first, call

    async def _take_over(
        self, env: Env, replay: AmiReplayServer, first: AmiListener, clock: Clock
    ) -> Call:
        await env.stop(first)  # the holder dies mid-call
        replay.resume()  # the call hangs up while nobody listens
        async with asyncio.timeout(TIMEOUT):
            await replay.finished.wait()
        second = env.start(replay.port, clock=clock.now, client_options={"wall_clock": clock.epoch})
        call = await env.wait_call("ended")
        async with asyncio.timeout(TIMEOUT):
            await second.connected.wait()
        finishes = [j for j in await env.jobs() if j.payload["command"]["kind"] == "finish"]
        assert len(finishes) == 1
        return call

    @pytest.mark.parametrize("same_pbx", [True, False], ids=["same-pbx", "another-pbx"])
    async def test_a_call_ends_as_of_the_dead_listeners_last_heartbeat(
        self, env: Env, server: list[AmiReplayServer], same_pbx: bool
    ) -> None:
        clock = Clock()
        replay, first, answered = await self._talking(env, server, clock)
        assert answered.answered_at is not None
        clock.ahead = self.HEARTBEAT  # they talk for 40 s; the listener is still connected
        await self._wait_heartbeat(
            env, replay.port, answered.answered_at + timedelta(seconds=self.HEARTBEAT)
        )
        if not same_pbx:
            # Heard while connected to another PBX (the enterprise moved): not this one's.
            async with env.sessions() as session, session.begin():
                row = (await AmiStatusRepository(session).by_enterprise())[env.enterprise_id]
                row.heartbeat_pbx = "127.0.0.1:1"
        call = await self._take_over(env, replay, first, clock)

        assert call.answered_by == "101"
        if same_pbx:
            # Alive at the heartbeat, 40 s into the talk: not ended as of its answer.
            assert self.HEARTBEAT <= call.talk_seconds <= self.HEARTBEAT + 2
        else:
            # As of its last stored event (the answer), as when nothing says it lived longer.
            assert 0 <= call.talk_seconds <= 1
        # Never later than it really ended (the PBX's clock at the takeover says when).
        assert call.talk_seconds <= self.LATER + RECORDED_TALK

    async def test_a_heartbeat_while_disconnected_is_not_trusted(
        self, env: Env, server: list[AmiReplayServer]
    ) -> None:
        gate = asyncio.Event()

        async def gated_sleep(_delay: float) -> None:
            await gate.wait()

        clock = Clock()
        replay, first, answered = await self._talking(
            env, server, clock, client_options={"sleep": gated_sleep}
        )
        replay.drop_connections()
        await until(lambda: first.status.state is ListenerState.DISCONNECTED)
        clock.ahead = self.HEARTBEAT  # 40 s later, still reporting, but hearing nothing
        reported = len(env.statuses)
        await until(lambda: len(env.statuses) >= reported + 3)
        assert first.status.state is ListenerState.DISCONNECTED
        assert first.status.heartbeat is None
        heartbeat = await self._heartbeat(env, replay.port)
        assert answered.answered_at is not None
        assert heartbeat is not None
        assert heartbeat < answered.answered_at + timedelta(seconds=1)

        call = await self._take_over(env, replay, first, clock)
        assert call.answered_by == "101"
        assert 0 <= call.talk_seconds <= 1

    async def test_never_after_now_in_the_pbx_clock(
        self, env: Env, server: list[AmiReplayServer]
    ) -> None:
        clock = Clock()
        replay, first, answered = await self._talking(env, server, clock)
        assert answered.answered_at is not None
        # A heartbeat from a listener whose clock ran ahead of the PBX's by an hour.
        clock.ahead = 3600.0
        await self._wait_heartbeat(env, replay.port, answered.answered_at + timedelta(seconds=3600))
        clock.ahead = 0.0
        call = await self._take_over(env, replay, first, clock)
        # Ended no later than the PBX's clock at the takeover: the recording's end.
        assert self.LATER <= call.talk_seconds <= self.LATER + RECORDED_TALK + 1

    async def test_a_heartbeat_waits_for_the_events_still_to_apply(
        self, server: list[AmiReplayServer]
    ) -> None:
        recording = Recording.load(stream(A2))
        answered = recording.events[33 - 1].message.timestamp  # CEL ANSWER of PJSIP/101
        last = recording.events[-1].message.timestamp
        assert answered is not None
        assert last is not None
        replay = await start_server(server, stream(A2), hold_at=0, pause_without_clients=False)
        applying = asyncio.Event()
        gate = asyncio.Event()
        seen: list[str] = []

        async def slow_store(facts: Sequence[CallFact]) -> None:
            if any(f.name == "call.answered" for f in facts):
                applying.set()
                await gate.wait()
            seen.extend(f.name for f in facts)

        clock = Clock()
        url = AmiUrl("127.0.0.1", replay.port, "crm", "crm-secret")
        listener = AmiListener(
            url,
            slow_store,
            clock=clock.now,
            client_options={"ping_interval": None, "wall_clock": clock.epoch},
        )
        task = asyncio.create_task(listener.run())
        try:
            async with asyncio.timeout(TIMEOUT):
                await listener.connected.wait()
                replay.resume()
                await applying.wait()
            clock.ahead = 40.0
            status = listener.status
            assert status.state is ListenerState.CONNECTED
            # The answer (and the hang-up behind it) is not stored yet: the call may have
            # ended at any time since the listener last had nothing left to apply.
            assert status.heartbeat is None or status.heartbeat.timestamp() < answered
            gate.set()
            await until(lambda: "call.ended" in seen)
            await until(lambda: listener.status.heartbeat is not None)
            # All stored, nothing waiting: now, in the PBX's clock (its events' since the clock
            # jumped), past the last event it sent.
            heartbeat = listener.status.heartbeat
            assert heartbeat is not None
            assert heartbeat.timestamp() >= last
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
