"""The AMI listener fails over between worker processes, and no call is lost or registered twice.

Real processes (see ``tests/e2e/processes.py``): the emulator, ``callbridge serve`` and two
``callbridge worker`` on one PostgreSQL database; the PBX is the AMI replayer, in this process
so that the test sees who logs in and holds the PBX's timeline at an exact point of a call.

One worker holds the enterprise's advisory lock and listens; the other is a standby. Three
recorded calls play in turn:

1. a call ringing 101, never answered: heard whole by the first holder;
2. a ring group answered by 102: while they talk, the holder is SIGKILLed; the standby takes the
   lock, logs in, adopts the live channels (``CoreShowChannels``) and sees the hang-up itself.
   Then a new worker starts in the killed one's place, as a service manager would: the new
   standby;
3. a call answered by 101: while they talk, the second holder is SIGKILLed and the call hangs up
   while nobody listens; the new standby takes over and ends it from the database's open calls
   (the PBX has no channel of it left), as of the dead holder's last heartbeat: connected and
   with every event stored then, it would have stored the hang-up. The recording is played
   with its hang-up :data:`LATER` seconds later (the PBX's clock too), so that the PBX's "now"
   at the takeover does not cap the end.

The lock is session-level and dies with its connection: the kernel closes a killed process's
sockets, its PostgreSQL backend reads EOF and exits, and the lock is free within milliseconds
(:data:`LOCK_FREED_BOUND` allows 2 s).
A standby tries again every ``lock_retry_interval`` (5 s, the worker's default), so it holds the
lock at most 5 s after the kill, then connects and logs in to the PBX over loopback:
:data:`TAKEOVER_BOUND` allows 5 s more for that on a loaded machine.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.pbx.ami.replay import AmiReplayServer, Recording
from callbridge.storage.ami import ADVISORY_LOCK_CLASS
from callbridge.storage.db import create_unpooled_engine
from callbridge.storage.models import AmiStatus, Enterprise, Job, JobStatus
from callbridge.storage.models import Call as CallRow
from callbridge.worker.ami import AmiSupervisor
from tests.callbridge.pbx.ami.conftest import delayed, stream
from tests.conftest import Database
from tests.e2e.processes import (
    ENTERPRISE,
    HOST,
    STATUS_ANSWERED,
    STATUS_MISSED,
    Stack,
    accepted_commands,
    portal_requests,
    stack,
    tcp_ports,
    wait_idle,
)
from tests.e2e.test_ami_streams_e2e import assert_duration, recorded

pytestmark = pytest.mark.slow

#: Played in this order (the replayer keeps a recording's ids when they are above those
#: already played, so in the order they were recorded).
MISSED, RINGGROUP, TALKING_CALL = (
    "b_inbound_noanswer",
    "d_inbound_ringgroup",
    "a2_inbound_answered_timestamps",
)
STREAMS = (MISSED, RINGGROUP, TALKING_CALL)
#: (STATUS_CODE, the portal user the call is credited to) each call must end with.
EXPECTED = {
    MISSED: (STATUS_MISSED, 1),
    RINGGROUP: (STATUS_ANSWERED, 2),
    TALKING_CALL: (STATUS_ANSWERED, 1),
}
#: Events of RINGGROUP played when its holder dies: 102 answered (DialEnd ANSWER is event 64)
#: and is bridged (73, 75); the hang-up (BridgeLeave 99) is still to come.
RINGGROUP_TALKING = 80
#: Events of TALKING_CALL played when its holder dies: 101 answered (DialEnd ANSWER is event 39)
#: and is bridged (47, 49); the hang-up (BridgeLeave 71) is still to come.
TALKING = 60
#: Seconds the recording's talk of TALKING_CALL is stretched by after the kill (the PBX's clock).
LATER = 30.0
#: How often a listener reports its status, with its heartbeat: the worker's default.
STATUS_INTERVAL: float = inspect.signature(AmiSupervisor).parameters["status_interval"].default
#: How often a standby tries the lock: the worker runs AmiSupervisor with its default.
LOCK_RETRY_INTERVAL: float = (
    inspect.signature(AmiSupervisor).parameters["lock_retry_interval"].default
)
TAKEOVER_BOUND = LOCK_RETRY_INTERVAL + 5.0
#: The killed holder's backend lets the lock go as soon as it reads EOF: no lease to expire.
LOCK_FREED_BOUND = 2.0
#: Anything else: process start, calls reaching the portal.
TIMEOUT = 30.0
#: Replay pace: the recordings' seconds pass 20 times faster; Timestamp headers keep durations.
SPEED = 20.0

#: Backends of this database holding an AMI listener lock, by their client's TCP port.
_LOCK_HOLDERS = text(
    "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
    "AND l.classid::bigint = :cls AND l.objid::bigint = :obj "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


class Observer:
    """What the test looks at: the database, the replayer, the processes, the portal."""

    def __init__(self, s: Stack, replay: AmiReplayServer, engine: AsyncEngine) -> None:
        self.s = s
        self.replay = replay
        self.engine = engine
        self.enterprise_id = 0

    async def until(
        self, what: str, predicate: Callable[[], Awaitable[bool]], within: float
    ) -> None:
        """Poll ``predicate`` until it holds; fail with the processes' logs after ``within`` s."""
        try:
            async with asyncio.timeout(within):
                while True:
                    if await predicate():
                        return
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pytest.fail(f"not within {within:g} s: {what}\n{await self.describe()}")

    async def describe(self) -> str:
        """The portal's calls, the database's calls and jobs, the processes' logs."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(CallRow.linkedid, CallRow.state))).all()
            jobs = (await conn.execute(select(Job.id, Job.status, Job.payload))).all()
        return "\n".join(
            [
                f"portal: {list((await self.portal_calls()).values())}",
                f"calls: {rows}",
                f"jobs: {jobs}",
                f"replay: played {self.replay.played}, logins {self.replay.logins}",
                self.s.logs(),
            ]
        )

    async def lock_ports(self) -> list[int]:
        """Client ports of the PostgreSQL backends holding the enterprise's listener lock."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                _LOCK_HOLDERS, {"cls": ADVISORY_LOCK_CLASS, "obj": self.enterprise_id}
            )
            return [int(port) for (port,) in rows]

    async def lock_moved(self, held: list[int]) -> bool:
        """The backend that held the lock (``held``: its client port) no longer does."""
        return await self.lock_ports() != held

    async def status(self) -> tuple[str, str]:
        """The listener's status row: (state, holder)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(AmiStatus.state, AmiStatus.holder).where(
                        AmiStatus.enterprise_id == self.enterprise_id
                    )
                )
            ).one_or_none()
        return (row.state, row.holder) if row is not None else ("", "")

    async def connected_by(self, process: asyncio.subprocess.Process) -> bool:
        """The process's listener says it is logged in and caught up with the PBX."""
        state, holder = await self.status()
        # The worker's name (the holder) is ``host:pid:random``.
        return state == "connected" and holder.split(":")[1:2] == [str(process.pid)]

    async def listening(self) -> asyncio.subprocess.Process:
        """The one live worker holding the lock and logged in to the PBX; nobody else does."""
        locks = await self.lock_ports()
        peers = [int(peer.rsplit(":", 1)[1]) for peer in self.replay.peers]
        assert len(locks) == 1, f"lock held by {len(locks)} backends\n{self.s.logs()}"
        assert len(peers) == 1, f"{len(peers)} clients logged in to the PBX\n{self.s.logs()}"
        live = [w for w in self.s.workers if w.returncode is None]
        sockets = {w.pid: tcp_ports(w.pid) for w in live}
        lockers = [w for w in live if locks[0] in sockets[w.pid]]
        listeners = [w for w in live if peers[0] in sockets[w.pid]]
        assert len(lockers) == 1, (locks, sockets)
        assert listeners == lockers, (peers, locks, sockets)
        return lockers[0]

    async def standby(self, process: asyncio.subprocess.Process) -> None:
        """Wait until ``process`` has tried the lock and been refused."""

        async def refused() -> bool:
            return "ami.standby" in self.s.worker_log(process)

        await self.until(f"worker {process.pid} is a standby", refused, TIMEOUT)

    async def heartbeat(self) -> float | None:
        """The listener's last heartbeat while connected, in the PBX's clock (epoch seconds)."""
        async with self.engine.connect() as conn:
            found = await conn.execute(
                select(AmiStatus.heartbeat_at).where(AmiStatus.enterprise_id == self.enterprise_id)
            )
            at = found.scalar_one_or_none()
        return None if at is None else at.timestamp()

    async def answered_at(self, linkedid: str) -> float:
        """When the call was answered, in the PBX's clock (epoch seconds)."""
        async with self.engine.connect() as conn:
            found = await conn.execute(
                select(CallRow.answered_at).where(CallRow.linkedid == linkedid)
            )
            at = found.scalar_one()
        assert at is not None
        return float(at.timestamp())

    async def answered_by(self, linkedid: str) -> str | None:
        """Who answered the call, as the database has it (None: nobody yet, or no call)."""
        async with self.engine.connect() as conn:
            found = await conn.execute(
                select(CallRow.answered_by).where(CallRow.linkedid == linkedid)
            )
            return found.scalar_one_or_none()

    async def credited(self, call: dict[str, Any]) -> int:
        """The portal user a finished call belongs to (its statistic's PORTAL_USER_ID)."""
        response = await self.s.control.get(f"/_emulator/calls/{call['CALL_ID']}")
        response.raise_for_status()
        return int(response.json()["statistic"]["PORTAL_USER_ID"])

    async def portal_calls(self) -> dict[str, dict[str, Any]]:
        """The portal's calls by EXTERNAL_CALL_ID."""
        response = await self.s.control.get("/_emulator/calls")
        response.raise_for_status()
        return {str(c["EXTERNAL_CALL_ID"]): c for c in response.json()}

    async def settled(self) -> None:
        """Wait until nothing is left to send to the portal."""
        pending = await wait_idle(self.s.database_url, TIMEOUT)
        assert pending == 0, f"{pending} Bitrix24 commands still queued\n{self.s.logs()}"


