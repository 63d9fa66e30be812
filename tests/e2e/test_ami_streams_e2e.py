"""Recorded AMI streams end to end: replayer (TCP) → client → listener → call model → dispatcher
→ the emulated portal, on both databases.

Each stream of ``tests/fixtures/ami`` is played by :class:`AmiReplayServer` on a real TCP port,
fast, with ``Timestamp`` headers from the recorded timing (so durations are the recorded ones).
The worker's AMI supervisor runs the real listener and client against it; the real dispatcher
sends the commands to the emulator, which is inspected the way a person would look at the
portal: which calls exist, their type, who was shown the card, who answered, status, duration
and CRM binding. Expected durations are read from the recording itself (the employee's channel
``BridgeEnter`` → ``BridgeLeave``), never from the translator's output.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bitrix24_emulator.config import EmulatorConfig
from bitrix24_emulator.seed import DEFAULT_SEED
from callbridge.directory import sync_integration_users
from callbridge.pbx.ami.client import Backoff
from callbridge.pbx.ami.listener import AmiListener
from callbridge.pbx.ami.replay import AmiReplayServer, Recording
from callbridge.pbx.ami.translate_config import parse_channel
from callbridge.storage.models import Call as CallRow
from callbridge.storage.models import Enterprise, Job, JobStatus
from callbridge.web import bitrix24_app
from callbridge.worker.ami import AmiSupervisor
from callbridge.worker.click_to_call import register_click_to_call_jobs
from callbridge.worker.directory import PortalsHolder
from callbridge.worker.dispatcher import Dispatcher
from callbridge.worker.registry import JobRegistry
from callbridge.worker.worker import Worker
from tests.callbridge.crm.bitrix24.harness import Harness, harness
from tests.callbridge.pbx.ami.conftest import stream

TIMEOUT = 20.0
#: Replay pace: a 18 s recording plays in under a second; Timestamp headers keep its durations.
SPEED = 25.0
#: Who gets a registration nobody's extension claims (a user without an extension, so that a
#: USER_ID of 1..3 can only come from the call itself).
DEFAULT_USER = 5
#: The seed's users with extensions (UF_PHONE_INNER), synced from the portal.
USERS = {"101": 1, "102": 2, "103": 3}
#: The inbound streams' caller: contact 1 of the emulator's seed ("+7 (495) 123-45-67").
CALLER = "+74951234567"
#: Whom the outbound streams dial: nobody in the seed.
FAR_END = "+74957654321"
KNOWN_CONTACT = 1
#: The PBX's trunk endpoint (``PJSIP/trunk-…``) mapped to a Bitrix24 line for outbound calls.
OUTBOUND_LINE = "74951110000"


# -- what the recording says -------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """Facts read straight from a ``.ami`` file."""

    #: Seconds each extension talked (its channel's BridgeEnter → BridgeLeave), in order.
    talk: dict[str, float]
    #: Extensions whose phones rang (a Dial to them began).
    rang: list[str]
    #: The trunk channel's dialled number (the DID) of an inbound call, else None.
    did: str | None
    linkedid: str
    #: When the call began (its first event) and when it was transferred, if it was.
    started: float
    transferred: float | None


def recorded(name: str) -> Recorded:
    """What a person reading the stream would say happened."""
    recording = Recording.load(stream(name))
    entered: dict[str, float] = {}
    talk: dict[str, float] = {}
    rang: list[str] = []
    did: str | None = None
    linkedid = ""
    times: list[float] = []
    transferred: float | None = None
    for item in recording.events:
        event = item.message
        at = event.timestamp if event.timestamp is not None else item.epoch
        assert at is not None
        times.append(at)
        if event.name == "BlindTransfer":
            transferred = at
        channel = event.get("Channel") or ""
        endpoint = parse_channel(channel).endpoint if channel else ""
        if event.name == "Newchannel" and not linkedid:
            linkedid = event["Linkedid"]
            if event.get("Context") == "from-trunk":
                did = event.get("Exten")
        if event.name == "DialBegin":
            target = parse_channel(event.get("DestChannel") or "").endpoint
            if target.isdigit() and target not in rang:
                rang.append(target)
        if endpoint.isdigit() and event.name == "BridgeEnter":
            entered[endpoint] = at
        if endpoint.isdigit() and event.name == "BridgeLeave" and endpoint in entered:
            talk[endpoint] = talk.get(endpoint, 0.0) + at - entered.pop(endpoint)
    return Recorded(talk, rang, did, linkedid, min(times), transferred)


def cards(call: dict[str, Any]) -> list[tuple[int, str, str]]:
    """The card's story: (user, shown or hidden, by which method), in order."""
    return [(e["user_id"], e["action"], e["by"]) for e in call["card_log"]]


