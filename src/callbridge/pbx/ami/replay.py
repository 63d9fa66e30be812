"""An AMI server that plays recorded ``.ami`` streams to real TCP clients (tests and the demo).

A recording is the byte stream one AMI client received from Asterisk (banner, Login response,
events, ``Response: Goodbye``), with a ``.timing.tsv`` next to it giving each block's arrival
(``block``, ``offset_s`` since connect, ``epoch``, ``kind``, ``name``; block 0 is the Login
response). The server speaks enough AMI for a client to run against it as against Asterisk:

- ``Login`` (plain ``Secret`` or MD5 ``Challenge``/``Key``), ``Logoff``, ``Ping``, ``Events``,
  ``Filter`` (``Event: X`` keeps, ``!Event: X`` drops; regexes over the event text, as
  Asterisk's), ``CoreShowChannels`` (the channels live in the stream so far), ``Originate``
  (answers Success, counts it, and may play a recording: :attr:`AmiReplayServer.originates`).
- One playback timeline is broadcast to every logged-in client, as a PBX would. By default it
  holds while no client is logged in, so a test that drops connections loses nothing.
- ``speed`` scales the recorded timing (1.0 real time, 0 as fast as possible).
  ``add_timestamps`` adds ``Timestamp:`` headers from the recorded epochs (as
  ``timestampevents = yes`` would), so a fast replay still carries exact durations. While the
  events played carry ``Timestamp`` headers, the PBX's clock is the recordings'
  (:meth:`AmiReplayServer.pbx_time`): ``Ping`` answers with it and ``CoreShowChannel``
  ``Duration`` counts in it, as a PBX whose clock is not ours would.
- Each loop after the first (or every pass with ``rebase``) shifts ``Uniqueid``/``Linkedid``
  values and timestamps forward so the calls are new calls, not duplicates.

The recorder's own session blocks (its Login response, ``FullyBooted``, ``SuccessfulAuth``,
``Goodbye``) are not replayed; each client gets its own ``FullyBooted`` at login.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import structlog

from callbridge.pbx.ami.protocol import Action, AmiParser, Event, Message, Response

__all__ = [
    "AmiReplayServer",
    "OriginateMode",
    "RecordedEvent",
    "Recording",
    "serve",
]

logger = structlog.stdlib.get_logger("callbridge.pbx.ami.replay")

DEFAULT_USERS: Mapping[str, str] = {"crm": "crm-secret", "ctl": "ctl-secret"}
DEFAULT_BANNER = "Asterisk Call Manager/11.0.0"
OriginateMode = Literal["success", "failure", "drop", "silent"]

# Blocks that belong to the recording client's own session, not to the PBX's calls.
_SESSION_EVENTS = frozenset({"fullybooted", "successfulauth"})
_ID_VALUE = re.compile(r"^(\d+)\.(\d+)$")
# Channel snapshot headers CoreShowChannel reports, in Asterisk's order.
_SNAPSHOT_KEYS = (
    "Channel",
    "ChannelState",
    "ChannelStateDesc",
    "CallerIDNum",
    "CallerIDName",
    "ConnectedLineNum",
    "ConnectedLineName",
    "Language",
    "AccountCode",
    "Context",
    "Exten",
    "Priority",
    "Uniqueid",
    "Linkedid",
)


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One recorded event with its arrival offset (s since connect) and epoch, when known."""

    message: Event
    offset: float
    epoch: float | None


@dataclass(frozen=True)
class Recording:
    """A recorded ``.ami`` stream, reduced to the PBX's events and their timing."""

    path: Path
    banner: str
    events: tuple[RecordedEvent, ...]
    #: Every block of the file (Login response included) as parsed, for tests.
    messages: tuple[Message, ...] = field(repr=False, default=())

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        """Read ``path`` and, when present, its ``.timing.tsv`` sibling."""
        path = Path(path)
        data = path.read_bytes()
        parser = AmiParser(max_block_size=max(len(data), 1 << 20))
        messages = parser.feed(data)
        timing = _read_timing(path.with_suffix(".timing.tsv"))
        events: list[RecordedEvent] = []
        for index, message in enumerate(messages):
            if not isinstance(message, Event) or message.name.lower() in _SESSION_EVENTS:
                continue
            offset, epoch = timing[index] if index < len(timing) else (_last(timing), None)
            events.append(RecordedEvent(message, offset, epoch))
        return cls(path, parser.banner or DEFAULT_BANNER, tuple(events), tuple(messages))

    @property
    def duration(self) -> float:
        """Seconds from the first to the last event."""
        if not self.events:
            return 0.0
        return self.events[-1].offset - self.events[0].offset

    @property
    def start_epoch(self) -> float | None:
        """Epoch of the first event, when the timing file gives one."""
        return self.events[0].epoch if self.events else None