def external_id(name: str) -> str:
    """The EXTERNAL_CALL_ID of a recorded call's first leg in the portal."""
    return f"{ENTERPRISE}/{recorded(name).linkedid}-0"


@pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(),
    reason="which process holds a connection is read from Linux's /proc",
)
async def test_the_standby_takes_over_a_killed_listener_and_every_call_ends_once(
    database: Database, fresh_database_url: str, tmp_path: Path
) -> None:
    if database.backend != "postgres":
        pytest.skip("one listener per PBX across processes is PostgreSQL's advisory lock")
    began = time.monotonic()
    counts = [len(Recording.load(stream(name)).events) for name in STREAMS]
    talking_call = delayed(TALKING_CALL, TALKING, LATER)
    # As far as the holder of call 3 sees: talking, and quiet since.
    talked = talking_call.events[TALKING - 1].message.timestamp
    assert talked is not None
    # The PBX does not wait for anyone: what plays while no client is logged in is lost to us.
    replay = AmiReplayServer(
        [stream(MISSED), stream(RINGGROUP), talking_call],
        speed=SPEED,
        gap=0,
        add_timestamps=True,
        hold_at=0,
        pause_without_clients=False,
    )
    await replay.start(HOST, 0)
    engine = create_unpooled_engine(fresh_database_url)
    ami_url = f"ami://crm:crm-secret@{HOST}:{replay.port}"
    timings: dict[str, float] = {}
    try:
        async with stack(
            fresh_database_url, tmp_path, lease_seconds=5, workers=2, ami_url=ami_url
        ) as s:
            see = Observer(s, replay, engine)
            async with engine.connect() as conn:
                see.enterprise_id = int(
                    (
                        await conn.execute(
                            select(Enterprise.id).where(Enterprise.number == ENTERPRISE)
                        )
                    ).scalar_one()
                )
            first, second = s.workers

            # -- one listens, the other waits ---------------------------------------------------
            await see.until(
                "a worker listens",
                lambda: _any(see.connected_by(w) for w in (first, second)),
                TIMEOUT,
            )
            holder = await see.listening()
            standby = second if holder is first else first
            await see.standby(standby)
            refused = time.monotonic()

            # -- call 1 whole, call 2 up to its talk ------------------------------------------
            replay.resume(hold_at=counts[0] + RINGGROUP_TALKING)

            async def ringgroup_talking() -> bool:
                calls = await see.portal_calls()
                missed = calls.get(external_id(MISSED))
                call = calls.get(external_id(RINGGROUP))
                return (
                    missed is not None
                    and missed["state"] == "finished"
                    and call is not None
                    and call["cards_visible"] == [2]  # the others' cards hidden at the answer
                )

            await see.until("call 1 finished and call 2 talking", ringgroup_talking, TIMEOUT)
            await see.settled()  # nothing in flight: a second register would be the takeover's
            # The standby has tried again since it was first refused, and was refused again.
            await asyncio.sleep(max(0.0, refused + LOCK_RETRY_INTERVAL + 1 - time.monotonic()))
            assert await see.listening() is holder
            assert replay.logins == 1

            # -- the holder dies mid-call ------------------------------------------------------
            held = await see.lock_ports()
            killed = time.monotonic()
            await s.kill_worker(holder)
            await see.until("the lock is freed", lambda: see.lock_moved(held), TIMEOUT)
            timings["takeover 1: lock freed"] = time.monotonic() - killed
            await see.until("the standby logs in", lambda: _true(replay.logins == 2), TIMEOUT)
            timings["takeover 1: logged in"] = time.monotonic() - killed
            await see.until("the standby caught up", lambda: see.connected_by(standby), TIMEOUT)
            timings["takeover 1: caught up"] = time.monotonic() - killed
            assert await see.listening() is standby

            # -- call 2 hangs up, call 3 is answered; the killed worker's replacement starts ----
            replay.resume(hold_at=counts[0] + counts[1] + TALKING)
            # Started only now, so that it cannot race the standby for the lock: the new standby.
            third = await s.start_worker()

            async def talking() -> bool:
                calls = await see.portal_calls()
                ringgroup = calls.get(external_id(RINGGROUP))
                call = calls.get(external_id(TALKING_CALL))
                return (
                    ringgroup is not None
                    and ringgroup["state"] == "finished"
                    and call is not None
                    and call["cards_visible"] == [1]
                    and await see.answered_by(recorded(TALKING_CALL).linkedid) == "101"
                )

            await see.until("call 2 finished and call 3 talking", talking, TIMEOUT)
            await see.settled()
            await see.standby(third)

            # -- the new holder dies, and the call ends while nobody listens -------------------
            async def quiet_since_talking() -> bool:
                # The holder reported, connected, a second of quiet after the talk so far.
                heartbeat = await see.heartbeat()
                return heartbeat is not None and heartbeat >= talked + 1

            await see.until("a heartbeat after the talk", quiet_since_talking, TIMEOUT)
            heartbeat = await see.heartbeat()
            assert heartbeat is not None
            read = time.monotonic()
            # Still the first takeover's listener (a lock lost since would show here, not as a
            # lock that never moves after the kill).
            assert await see.listening() is standby, s.logs()
            held = await see.lock_ports()
            # Frozen first, killed once the PBX has sent the hang-up: the frozen holder keeps
            # the lock, so the last worker cannot log in in time to see the hang-up live, and
            # it never reads the bytes the kernel buffers for it.
            frozen = time.monotonic()
            standby.send_signal(signal.SIGSTOP)
            replay.resume()
            async with asyncio.timeout(TIMEOUT):
                await replay.finished.wait()
            killed = time.monotonic()
            await s.kill_worker(standby)
            await see.until("the lock is freed", lambda: see.lock_moved(held), TIMEOUT)
            timings["takeover 2: lock freed"] = time.monotonic() - killed
            await see.until("the last worker logs in", lambda: _true(replay.logins == 3), TIMEOUT)
            timings["takeover 2: logged in"] = time.monotonic() - killed
            await see.until("the last worker caught up", lambda: see.connected_by(third), TIMEOUT)
            timings["takeover 2: caught up"] = time.monotonic() - killed
            # The PBX's clock when the last worker took over: the recording's end.
            taken_over = replay.pbx_time()
            assert await see.listening() is third

            async def all_finished() -> bool:
                calls = await see.portal_calls()
                return len(calls) == len(STREAMS) and all(
                    c["state"] == "finished" for c in calls.values()
                )

            await see.until("every call finished", all_finished, TIMEOUT)
            await see.settled()
            await asyncio.sleep(1.0)  # late duplicates would show up now
            await see.settled()

            # -- what the portal has -----------------------------------------------------------
            calls = await see.portal_calls()
            detail = await see.describe()
            assert sorted(calls) == sorted(external_id(name) for name in STREAMS), detail
            for name in STREAMS:
                call = calls[external_id(name)]
                assert call["state"] == "finished", (name, detail)
                assert (call["STATUS_CODE"], await see.credited(call)) == EXPECTED[name], (
                    name,
                    detail,
                )
                assert call["cards_visible"] == [], (name, detail)
            assert calls[external_id(MISSED)]["DURATION"] == 0
            # Adopted live by the standby, which saw the hang-up: the recorded talk time.
            assert_duration(calls[external_id(RINGGROUP)], recorded(RINGGROUP).talk["102"])
            # Its hang-up was never seen: it ends as of the dead holder's last heartbeat, the
            # one read before the kill or one written since (at most one status interval
            # later than the holder's clock at the kill), never later than the takeover.
            answered = await see.answered_at(recorded(TALKING_CALL).linkedid)
            duration = int(calls[external_id(TALKING_CALL)]["DURATION"])
            before_kill = heartbeat - answered + (frozen - read)
            talk_bounds = (
                heartbeat - answered - 1,
                min(before_kill + STATUS_INTERVAL, taken_over - answered) + 1,
            )
            assert talk_bounds[0] <= duration <= talk_bounds[1], (duration, talk_bounds, detail)
            low, high = talk_bounds
            print(f"\ncall 3: DURATION {duration} s, bounds {low:.1f}..{high:.1f} s")
            # More than the talk the recording shows before the kill: not 0, as of its answer.
            assert duration >= talked - answered > 2

            commands = [
                (method, params)
                for request in await portal_requests(s.control)
                if str(request["path"]).startswith("/rest")
                for method, params in accepted_commands(request)
            ]
            registers = Counter(
                p.get("EXTERNAL_CALL_ID")
                for m, p in commands
                if m == "telephony.externalcall.register"
            )
            finishes = Counter(
                p.get("CALL_ID") for m, p in commands if m == "telephony.externalcall.finish"
            )
            assert registers == {external_id(name): 1 for name in STREAMS}, (commands, detail)
            assert finishes == {c["CALL_ID"]: 1 for c in calls.values()}, (commands, detail)

            async with engine.connect() as conn:
                states = (await conn.execute(select(CallRow.state))).scalars().all()
                dead = (
                    await conn.execute(select(Job.kind).where(Job.status == JobStatus.DEAD.value))
                ).all()
            assert len(states) == len(STREAMS), (states, detail)
            assert set(states) == {"ended"}, (states, detail)
            assert dead == [], (dead, detail)
            # Never two listeners at once, and a login per holder: nobody reconnected.
            assert (replay.most_clients, replay.logins) == (1, 3)
            for name, seconds in timings.items():
                bound = LOCK_FREED_BOUND if name.endswith("lock freed") else TAKEOVER_BOUND
                assert seconds <= bound, (name, seconds, s.logs())
    finally:
        await replay.close()
        await engine.dispose()
    timings["total"] = time.monotonic() - began
    print("\n" + "; ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))


async def _any(checks: Any) -> bool:
    return any([await check for check in checks])


async def _true(value: bool) -> bool:
    return value