def assert_start(call: dict[str, Any], at: float) -> None:
    """CALL_START is the second the call's first event reports, or the one before.

    The recordings hold both: a2's first channel has Uniqueid ``1795711842.304`` and its CEL
    ``CHAN_START`` says ``EventTime: 2026-11-26 16:50:42`` (second …842), while its Newchannel
    is stamped ``Timestamp: 1795711843.000573``. A listener that joins the call in progress
    adopts the channel from ``CoreShowChannels`` and dates it by its ``Duration`` there and its
    Uniqueid: the second before.
    """
    assert int(at) - 1 <= float(call["CALL_START"]) <= at, (call["CALL_START"], at)


def assert_duration(call: dict[str, Any], seconds: float) -> None:
    """DURATION is the talk time of the recording, to the second (±1 s)."""
    assert call["DURATION"] is not None
    assert abs(int(call["DURATION"]) - seconds) <= 1, (call["DURATION"], seconds)


# -- the wiring --------------------------------------------------------------------------------


@dataclass
class Env:
    """Emulator, callbridge's storage and workers, and the replayer they listen to."""

    h: Harness
    replay: AmiReplayServer
    dispatcher: Dispatcher
    supervisor: AmiSupervisor
    enterprise_id: int

    async def calls(self) -> list[dict[str, Any]]:
        """The portal's calls, in the order they were registered."""
        response = await self.h.emulator_http.get("/_emulator/calls")
        return sorted(response.json(), key=lambda c: c["registered_at"])

    async def credited(self, call: dict[str, Any]) -> int:
        """The employee the finished call belongs to (statistic's PORTAL_USER_ID)."""
        response = await self.h.emulator_http.get(f"/_emulator/calls/{call['CALL_ID']}")
        response.raise_for_status()
        return int(response.json()["statistic"]["PORTAL_USER_ID"])

    async def methods(self) -> list[str]:
        """The telephony methods the portal was asked for, batches opened up."""
        found: list[str] = []
        for row in await self.h.requests():
            method = str(row.get("method") or "")
            if method == "batch":
                commands = (row.get("params") or {}).get("cmd") or {}
                found.extend(str(c).partition("?")[0] for c in commands.values())
            elif method:
                found.append(method)
        return [m for m in found if m.startswith("telephony.")]

    async def jobs(self) -> list[Job]:
        async with self.h.session_factory() as session:
            return list((await session.scalars(select(Job).order_by(Job.id))).all())

    async def rows(self) -> list[CallRow]:
        async with self.h.session_factory() as session:
            return list((await session.scalars(select(CallRow).order_by(CallRow.id))).all())

    async def settled(self, calls: int = 1) -> list[dict[str, Any]]:
        """Wait until the replay is over, our calls ended and the portal has them all finished."""
        async with asyncio.timeout(TIMEOUT):
            await self.replay.finished.wait()
            while True:
                rows = await self.rows()
                portal = await self.calls()
                if (
                    len(rows) >= 1
                    and all(row.state == "ended" for row in rows)
                    and len(portal) >= calls
                    and all(c["state"] == "finished" for c in portal)
                ):
                    await self.dispatcher.wait_idle()
                    break
                await asyncio.sleep(0.05)
        # Late duplicates would show up now: give them a moment, then look.
        await asyncio.sleep(0.2)
        await asyncio.wait_for(self.dispatcher.wait_idle(), TIMEOUT)
        return await self.calls()


