"""An asyncio client for the Asterisk Manager Interface: login, actions, events, reconnects.

::

    async with AmiClient("pbx.example", 5038, "crm", "secret", filters=["!Event: RTCP"]) as ami:
        pong = await ami.ping()  # pong.clock_offset: the PBX's clock minus ours
        channels = await ami.send_action_list("CoreShowChannels")
        async for event in ami:
            if isinstance(event, Reconnected):
                ...  # events were missed: reconcile with CoreShowChannels
            ...

A list action sent with ``in_stream=True`` also comes back in the event stream, as a
:class:`ListResult` where the PBX answered it: the events before it are older than the list, the
events after it newer (a snapshot such as ``CoreShowChannels`` is applied in stream order).

One supervisor task owns the connection. It logs in (MD5 challenge or plain), narrows the event
flow (``Filter``, then ``Events``), pings the PBX and, when the connection drops or stops
answering, reconnects with capped exponential backoff and jitter, forever, until :meth:`close`.
A login the PBX refuses stops it with :class:`AmiAuthenticationError`: retrying the same secret
cannot help.

Actions are **never re-sent**. One sent while disconnected fails at once with
:class:`AmiNotConnected`; one in flight when the connection drops fails with
:class:`AmiConnectionLost`. This matters for ``Originate``: a re-sent Originate rings the
customer twice, so whether to try again is the caller's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import structlog

from callbridge.pbx.ami.correlation import ActionResult, Correlator, ListResult
from callbridge.pbx.ami.errors import (
    AmiActionError,
    AmiAuthenticationError,
    AmiConnectError,
    AmiConnectionLost,
    AmiError,
    AmiNotConnected,
    AmiPermanentError,
    AmiProtocolError,
    AmiTimeout,
    AmiTransientError,
)
from callbridge.pbx.ami.protocol import (
    BANNER_PREFIX,
    AmiParser,
    Event,
    HeaderValue,
    Response,
    encode_action,
)

__all__ = [
    "AmiClient",
    "Backoff",
    "ClientState",
    "Disconnected",
    "ListResult",
    "Pong",
    "Reconnected",
]

logger = structlog.stdlib.get_logger("callbridge.pbx.ami")

ClientState = Literal["idle", "connecting", "connected", "reconnecting", "closed"]
Sleep = Callable[[float], Awaitable[None]]

_READ_SIZE = 65536
# A connection that lasted this long (seconds) resets the backoff.
_STABLE_AFTER = 10.0


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: ``initial * factor**attempt``, at most ``maximum``.

    Parameters
    ----------
    initial, factor, maximum
        Seconds before the first retry, growth per failed attempt, and the cap.
    jitter
        Fraction of the delay drawn at random (0.2 = within ±20 %), so many bridges that lost
        the same PBX do not all knock at the same instant.
    rng
        Source of randomness; pass ``random.Random(seed)`` for reproducible delays.
    """

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        spread = base * self.jitter * (2 * self.rng.random() - 1)
        return max(0.0, min(self.maximum, base + spread))


@dataclass(frozen=True, slots=True)
class Pong:
    """The PBX's answer to a ``Ping``: how long it took, and the PBX's clock against ours."""

    #: Seconds from sending the Ping to reading the answer.
    round_trip: float
    #: The PBX's time (epoch seconds) when it answered: its ``Timestamp`` header, when sent.
    pbx_time: float | None
    #: The PBX's clock minus ours (the client's ``wall_clock``), in seconds, taking the PBX's
    #: time to be that of the round trip's midpoint; None when the PBX did not say its time.
    clock_offset: float | None


class Disconnected(Event):
    """Marker in the event stream: the connection was lost; events may be missed from here."""

    __slots__ = ()

    @classmethod
    def create(cls, reason: str) -> Disconnected:
        """A marker carrying why the connection ended."""
        return cls([("Event", "CallbridgeDisconnected"), ("Reason", reason)])

    @property
    def reason(self) -> str:
        """Why the connection ended."""
        return self.get("Reason") or ""


