"""One PBX's AMI listener: events in, call facts out, reconciled after every reconnect.

::

    listener = AmiListener(AmiUrl.parse("ami://crm:secret@pbx.example:5038"), apply_facts)
    await listener.run()  # until cancelled; survives disconnects, outages and refused logins

The listener owns an :class:`~callbridge.pbx.ami.client.AmiClient`, feeds every event to an
:class:`~callbridge.pbx.ami.translate.AmiTranslator` and hands the facts each event implies to
``apply`` (the call-tracking use case in one transaction, wired by the worker), in stream order.

At every login the listener asks the PBX its time (``Ping``: the answer's ``Timestamp``, at the
round trip's midpoint) so that every time is in the PBX's clock, the one its uniqueids and its
events' ``Timestamp`` headers use: events without one, and the ``CoreShowChannel`` events of a
call it joins mid-way, are dated by their arrival plus that offset.

Then it asks ``CoreShowChannels``. The answer comes in the event stream where the PBX sent it
(:class:`~callbridge.pbx.ami.client.ListResult`): the events the PBX sent before it are older and
are applied first, then its ``CoreShowChannel`` events (channels that appeared while away are
adopted), then the events after it. After a reconnect, events were missed: calls whose channels
all vanished are ended with what is known, as of when we lost sight of them. A listener that
starts fresh, e.g. a standby taking over from a process that died, also ends the calls the
database still has open for this PBX that the PBX no longer has (``open_calls``), as of the
later of their last stored event and the last heartbeat of the listener before us: it was
connected to this PBX with every event applied then, so a call it did not end was still
alive. "Now" in the PBX's clock is our clock plus the skew seen on its last event (or measured
by the last ``Ping``).

Its :class:`ListenerStatus` (connected, disconnected, unreachable, refused...) goes to logs on
every change and to ``on_status`` on every change and every ``status_interval`` seconds; while
connected it carries that heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import structlog

from callbridge.domain.errors import (
    CallModelError,
    ConfigurationError,
    Permanent,
    Retryable,
    StorageError,
)
from callbridge.domain.events import Disposition, Ended
from callbridge.domain.events import Event as CallFact
from callbridge.pbx.ami.client import AmiClient, Disconnected, ListResult, Reconnected
from callbridge.pbx.ami.errors import AmiError, AmiPermanentError
from callbridge.pbx.ami.protocol import Event
from callbridge.pbx.ami.translate import AmiTranslator
from callbridge.pbx.ami.translate_config import TranslatorConfig

__all__ = [
    "DEFAULT_AMI_PORT",
    "AmiListener",
    "AmiUrl",
    "FactSink",
    "InvalidAmiUrlError",
    "ListenerState",
    "ListenerStatus",
    "OpenCall",
    "OpenCalls",
    "OpenCallsSource",
    "StatusSink",
    "translator_config",
]

logger = structlog.stdlib.get_logger("callbridge.pbx.ami.listener")

DEFAULT_AMI_PORT: Final = 5038
# Noise the translator never reads, dropped by the PBX before it crosses the wire.
DEFAULT_FILTERS: Final = ("!Event: Newexten", "!Event: RTCP")
# Attempts for an error of unknown kind before the facts are applied one by one (and the bad
# ones dropped): a bug must not stop a PBX's calls for good.
_UNKNOWN_ERROR_ATTEMPTS: Final = 5
_MAX_RETRY_DELAY: Final = 30.0
# pbx_events.source is 32 characters.
_MAX_SOURCE: Final = 32
# The list action whose answer catches up with the PBX's live channels.
_SNAPSHOT: Final = "CoreShowChannels"
# A PBX clock this far from ours is worth a line in the log at login.
_NOTABLE_OFFSET: Final = 1.0


class InvalidAmiUrlError(ConfigurationError):
    """The AMI URL is invalid; the form is ami://user:secret@host:5038."""