async def _until(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``predicate`` (the database, the listener) until it holds, within TIMEOUT."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.05)


@asynccontextmanager
async def environment(
    database_url: str,
    var_dir: Path,
    replay: AmiReplayServer,
    *,
    seed: dict[str, Any] | None = None,
    integration_settings: dict[str, Any] | None = None,
    client_options: dict[str, Any] | None = None,
) -> AsyncIterator[Env]:
    """Both sides over ASGI, the enterprise's AMI URL pointing at ``replay``, workers running."""
    async with harness(
        database_url,
        var_dir,
        EmulatorConfig(seed=seed),
        routers=(bitrix24_app.router,),
        settings_overrides={"worker_poll_interval_seconds": 0.05},
    ) as h:
        settings, session_factory, portals, box = h.settings, h.session_factory, h.portals, h.box
        tasks: list[asyncio.Task[None]] = []
        try:
            enterprise = Enterprise(
                number="100",
                ami_url_enc=box.encrypt(f"ami://crm:crm-secret@127.0.0.1:{replay.port}"),
            )
            integration = await h.install_for(
                enterprise,
                {
                    "default_user_id": DEFAULT_USER,
                    "lead_creation": "inbound",
                    "lines": [{"number": OUTBOUND_LINE, "pbx_line": "trunk"}],
                }
                | (integration_settings or {}),
            )
            # The employees' extensions come from the portal (UF_PHONE_INNER), as in production.
            await sync_integration_users(portals, integration.id)
            dispatcher = Dispatcher(settings, session_factory, portals=portals, poll_interval=0.05)
            registry = JobRegistry()
            register_click_to_call_jobs(registry, PortalsHolder(settings, session_factory, portals))
            worker = Worker(
                session_factory, registry, kinds=registry.kinds, poll_interval=0.05, concurrency=2
            )
            supervisor = AmiSupervisor(
                session_factory,
                h.engine,
                box,
                holder="e2e",
                poll_interval=0.1,
                lock_retry_interval=0.1,
                lock_check_interval=1.0,
                status_interval=0.2,
                client_options={
                    "ping_interval": None,
                    "connect_timeout": 2.0,
                    "backoff": Backoff(initial=0.05, maximum=0.2, jitter=0.0),
                }
                | (client_options or {}),
            )
            tasks = [
                asyncio.create_task(dispatcher.run()),
                asyncio.create_task(worker.run()),
                asyncio.create_task(supervisor.run()),
            ]
            yield Env(h, replay, dispatcher, supervisor, enterprise.id)
        finally:
            for task in reversed(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await replay.close()


async def replayer(*names: str, **options: Any) -> AmiReplayServer:
    """A replayer of the named streams, started on a free port."""
    options.setdefault("speed", SPEED)
    server = AmiReplayServer(
        [stream(name) for name in names], gap=0, add_timestamps=True, **options
    )
    await server.start("127.0.0.1", 0)
    return server


@asynccontextmanager
async def playing(database_url: str, var_dir: Path, name: str, **kwargs: Any) -> AsyncIterator[Env]:
    async with environment(database_url, var_dir, await replayer(name), **kwargs) as env:
        yield env


def without_caller(caller: str) -> dict[str, Any]:
    """The emulator's seed with no CRM record holding ``caller``: an unknown number."""
    seed = copy.deepcopy(DEFAULT_SEED)
    digits = caller.lstrip("+")[1:]
    for section in ("contacts", "companies", "leads"):
        for record in seed.get(section, []):
            record["PHONE"] = [
                p
                for p in record.get("PHONE", [])
                if not "".join(ch for ch in p["VALUE"] if ch.isdigit()).endswith(digits)
            ]
    return seed


# -- the streams -------------------------------------------------------------------------------


class TestInbound:
    @pytest.mark.parametrize("name", ["a_inbound_answered", "a2_inbound_answered_timestamps"])
    async def test_answered_by_the_only_phone_it_rang(
        self, fresh_database_url: str, tmp_path: Path, name: str
    ) -> None:
        facts = recorded(name)
        assert facts.rang == ["101"]
        async with playing(fresh_database_url, tmp_path, name) as env:
            (call,) = await env.settled()
            assert call["EXTERNAL_CALL_ID"] == f"100/{facts.linkedid}-0"  # enterprise 100
            assert (call["TYPE"], call["PHONE_NUMBER"]) == (2, CALLER)
            assert_start(call, facts.started)
            assert call["LINE_NUMBER"] == facts.did == "4951110101"
            # Shown to the ringing phone's owner; the finish closed it.
            assert cards(call) == [(1, "show", "show"), (1, "hide", "finish")]
            assert (await env.credited(call), call["STATUS_CODE"]) == (USERS["101"], "200")
            assert_duration(call, facts.talk["101"])
            # The caller is a known contact: found, no lead made.
            assert (call["CRM_ENTITY_TYPE"], call["CRM_ENTITY_ID"]) == ("CONTACT", KNOWN_CONTACT)
            assert call["CRM_CREATED_LEAD"] is None
            assert await env.methods() == [
                "telephony.externalCall.register",
                "telephony.externalCall.show",
                "telephony.externalCall.finish",
            ]
            (row,) = await env.rows()
            assert (row.direction, row.answered_by, row.state) == ("inbound", "101", "ended")

    async def test_missed_call_from_an_unknown_number_is_a_lead_and_304(
        self, fresh_database_url: str, tmp_path: Path
    ) -> None:
        name = "b_inbound_noanswer"
        facts = recorded(name)
        assert facts.rang == ["101"]
        assert facts.talk == {}
        async with playing(fresh_database_url, tmp_path, name, seed=without_caller(CALLER)) as env:
            leads_before = (await env.h.emulator_http.get("/_emulator/leads")).json()
            (call,) = await env.settled()
            assert (call["TYPE"], call["PHONE_NUMBER"], call["LINE_NUMBER"]) == (
                2,
                CALLER,
                facts.did,
            )
            # Shown while it rang, hidden when the ringing stopped (before the finish).
            assert cards(call) == [(1, "show", "show"), (1, "hide", "hide")]
            # Missed: it belongs to the only employee whose phone rang.
            assert (await env.credited(call), call["STATUS_CODE"], call["DURATION"]) == (
                USERS["101"],
                "304",
                0,
            )
            leads = (await env.h.emulator_http.get("/_emulator/leads")).json()
            assert len(leads) == len(leads_before) + 1
            assert call["CRM_ENTITY_TYPE"] == "LEAD"
            assert call["CRM_CREATED_LEAD"] == call["CRM_ENTITY_ID"] == int(leads[-1]["ID"])

    async def test_ring_group_shows_all_hides_the_others_and_the_answerer_keeps_it(
        self, fresh_database_url: str, tmp_path: Path
    ) -> None:
        name = "d_inbound_ringgroup"
        facts = recorded(name)
        assert sorted(facts.rang) == ["101", "102", "103"]
        (answerer,) = facts.talk
        async with playing(fresh_database_url, tmp_path, name) as env:
            (call,) = await env.settled()
            assert (call["TYPE"], call["LINE_NUMBER"]) == (2, facts.did)
            assert_start(call, facts.started)
            # One show for the group; the answer hides the others' cards at once, the finish
            # closes the answerer's.
            assert cards(call) == [
                (1, "show", "show"),
                (2, "show", "show"),
                (3, "show", "show"),
                (1, "hide", "hide"),
                (3, "hide", "hide"),
                (2, "hide", "finish"),
            ]
            assert (await env.credited(call), call["STATUS_CODE"]) == (USERS[answerer], "200")
            assert answerer == "102"
            assert_duration(call, facts.talk[answerer])
            assert (call["CRM_ENTITY_TYPE"], call["CRM_ENTITY_ID"]) == ("CONTACT", KNOWN_CONTACT)

    async def test_blind_transfer_gives_each_employee_their_own_call(
        self, fresh_database_url: str, tmp_path: Path
    ) -> None:
        name = "f_blind_transfer_refer"
        facts = recorded(name)
        assert facts.rang == ["101", "102"]
        async with playing(fresh_database_url, tmp_path, name) as env:
            first, second = await env.settled(calls=2)
            assert first["EXTERNAL_CALL_ID"] == f"100/{facts.linkedid}-0"
            assert second["EXTERNAL_CALL_ID"] == f"100/{facts.linkedid}-1"
            # Both are the customer's inbound call; the second starts at the transfer.
            assert first["TYPE"] == second["TYPE"] == 2
            assert facts.transferred is not None
            assert_start(first, facts.started)
            assert_start(second, facts.transferred)
            assert first["LINE_NUMBER"] == second["LINE_NUMBER"] == facts.did
            assert first["PHONE_NUMBER"] == second["PHONE_NUMBER"] == CALLER
            assert cards(first) == [(1, "show", "show"), (1, "hide", "finish")]
            assert cards(second) == [(2, "show", "register"), (2, "hide", "finish")]
            assert (await env.credited(first), first["STATUS_CODE"]) == (USERS["101"], "200")
            assert (await env.credited(second), second["STATUS_CODE"]) == (USERS["102"], "200")
            assert_duration(first, facts.talk["101"])
            assert_duration(second, facts.talk["102"])
            for call in (first, second):
                assert (call["CRM_ENTITY_TYPE"], call["CRM_ENTITY_ID"]) == (
                    "CONTACT",
                    KNOWN_CONTACT,
                )
                assert call["cards_visible"] == []


class TestOutbound:
    async def test_dialled_from_a_desk_phone(self, fresh_database_url: str, tmp_path: Path) -> None:
        name = "k_outbound_from_phone"
        facts = recorded(name)
        (caller,) = facts.talk
        async with playing(fresh_database_url, tmp_path, name) as env:
            (call,) = await env.settled()
            assert (call["TYPE"], call["PHONE_NUMBER"], call["USER_ID"]) == (
                1,
                FAR_END,
                USERS[caller],
            )
            assert_start(call, facts.started)
            # The trunk is mapped to a Bitrix24 line in the settings (lines[].pbx_line).
            assert call["LINE_NUMBER"] == OUTBOUND_LINE
            assert cards(call) == [(1, "show", "register"), (1, "hide", "finish")]
            assert (await env.credited(call), call["STATUS_CODE"]) == (USERS[caller], "200")
            assert_duration(call, facts.talk[caller])
            # An unknown number on an outbound call makes no lead (lead_creation=inbound).
            assert call["CRM_CREATED_LEAD"] is None
            assert call["CRM_ENTITY_TYPE"] in (None, "")

    async def test_click_to_call_is_finished_never_registered_again(
        self, fresh_database_url: str, tmp_path: Path
    ) -> None:
        name = "h_click2call_outbound"
        facts = recorded(name)
        (caller,) = facts.talk
        # Nothing plays until our Originate: then the PBX's recording of that call plays.
        replay = AmiReplayServer(
            [], speed=SPEED, gap=0, add_timestamps=True, originate_file=stream(name)
        )
        await replay.start("127.0.0.1", 0)
        async with environment(fresh_database_url, tmp_path, replay) as env:
            supervisor = env.supervisor
            await _until(lambda: _connected(supervisor, env.enterprise_id))
            response = await env.h.emulator_http.post(
                "/_emulator/events/click-to-call",
                json={"user_id": USERS[caller], "phone_number": FAR_END},
            )
            response.raise_for_status()
            clicked = response.json()
            (call,) = await env.settled()
            assert call["CALL_ID"] == clicked["CALL_ID"]
            assert call["origin"] == "click_to_call"
            (originate,) = replay.originates
            assert originate["Channel"] == f"PJSIP/{caller}"
            assert originate["Exten"] == FAR_END
            assert (call["TYPE"], call["PHONE_NUMBER"], call["USER_ID"]) == (
                1,
                FAR_END,
                USERS[caller],
            )
            assert (await env.credited(call), call["STATUS_CODE"]) == (USERS[caller], "200")
            assert_duration(call, facts.talk[caller])
            assert call["cards_visible"] == []
            # We finished the portal's own call: no register of ours, ever.
            methods = await env.methods()
            assert "telephony.externalCall.register" not in methods
            assert methods.count("telephony.externalCall.finish") == 1
            (row,) = await env.rows()
            assert row.bitrix24_call_id == clicked["CALL_ID"]
            assert {j.status for j in await env.jobs()} == {JobStatus.SUCCEEDED}


async def _connected(supervisor: AmiSupervisor, enterprise_id: int) -> bool:
    listener = supervisor.listeners.get(enterprise_id)
    return listener is not None and listener.connected.is_set()


# -- a dropped connection ----------------------------------------------------------------------


class TestDisconnect:
    """The PBX drops our connection mid-call (a restart of its manager, a network cut)."""

    NAME = "a2_inbound_answered_timestamps"
    #: Events played before the drop: the call is answered (DialEnd ANSWER is event 38) and
    #: talking; its hang-up (events 70-85) is still to come.
    TALKING = 40

    async def _talking(self, env: Env) -> AmiListener:
        """Play up to TALKING once we listen; return the listener when it saw the answer."""
        supervisor = env.supervisor
        await _until(lambda: _connected(supervisor, env.enterprise_id))
        env.replay.resume(hold_at=self.TALKING)

        async def answered() -> bool:
            rows = await env.rows()
            return bool(rows) and rows[0].answered_by == "101"

        await _until(answered)
        listener = supervisor.listeners[env.enterprise_id]
        assert listener.status.reconnects == 0
        return listener

    async def test_back_before_the_hang_up_the_call_ends_as_recorded(
        self, fresh_database_url: str, tmp_path: Path
    ) -> None:
        facts = recorded(self.NAME)
        replay = await replayer(self.NAME, speed=SPEED, hold_at=0, pause_without_clients=False)
        async with environment(fresh_database_url, tmp_path, replay) as env:
            listener = await self._talking(env)
            replay.drop_connections()
            # Back, and caught up with the live channels (CoreShowChannels), mid-call.
            await _until(lambda: _reconnected(listener))
            replay.resume()
            (call,) = await env.settled()
            assert (await env.credited(call), call["STATUS_CODE"]) == (USERS["101"], "200")
            assert_duration(call, facts.talk["101"])
            assert call["cards_visible"] == []
            methods = await env.methods()
            assert methods.count("telephony.externalCall.register") == 1
            assert methods.count("telephony.externalCall.finish") == 1

    async def test_hung_up_while_away_the_reconciliation_finishes_it_once(
        self, fresh_database_url: str, tmp_path: Path
    ) -> None:
        facts = recorded(self.NAME)
        events = Recording.load(stream(self.NAME)).events
        answer = next(
            e for e in events if e.message.name == "DialEnd" and e.message["DialStatus"] == "ANSWER"
        )
        last_seen = events[self.TALKING - 1]
        assert answer.epoch is not None
        assert last_seen.epoch is not None
        gate = asyncio.Event()

        async def gated_sleep(_delay: float) -> None:
            await gate.wait()  # no reconnect until the call is over

        replay = await replayer(self.NAME, speed=0, hold_at=0, pause_without_clients=False)
        async with environment(
            fresh_database_url, tmp_path, replay, client_options={"sleep": gated_sleep}
        ) as env:
            listener = await self._talking(env)
            replay.drop_connections()
            replay.resume()  # the call hangs up while nobody listens
            async with asyncio.timeout(TIMEOUT):
                await replay.finished.wait()
            gate.set()
            (call,) = await env.settled()
            assert listener.status.reconnects == 1
            assert (await env.credited(call), call["STATUS_CODE"]) == (USERS["101"], "200")
            # The hang-up was missed: the call ends as of when we lost sight of it, in the
            # PBX's clock (its last event we saw), not hours later in ours.
            assert_duration(call, last_seen.epoch - answer.epoch)
            assert int(call["DURATION"]) <= facts.talk["101"]
            assert call["cards_visible"] == []
            methods = await env.methods()
            assert methods.count("telephony.externalCall.register") == 1
            assert methods.count("telephony.externalCall.finish") == 1
            (row,) = await env.rows()
            assert row.state == "ended"
            assert await env.calls() == [call]


async def _reconnected(listener: AmiListener) -> bool:
    return listener.status.reconnects >= 1 and listener.connected.is_set()


# -- joining a call in progress ----------------------------------------------------------------


class TestJoinMidCall:
    """The listener logs in while a call is in progress, on a PBX whose clock is not ours.

    The replayer's clock is the recording's (hours before ours): its events' ``Timestamp``
    headers, its ``Ping`` and its ``CoreShowChannel`` ``Duration`` all count in it. The call's
    start comes from the list of live channels, its talk from the events after (ringing) or
    from the list too (talking); both must come out in the PBX's clock.
    """

    NAME = "a2_inbound_answered_timestamps"

    @pytest.mark.parametrize(
        ("joined_at", "answered"),
        # Ringing: 101's phone rings (event 25), its answer (34) is still to come. Talking: both
        # channels are in the bridge (47, 49); the hang-up is 3 s away.
        [(32, False), (53, True)],
        ids=["ringing", "talking"],
    )
    async def test_call_start_and_duration_are_the_recorded_ones(
        self, fresh_database_url: str, tmp_path: Path, joined_at: int, answered: bool
    ) -> None:
        facts = recorded(self.NAME)
        events = Recording.load(stream(self.NAME)).events
        assert any(e.message.name == "BridgeEnter" for e in events[:joined_at]) is answered
        # Played before anyone listens.
        replay = await replayer(self.NAME, hold_at=joined_at, pause_without_clients=False)
        async with asyncio.timeout(TIMEOUT):
            await replay.wait_played(joined_at)
        async with environment(fresh_database_url, tmp_path, replay) as env:
            supervisor = env.supervisor
            await _until(lambda: _connected(supervisor, env.enterprise_id))
            listener = supervisor.listeners[env.enterprise_id]
            offset = listener.translator.clock_offset
            assert offset is not None
            # The PBX's clock is the recording's, far from ours.
            assert abs(offset) > 3600
            pbx_now = events[joined_at - 1].message.timestamp
            assert pbx_now is not None
            assert abs(offset - (pbx_now - time.time())) < 5
            replay.resume()
            (call,) = await env.settled()
            assert call["EXTERNAL_CALL_ID"] == f"100/{facts.linkedid}-0"
            assert (call["TYPE"], call["PHONE_NUMBER"], call["LINE_NUMBER"]) == (
                2,
                CALLER,
                facts.did,
            )
            assert_start(call, facts.started)
            assert (await env.credited(call), call["STATUS_CODE"]) == (USERS["101"], "200")
            assert_duration(call, facts.talk["101"])
            methods = await env.methods()
            assert methods.count("telephony.externalCall.register") == 1
            assert methods.count("telephony.externalCall.finish") == 1