class Reconnected(Event):
    """Marker in the event stream: logged in again; events while away are lost, so reconcile."""

    __slots__ = ()

    @classmethod
    def create(cls, downtime: float, attempts: int) -> Reconnected:
        """A marker carrying how long the client was away and how many tries it took."""
        return cls(
            [
                ("Event", "CallbridgeReconnected"),
                ("Downtime", f"{downtime:.3f}"),
                ("Attempts", str(attempts)),
            ]
        )

    @property
    def downtime(self) -> float:
        """Seconds between losing the connection and logging in again."""
        return float(self.get("Downtime") or 0)


class _Stop:
    """Queue sentinel: the event stream ends (with ``error`` if the client failed)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = AmiParser(expect_banner=False)
        self.correlator = Correlator()
        self.banner = ""
        self.reader_task: asyncio.Task[str] | None = None
        #: Set when we drop the connection ourselves (dead Ping), to report why.
        self.drop_reason: str | None = None

    def abort(self) -> None:
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()


class AmiClient:
    """One AMI connection to one PBX that survives disconnects.

    Parameters
    ----------
    host, port, username, secret
        Where the PBX listens and the ``manager.conf`` account to log in as.
    events
        ``"on"`` for every event the account may read, ``"off"`` for none (actions only), or a
        list of event classes (``["call", "cdr"]``) sent as the ``Events`` action's EventMask.
    filters
        ``Filter`` expressions sent after login, before events are switched on, e.g.
        ``"!Event: RTCP"`` (drop) or ``"Event: Newchannel"`` (keep only matching).
    auth
        ``"md5"`` (challenge/response, the secret never crosses the wire) or ``"plain"``.
    ping_interval, ping_timeout
        A ``Ping`` every ``ping_interval`` seconds; no answer within ``ping_timeout`` means the
        connection is dead and it is dropped and re-opened. ``None`` disables pings.
    action_timeout, connect_timeout
        Default seconds to wait for a response, and for TCP connect plus login.
    backoff
        Delays between reconnect attempts.
    sleep
        Waits between reconnect attempts; tests inject a fast or gated one.
    clock
        Monotonic clock for measuring downtime.
    wall_clock
        Sets :attr:`Message.received_at` (epoch seconds) on every event.
    action_ids
        Makes ActionIDs; tests inject a deterministic one. Default ``cb<random>-<n>``.
    max_queued_events
        Events held for a slow consumer; past this the oldest are dropped (and counted) so a
        stalled consumer cannot stop pings from being read.
    """

    def __init__(
        self,
        host: str,
        port: int = 5038,
        username: str = "",
        secret: str = "",
        *,
        events: Literal["on", "off"] | Sequence[str] = "on",
        filters: Sequence[str] = (),
        auth: Literal["md5", "plain"] = "md5",
        ping_interval: float | None = 20.0,
        ping_timeout: float = 5.0,
        action_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        action_ids: Callable[[], str] | None = None,
        max_queued_events: int = 100_000,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self._secret = secret
        self.events = events
        self.filters = tuple(filters)
        self.auth = auth
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.action_timeout = action_timeout
        self.connect_timeout = connect_timeout
        self.backoff = backoff or Backoff()
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._action_ids: Callable[[], str] = action_ids or _default_action_ids()
        self._queue: asyncio.Queue[Event | _Stop] = asyncio.Queue(max_queued_events)
        self._state: ClientState = "idle"
        self._connection: _Connection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._first: asyncio.Future[None] | None = None
        #: Times the client logged in again after losing a connection.
        self.reconnects = 0
        #: Events dropped because the consumer fell behind by ``max_queued_events``.
        self.dropped_events = 0
        #: Why the last connection attempt or connection failed, for status pages.
        self.last_error: str | None = None
        #: The PBX's banner (``Asterisk Call Manager/x.y.z``) of the current connection.
        self.banner: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """``idle``, ``connecting``, ``connected``, ``reconnecting`` or ``closed``."""
        return self._state

    @property
    def connected(self) -> bool:
        """True while logged in."""
        return self._state == "connected"

    @property
    def address(self) -> str:
        """``host:port`` of the PBX."""
        return f"{self.host}:{self.port}"

    @property
    def pending_events(self) -> int:
        """Events (and markers) received and not yet taken by the consumer."""
        return self._queue.qsize()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self, *, retry: bool = False) -> None:
        """Connect and log in; from then on, reconnect by itself whenever the connection drops.

        Parameters
        ----------
        retry
            Keep trying (with backoff) while the PBX is unreachable instead of raising the
            first connection error. A refused login raises either way.

        Raises
        ------
        AmiAuthenticationError
            The PBX refused the username or secret.
        AmiTransientError
            With ``retry=False``: the PBX could not be reached or did not answer in time.
        """
        if self._supervisor is not None and not self._supervisor.done():
            raise RuntimeError("AmiClient.connect() called twice")
        if self._state == "closed":
            raise RuntimeError("a closed AmiClient cannot connect again")
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._first = first
        self._supervisor = asyncio.create_task(
            self._supervise(first, retry=retry), name=f"ami-{self.address}"
        )
        try:
            await first
        except BaseException:
            await self._stop_supervisor()
            if not self._closing:
                self._state = "idle"
            raise

    async def close(self) -> None:
        """Log off, drop the connection and end ``async for`` over the events."""
        if self._state == "closed":
            return
        self._closing = True
        connection = self._connection
        if connection is not None and self._state == "connected":
            # Polite Logoff so the PBX does not log a dropped session; never block closing on it.
            with contextlib.suppress(AmiError, OSError):
                await self._request(connection, "Logoff", {}, 1.0)
        self._state = "closed"
        await self._stop_supervisor()
        if connection is not None:
            connection.abort()
        self._connection = None
        self._put(_Stop())

    async def wait_connected(self) -> None:
        """Wait until logged in (e.g. after a reconnect); bound it with ``asyncio.timeout``."""
        await self._connected.wait()

    async def _stop_supervisor(self) -> None:
        task = self._supervisor
        self._supervisor = None
        if task is not None and not task.done():
            task.cancel()
            # wait() rather than await: the task's CancelledError is not ours to raise.
            await asyncio.wait([task])
        first = self._first
        if first is not None and not first.done():
            # close() while connect() waits: connect() must not wait forever.
            first.set_exception(
                AmiNotConnected(f"the AMI client for {self.address} was closed while connecting")
            )

    # -- events -------------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iter_events()

    async def _iter_events(self) -> AsyncIterator[Event]:
        while True:
            item = await self._queue.get()
            if isinstance(item, _Stop):
                # Leave the sentinel for any other iterator, then end (or raise).
                self._put(item)
                if item.error is not None:
                    raise item.error
                return
            yield item

    def _put(self, item: Event | _Stop) -> None:
        queue = self._queue
        if queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                dropped = queue.get_nowait()
                if isinstance(dropped, _Stop):
                    # Never lose the end-of-stream marker; drop the newcomer instead.
                    queue.put_nowait(dropped)
                    self.dropped_events += 1
                    return
                self.dropped_events += 1
        queue.put_nowait(item)

    # -- actions ------------------------------------------------------------------------------

    async def send_action(
        self,
        action: str,
        headers: Mapping[str, HeaderValue] | None = None,
        /,
        *,
        response_timeout: float | None = None,
        check: bool = True,
        **extra: HeaderValue,
    ) -> Response:
        """Send one action and return the PBX's response.

        Headers come from ``headers`` and keyword arguments (``Channel="PJSIP/101"``); a list
        value repeats the header (``Variable=["A=1", "B=2"]``). ``response_timeout`` is ours (the
        AMI ``Timeout`` header of ``Originate`` is a header like any other).

        Raises
        ------
        AmiNotConnected
            Not logged in right now: the action was not sent.
        AmiConnectionLost
            The connection dropped before the answer: the action is not re-sent.
        AmiTimeout
            No answer within ``response_timeout`` (default ``action_timeout``).
        AmiActionError
            With ``check`` (the default): the PBX answered ``Response: Error``.
        """
        connection = self._require_connection(action)
        result = await self._request(
            connection, action, {**(headers or {}), **extra}, response_timeout
        )
        return _checked(result.response, action, check)

    async def send_action_list(
        self,
        action: str,
        headers: Mapping[str, HeaderValue] | None = None,
        /,
        *,
        response_timeout: float | None = None,
        in_stream: bool = False,
        **extra: HeaderValue,
    ) -> list[Event]:
        """Send a list action (``CoreShowChannels``) and return its events, without the
        closing ``...Complete`` event.

        With ``in_stream`` the list is also put in the event stream, as a :class:`ListResult`
        at the place of the PBX's answer, so a consumer can apply it in stream order: after
        the events that came before it, before those that came after.

        Raises the same errors as :meth:`send_action`.
        """
        connection = self._require_connection(action)
        result = await self._request(
            connection,
            action,
            {**(headers or {}), **extra},
            response_timeout,
            collect=True,
            in_stream=in_stream,
        )
        _checked(result.response, action, check=True)
        return list(result.events)

    async def ping(self, *, response_timeout: float | None = None) -> Pong:
        """Send a ``Ping``; return the round trip and, when the PBX says its time, its clock.

        Asterisk answers ``Ping: Pong`` with ``Timestamp: <epoch.microseconds>``; the offset
        is that time minus the midpoint of our send and receive times (within half the round
        trip). Raises the same errors as :meth:`send_action`.
        """
        connection = self._require_connection("Ping")
        started = self._clock()
        sent = self._wall_clock()
        result = await self._request(connection, "Ping", {}, response_timeout)
        response = _checked(result.response, "Ping", check=True)
        round_trip = max(0.0, self._clock() - started)
        received = response.received_at
        if received is None:
            received = self._wall_clock()
        pbx_time = response.timestamp
        offset = None if pbx_time is None else pbx_time - (sent + received) / 2
        return Pong(round_trip=round_trip, pbx_time=pbx_time, clock_offset=offset)

    def _require_connection(self, action: str) -> _Connection:
        connection = self._connection
        if self._state != "connected" or connection is None:
            raise AmiNotConnected(
                f"not connected to the AMI at {self.address} ({self._state}); {action} was not sent"
            )
        return connection

    async def _request(
        self,
        connection: _Connection,
        action: str,
        headers: Mapping[str, HeaderValue],
        response_timeout: float | None,
        *,
        collect: bool = False,
        in_stream: bool = False,
    ) -> ActionResult:
        action_id = self._action_ids()
        data = encode_action(action, action_id, headers)
        writer = connection.writer
        if writer.is_closing():
            raise AmiNotConnected(
                f"the AMI connection to {self.address} is closing; {action} was not sent"
            )
        future = connection.correlator.register(
            action, action_id, collect=collect, in_stream=in_stream
        )
        try:
            writer.write(data)
            try:
                await writer.drain()
            except OSError as err:
                raise _lost(self.address, action, action_id) from err
            async with asyncio.timeout(
                self.action_timeout if response_timeout is None else response_timeout
            ):
                return await future
        except TimeoutError:
            raise AmiTimeout(
                f"no answer from the AMI at {self.address} to {action} (ActionID {action_id})"
            ) from None
        finally:
            connection.correlator.discard(action_id)
            # Events held behind an in-stream list that will not come now (no await between
            # releasing and queueing them: stream order holds).
            self._put_released(connection.correlator)

    # -- the connection -----------------------------------------------------------------------

    async def _supervise(self, first: asyncio.Future[None], *, retry: bool) -> None:
        try:
            await self._connect_forever(first, retry=retry)
        except Exception as err:
            # A bug must not leave the listener waiting on a dead client: end its stream.
            logger.exception("ami.client_crashed", pbx=self.address)
            self._fail(first, AmiError(f"the AMI client for {self.address} failed: {err!r}"))

    async def _connect_forever(self, first: asyncio.Future[None], *, retry: bool) -> None:
        attempts = 0  # drives the backoff; reset once a connection proves stable
        tries = 0  # connection attempts since the last login, for the Reconnected marker
        down_since: float | None = None
        self._state = "connecting"
        while True:
            try:
                connection = await self._open()
            except AmiPermanentError as err:
                self.last_error = err.message
                logger.error("ami.login_refused", pbx=self.address, error=err.message)
                self._fail(first, err)
                return
            except AmiTransientError as err:
                self.last_error = err.message
                if not first.done() and not retry:
                    first.set_exception(err)
                    return
                delay = self.backoff.delay(attempts)
                attempts += 1
                tries += 1
                logger.warning(
                    "ami.connect_failed",
                    pbx=self.address,
                    error=err.message,
                    attempt=attempts,
                    retry_in=round(delay, 3),
                )
                await self._sleep(delay)
                continue
            self._connection = connection
            self._state = "connected"
            self._connected.set()
            self.last_error = None
            if not first.done():
                first.set_result(None)
                logger.info("ami.connected", pbx=self.address, banner=connection.banner)
            else:
                self.reconnects += 1
                downtime = self._clock() - (down_since or self._clock())
                logger.info(
                    "ami.reconnected",
                    pbx=self.address,
                    downtime=round(downtime, 3),
                    tries=tries + 1,
                )
                self._put(Reconnected.create(downtime, tries + 1))
            tries = 0
            connected_at = self._clock()
            reason = await self._serve(connection)
            self._connected.clear()
            self._connection = None
            if self._closing:
                return
            down_since = self._clock()
            self._state = "reconnecting"
            self.last_error = reason
            logger.warning("ami.disconnected", pbx=self.address, reason=reason)
            self._put(Disconnected.create(reason))
            if down_since - connected_at >= _STABLE_AFTER:
                # A connection that lived a while: reconnect at once, it was likely a restart.
                attempts = 0
            else:
                # Dropped right after login: back off so a flapping PBX is not hammered.
                delay = self.backoff.delay(attempts)
                attempts += 1
                await self._sleep(delay)

    def _fail(self, first: asyncio.Future[None], err: AmiError) -> None:
        if not first.done():
            first.set_exception(err)
        else:
            self._state = "closed"
            self._put(_Stop(err))

    async def _open(self) -> _Connection:
        """Connect, check the banner, log in, set filters and events; return the connection."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as err:
            raise AmiConnectError(
                f"cannot connect to the AMI at {self.address}: {err or 'timed out'}"
            ) from err
        connection = _Connection(reader, writer)
        reader_task: asyncio.Task[str] | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                try:
                    banner = await reader.readline()
                except ValueError:
                    # A first line longer than the stream limit: certainly not a banner.
                    banner = b"(a line too long to be a banner)"
            if not banner:
                # Closed before saying anything: a restarting or overloaded PBX, try again.
                raise AmiConnectError(f"the AMI at {self.address} closed the connection at once")
            if not banner.startswith(BANNER_PREFIX):
                raise AmiProtocolError(
                    f"{self.address} is not an Asterisk Manager Interface "
                    f"(it said {banner[:60]!r}); check the host and the AMI port (5038)"
                )
            connection.banner = banner.decode("utf-8", "replace").strip()
            self.banner = connection.banner
            reader_task = asyncio.create_task(self._read(connection), name="ami-reader")
            connection.reader_task = reader_task
            async with asyncio.timeout(self.connect_timeout):
                await self._login(connection)
        except TimeoutError as err:
            await _cancel(reader_task)
            connection.abort()
            raise AmiTimeout(f"the AMI at {self.address} did not answer the login") from err
        except (AmiError, OSError) as err:
            await _cancel(reader_task)
            connection.abort()
            if isinstance(err, OSError):
                raise AmiConnectError(f"AMI connection to {self.address} failed: {err}") from err
            raise
        except BaseException:
            await _cancel(reader_task)
            connection.abort()
            raise
        return connection

    async def _login(self, connection: _Connection) -> None:
        headers: dict[str, HeaderValue] = {"Username": self.username, "Events": "off"}
        if self.auth == "md5":
            challenge = await self._request(connection, "Challenge", {"AuthType": "MD5"}, None)
            nonce = challenge.response.get("Challenge")
            if not challenge.response.success or nonce is None:
                raise AmiAuthenticationError(
                    f"the AMI at {self.address} refused an MD5 challenge "
                    f"({challenge.response.message}); use auth='plain'"
                )
            key = hashlib.md5((nonce + self._secret).encode(), usedforsecurity=False)
            headers |= {"AuthType": "MD5", "Key": key.hexdigest()}
        else:
            headers["Secret"] = self._secret
        login = await self._request(connection, "Login", headers, None)
        if not login.response.success:
            raise AmiAuthenticationError(
                f"the AMI at {self.address} refused the login as {self.username!r} "
                f"({login.response.message or 'no reason given'}): check that [{self.username}] "
                "in manager.conf has this secret and that its permit= allows this host, then "
                "run `manager reload` on the PBX"
            )
        for expression in self.filters:
            answer = await self._request(
                connection, "Filter", {"Operation": "Add", "Filter": expression}, None
            )
            if not answer.response.success:
                logger.warning(
                    "ami.filter_refused",
                    pbx=self.address,
                    filter=expression,
                    error=answer.response.message,
                )
        if self.events != "off":
            mask = self.events if isinstance(self.events, str) else ",".join(self.events)
            await self._request(connection, "Events", {"EventMask": mask}, None)

    async def _serve(self, connection: _Connection) -> str:
        """Run until the connection ends; return why it ended."""
        assert connection.reader_task is not None
        pinger = (
            asyncio.create_task(self._ping(connection), name="ami-ping")
            if self.ping_interval
            else None
        )
        try:
            reason = await connection.reader_task
        finally:
            await _cancel(pinger)
            await _cancel(connection.reader_task)
            connection.abort()
            # Whatever was in flight failed with this connection; nothing is ever re-sent.
            failed = connection.correlator.fail_all(
                lambda action, action_id: _lost(self.address, action, action_id)
            )
            # Events that arrived behind a list that never completed: still events.
            self._put_released(connection.correlator)
            if failed:
                logger.warning("ami.actions_lost", pbx=self.address, count=failed)
        return connection.drop_reason or reason

    async def _read(self, connection: _Connection) -> str:
        """Read and route messages until the PBX closes the connection; return why it ended."""
        reader = connection.reader
        parser = connection.parser
        correlator = connection.correlator
        wall_clock = self._wall_clock
        while True:
            try:
                data = await reader.read(_READ_SIZE)
            except OSError as err:
                return f"read failed: {err}"
            if not data:
                return "the PBX closed the connection"
            now = wall_clock()
            for message in parser.feed(data):
                message.received_at = now
                event = correlator.feed(message)
                if event is not None:
                    self._put(event)
                elif correlator.released:
                    # An in-stream list completed: its marker and the events held behind it.
                    self._put_released(correlator)

    def _put_released(self, correlator: Correlator) -> None:
        if correlator.released:
            for event in correlator.take_released():
                self._put(event)

    async def _ping(self, connection: _Connection) -> None:
        interval = self.ping_interval
        assert interval is not None
        while True:
            await asyncio.sleep(interval)
            try:
                await self._request(connection, "Ping", {}, self.ping_timeout)
            except AmiTimeout:
                connection.drop_reason = f"no answer to Ping within {self.ping_timeout} s"
                connection.abort()
                return
            except AmiError:
                return


def _default_action_ids() -> Callable[[], str]:
    # A random prefix keeps two clients on one PBX account from sharing ActionIDs.
    prefix = f"cb{secrets.token_hex(3)}"
    counter = itertools.count(1)

    def next_id() -> str:
        return f"{prefix}-{next(counter)}"

    return next_id


def _checked(response: Response, action: str, check: bool) -> Response:
    if check and not response.success:
        raise AmiActionError(
            f"the PBX refused {action}: {response.message or response.name}", response=response
        )
    return response


def _lost(address: str, action: str, action_id: str) -> AmiConnectionLost:
    return AmiConnectionLost(
        f"the AMI connection to {address} dropped before the answer to {action} "
        f"(ActionID {action_id}); it was not re-sent and may or may not have run",
        action=action,
        action_id=action_id,
    )


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