def _read_timing(path: Path) -> list[tuple[float, float | None]]:
    if not path.exists():
        return []
    rows: list[tuple[float, float | None]] = []
    lines = path.read_text().splitlines()
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) < 2:
            continue
        try:
            offset = float(cells[1])
            epoch = float(cells[2]) if len(cells) > 2 and cells[2] else None
        except ValueError:
            continue
        rows.append((offset, epoch))
    return rows


def _last(timing: list[tuple[float, float | None]]) -> float:
    return timing[-1][0] if timing else 0.0


@dataclass
class _Clock:
    """The replayed PBX's clock: where the timeline is, in the recordings' epoch seconds."""

    #: The clock's reading at loop time ``at``.
    epoch: float
    at: float
    #: The time of the next event: the clock never runs past an event not yet played.
    limit: float
    running: bool = True

    def now(self, loop_time: float, speed: float) -> float:
        if not self.running or not speed:
            return self.epoch
        return min(self.limit, max(self.epoch, self.epoch + (loop_time - self.at) * speed))

    def stop(self, loop_time: float, speed: float) -> None:
        self.epoch = self.now(loop_time, speed)
        self.at = loop_time
        self.running = False

    def start(self, loop_time: float) -> None:
        self.at = loop_time
        self.running = True


@dataclass
class _Play:
    recording: Recording
    shift: int = 0
    #: For an Originate: its ActionID (copied into OriginateResponse) and variables.
    action_id: str | None = None
    variables: tuple[tuple[str, str], ...] = ()


@dataclass(eq=False)
class _Session:
    writer: asyncio.StreamWriter
    peer: str
    authenticated: bool = False
    username: str = ""
    challenge: str | None = None
    events_mask: str = "on"
    filters: list[tuple[re.Pattern[str], bool]] = field(default_factory=list)

    @property
    def listening(self) -> bool:
        return self.authenticated and self.events_mask != "off"

    def wants(self, event: Event, text: str) -> bool:
        if not self.listening:
            return False
        if self.events_mask != "on":
            classes = {c.strip().lower() for c in (event.get("Privilege") or "").split(",")}
            wanted = {c.strip().lower() for c in self.events_mask.split(",")}
            if not classes & wanted and "all" not in wanted:
                return False
        if not self.filters:
            return True
        keeps = [pattern for pattern, drop in self.filters if not drop]
        if keeps and not any(pattern.search(text) for pattern in keeps):
            return False
        return not any(pattern.search(text) for pattern, drop in self.filters if drop)


