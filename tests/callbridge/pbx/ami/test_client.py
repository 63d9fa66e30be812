"""The AMI client against the replay server, over real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from callbridge.pbx.ami.client import AmiClient, Backoff, Disconnected, ListResult, Reconnected
from callbridge.pbx.ami.errors import (
    AmiActionError,
    AmiAuthenticationError,
    AmiConnectError,
    AmiConnectionLost,
    AmiNotConnected,
    AmiProtocolError,
    AmiTimeout,
)
from callbridge.pbx.ami.protocol import Event
from callbridge.pbx.ami.replay import Recording
from tests.callbridge.pbx.ami.conftest import (
    SERVED_EVENTS,
    STREAMS,
    ClientFactory,
    RecordingSleep,
    ServerFactory,
    stream,
)

TIMEOUT = 10


class Collector:
    """Consumes ``async for event in client`` in the background."""

    def __init__(self, client: AmiClient) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Condition()
        self.task = asyncio.create_task(self._run(client))

    async def _run(self, client: AmiClient) -> None:
        async for event in client:
            self.events.append(event)
            async with self._changed:
                self._changed.notify_all()

    @property
    def pbx_events(self) -> list[Event]:
        return [e for e in self.events if not isinstance(e, Disconnected | Reconnected)]

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT), self._changed:
            await self._changed.wait_for(lambda: len(self.pbx_events) >= count)

    async def wait_marker(self, kind: type[Event]) -> Event:
        async with asyncio.timeout(TIMEOUT), self._changed:
            await self._changed.wait_for(lambda: any(isinstance(e, kind) for e in self.events))
        return next(e for e in self.events if isinstance(e, kind))


@asynccontextmanager
async def collecting(client: AmiClient) -> AsyncIterator[Collector]:
    collector = Collector(client)
    try:
        yield collector
    finally:
        await client.close()
        async with asyncio.timeout(TIMEOUT):
            await collector.task


async def drain(client: AmiClient) -> None:
    """Every event sent before now has been read once the PBX answers a Ping."""
    await client.send_action("Ping")


class TestLogin:
    async def test_md5_challenge(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server()
        client = ami_client(server)

        await client.connect()

        assert client.connected
        assert client.banner == "Asterisk Call Manager/11.0.0"
        challenge, login = server.actions[:2]
        assert challenge["Action"] == "Challenge"
        assert login["AuthType"] == "MD5"
        assert len(login["Key"]) == 32
        assert "Secret" not in login
        assert login["ActionID"] == "t-2"

    async def test_plain(self, replay_server: ServerFactory, ami_client: ClientFactory) -> None:
        server = await replay_server()
        client = ami_client(server, auth="plain", username="ctl", secret="ctl-secret")

        await client.connect()

        login = server.actions[0]
        assert (login["Action"], login["Username"], login["Secret"]) == (
            "Login",
            "ctl",
            "ctl-secret",
        )

    @pytest.mark.parametrize("auth", ["md5", "plain"])
    @pytest.mark.parametrize("retry", [False, True])
    async def test_wrong_secret_is_a_permanent_error_naming_the_fix(
        self,
        replay_server: ServerFactory,
        ami_client: ClientFactory,
        fast_sleep: RecordingSleep,
        auth: str,
        retry: bool,
    ) -> None:
        server = await replay_server()
        client = ami_client(server, secret="wrong", auth=auth)

        with pytest.raises(AmiAuthenticationError, match=r"\[crm\] in manager.conf"):
            await client.connect(retry=retry)

        assert fast_sleep.delays == []
        assert not client.connected
        assert server.logins == 0

    async def test_nothing_listening_fails_fast_unless_retrying(
        self, replay_server: ServerFactory, ami_client: ClientFactory, fast_sleep: RecordingSleep
    ) -> None:
        server = await replay_server()
        port = server.port
        await server.close()

        with pytest.raises(AmiConnectError, match=f"127.0.0.1:{port}"):
            await ami_client(port).connect()

        fast_sleep.gate = asyncio.Event()
        client = ami_client(port)
        connecting = asyncio.create_task(client.connect(retry=True))
        async with asyncio.timeout(TIMEOUT):
            await fast_sleep.called.wait()
        await replay_server(port=port)
        fast_sleep.gate.set()
        async with asyncio.timeout(TIMEOUT):
            await connecting
        assert client.connected

    async def test_a_peer_that_is_not_ami(self, ami_client: ClientFactory) -> None:
        async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(http, "127.0.0.1", 0)
        try:
            client = ami_client(server.sockets[0].getsockname()[1])
            with pytest.raises(AmiProtocolError, match="not an Asterisk Manager Interface"):
                await client.connect()
        finally:
            server.close()
            await server.wait_closed()


class TestEvents:
    @pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
    async def test_every_recorded_event_arrives_in_order(
        self, replay_server: ServerFactory, ami_client: ClientFactory, path: object
    ) -> None:
        recording = Recording.load(stream(getattr(path, "stem", "")))
        server = await replay_server(recording.path)
        client = ami_client(server)
        await client.connect()

        async with collecting(client) as collector:
            async with asyncio.timeout(TIMEOUT):
                await server.finished.wait()
            await drain(client)

        names = [e.name for e in collector.events]
        assert len(names) == SERVED_EVENTS[recording.path.stem] == len(recording.events)
        assert names == [r.message.name for r in recording.events]
        assert all(e.received_at is not None for e in collector.events)

    async def test_filters_and_event_mask_are_applied_before_events_flow(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server(stream("a_inbound_answered"))
        client = ami_client(server, filters=["!Event: (VarSet|CEL|Newexten)"])
        await client.connect()

        async with collecting(client) as collector:
            async with asyncio.timeout(TIMEOUT):
                await server.finished.wait()
            await drain(client)

        names = {e.name for e in collector.events}
        assert names.isdisjoint({"VarSet", "CEL", "Newexten"})
        assert {"Newchannel", "DialBegin", "Hangup"} <= names
        actions = [a["Action"] for a in server.actions]
        assert actions[:4] == ["Challenge", "Login", "Filter", "Events"]
        assert server.actions[1]["Events"] == "off"

    async def test_events_off_means_actions_only(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server(stream("b_inbound_noanswer"), pause_without_clients=False)
        client = ami_client(server, events="off")
        await client.connect()

        async with collecting(client) as collector:
            async with asyncio.timeout(TIMEOUT):
                await server.finished.wait()
            await drain(client)

        assert collector.events == []
        assert "Events" not in [a["Action"] for a in server.actions]


class TestActions:
    async def test_ping_and_unknown_action(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server()
        client = ami_client(server)
        await client.connect()

        pong = await client.send_action("Ping")
        refused = await client.send_action("NoSuchThing", check=False)

        assert pong.success
        assert pong["Ping"] == "Pong"
        assert pong.action_id == "t-4"
        assert not refused.success
        with pytest.raises(AmiActionError, match="NoSuchThing") as caught:
            await client.send_action("NoSuchThing")
        assert caught.value.response is not None

    async def test_core_show_channels_lists_the_live_channels(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        recording = Recording.load(stream("d_inbound_ringgroup"))
        # Stop the timeline while the three phones ring.
        upto = next(i for i, r in enumerate(recording.events) if r.message.name == "DialBegin") + 40
        expected: dict[str, str] = {}
        for recorded in recording.events[:upto]:
            event = recorded.message
            if event.name == "Newchannel":
                expected[event["Uniqueid"]] = event["Channel"]
            elif event.name == "Hangup":
                expected.pop(event["Uniqueid"], None)
        server = await replay_server(recording.path, hold_at=upto)
        client = ami_client(server)
        await client.connect()

        async with collecting(client) as collector:
            await collector.wait_for(upto)
            channels = await client.send_action_list("CoreShowChannels")

        assert len(expected) >= 2
        assert {c["Uniqueid"]: c["Channel"] for c in channels} == expected
        assert all(c.name == "CoreShowChannel" for c in channels)
        assert {c["Linkedid"] for c in channels} == {recording.events[0].message["Linkedid"]}
        assert not any(e.name.startswith("CoreShowChannel") for e in collector.events)

    async def test_header_injection_is_refused_before_sending(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server()
        client = ami_client(server)
        await client.connect()
        sent = len(server.actions)

        with pytest.raises(ValueError, match="line break"):
            await client.send_action("Originate", Exten="101\r\n\r\nAction: Hangup")

        await drain(client)
        assert len(server.actions) == sent + 1

    async def test_no_answer_times_out(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server()
        client = ami_client(server)
        await client.connect()
        server.muted = True

        with pytest.raises(AmiTimeout, match="Ping"):
            await client.send_action("Ping", response_timeout=0.05)


class TestInStreamList:
    async def test_the_list_comes_after_the_events_sent_before_it(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        recording = Recording.load(stream("d_inbound_ringgroup"))
        upto = next(i for i, r in enumerate(recording.events) if r.message.name == "DialBegin") + 40
        server = await replay_server(recording.path, hold_at=upto)
        client = ami_client(server)
        await client.connect()
        async with asyncio.timeout(TIMEOUT):
            await server.wait_played(upto)

        # Nobody has read the events yet: they wait in the client's stream.
        channels = await client.send_action_list("CoreShowChannels", in_stream=True)
        server.resume()

        async with collecting(client) as collector:
            await collector.wait_for(len(recording.events) + 1)
        events = collector.pbx_events
        marker = events[upto]
        assert isinstance(marker, ListResult)
        assert marker.action == "CoreShowChannels"
        assert list(marker.events) == channels
        assert len(channels) >= 2
        # Older events before the list, newer after it, each once, in the recorded order.
        others = [e for e in events if not isinstance(e, ListResult)]
        assert [e.name for e in others] == [r.message.name for r in recording.events]
        assert sum(isinstance(e, ListResult) for e in events) == 1


class TestPing:
    async def test_the_pbx_clock_is_read_from_the_answer(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        recording = Recording.load(stream("a2_inbound_answered_timestamps"))
        # Held after 10 events: the PBX's clock (the recording's) stands at the 10th.
        server = await replay_server(recording.path, hold_at=10, pause_without_clients=False)
        async with asyncio.timeout(TIMEOUT):
            await server.wait_played(10)
        client = ami_client(server)
        await client.connect()

        before = time.time()
        pong = await client.ping()
        after = time.time()

        expected = recording.events[9].message.timestamp
        assert expected is not None
        assert pong.pbx_time == pytest.approx(expected, abs=1e-6)
        assert pong.clock_offset is not None
        assert expected - after <= pong.clock_offset <= expected - before
        assert 0 <= pong.round_trip <= after - before

    async def test_the_offset_is_against_our_wall_clock(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server()  # no recording played: the PBX's clock is ours

        # Our clock an hour ahead of the PBX's.
        client = ami_client(server, wall_clock=lambda: time.time() + 3600)
        await client.connect()
        pong = await client.ping()

        assert pong.clock_offset == pytest.approx(-3600, abs=0.5)

    async def test_a_pbx_that_does_not_say_its_time(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server(ping_timestamp=False)
        client = ami_client(server)
        await client.connect()

        pong = await client.ping()

        assert (pong.pbx_time, pong.clock_offset) == (None, None)
        assert pong.round_trip >= 0


class TestReconnect:
    async def test_events_resume_after_the_server_drops_the_connection(
        self,
        replay_server: ServerFactory,
        ami_client: ClientFactory,
        fast_sleep: RecordingSleep,
    ) -> None:
        recording = Recording.load(stream("a_inbound_answered"))
        total = len(recording.events)
        server = await replay_server(recording.path, hold_at=30)
        client = ami_client(server)
        await client.connect()

        async with collecting(client) as collector:
            await collector.wait_for(30)
            assert server.drop_connections() == 1
            disconnected = await collector.wait_marker(Disconnected)
            reconnected = await collector.wait_marker(Reconnected)
            server.resume()
            await collector.wait_for(total)

        assert isinstance(disconnected, Disconnected)
        assert "closed" in disconnected.reason
        assert isinstance(reconnected, Reconnected)
        assert reconnected.downtime >= 0
        assert client.reconnects == 1
        assert server.logins == 2
        # A connection that died at once backs off before the next try.
        assert fast_sleep.delays == [pytest.approx(0.1)]
        kinds = [type(e).__name__ for e in collector.events]
        assert kinds[30:32] == ["Disconnected", "Reconnected"]
        assert [e.name for e in collector.pbx_events] == [r.message.name for r in recording.events]

    async def test_backoff_grows_and_is_capped_while_the_pbx_is_down(
        self,
        replay_server: ServerFactory,
        ami_client: ClientFactory,
        fast_sleep: RecordingSleep,
    ) -> None:
        server = await replay_server()
        port = server.port
        client = ami_client(server)
        await client.connect()
        await server.close()
        async with asyncio.timeout(TIMEOUT):
            await fast_sleep.wait_calls(7)
        fast_sleep.gate = asyncio.Event()
        await replay_server(port=port)
        fast_sleep.gate.set()

        async with asyncio.timeout(TIMEOUT):
            await client.wait_connected()

        assert fast_sleep.delays[:7] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
        assert client.last_error is None

    async def test_actions_while_disconnected_fail_at_once(
        self,
        replay_server: ServerFactory,
        ami_client: ClientFactory,
        fast_sleep: RecordingSleep,
    ) -> None:
        server = await replay_server()
        client = ami_client(server)
        await client.connect()
        fast_sleep.gate = asyncio.Event()
        server.drop_connections()
        async with asyncio.timeout(TIMEOUT):
            await fast_sleep.called.wait()
        originates = len(server.originates)

        started = time.perf_counter()
        with pytest.raises(AmiNotConnected, match="Originate was not sent"):
            await client.send_action("Originate", Channel="PJSIP/101")

        # The reconnect is held at the gate: an action that waited for it would never end.
        assert time.perf_counter() - started < 1.0
        assert client.state == "reconnecting"
        fast_sleep.gate.set()
        async with asyncio.timeout(TIMEOUT):
            await client.wait_connected()
        await drain(client)
        assert len(server.originates) == originates

    async def test_an_originate_in_flight_when_the_connection_drops_is_never_resent(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server(originate_mode="drop")
        client = ami_client(server)
        await client.connect()

        with pytest.raises(AmiConnectionLost, match="not re-sent") as caught:
            await client.send_action(
                "Originate", Channel="PJSIP/101", Exten="+74957654321", Context="from-internal"
            )

        assert caught.value.action == "Originate"
        async with asyncio.timeout(TIMEOUT):
            await client.wait_connected()
        server.originate_mode = "success"
        await drain(client)
        assert server.logins == 2
        assert len(server.originates) == 1
        assert [a["Action"] for a in server.actions].count("Originate") == 1

    async def test_ping_finds_a_dead_connection_and_reconnects(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server()
        client = ami_client(server, ping_interval=0.05, ping_timeout=0.2)
        await client.connect()

        async with collecting(client) as collector:
            async with asyncio.timeout(TIMEOUT):
                await server.wait_actions("Ping", 2)
            assert client.reconnects == 0
            server.muted = True
            disconnected = await collector.wait_marker(Disconnected)
            server.muted = False
            await collector.wait_marker(Reconnected)

        assert isinstance(disconnected, Disconnected)
        assert "Ping" in disconnected.reason
        assert client.reconnects == 1

    async def test_a_refused_login_on_reconnect_ends_the_event_stream(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server()
        client = ami_client(server)
        await client.connect()
        server.users = {"crm": "rotated"}

        received: list[Event] = []

        async def consume() -> None:
            async with asyncio.timeout(TIMEOUT):
                async for event in client:
                    received.append(event)

        server.drop_connections()
        with pytest.raises(AmiAuthenticationError):
            await consume()

        assert [type(e) for e in received] == [Disconnected]
        assert client.state == "closed"


class TestBackoff:
    def test_capped_exponential(self) -> None:
        backoff = Backoff(initial=0.5, factor=2, maximum=30, jitter=0)

        assert [backoff.delay(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
        assert backoff.delay(10_000) == 30

    def test_jitter_stays_within_bounds(self) -> None:
        backoff = Backoff(initial=1, factor=2, maximum=10, jitter=0.2)

        delays = [backoff.delay(2) for _ in range(200)]

        assert all(3.2 <= d <= 4.8 for d in delays)
        assert len(set(delays)) > 1


class TestClose:
    async def test_close_while_connecting_ends_connect(
        self, replay_server: ServerFactory, ami_client: ClientFactory, fast_sleep: RecordingSleep
    ) -> None:
        server = await replay_server()
        port = server.port
        await server.close()
        fast_sleep.gate = asyncio.Event()
        client = ami_client(port)
        connecting = asyncio.create_task(client.connect(retry=True))
        async with asyncio.timeout(TIMEOUT):
            await fast_sleep.called.wait()

        await client.close()

        with pytest.raises(AmiNotConnected, match="closed while connecting"):
            async with asyncio.timeout(TIMEOUT):
                await connecting
        assert client.state == "closed"

    async def test_close_logs_off_and_ends_the_event_stream(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server()
        client = ami_client(server)
        await client.connect()

        await client.close()
        await client.close()

        assert [a["Action"] for a in server.actions][-1] == "Logoff"
        assert [e async for e in client] == []
        with pytest.raises(AmiNotConnected):
            await client.send_action("Ping")
        with pytest.raises(RuntimeError, match="closed"):
            await client.connect()


class TestPeers:
    @pytest.mark.parametrize(
        ("greeting", "error"),
        [(b"", AmiConnectError), (b"x" * 70000, AmiProtocolError)],
        ids=["closes-at-once", "endless-line"],
    )
    async def test_greetings_that_are_not_a_banner(
        self, ami_client: ClientFactory, greeting: bytes, error: type[Exception]
    ) -> None:
        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(greeting)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        try:
            with pytest.raises(error):
                await ami_client(server.sockets[0].getsockname()[1]).connect()
        finally:
            server.close()
            await server.wait_closed()
