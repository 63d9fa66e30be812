"""Recorded AMI streams, a replay server on an ephemeral port and clients that talk to it."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from callbridge.pbx.ami.client import AmiClient, Backoff
from callbridge.pbx.ami.replay import AmiReplayServer, RecordedEvent, Recording

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "ami"
STREAMS = sorted(FIXTURES.glob("*.ami"))

# Messages per recording (Login response and Goodbye included), and the PBX's events a
# client is served (without the recorder's own FullyBooted/SuccessfulAuth).
MESSAGES = {
    "a2_inbound_answered_timestamps": 101,
    "a_inbound_answered": 99,
    "b_inbound_noanswer": 53,
    "d_inbound_ringgroup": 130,
    "f_blind_transfer_refer": 189,
    "h_click2call_outbound": 110,
    "k_outbound_from_phone": 98,
}
SERVED_EVENTS = {name: count - 4 for name, count in MESSAGES.items()}


def stream(name: str) -> Path:
    """The path of a recorded stream by its scenario name."""
    return FIXTURES / f"{name}.ami"


def delayed(name: str, after: int, seconds: float) -> Recording:
    """A recorded stream whose events past the first ``after`` come ``seconds`` later.

    In the PBX's clock too (their ``Timestamp`` headers): a call talking at that point talks
    ``seconds`` longer, with nothing sent meanwhile.
    """
    recording = Recording.load(stream(name))
    events: list[RecordedEvent] = []
    for index, item in enumerate(recording.events):
        stamp = item.message.get("Timestamp")
        if index < after or stamp is None or item.epoch is None:
            events.append(item)
            continue
        message = item.message.with_headers({"Timestamp": f"{float(stamp) + seconds:.6f}"})
        assert isinstance(message, type(item.message))
        events.append(RecordedEvent(message, item.offset + seconds, item.epoch + seconds))
    return dataclasses.replace(recording, events=tuple(events))


class RecordingSleep:
    """An injectable ``sleep`` that records delays and returns at once (or waits for a gate)."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()
        self._changed = asyncio.Condition()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.called.set()
        async with self._changed:
            self._changed.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)

    async def wait_calls(self, count: int) -> None:
        """Wait until the client has slept ``count`` times."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.delays) >= count)


@pytest.fixture
def fast_sleep() -> RecordingSleep:
    return RecordingSleep()


ServerFactory = Callable[..., Awaitable[AmiReplayServer]]
ClientFactory = Callable[..., AmiClient]


@pytest.fixture
async def replay_server() -> AsyncIterator[ServerFactory]:
    servers: list[AmiReplayServer] = []

    async def start(*files: Path, port: int = 0, **kwargs: Any) -> AmiReplayServer:
        kwargs.setdefault("speed", 0)
        kwargs.setdefault("gap", 0)
        server = AmiReplayServer(files, **kwargs)
        await server.start("127.0.0.1", port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def ami_client(fast_sleep: RecordingSleep) -> AsyncIterator[ClientFactory]:
    clients: list[AmiClient] = []

    def make(server: AmiReplayServer | int, **kwargs: Any) -> AmiClient:
        port = server if isinstance(server, int) else server.port
        counter = itertools.count(1)
        kwargs.setdefault("username", "crm")
        kwargs.setdefault("secret", "crm-secret")
        kwargs.setdefault("ping_interval", None)
        kwargs.setdefault("action_timeout", 5.0)
        kwargs.setdefault("connect_timeout", 5.0)
        kwargs.setdefault("backoff", Backoff(initial=0.1, maximum=1.0, jitter=0.0))
        kwargs.setdefault("sleep", fast_sleep)
        kwargs.setdefault("action_ids", lambda: f"t-{next(counter)}")
        client = AmiClient("127.0.0.1", port, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