class AmiReplayServer:
    """Serve recorded AMI streams over TCP.

    Parameters
    ----------
    files
        Recordings to play in order (paths or loaded :class:`Recording` objects).
    speed
        1.0 plays at the recorded pace, 2.0 twice as fast, 0 as fast as possible.
    loop
        Start over after the last file (forever), instead of playing once.
    add_timestamps
        Add ``Timestamp:`` headers from the recorded timing to events that lack one.
    rebase
        Shift ids and timestamps on every pass so calls look new and recent (loops after the
        first are always shifted).
    users
        ``{username: secret}`` accepted by Login; default the recording PBX's manager.conf.
    originate_file
        A recording played when an ``Originate`` is accepted; its ``OriginateResponse`` gets
        the action's ActionID and its first channel the action's ``Variable`` values.
    originate_mode
        ``success`` (answer Success), ``failure`` (answer Error), ``drop`` (close the client's
        connection without answering) or ``silent`` (never answer).
    pause_without_clients
        Hold the timeline while nobody is logged in, so events are not played to no one.
    gap
        Recorded seconds of silence between two files (scaled by ``speed``).
    hold_at
        Stop the timeline once this many events have been played, until :meth:`resume`
        (tests use it to act at an exact point of a call).
    ping_timestamp
        Answer ``Ping`` with the PBX's ``Timestamp``, as Asterisk does; False plays an older
        PBX that does not say its time.
    """

    def __init__(
        self,
        files: Iterable[str | Path | Recording] = (),
        *,
        speed: float = 1.0,
        loop: bool = False,
        add_timestamps: bool = False,
        rebase: bool = False,
        users: Mapping[str, str] | None = None,
        originate_file: str | Path | Recording | None = None,
        originate_mode: OriginateMode = "success",
        pause_without_clients: bool = True,
        gap: float = 1.0,
        hold_at: int | None = None,
        ping_timestamp: bool = True,
    ) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.recordings = tuple(_load(item) for item in files)
        self.speed = speed
        self.loop = loop
        self.add_timestamps = add_timestamps
        self.rebase = rebase
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.originate_recording = _load(originate_file) if originate_file is not None else None
        self.originate_mode: OriginateMode = originate_mode
        self.pause_without_clients = pause_without_clients
        self.gap = gap
        self.ping_timestamp = ping_timestamp
        banners = [r.banner for r in self.recordings]
        self.banner = banners[0] if banners else DEFAULT_BANNER
        #: Every Originate action received, in order (a test asserts none was sent twice).
        self.originates: list[Action] = []
        #: Every action received from any client.
        self.actions: list[Action] = []
        #: Events broadcast so far (counted once, whatever the number of clients).
        self.played = 0
        #: Successful logins so far.
        self.logins = 0
        #: The most clients ever logged in at once.
        self.most_clients = 0
        #: While True the server reads actions but answers none (a hung PBX).
        self.muted = False
        #: Set when a non-looping playlist has been played to the end.
        self.finished = asyncio.Event()
        self._sessions: set[_Session] = set()
        self._clients_present = asyncio.Event()
        self._queue: asyncio.Queue[_Play] = asyncio.Queue()
        self._channels: dict[str, dict[str, str]] = {}
        self._server: asyncio.Server | None = None
        self._player: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        # Uniqueid seconds below this are taken: a shifted pass starts at or above it.
        self._id_floor = 0
        self._played_before: set[Path] = set()
        self._progress = asyncio.Condition()
        self._actions_changed = asyncio.Condition()
        self._hold_at = hold_at
        self._released = asyncio.Event()
        # The recordings' clock while the events played carry Timestamps, else None.
        self._clock: _Clock | None = None
        # Actions (lower-case names) answered only once released, and the release.
        self._answers_held: frozenset[str] = frozenset()
        self._answers_released = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 picks a free port: see :attr:`port`) and start playing."""
        self._server = await asyncio.start_server(self._accept, host, port)
        for recording in self.recordings:
            self._queue.put_nowait(self._new_play(recording))
        self._player = asyncio.create_task(self._play_loop(), name="ami-replay-player")
        logger.info("ami_replay.listening", host=host, port=self.port, files=len(self.recordings))

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the replay server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop playing, close every client connection and stop listening."""
        if self._player is not None:
            self._player.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._player
            self._player = None
        self.drop_connections()
        # Aborted connections end their handlers; cancelling them instead makes asyncio's
        # stream callback log the CancelledError as an error.
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        """Run until cancelled."""
        if self._server is None:
            raise RuntimeError("call start() first")
        await self._server.serve_forever()

    # -- controls for tests -------------------------------------------------------------------

    @property
    def clients(self) -> int:
        """Clients currently logged in."""
        return sum(1 for session in self._sessions if session.authenticated)

    @property
    def peers(self) -> list[str]:
        """``host:port`` of each client logged in (which process is connected)."""
        return sorted(session.peer for session in self._sessions if session.authenticated)

    def drop_connections(self) -> int:
        """Abort every client connection at once (a PBX restart); return how many."""
        sessions = list(self._sessions)
        for session in sessions:
            session.writer.transport.abort()
        self._sessions.clear()
        self._clients_present.clear()
        return len(sessions)

    async def wait_played(self, count: int) -> None:
        """Wait until ``count`` events have been broadcast; bound it with ``asyncio.timeout``."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.played >= count)

    async def wait_actions(self, action: str, count: int = 1) -> None:
        """Wait until ``count`` actions named ``action`` have been received."""
        lowered = action.lower()
        async with self._actions_changed:
            await self._actions_changed.wait_for(
                lambda: (
                    sum((a.get("Action") or "").lower() == lowered for a in self.actions) >= count
                )
            )

    def resume(self, hold_at: int | None = None) -> None:
        """Let a held timeline go on, up to ``hold_at`` events in all (None: to the end)."""
        self._hold_at = hold_at
        self._released.set()

    def hold_answers(self, *actions: str) -> None:
        """Answer these actions only after :meth:`release_answers` (a busy PBX); the timeline
        goes on meanwhile, so events are sent before the answer."""
        self._answers_held = frozenset(action.lower() for action in actions)
        self._answers_released.clear()

    def release_answers(self) -> None:
        """Answer the held actions now, and the next ones at once."""
        self._answers_held = frozenset()
        self._answers_released.set()

    def pbx_time(self) -> float:
        """Now in the replayed PBX's clock (epoch seconds), as ``Ping`` answers it.

        While the events played carry ``Timestamp`` headers (``add_timestamps``, or recorded
        with them): the recordings' clock, at the timeline's place (it stands still while the
        timeline is held or waits for clients, and never runs past the next event). Otherwise,
        or before anything plays, ours.
        """
        clock = self._clock
        if clock is None:
            return time.time()
        return clock.now(asyncio.get_running_loop().time(), self.speed)

    def live_channels(self) -> list[dict[str, str]]:
        """Channels that exist at this point of the recordings, as CoreShowChannel reports."""
        return [dict(channel) for channel in self._channels.values()]

    # -- playback -----------------------------------------------------------------------------

    def _new_play(
        self,
        recording: Recording,
        *,
        action_id: str | None = None,
        variables: tuple[tuple[str, str], ...] = (),
    ) -> _Play:
        # A recording plays as recorded the first time; a repeat (or every pass with rebase) is
        # moved to now or later, above every id already played, so its calls are new calls.
        start = recording.start_epoch
        if start is None:
            return _Play(recording, 0, action_id, variables)
        shift = 0
        if self.rebase or recording.path in self._played_before or start < self._id_floor:
            shift = max(math.ceil(time.time() - start), self._id_floor - math.floor(start))
        self._played_before.add(recording.path)
        self._id_floor = max(self._id_floor, math.ceil(start + shift + recording.duration) + 2)
        return _Play(recording, shift, action_id, variables)

    async def _play_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._queue.empty():
                if self.loop and self.recordings:
                    for recording in self.recordings:
                        self._queue.put_nowait(self._new_play(recording))
                else:
                    self.finished.set()
            play = await self._queue.get()
            self.finished.clear()
            await self._play(play, loop)
            # Even at speed 0 with --loop, let clients and new connections in between files.
            await asyncio.sleep(self.gap / self.speed if self.gap and self.speed else 0)

    async def _play(self, play: _Play, loop: asyncio.AbstractEventLoop) -> None:
        events = play.recording.events
        if not events:
            return
        logger.info("ami_replay.playing", file=play.recording.path.name, shift=play.shift)
        first_offset = events[0].offset
        started = loop.time()
        inject = list(play.variables)
        self._clock = None
        if self.add_timestamps or events[0].message.timestamp is not None:
            first = _epoch(events[0], play)
            if first is not None:
                # Until its first event, the PBX's clock reads that event's time.
                self._clock = _Clock(first, started, first)
        for number, recorded in enumerate(events, 1):
            # Held right after the events played so far: the PBX's clock stops there too.
            while self._hold_at is not None and self.played >= self._hold_at:
                self._released.clear()
                held_at = loop.time()
                self._stop_clock(held_at)
                await self._released.wait()
                self._start_clock(loop.time())
                started += loop.time() - held_at
            if self.speed:
                due = started + (recorded.offset - first_offset) / self.speed
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif number % 64 == 0:
                # At speed 0 nothing else would wait: give the readers a turn now and then.
                await asyncio.sleep(0)
            if self.pause_without_clients and not self._clients_present.is_set():
                paused_at = loop.time()
                self._stop_clock(paused_at)
                await self._clients_present.wait()
                self._start_clock(loop.time())
                started += loop.time() - paused_at
            event = self._prepare(recorded, play)
            await self._broadcast(event)
            at = event.timestamp
            if at is not None:
                # Stamped by the PBX: its clock is the recordings', here now.
                following = events[number] if number < len(events) else None
                limit = _epoch(following, play) if following is not None else None
                self._clock = _Clock(at, loop.time(), max(at, limit or at))
            if inject and event.name == "Newchannel":
                for name, value in inject:
                    await self._broadcast(_varset(event, name, value))
                inject = []

    def _stop_clock(self, loop_time: float) -> None:
        if self._clock is not None:
            self._clock.stop(loop_time, self.speed)

    def _start_clock(self, loop_time: float) -> None:
        if self._clock is not None:
            self._clock.start(loop_time)

    def _prepare(self, recorded: RecordedEvent, play: _Play) -> Event:
        message = recorded.message
        changes: dict[str, str] = {}
        if play.shift:
            for key, value in message.items:
                lowered = key.lower()
                if lowered.endswith(("uniqueid", "linkedid")):
                    match = _ID_VALUE.match(value)
                    if match:
                        changes[key] = f"{int(match[1]) + play.shift}.{match[2]}"
                elif lowered == "timestamp":
                    with contextlib.suppress(ValueError):
                        changes[key] = f"{float(value) + play.shift:.6f}"
        if play.action_id is not None and message.name == "OriginateResponse":
            changes["ActionID"] = play.action_id
        if self.add_timestamps and "Timestamp" not in message and recorded.epoch is not None:
            changes["Timestamp"] = f"{recorded.epoch + play.shift:.6f}"
        if not changes:
            return message
        updated = message.with_headers(changes, after="Privilege")
        assert isinstance(updated, Event)
        return updated

    async def _broadcast(self, event: Event) -> None:
        self._track(event)
        data = event.encode()
        text = data.decode("utf-8", "replace")
        for session in list(self._sessions):
            if session.wants(event, text):
                await self._send(session, data)
        self.played += 1
        async with self._progress:
            self._progress.notify_all()

    def _track(self, event: Event) -> None:
        """Keep the channels alive so far, for CoreShowChannels."""
        uniqueid = event.get("Uniqueid")
        if uniqueid is None or "Channel" not in event:
            return
        if event.name == "Hangup":
            self._channels.pop(uniqueid, None)
            return
        channel = self._channels.get(uniqueid)
        if channel is None:
            if event.name != "Newchannel":
                return
            channel = self._channels[uniqueid] = {"_created": str(time.monotonic())}
            stamp = event.timestamp
            if stamp is not None:
                channel["_epoch"] = repr(stamp)
        for key in _SNAPSHOT_KEYS:
            value = event.get(key)
            if value is not None:
                channel[key] = value
        if event.name == "Newexten":
            channel["Application"] = event.get("Application") or ""
            channel["ApplicationData"] = event.get("AppData") or ""
        elif event.name == "BridgeEnter":
            channel["BridgeId"] = event.get("BridgeUniqueid") or ""
        elif event.name == "BridgeLeave":
            channel["BridgeId"] = ""

    # -- sessions -----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        peer = writer.get_extra_info("peername")
        session = _Session(writer, f"{peer[0]}:{peer[1]}" if peer else "?")
        self._sessions.add(session)
        try:
            writer.write(f"{self.banner}\r\n".encode())
            parser = AmiParser(expect_banner=False)
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for message in parser.feed(data):
                    if isinstance(message, Action) and not await self._handle(session, message):
                        return
        except (ConnectionError, OSError):
            pass
        finally:
            self._forget(session)
            writer.transport.abort()
            self._handlers.discard(task)

    def _forget(self, session: _Session) -> None:
        self._sessions.discard(session)
        self._update_presence()

    def _update_presence(self) -> None:
        # The timeline moves only while someone listens (when pause_without_clients).
        if any(session.listening for session in self._sessions):
            self._clients_present.set()
        else:
            self._clients_present.clear()

    async def _send(self, session: _Session, data: bytes) -> None:
        if session.writer.is_closing():
            self._forget(session)
            return
        session.writer.write(data)
        try:
            await session.writer.drain()
        except (ConnectionError, OSError):
            self._forget(session)

    async def _reply(self, session: _Session, action: Action, *headers: tuple[str, str]) -> None:
        items: list[tuple[str, str]] = [headers[0]]
        if action.action_id is not None:
            items.append(("ActionID", action.action_id))
        items.extend(headers[1:])
        await self._send(session, Response(items).encode())

    async def _handle(self, session: _Session, action: Action) -> bool:
        """Answer one action; False closes the connection."""
        self.actions.append(action)
        async with self._actions_changed:
            self._actions_changed.notify_all()
        name = (action.get("Action") or "").lower()
        if name == "originate":
            self.originates.append(action)
        if self.muted:
            return True
        if name in self._answers_held:
            await self._answers_released.wait()
        if name == "challenge":
            session.challenge = str(secrets.randbelow(10**9)).zfill(9)
            await self._reply(
                session, action, ("Response", "Success"), ("Challenge", session.challenge)
            )
            return True
        if name == "login":
            return await self._login(session, action)
        if name == "logoff":
            await self._reply(
                session, action, ("Response", "Goodbye"), ("Message", "Thanks for all the fish.")
            )
            return False
        if not session.authenticated:
            await self._reply(
                session, action, ("Response", "Error"), ("Message", "Authentication Required")
            )
            return True
        if name == "ping":
            pong = [("Response", "Success"), ("Ping", "Pong")]
            if self.ping_timestamp:
                pong.append(("Timestamp", f"{self.pbx_time():.6f}"))
            await self._reply(session, action, *pong)
        elif name == "events":
            mask = (action.get("EventMask") or "on").strip().lower()
            session.events_mask = mask
            state = "Off" if mask == "off" else "On"
            await self._reply(session, action, ("Response", "Success"), ("Events", state))
            self._update_presence()
        elif name == "filter":
            await self._filter(session, action)
        elif name == "coreshowchannels":
            await self._core_show_channels(session, action)
        elif name == "originate":
            return await self._originate(session, action)
        else:
            await self._reply(
                session,
                action,
                ("Response", "Error"),
                ("Message", f"Invalid/unknown command: {action.get('Action')}."),
            )
        return True

    async def _login(self, session: _Session, action: Action) -> bool:
        username = action.get("Username") or ""
        expected = self.users.get(username)
        if (action.get("AuthType") or "").lower() == "md5":
            key = action.get("Key") or ""
            ok = (
                expected is not None
                and session.challenge is not None
                and secrets.compare_digest(
                    key.lower(),
                    hashlib.md5(
                        (session.challenge + expected).encode(), usedforsecurity=False
                    ).hexdigest(),
                )
            )
        else:
            ok = expected is not None and secrets.compare_digest(
                (action.get("Secret") or "").encode(), expected.encode()
            )
        if not ok:
            # Asterisk answers and then closes the session.
            await self._reply(
                session, action, ("Response", "Error"), ("Message", "Authentication failed")
            )
            logger.info("ami_replay.login_failed", peer=session.peer, username=username)
            return False
        session.authenticated = True
        session.username = username
        session.events_mask = (action.get("Events") or "on").strip().lower()
        self.logins += 1
        self.most_clients = max(self.most_clients, self.clients)
        await self._reply(
            session, action, ("Response", "Success"), ("Message", "Authentication accepted")
        )
        booted = Event(
            [
                ("Event", "FullyBooted"),
                ("Privilege", "system,all"),
                ("Uptime", "8"),
                ("LastReload", "8"),
                ("Status", "Fully Booted"),
            ]
        )
        if session.wants(booted, booted.encode().decode()):
            await self._send(session, booted.encode())
        self._update_presence()
        return True

    async def _filter(self, session: _Session, action: Action) -> None:
        expression = action.get("Filter") or ""
        drop = expression.startswith("!")
        try:
            pattern = re.compile(expression[1:] if drop else expression)
        except re.error:
            await self._reply(
                session, action, ("Response", "Error"), ("Message", "Filter Not Added")
            )
            return
        if (action.get("Operation") or "").lower() != "add" or not expression:
            await self._reply(
                session, action, ("Response", "Error"), ("Message", "Unknown operation")
            )
            return
        session.filters.append((pattern, drop))
        await self._reply(
            session, action, ("Response", "Success"), ("Message", "Filter Added Successfully")
        )

    async def _core_show_channels(self, session: _Session, action: Action) -> None:
        await self._reply(
            session,
            action,
            ("Response", "Success"),
            ("EventList", "start"),
            ("Message", "Channels will follow"),
        )
        action_id = action.action_id
        now = time.monotonic()
        # Ages in the PBX's clock: the recordings' when it stamps events with it.
        pbx_now = self.pbx_time() if self._clock is not None else None
        channels = list(self._channels.values())
        # One write, as Asterisk's session thread sends a list: no event in between.
        parts: list[bytes] = []
        for channel in channels:
            items: list[tuple[str, str]] = [("Event", "CoreShowChannel")]
            if action_id is not None:
                items.append(("ActionID", action_id))
            items.extend((key, value) for key, value in channel.items() if not key.startswith("_"))
            if pbx_now is not None and "_epoch" in channel:
                age = pbx_now - float(channel["_epoch"])
            else:
                age = now - float(channel["_created"])
            # Rounded down, as Asterisk does.
            seconds = max(0, int(age))
            items.append(
                ("Duration", f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}")
            )
            parts.append(Event(items).encode())
        done: list[tuple[str, str]] = [("Event", "CoreShowChannelsComplete")]
        if action_id is not None:
            done.append(("ActionID", action_id))
        done += [("EventList", "Complete"), ("ListItems", str(len(channels)))]
        parts.append(Event(done).encode())
        await self._send(session, b"".join(parts))

    async def _originate(self, session: _Session, action: Action) -> bool:
        mode = self.originate_mode
        if mode == "drop":
            return False
        if mode == "silent":
            return True
        if mode == "failure":
            await self._reply(
                session, action, ("Response", "Error"), ("Message", "Originate failed")
            )
            return True
        await self._reply(
            session,
            action,
            ("Response", "Success"),
            ("Message", "Originate successfully queued"),
        )
        if self.originate_recording is not None:
            variables: list[tuple[str, str]] = []
            for value in action.getall("Variable"):
                for assignment in value.split(","):
                    name, sep, val = assignment.partition("=")
                    if sep:
                        variables.append((name.strip(), val))
            play = self._new_play(
                self.originate_recording,
                action_id=action.action_id,
                variables=tuple(variables),
            )
            self._queue.put_nowait(play)
        return True


def _epoch(recorded: RecordedEvent, play: _Play) -> float | None:
    """When a recorded event happened, in the played (shifted) recordings' clock."""
    stamp = recorded.message.timestamp
    if stamp is None:
        stamp = recorded.epoch
    return None if stamp is None else stamp + play.shift


