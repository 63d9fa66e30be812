"""The replay server: recorded timing, Timestamp headers, loops, Originate, the CLI."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from callbridge.cli.ami import _parse_users, ami_replay_command
from callbridge.pbx.ami.client import AmiClient, Backoff
from callbridge.pbx.ami.protocol import Event
from callbridge.pbx.ami.replay import Recording
from tests.callbridge.pbx.ami.conftest import ClientFactory, ServerFactory, stream

TIMEOUT = 10


async def _collect(client: AmiClient, count: int) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(TIMEOUT):
        async for event in client:
            events.append(event)
            if len(events) == count:
                break
    return events


class TestRecording:
    def test_load_keeps_the_pbx_events_with_their_timing(self) -> None:
        recording = Recording.load(stream("a_inbound_answered"))

        assert recording.banner == "Asterisk Call Manager/11.0.0"
        assert len(recording.messages) == 99
        assert len(recording.events) == 95
        first = recording.events[0]
        assert first.message.name == "CEL"
        assert (first.offset, first.epoch) == (1.016, 1795708539.314)
        assert recording.duration == pytest.approx(7.045 - 1.016)


class TestTimestamps:
    async def test_recorded_timing_becomes_timestamp_headers(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        recording = Recording.load(stream("a_inbound_answered"))
        server = await replay_server(recording.path, add_timestamps=True)
        client = ami_client(server)
        await client.connect()

        events = await _collect(client, len(recording.events))

        assert [e.timestamp for e in events] == [pytest.approx(r.epoch) for r in recording.events]
        assert events[0].keys()[:3] == ["Event", "Privilege", "Timestamp"]
        newchannel = next(e for e in events if e.name == "Newchannel")
        hangup = [e for e in events if e.name == "Hangup"][-1]
        assert hangup.timestamp is not None
        assert newchannel.timestamp is not None
        # The call lasted ~6 s in the recording, whatever the replay speed.
        assert hangup.timestamp - newchannel.timestamp == pytest.approx(6.0, abs=0.1)

    async def test_recorded_timestamps_are_kept(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        recording = Recording.load(stream("a2_inbound_answered_timestamps"))
        server = await replay_server(recording.path, add_timestamps=True)
        client = ami_client(server)
        await client.connect()

        events = await _collect(client, len(recording.events))

        assert [e.get("Timestamp") for e in events] == [
            r.message.get("Timestamp") for r in recording.events
        ]


class TestPlayback:
    async def test_speed_scales_the_recorded_timing(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        recording = Recording.load(stream("a_inbound_answered"))
        server = await replay_server(recording.path, speed=20)
        client = ami_client(server)
        await client.connect()

        started = time.monotonic()
        await _collect(client, len(recording.events))
        elapsed = time.monotonic() - started

        assert recording.duration / 20 * 0.9 <= elapsed < recording.duration / 20 + 2

    async def test_each_loop_is_a_new_call(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        recording = Recording.load(stream("b_inbound_noanswer"))
        count = len(recording.events)
        server = await replay_server(recording.path, loop=True, hold_at=3 * count)
        client = ami_client(server)
        await client.connect()

        events = await _collect(client, 3 * count)

        passes = [events[i * count : (i + 1) * count] for i in range(3)]
        assert [e.name for e in passes[2]] == [r.message.name for r in recording.events]
        linkedids = [{e["Linkedid"] for e in p if "Linkedid" in e} for p in passes]
        recorded = next(r.message for r in recording.events if r.message.name == "Newchannel")
        assert linkedids[0] == {recorded["Linkedid"]}
        assert all(len(ids) == 1 for ids in linkedids)
        seconds = [float(next(iter(ids))) for ids in linkedids]
        assert seconds[0] < seconds[1] < seconds[2]
        assert seconds[1] - seconds[0] >= recording.duration

    async def test_rebase_moves_ids_and_times_to_now(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        recording = Recording.load(stream("a_inbound_answered"))
        server = await replay_server(recording.path, add_timestamps=True, rebase=True)
        client = ami_client(server)
        await client.connect()

        events = await _collect(client, len(recording.events))

        newchannel = next(e for e in events if e.name == "Newchannel")
        assert newchannel.timestamp == pytest.approx(time.time(), abs=60)
        uniqueid_seconds = float(newchannel["Uniqueid"].split(".")[0])
        assert uniqueid_seconds == pytest.approx(newchannel.timestamp, abs=2)

    async def test_every_client_sees_the_same_timeline(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        recording = Recording.load(stream("k_outbound_from_phone"))
        server = await replay_server(recording.path, hold_at=0)
        first, second = ami_client(server), ami_client(server)
        await first.connect()
        await second.connect()
        server.resume()

        one, two = await asyncio.gather(
            _collect(first, len(recording.events)), _collect(second, len(recording.events))
        )

        assert one == two
        assert server.played == len(recording.events)


class TestOriginate:
    async def test_originate_plays_its_recording_with_our_action_id_and_variables(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        recording = Recording.load(stream("h_click2call_outbound"))
        server = await replay_server(originate_file=recording.path)
        client = ami_client(server)
        await client.connect()

        response = await client.send_action(
            "Originate",
            Channel="PJSIP/101",
            Context="from-internal",
            Exten="+74957654321",
            Priority="1",
            Async="true",
            Variable=["CALLBRIDGE_CALL_ID=externalCall.42", "OTHER=x"],
        )
        events = await _collect(client, len(recording.events) + 2)

        assert response.message == "Originate successfully queued"
        originate = next(e for e in events if e.name == "OriginateResponse")
        assert originate.action_id == response.action_id
        varsets = {e["Variable"]: e for e in events if e.name == "VarSet"}
        injected = varsets["CALLBRIDGE_CALL_ID"]
        assert injected["Value"] == "externalCall.42"
        assert injected["Channel"].startswith("PJSIP/101-")
        assert injected["Uniqueid"] == originate["Uniqueid"]
        assert varsets["OTHER"]["Value"] == "x"
        assert len(server.originates) == 1

    async def test_refused_originate(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server(originate_mode="failure")
        client = ami_client(server)
        await client.connect()

        response = await client.send_action("Originate", Channel="PJSIP/101", check=False)

        assert not response.success
        assert response.message == "Originate failed"


class TestCli:
    def test_users_parse(self) -> None:
        assert _parse_users(["crm:s:e:c", "ctl:"]) == {"crm": "s:e:c", "ctl": ""}
        with pytest.raises(typer.BadParameter):
            _parse_users(["nosecret"])

    def test_help_and_missing_file(self) -> None:
        app = typer.Typer()
        app.command("noop")(lambda: None)
        app.add_typer(ami_replay_command, name="ami-replay")
        runner = CliRunner()

        shown = runner.invoke(app, ["ami-replay", "--help"])
        missing = runner.invoke(app, ["ami-replay", "/nonexistent.ami", "--port", "0"])

        assert shown.exit_code == 0
        assert "--speed" in shown.output
        assert "--loop" in shown.output
        assert missing.exit_code == 2


class TestSessions:
    async def test_event_mask_selects_event_classes(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        recording = Recording.load(stream("a_inbound_answered"))
        wanted = [
            r.message
            for r in recording.events
            if {"call", "cdr"} & set(r.message["Privilege"].split(","))
        ]
        server = await replay_server(recording.path)
        client = ami_client(server, events=["call", "cdr"])
        await client.connect()

        events = await _collect(client, len(wanted))

        assert events == wanted
        assert not any(e.name in ("VarSet", "Newexten") for e in events)
        assert server.actions[-1]["EventMask"] == "call,cdr"

    async def test_actions_before_login_are_refused(self, replay_server: ServerFactory) -> None:
        server = await replay_server()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            banner = await reader.readline()
            writer.write(b"Action: Ping\r\nActionID: 1\r\n\r\n")
            answer = await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()

        assert banner == b"Asterisk Call Manager/11.0.0\r\n"
        assert b"Response: Error\r\nActionID: 1\r\nMessage: Authentication Required" in answer

    async def test_who_is_logged_in_and_the_most_at_once(
        self, replay_server: ServerFactory
    ) -> None:
        server = await replay_server()
        writers: list[asyncio.StreamWriter] = []

        async def connect(*, login: bool) -> str:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writers.append(writer)
            await reader.readline()  # the banner
            if login:
                writer.write(b"Action: Login\r\nUsername: crm\r\nSecret: crm-secret\r\n\r\n")
                assert b"Response: Success" in await reader.readuntil(b"\r\n\r\n")
            return f"127.0.0.1:{writer.get_extra_info('sockname')[1]}"

        try:
            first = await connect(login=True)
            second = await connect(login=True)
            await connect(login=False)  # connected, not logged in: not a client
            assert server.peers == sorted([first, second])
            assert server.most_clients == 2

            writers[0].close()
            async with asyncio.timeout(TIMEOUT):
                while True:  # the server reads the EOF in its own time
                    if server.clients == 1:
                        break
                    await asyncio.sleep(0.01)
            third = await connect(login=True)

            assert server.peers == sorted([second, third])
            assert (server.most_clients, server.logins) == (2, 3)
        finally:
            for writer in writers:
                writer.close()

    def test_a_recording_without_timing_plays_without_waits(self, tmp_path: Path) -> None:
        copy = tmp_path / "untimed.ami"
        copy.write_bytes(stream("b_inbound_noanswer").read_bytes())

        recording = Recording.load(copy)

        assert len(recording.events) == 49
        assert recording.duration == 0
        assert recording.start_epoch is None


class TestCommand:
    async def test_ami_replay_serves_a_real_client_and_stops_on_sigterm(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        recording = Recording.load(stream("k_outbound_from_phone"))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from callbridge.cli.ami import ami_replay_command; ami_replay_command()",
            str(recording.path),
            "--port",
            str(port),
            "--speed",
            "0",
            "--timestamps",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        client = AmiClient(
            "127.0.0.1",
            port,
            "crm",
            "crm-secret",
            ping_interval=None,
            backoff=Backoff(initial=0.05, maximum=0.2, jitter=0),
        )
        try:
            async with asyncio.timeout(TIMEOUT):
                await client.connect(retry=True)
            events = await _collect(client, len(recording.events))
        finally:
            await client.close()
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(TIMEOUT):
                _, stderr = await process.communicate()

        assert [e.name for e in events] == [r.message.name for r in recording.events]
        assert all(e.timestamp is not None for e in events)
        assert process.returncode == 0, stderr.decode()


class TestPbxClock:
    """With Timestamp headers, the replayed PBX's clock is the recordings' (Ping, Duration)."""

    async def test_held_the_clock_stands_at_the_last_event(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        recording = Recording.load(stream("a2_inbound_answered_timestamps"))
        # Both channels bridged; the next event is 3 s later.
        bridged = recording.events[52].message.timestamp
        created = recording.events[0].message.timestamp
        assert bridged is not None
        assert created is not None
        server = await replay_server(
            recording.path, add_timestamps=True, hold_at=53, pause_without_clients=False
        )
        async with asyncio.timeout(TIMEOUT):
            await server.wait_played(53)
        client = ami_client(server)
        await client.connect()

        first = await client.ping()
        await asyncio.sleep(0.1)
        second = await client.ping()
        channels = await client.send_action_list("CoreShowChannels")

        assert first.pbx_time == second.pbx_time == pytest.approx(bridged, abs=1e-6)
        assert server.pbx_time() == pytest.approx(bridged)
        ages = {c["Channel"].split("-")[0]: c["Duration"] for c in channels}
        # Created at ...843.0006 and ...843.0017, listed at ...846.0106: 3 s, rounded down.
        assert ages == {"PJSIP/trunk": "00:00:03", "PJSIP/101": "00:00:03"}
        assert int(bridged - created) == 3

    async def test_playing_the_clock_runs_at_the_replay_speed_up_to_the_next_event(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        recording = Recording.load(stream("a2_inbound_answered_timestamps"))
        bridged = recording.events[52].message.timestamp
        hung_up = recording.events[53].message.timestamp
        following = recording.events[54].message.timestamp
        assert bridged is not None
        assert hung_up is not None
        assert following is not None
        server = await replay_server(
            recording.path,
            add_timestamps=True,
            hold_at=53,
            pause_without_clients=False,
            speed=2.0,
        )
        async with asyncio.timeout(TIMEOUT):
            await server.wait_played(53)
        client = ami_client(server)
        await client.connect()

        server.resume(hold_at=54)  # 3 recorded seconds to the next event: 1.5 s here
        await asyncio.sleep(0.1)
        running = (await client.ping()).pbx_time
        async with asyncio.timeout(TIMEOUT):
            await server.wait_played(54)
        await asyncio.sleep(0.1)
        held = (await client.ping()).pbx_time

        assert running is not None
        assert bridged + 0.1 < running < hung_up
        # Held after the hang-up's first event: at most the time of the one after it.
        assert held is not None
        assert hung_up <= held <= following

    async def test_without_timestamps_the_clock_is_ours(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server(stream("a_inbound_answered"), hold_at=10)
        client = ami_client(server)
        await client.connect()

        before = time.time()
        pong = await client.ping()

        assert pong.pbx_time is not None
        assert before <= pong.pbx_time <= time.time()