@dataclass(frozen=True)
class AmiUrl:
    """Where and as whom to reach a PBX's AMI: ``ami://user:secret@host:5038``."""

    host: str
    port: int
    username: str
    secret: str

    @classmethod
    def parse(cls, url: str) -> AmiUrl:
        """Parse and validate; raises :class:`InvalidAmiUrlError` saying what is wrong."""
        text = url.strip()
        form = "the form is ami://user:secret@host:5038"
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as err:
            raise InvalidAmiUrlError(f"invalid AMI URL ({err}); {form}") from None
        if parts.scheme.lower() != "ami":
            raise InvalidAmiUrlError(f"an AMI URL starts with ami:// ; {form}")
        if not parts.hostname:
            raise InvalidAmiUrlError(f"the AMI URL has no host; {form}")
        if not parts.username or parts.password is None or not parts.password:
            raise InvalidAmiUrlError(
                f"the AMI URL needs the manager.conf user and its secret; {form}"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidAmiUrlError(f"the AMI URL has no path or query; {form}")
        if port == 0:
            raise InvalidAmiUrlError(f"the AMI port must be 1 to 65535; {form}")
        return cls(
            host=parts.hostname,
            port=port or DEFAULT_AMI_PORT,
            username=unquote(parts.username),
            secret=unquote(parts.password),
        )

    @property
    def address(self) -> str:
        """``host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def source(self) -> str:
        """The inbox source of this PBX's events: ``ami:host:port`` (hashed when too long)."""
        source = f"ami:{self.address}"
        if len(source) <= _MAX_SOURCE:
            return source
        return f"ami:{hashlib.sha256(self.address.encode()).hexdigest()[:24]}"

    def masked(self) -> str:
        """The URL with the secret replaced by ``***`` (for output and logs)."""
        return f"ami://{self.username}:***@{self.address}"


class ListenerState(StrEnum):
    """Where a listener's connection stands."""

    CONNECTING = "connecting"  # first attempt under way
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # lost the connection; reconnecting
    UNREACHABLE = "unreachable"  # connection attempts fail; still trying, with backoff
    REFUSED = "refused"  # login refused, or not an AMI: needs a configuration fix
    STOPPED = "stopped"


@dataclass(frozen=True)
class ListenerStatus:
    """A listener's state for logs, metrics and ``callbridge enterprise status``."""

    state: ListenerState
    pbx: str
    last_error: str | None
    reconnects: int
    events_in: int
    facts_out: int
    last_event_at: datetime | None
    since: datetime
    dropped_events: int = 0
    #: While connected: the latest time, in the PBX's clock, up to which every event the PBX
    #: sent has been applied (now, when nothing is waiting). A call the store has not ended
    #: was alive then; ``None`` when not connected.
    heartbeat: datetime | None = None


@dataclass(frozen=True)
class OpenCall:
    """A call the store still has open for this PBX."""

    linkedid: str
    answered: bool
    #: Time of the last event the store has of it, in the PBX's clock (when it was last seen).
    last_seen: datetime | None = None


@dataclass(frozen=True)
class OpenCalls:
    """What the store knows of this PBX's calls when a listener starts."""

    calls: Sequence[OpenCall]
    #: The last :attr:`ListenerStatus.heartbeat` stored by a listener connected to this same
    #: PBX (``None`` if none was): the calls above were still alive then.
    heartbeat: datetime | None = None


#: Applies the facts of one AMI event (or one reconciliation), all or nothing.
FactSink = Callable[[Sequence[CallFact]], Awaitable[None]]
StatusSink = Callable[[ListenerStatus], Awaitable[None]]
OpenCallsSource = Callable[[], Awaitable[OpenCalls]]


def translator_config(settings: Mapping[str, Any] | None) -> TranslatorConfig:
    """The translator configuration of an enterprise's ``settings["ami"]`` (keys as fields).

    Lists may be given for the tuple and set fields. Raises ``ValueError`` or ``TypeError`` for
    an unknown key or a bad value (e.g. a pattern that does not compile).
    """
    if not settings:
        return TranslatorConfig()
    fields = {f.name: f for f in dataclasses.fields(TranslatorConfig)}
    values: dict[str, Any] = {}
    for key, value in settings.items():
        field = fields.get(key)
        if field is None:
            raise ValueError(f"unknown AMI setting {key!r} (known: {', '.join(sorted(fields))})")
        default = getattr(TranslatorConfig(), key)
        if isinstance(default, frozenset):
            value = frozenset(str(item) for item in value)
        elif isinstance(default, tuple):
            value = tuple(str(item) for item in value)
        values[key] = value
    return TranslatorConfig(**values)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _orphan_end(last_seen: datetime | None, heartbeat: datetime | None, now: datetime) -> datetime:
    """When a call that ended while nobody listened ended, as far as we can tell (PBX clock).

    Exactly when is unknown, and ``now`` may be hours later; but it was still alive at its last
    stored event and at the last heartbeat of the listener that stored its events (connected,
    it would have stored the hang-up). Never before its last event, never after now.
    """
    alive = heartbeat if heartbeat is None or heartbeat <= now else now
    if last_seen is None:
        return alive or now
    if alive is None or alive <= last_seen:
        return last_seen
    return alive


class AmiListener:
    """Listens to one PBX for as long as it runs.

    Parameters
    ----------
    url
        The PBX's AMI address and account.
    apply
        Applies a run of call facts in one transaction; may raise (see :meth:`_apply`).
    name
        For logs (e.g. the enterprise number).
    config
        How this PBX names trunks and phones.
    on_status
        Receives the status on every change and every ``status_interval`` seconds.
    open_calls
        Calls the store has open for this PBX, and the last heartbeat stored for it; the calls
        the PBX no longer has are ended when the listener starts (a takeover, a restart).
    retry_refused_after
        Seconds before logging in again after the PBX refused us (someone may fix
        ``manager.conf`` without touching our configuration).
    client_options
        Extra keyword arguments for :class:`AmiClient` (backoff, pings, timeouts).
    clock
        Wall clock (aware UTC) for status times and reconciliation.
    """

    def __init__(
        self,
        url: AmiUrl,
        apply: FactSink,
        *,
        name: str = "",
        config: TranslatorConfig | None = None,
        on_status: StatusSink | None = None,
        open_calls: OpenCallsSource | None = None,
        status_interval: float = 5.0,
        retry_refused_after: float = 60.0,
        client_options: Mapping[str, Any] | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.url = url
        self.name = name or url.address
        self.translator = AmiTranslator(config)
        self._apply_facts = apply
        self._on_status = on_status
        self._open_calls = open_calls
        self.status_interval = status_interval
        self.retry_refused_after = retry_refused_after
        self._client_options = dict(client_options or {})
        self._client_options.setdefault("filters", DEFAULT_FILTERS)
        self._clock = clock
        self._client: AmiClient | None = None
        self._state = ListenerState.CONNECTING
        self._since = clock()
        self._error: str | None = None
        # A fact dropped since the last login: catching up must not wipe it from the status
        # (the events before the PBX's list of channels are applied before we catch up).
        self._dropped: str | None = None
        # Why the connection dropped: until a reconnect attempt fails with another error, the
        # PBX counts as disconnected rather than unreachable.
        self._down_reason: str | None = None
        # When we lost sight of the PBX, in the PBX's clock (what its events' times are in).
        self._lost_at: datetime | None = None
        # The PBX's clock minus ours, as of its last timed event or Ping: calls ended "as of
        # when we lost sight of them" must end in the clock they started in, or a PBX whose
        # clock differs from ours (or a replayed recording) gets durations of hours.
        self._pbx_skew: timedelta | None = None
        self._reconnects = 0
        self._dropped_before = 0
        self._events_in = 0
        self._facts_out = 0
        self._last_event_at: datetime | None = None
        self._reported: ListenerState | None = None
        # Handling an event or marker taken from the client: what it implies is not stored yet.
        self._busy = False
        # The last time (PBX clock) the listener had applied everything the PBX had sent.
        self._drained_at: datetime | None = None
        self._started = False
        self._caught_up = False
        self._publishing = asyncio.Lock()
        #: Set while logged in and reconciled (tests wait on it).
        self.connected = asyncio.Event()

    # -- status -------------------------------------------------------------------------------

    @property
    def status(self) -> ListenerStatus:
        """The listener's state now."""
        client = self._client
        state = self._state
        error = self._error
        dropped = self._dropped_before
        if client is not None:
            dropped += client.dropped_events
            if state in (ListenerState.CONNECTING, ListenerState.DISCONNECTED):
                client_error = client.last_error
                if client_error is not None and client_error != self._down_reason:
                    state = ListenerState.UNREACHABLE
                    error = client_error
        return ListenerStatus(
            state=state,
            pbx=self.url.address,
            last_error=error,
            reconnects=self._reconnects + (client.reconnects if client is not None else 0),
            events_in=self._events_in,
            facts_out=self._facts_out,
            last_event_at=self._last_event_at,
            since=self._since,
            dropped_events=dropped,
            heartbeat=self._heartbeat(state, client),
        )

    def _heartbeat(self, state: ListenerState, client: AmiClient | None) -> datetime | None:
        """Up to when every event the PBX sent is stored, in its clock; None unless connected."""
        if state is not ListenerState.CONNECTED or client is None:
            return None
        if self._busy or client.pending_events:
            # A hang-up may be among what is still waiting: only the last drained moment holds.
            return self._drained_at
        return self._pbx_now()

    def _set_state(self, state: ListenerState, error: str | None = None) -> None:
        if state is not self._state:
            self._since = self._clock()
        self._state = state
        self._error = error

    async def _publish(self, *, force: bool = False) -> None:
        # One report at a time, each taken inside the lock: the last write is the newest state.
        async with self._publishing:
            await self._publish_now(force=force)

    async def _publish_now(self, *, force: bool) -> None:
        status = self.status
        changed = status.state is not self._reported
        if changed:
            self._log_change(status)
            self._reported = status.state
        if self._on_status is None or not (changed or force):
            return
        try:
            await self._on_status(status)
        except Exception as err:  # noqa: BLE001 - a status write must never stop the listener
            logger.warning("ami.status_not_saved", pbx=self.name, error=repr(err))

    def _log_change(self, status: ListenerStatus) -> None:
        fields = {"pbx": self.name, "address": status.pbx, "error": status.last_error}
        if status.state is ListenerState.CONNECTED:
            logger.info("ami.listener_connected", reconnects=status.reconnects, **fields)
        elif status.state in (ListenerState.UNREACHABLE, ListenerState.REFUSED):
            logger.error(f"ami.listener_{status.state.value}", **fields)
        elif status.state is ListenerState.DISCONNECTED:
            logger.warning("ami.listener_disconnected", **fields)
        else:
            logger.info(f"ami.listener_{status.state.value}", **fields)

    async def _publish_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.status_interval)
            await self._publish(force=True)

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Listen until cancelled; transient failures and refusals are retried, never raised."""
        if self._started:
            raise RuntimeError("an AmiListener runs once; build a new one")
        self._started = True
        publisher = asyncio.create_task(
            self._publish_periodically(), name=f"ami-status {self.name}"
        )
        try:
            while True:
                client = AmiClient(
                    self.url.host,
                    self.url.port,
                    self.url.username,
                    self.url.secret,
                    **self._client_options,
                )
                self._client = client
                try:
                    await self._session(client)
                except AmiPermanentError as err:
                    self._forget_client(client)
                    self._set_state(ListenerState.REFUSED, err.message)
                    await self._publish(force=True)
                    await asyncio.sleep(self.retry_refused_after)
                except AmiError as err:
                    # The client gave up (a crash it reported): start over with a new one.
                    self._forget_client(client)
                    self._set_state(ListenerState.DISCONNECTED, err.message)
                    await self._publish(force=True)
                    await asyncio.sleep(1.0)
                finally:
                    await client.close()
                if self._lost_at is None:
                    self._lost_at = self._pbx_now()
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
            if self._client is not None:
                await self._client.close()
            self.connected.clear()
            self._set_state(ListenerState.STOPPED, self._error)
            with contextlib.suppress(asyncio.CancelledError):
                await self._publish(force=True)

    def _forget_client(self, client: AmiClient) -> None:
        # Counters of a client we drop live on in the listener's totals.
        self._reconnects += client.reconnects
        self._dropped_before += client.dropped_events
        self._client = None
        self.connected.clear()

    async def _session(self, client: AmiClient) -> None:
        """One client's life: connect (retrying), reconcile, then consume its events."""
        if self._state is not ListenerState.CONNECTING:
            self._set_state(ListenerState.CONNECTING, self._error)
        self._down_reason = None
        await self._publish()
        await client.connect(retry=True)
        await self._on_login(client)
        async for event in client:
            self._busy = True
            try:
                await self._handle(client, event)
            finally:
                self._busy = False
            if not client.pending_events:
                self._drained_at = self._pbx_now()

    async def _handle(self, client: AmiClient, event: Event) -> None:
        """One event or marker from the client, applied before the next is taken."""
        if isinstance(event, Disconnected):
            self.connected.clear()
            self._lost_at = self._pbx_now()
            self._down_reason = event.reason
            self._set_state(ListenerState.DISCONNECTED, event.reason)
            await self._publish()
        elif isinstance(event, Reconnected):
            await self._on_login(client)
        elif isinstance(event, ListResult):
            if event.action == _SNAPSHOT:
                await self._catch_up(event.events)
        else:
            self._events_in += 1
            self._last_event_at = self._clock()
            facts = self.translator.feed(event)
            pbx_time = self.translator.last_time
            if pbx_time is not None:
                self._pbx_skew = pbx_time - self._last_event_at
            if facts:
                await self._apply(facts)

    async def _on_login(self, client: AmiClient) -> None:
        """Read the PBX's clock, then ask for its live channels (answered in the stream)."""
        self._dropped = None
        await self._read_pbx_clock(client)
        try:
            # Its answer is a ListResult in the event stream, behind the events sent before it.
            await client.send_action_list(_SNAPSHOT, in_stream=True)
        except AmiError as err:
            # Dropped again at once: the next Reconnected marker brings us back here.
            logger.warning("ami.reconcile_failed", pbx=self.name, error=err.message)

    async def _read_pbx_clock(self, client: AmiClient) -> None:
        """Date what has no ``Timestamp`` in the PBX's clock, by the offset a Ping shows."""
        try:
            pong = await client.ping()
        except AmiError as err:
            logger.warning("ami.pbx_clock_unknown", pbx=self.name, error=err.message)
            return
        offset = pong.clock_offset
        if offset is None:
            return  # an older PBX that does not say its time: arrival times as they are
        self.translator.clock_offset = offset
        self._pbx_skew = timedelta(seconds=offset)
        if abs(offset) >= _NOTABLE_OFFSET:
            logger.info(
                "ami.pbx_clock_differs",
                pbx=self.name,
                offset_seconds=round(offset, 3),
                round_trip=round(pong.round_trip, 4),
            )

    async def _catch_up(self, channels: Sequence[Event]) -> None:
        """Adopt the PBX's live channels, end what ended while away; then we are connected."""
        facts: list[CallFact] = []
        for channel in channels:
            facts.extend(self.translator.feed(channel))
        if self._lost_at is not None:
            live = [uid for uid in (c.get("Uniqueid") for c in channels) if uid]
            ended = self.translator.reconcile(live, self._lost_at)
            if ended:
                logger.info(
                    "ami.reconciled", pbx=self.name, facts=len(ended), live_channels=len(live)
                )
            facts.extend(ended)
        if not self._caught_up and self._open_calls is not None:
            facts.extend(await self._end_orphans(channels))
        if facts:
            await self._apply(facts)
        self._caught_up = True
        self._lost_at = None
        self._down_reason = None
        self._set_state(ListenerState.CONNECTED, self._dropped)
        self.connected.set()
        await self._publish()

    def _pbx_now(self) -> datetime:
        """Now in the PBX's clock, as far as its events or Ping told us (else ours)."""
        now = self._clock()
        return now if self._pbx_skew is None else now + self._pbx_skew

    async def _end_orphans(self, channels: Iterable[Event]) -> list[CallFact]:
        """Ended facts for open calls of the store that the PBX no longer has."""
        assert self._open_calls is not None
        try:
            stored = await self._open_calls()
        except Exception as err:  # noqa: BLE001 - catching up is best effort
            logger.warning("ami.open_calls_unknown", pbx=self.name, error=repr(err))
            return []
        live = {c.get("Linkedid") or c.get("Uniqueid") for c in channels}
        live.update(self.translator.active_calls)
        now = self._pbx_now()
        facts: list[CallFact] = []
        for call in stored.calls:
            if call.linkedid in live:
                continue
            facts.append(
                Ended(
                    call_id=call.linkedid,
                    # The translator's own id for this fact: never applied twice.
                    event_id=f"{call.linkedid}:ended",
                    timestamp=_orphan_end(call.last_seen, stored.heartbeat, now),
                    disposition=Disposition.ANSWERED if call.answered else Disposition.NO_ANSWER,
                )
            )
        if facts:
            logger.info(
                "ami.orphans_ended",
                pbx=self.name,
                calls=len(facts),
                heartbeat=stored.heartbeat.isoformat() if stored.heartbeat else None,
            )
        return facts

    # -- applying facts -----------------------------------------------------------------------

    async def _apply(self, facts: Sequence[CallFact]) -> None:
        """Apply facts in one go, retrying what may pass later.

        A storage outage (``StorageError``, ``Retryable``) is waited out: facts are applied in
        order or not at all, and their ids make a retry harmless. Facts the call model refuses
        (``Permanent``, ``CallModelError``) and, after a few tries, errors of unknown kind are
        applied one by one so that only the bad ones are dropped, with an error log.
        """
        attempt = 0
        while True:
            try:
                await self._apply_facts(facts)
            except (StorageError, Retryable) as err:
                attempt += 1
                await self._retry_later(err, attempt)
            except (Permanent, CallModelError) as err:
                await self._apply_one_by_one(facts, err)
                return
            except Exception as err:  # noqa: BLE001 - unknown: a few tries, then one by one
                attempt += 1
                if attempt >= _UNKNOWN_ERROR_ATTEMPTS:
                    await self._apply_one_by_one(facts, err)
                    return
                await self._retry_later(err, attempt)
            else:
                self._facts_out += len(facts)
                if attempt and self._state is ListenerState.CONNECTED:
                    # The outage is over; a dropped fact's error stays visible.
                    self._error = None
                return

    async def _retry_later(self, err: Exception, attempt: int) -> None:
        delay = min(_MAX_RETRY_DELAY, 0.5 * 2 ** min(attempt - 1, 10))
        self._error = f"applying call events failed: {err!r}"
        logger.warning(
            "ami.apply_failed", pbx=self.name, error=repr(err), attempt=attempt, retry_in=delay
        )
        await self._publish(force=True)
        await asyncio.sleep(delay)

    async def _apply_one_by_one(self, facts: Sequence[CallFact], first: Exception) -> None:
        if len(facts) == 1:
            self._drop(facts[0], first)
            return
        for fact in facts:
            try:
                await self._apply_facts([fact])
            except Exception as err:  # noqa: BLE001 - logged and dropped: see _apply
                self._drop(fact, err)
            else:
                self._facts_out += 1

    def _drop(self, fact: CallFact, err: Exception) -> None:
        self._error = self._dropped = f"dropped {fact.name} of call {fact.call_id}: {err!r}"
        logger.error(
            "ami.fact_dropped",
            pbx=self.name,
            call=fact.call_id,
            event_id=fact.event_id,
            fact=fact.name,
            error=repr(err),
        )