def _varset(channel_event: Event, name: str, value: str) -> Event:
    items: list[tuple[str, str]] = [("Event", "VarSet"), ("Privilege", "dialplan,all")]
    items.extend((key, channel_event[key]) for key in _SNAPSHOT_KEYS if key in channel_event)
    items += [("Variable", name), ("Value", value)]
    if "Timestamp" in channel_event:
        items.insert(2, ("Timestamp", channel_event["Timestamp"]))
    return Event(items)


def _load(item: str | Path | Recording) -> Recording:
    return item if isinstance(item, Recording) else Recording.load(item)


async def serve(
    files: Sequence[str | Path],
    host: str = "127.0.0.1",
    port: int = 5038,
    speed: float = 1.0,
    loop: bool = False,
    add_timestamps: bool = False,
    *,
    rebase: bool = False,
    users: Mapping[str, str] | None = None,
    originate_file: str | Path | None = None,
) -> None:
    """Serve ``files`` on ``host:port`` until cancelled (what ``callbridge ami-replay`` runs)."""
    server = AmiReplayServer(
        files,
        speed=speed,
        loop=loop,
        add_timestamps=add_timestamps,
        rebase=rebase,
        users=users,
        originate_file=originate_file,
    )
    await server.start(host, port)
    try:
        await server.serve_forever()
    finally:
        await server.close()
