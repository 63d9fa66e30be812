"""AMI events → PBX-neutral call facts (:mod:`callbridge.domain.events`). Pure: no I/O, no clock.

:class:`AmiTranslator` is fed every AMI event of one PBX in stream order and returns the facts
each one implies, keyed by the call's ``Linkedid`` (every leg of a call, transfers and
consultations included, keeps the ``Linkedid`` of the channel that started it).

How the facts are read from the stream
--------------------------------------
- **Start.** The call's first channel (``Uniqueid == Linkedid``) decides. A trunk channel
  created in state *Ring* is an inbound call: ``CallStarted`` at once (caller ID, DID from the
  channel's exten). A phone is an employee dialling out: ``CallStarted`` when its first dial
  shows where to (a trunk: outbound; a phone or group: internal). An ``Originate`` shows as a
  ``DialBegin`` without ``Channel``; its channel is the origin (click-to-call), and the
  ``CALLBRIDGE_B24_CALL_ID`` variable carries the Bitrix24 ``CALL_ID``.
- **Ringing.** Dials made on the customer's behalf (from the inbound trunk channel, from the
  employee's phone before the far end answered, from the transferee after a blind transfer,
  or through a Local channel half such a dial created) ring *extensions*. The set of ringing
  extensions is reported whole, and only once every extension dialled together has reported
  (``DialState RINGING`` or ``Newstate Ringing``), so a ring group shows its card once.
  Dials from anywhere else (an employee's consultation call) are not the customer's.
- **Answer.** A ringing target going *Up* (``Newstate``; ``DialEnd ANSWER``/``AgentConnect`` when
  that is missing): ``Answered`` with the extension, or for an outside party the employee on
  this side of the dial. The employee's own phone answering an Originate is not an answer.
  A phone bridged one-to-one with the customer while someone else is the talker took the
  call over (pickup, parking).
- **Leg ends.** A dial target that stops ringing without an answer (``DialEnd`` with another
  status, ``AgentRingNoAnswer``, or its ``Hangup``) ends that extension's part once it has no
  other target ringing (FreePBX rings one extension through a Local pair *and* the phone); a
  phone that talked ends its part at its ``Hangup``. ``DialEnd ANSWER`` never ends a leg.
- **End.** ``Ended`` once, when the last channel of the linkedid (transfer targets joined to
  it included) hangs up; answered if anyone talked, else the last dial outcome.
- **Recordings.** ``MIXMONITOR_FILENAME`` (``VarSet``) names the file; it is complete only
  when the recording channel is gone, so ``RecordingReady`` follows that channel's ``Hangup``.

Times are in the PBX's clock, as uniqueids are: the ``Timestamp`` header (``timestampevents =
yes``), else the arrival time the client stamped (``received_at``) moved by :attr:`clock_offset`
(the PBX's clock minus ours, which the listener measures with a ``Ping`` at login; arrival times
stay as they are when it is unknown). Event ids are built from the linkedid, the fact and the
channel it concerns, so replaying a stream yields the same ids.

A translator that starts mid-call (a restart, a reconnect) adopts channels as they show up
(``CoreShowChannel`` events seed them, a channel dated by its ``Duration`` and its uniqueid) and
reports what it can; it never raises on odd input.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Final, TypeAlias

from callbridge.domain.errors import InvalidEventError
from callbridge.domain.events import (
    Answered,
    CallStarted,
    Direction,
    Disposition,
    Ended,
    LegEnded,
    RecordingReady,
    Ringing,
    TransferKind,
    Transferred,
)
from callbridge.domain.events import Event as CallFact
from callbridge.domain.status import disposition_from_dial_status
from callbridge.pbx.ami.protocol import Event
from callbridge.pbx.ami.translate_config import (
    RECORDING_VARIABLE,
    Classifier,
    Role,
    TranslatorConfig,
    parse_channel,
)

__all__ = ["HANDLED_EVENTS", "AmiTranslator", "TranslatorConfig"]

#: The AMI events the translator reads; everything else is dropped by name alone (a listener
#: may also use this list for an AMI ``Filter``).
HANDLED_EVENTS: Final = frozenset(
    {
        "Newchannel",
        "Newstate",
        "DialBegin",
        "DialState",
        "DialEnd",
        "Hangup",
        "BridgeEnter",
        "BridgeLeave",
        "BridgeMerge",
        "BridgeDestroy",
        "BlindTransfer",
        "AttendedTransfer",
        "VarSet",
        "AgentCalled",
        "AgentRingNoAnswer",
        "AgentConnect",
        "QueueCallerAbandon",
        "OriginateResponse",
        "CoreShowChannel",
    }
)

_EPOCH: Final = datetime.fromtimestamp(0, UTC)
_SECOND: Final = timedelta(seconds=1)
_UNKNOWN: Final = frozenset({"", "<unknown>", "unknown", "anonymous", "s"})
# A dial target counts as ringing on these DialState statuses (PROGRESS: early media ringback).
_RINGING_STATUSES: Final = frozenset({"RINGING", "PROGRESS"})
# Q.850 causes of a target's hangup when no DialEnd said why it stopped ringing.
_CAUSE_DISPOSITION: Final = {
    17: Disposition.BUSY,
    18: Disposition.NO_ANSWER,
    19: Disposition.NO_ANSWER,
    21: Disposition.FAILED,
    20: Disposition.FAILED,
    34: Disposition.FAILED,
}
_MAX_CHAIN: Final = 8  # Local pairs nest (follow-me inside a queue); loops must not hang us


class _Dial(Enum):
    NONE = 0
    DIALING = 1  # DialBegin seen, the phone has not said it rings yet
    RINGING = 2
    DONE = 3


@dataclass(eq=False, slots=True)
class _Channel:
    uniqueid: str
    linkedid: str
    name: str
    role: Role
    extension: str | None
    local_pair: str | None
    local_side: int | None
    created_at: datetime
    exten: str = ""
    caller_num: str = ""
    up: bool = False
    #: The channel that dialled this one ("" for an Originate), None if not dialled.
    dialer: str | None = None
    dial: _Dial = _Dial.NONE
    #: The call (linkedid) whose customer-facing dial this channel is a target of.
    target_of: str | None = None
    talked: bool = False
    recording: str | None = None
    bridge: str | None = None
    #: Other calls this channel joined (the target of an attended transfer from another call).
    joined: list[str] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class _Call:
    linkedid: str
    #: First seen mid-call (restart, reconnect): its channel list may be incomplete.
    adopted: bool = False
    started: bool = False
    direction: Direction | None = None
    #: The channel whose dials ring for the customer: the inbound trunk, the dialling phone.
    origin: str | None = None
    origin_extension: str | None = None
    #: The customer's own channel (inbound trunk, the far end of an outbound call).
    customer: str | None = None
    originated: bool = False
    b24_call_id: str | None = None
    callback: bool = False
    number: str = ""
    live: set[str] = field(default_factory=set)
    #: Channels whose dials are the customer's (origin, transferees).
    facing: set[str] = field(default_factory=set)
    targets: dict[str, _Channel] = field(default_factory=dict)
    last_ringing: frozenset[str] = frozenset()
    talking: bool = False
    talker: str | None = None
    answered_at: datetime | None = None
    ext_outcome: dict[str, tuple[Disposition, int | None]] = field(default_factory=dict)
    outcome: tuple[Disposition, int | None] | None = None
    originate_status: str | None = None
    abandoned: bool = False
    customer_cause: int | None = None
    last_cause: int | None = None
    first_gone: bool = False
    recordings: dict[str, str | None] = field(default_factory=dict)
    reported_recordings: set[str] = field(default_factory=set)


Out: TypeAlias = list[CallFact]


class AmiTranslator:
    """Turns one PBX's AMI event stream into call facts, keeping per-linkedid state."""

    def __init__(self, config: TranslatorConfig | None = None) -> None:
        self.config = config or TranslatorConfig()
        self._classifier = Classifier(self.config)
        self._variables = frozenset(
            {RECORDING_VARIABLE, self.config.b24_call_id_variable, self.config.callback_variable}
        )
        self._calls: OrderedDict[str, _Call] = OrderedDict()
        self._channels: dict[str, _Channel] = {}
        self._locals: dict[str, dict[int, str]] = {}
        self._bridges: dict[str, set[str]] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._last_time: datetime | None = None
        #: The PBX's clock minus ours, in seconds, when known: events without a ``Timestamp``
        #: are dated by their arrival plus this, so that every time is in the PBX's clock.
        self.clock_offset: float | None = None
        self._handlers: dict[str, Callable[[Event, datetime, Out], None]] = {
            "Newchannel": self._on_newchannel,
            "Newstate": self._on_newstate,
            "DialBegin": self._on_dial_begin,
            "AgentCalled": self._on_dial_begin,
            "DialState": self._on_dial_state,
            "DialEnd": self._on_dial_end,
            "AgentRingNoAnswer": self._on_ring_no_answer,
            "AgentConnect": self._on_agent_connect,
            "Hangup": self._on_hangup,
            "BridgeEnter": self._on_bridge_enter,
            "BridgeLeave": self._on_bridge_leave,
            "BridgeMerge": self._on_bridge_merge,
            "BridgeDestroy": self._on_bridge_destroy,
            "BlindTransfer": self._on_blind_transfer,
            "AttendedTransfer": self._on_attended_transfer,
            "VarSet": self._on_varset,
            "QueueCallerAbandon": self._on_abandon,
            "OriginateResponse": self._on_originate_response,
            "CoreShowChannel": self._on_show_channel,
        }

    # -- public --------------------------------------------------------------------------------

    def feed(self, event: Event) -> list[CallFact]:
        """The call facts one AMI event implies, in order (usually none)."""
        name = event.name
        if name not in HANDLED_EVENTS:
            return []
        # Most of a PBX's events are VarSets of variables we do not read: drop them on the
        # Variable header alone, before anything parses the whole event.
        if name == "VarSet" and (event.peek("Variable") or "").lstrip("_") not in self._variables:
            return []
        when = self._when(event)
        out: Out = []
        self._handlers[name](event, when, out)
        return out

    def feed_all(self, events: Iterable[Event]) -> list[CallFact]:
        """The facts of several events, in order."""
        out: list[CallFact] = []
        for event in events:
            out.extend(self.feed(event))
        return out

    def reconcile(self, live_uniqueids: Iterable[str], when: datetime) -> list[CallFact]:
        """Hang up every tracked channel the PBX no longer has (after a reconnect).

        ``live_uniqueids`` are the channels ``CoreShowChannels`` listed; calls whose channels
        all vanished while we were away end now, with what is known.
        """
        live = set(live_uniqueids)
        out: Out = []
        for channel in [c for uid, c in self._channels.items() if uid not in live]:
            self._gone(channel, None, when, out)
        return out

    @property
    def last_time(self) -> datetime | None:
        """The PBX's time of the last event that carried one (its clock, not ours)."""
        return self._last_time

    @property
    def active_calls(self) -> list[str]:
        """Linkedids of the calls being tracked."""
        return list(self._calls)

    # -- time and ids --------------------------------------------------------------------------

    def _when(self, event: Event) -> datetime:
        stamp = event.timestamp
        if stamp is None:
            stamp = event.received_at
            offset = self.clock_offset
            if stamp is not None and offset is not None:
                stamp += offset
        if stamp is not None:
            try:
                when = datetime.fromtimestamp(stamp, UTC)
            except (OverflowError, OSError, ValueError):
                when = None
            if when is not None:
                self._last_time = when
                return when
        # Neither header nor arrival time (a hand-built event): the last time seen, else the
        # epoch the call's uniqueid starts with.
        if self._last_time is not None:
            return self._last_time
        return _uniqueid_time(event.get("Linkedid") or event.get("Uniqueid")) or _EPOCH

    # -- channels and calls --------------------------------------------------------------------

    def _channel(self, event: Event, when: datetime, out: Out, prefix: str = "") -> _Channel | None:
        """The channel an event's (``prefix``-ed) snapshot describes, adopted if unknown."""
        uniqueid = event.get(f"{prefix}Uniqueid")
        if not uniqueid:
            return None
        channel = self._channels.get(uniqueid)
        if channel is not None:
            return channel
        linkedid = event.get(f"{prefix}Linkedid") or uniqueid
        if linkedid in self._ended:
            return None  # a late event of a call that is over
        name = event.get(f"{prefix}Channel") or ""
        parsed = parse_channel(name)
        context = event.get(f"{prefix}Context")
        caller = _clean(event.get(f"{prefix}CallerIDNum"))
        role, extension = self._classifier.classify(parsed, context, caller)
        first = uniqueid == linkedid
        created = when
        if event.name == "CoreShowChannel":
            created = self._listed_created(event, uniqueid, when)
        elif first and event.name != "Newchannel":
            created = _uniqueid_time(uniqueid) or when
        channel = _Channel(
            uniqueid=uniqueid,
            linkedid=linkedid,
            name=name,
            role=role,
            extension=extension,
            local_pair=parsed.local_pair,
            local_side=parsed.local_side,
            created_at=created,
            exten=_clean(event.get(f"{prefix}Exten")),
            caller_num=caller,
            up=(event.get(f"{prefix}ChannelStateDesc") or "").lower() == "up",
        )
        self._channels[uniqueid] = channel
        if parsed.local_pair is not None and parsed.local_side is not None:
            self._locals.setdefault(parsed.local_pair, {})[parsed.local_side] = uniqueid
        call = self._calls.get(linkedid)
        if call is None:
            call = self._new_call(linkedid)
            # We did not see the call begin: a Newchannel of a later leg, or any other event.
            call.adopted = not (first and event.name == "Newchannel")
        call.live.add(uniqueid)
        if first:
            state = (event.get(f"{prefix}ChannelStateDesc") or "").lower()
            # Met mid-call, a trunk first channel is taken for a provider's call; not on its
            # Hangup though: registering a call that is already over helps nobody.
            adopted = call.adopted and event.name != "Hangup"
            self._first_channel(call, channel, out, incoming=state == "ring" or adopted)
        return channel

    def _listed_created(self, event: Event, uniqueid: str, when: datetime) -> datetime:
        """When a channel ``CoreShowChannels`` lists (at ``when``) was created.

        Its ``Duration`` is whole seconds rounded down, so it was created in the second before
        ``when - Duration``; its uniqueid names the second it was created in (Asterisk's
        ``<epoch>.<n>``). Both are in the PBX's clock: where they agree, the middle of what
        both allow. Where they do not, the uniqueid is not an epoch (ids given by an Originate's
        ``ChannelId``) when ``when`` is the PBX's time, else ``when`` is ours (the PBX's clock
        unknown) and the uniqueid is kept, as the events' ``Timestamp`` headers agree with it.
        """
        by_id = _uniqueid_time(uniqueid)
        seconds = _listed_seconds(event)
        if seconds is None:
            return by_id or when
        latest = when - timedelta(seconds=seconds)
        earliest = latest - _SECOND
        if by_id is not None:
            low = max(earliest, by_id)
            high = min(latest, by_id + _SECOND)
            if low <= high:
                return low + (high - low) / 2
            if event.timestamp is None and self.clock_offset is None:
                return by_id
        return earliest + _SECOND / 2

    def _new_call(self, linkedid: str) -> _Call:
        call = _Call(linkedid)
        self._calls[linkedid] = call
        while len(self._calls) > self.config.max_calls:
            # A PBX that never told us a call ended: forget the oldest rather than grow.
            _, old = self._calls.popitem(last=False)
            for uid in old.live:
                self._channels.pop(uid, None)
        return call

    def _first_channel(self, call: _Call, channel: _Channel, out: Out, *, incoming: bool) -> None:
        """The call's first channel tells who placed it."""
        if call.origin is not None:
            return
        call.origin = channel.uniqueid
        call.facing.add(channel.uniqueid)
        if channel.role is Role.TRUNK:
            call.customer = channel.uniqueid
            # A trunk channel created ringing is a provider's call; created Down it is one
            # we placed (an Originate to the customer first), known at its DialBegin.
            if incoming:
                self._start_inbound(call, channel, out)
        elif channel.role in (Role.PHONE, Role.LOCAL):
            call.origin_extension = channel.extension

    def _call_of(self, channel: _Channel) -> _Call | None:
        return self._calls.get(channel.linkedid)

    # -- emitting ------------------------------------------------------------------------------

    def _emit(
        self,
        out: Out,
        factory: Callable[..., CallFact],
        call: _Call,
        key: str,
        when: datetime,
        **fields: Any,
    ) -> bool:
        try:
            out.append(
                factory(
                    call_id=call.linkedid,
                    event_id=f"{call.linkedid}:{key}",
                    timestamp=when,
                    **fields,
                )
            )
        except (InvalidEventError, ValueError):
            return False  # a fact the PBX gave us no valid values for: not worth a crash
        return True

    def _start(
        self,
        call: _Call,
        direction: Direction,
        when: datetime,
        out: Out,
        *,
        number: str,
        line: str,
        extension: str | None = None,
    ) -> None:
        if call.started:
            return
        call.started = True
        call.direction = direction
        self._emit(
            out,
            CallStarted,
            call,
            "started",
            when,
            direction=direction,
            external_number=number,
            line=line,
            extension=extension or None,
            bitrix24_call_id=call.b24_call_id,
            callback=call.callback,
        )

    def _start_inbound(self, call: _Call, channel: _Channel, out: Out) -> None:
        line = channel.exten if channel.exten.isdigit() or channel.exten[:1] == "+" else ""
        parsed = parse_channel(channel.name)
        self._start(
            call,
            Direction.INBOUND,
            channel.created_at,
            out,
            number=channel.caller_num,
            line=line or parsed.endpoint,
        )

    # -- handlers: channels --------------------------------------------------------------------

    def _on_newchannel(self, event: Event, when: datetime, out: Out) -> None:
        self._channel(event, when, out)

    def _on_show_channel(self, event: Event, when: datetime, out: Out) -> None:
        channel = self._channel(event, when, out)
        bridge = event.get("BridgeId")
        if channel is not None and bridge:
            self._bridges.setdefault(bridge, set()).add(channel.uniqueid)
            channel.bridge = bridge
            # After a reconnect this is how we learn that a phone already talks.
            self._check_bridge(bridge, when, out)

    def _on_newstate(self, event: Event, when: datetime, out: Out) -> None:
        channel = self._channel(event, when, out)
        if channel is None:
            return
        channel.exten = _clean(event.get("Exten")) or channel.exten
        state = (event.get("ChannelStateDesc") or "").lower()
        if state == "ringing":
            self._target_rings(channel, event, when, out)
        elif state == "up":
            channel.up = True
            call = self._calls.get(channel.target_of or "")
            if call is not None and channel.uniqueid in call.targets:
                self._target_answered(call, channel, when, out)

    def _on_varset(self, event: Event, when: datetime, out: Out) -> None:
        variable = event.get("Variable")
        if not variable:
            return
        # Inherited variables are set as _NAME / __NAME; the name is the same variable.
        name = variable.lstrip("_")
        config = self.config
        if name not in self._variables:
            return
        channel = self._channel(event, when, out)
        if channel is None:
            return
        call = self._call_of(channel)
        if call is None:
            return
        value = (event.get("Value") or "").strip()
        if name == RECORDING_VARIABLE:
            if value:
                channel.recording = value
                owner = channel.extension if channel.role is Role.PHONE else None
                call.recordings.setdefault(value, owner)
        elif name == config.b24_call_id_variable:
            call.b24_call_id = value or call.b24_call_id
        else:
            call.callback = value.lower() in ("1", "yes", "true", "on")

    def _on_originate_response(self, event: Event, when: datetime, out: Out) -> None:
        # Only Uniqueid (no Linkedid); a failure says "<unknown>", which we cannot place.
        channel = self._channels.get(event.get("Uniqueid") or "")
        if channel is None:
            return
        call = self._call_of(channel)
        exten = _clean(event.get("Exten"))
        if call is not None and exten and not call.number:
            call.number = exten

    def _on_hangup(self, event: Event, when: datetime, out: Out) -> None:
        channel = self._channel(event, when, out)
        if channel is None:
            return
        self._gone(channel, _int(event.get("Cause")), when, out)

    # -- handlers: dialling --------------------------------------------------------------------

    def _on_dial_begin(self, event: Event, when: datetime, out: Out) -> None:
        target = self._channel(event, when, out, "Dest")
        if target is None:
            return
        if not event.get("Channel"):
            # An Originate: its channel is the employee's phone (or, for a callback to the
            # customer first, the trunk), never someone the customer rings.
            self._on_originate_dial(target, event, when, out)
            return
        caller = self._channel(event, when, out)
        if caller is None:
            return
        call = self._call_of(caller)
        if call is None or target.uniqueid in call.targets or target.dial is not _Dial.NONE:
            return  # AgentCalled then DialBegin describe the same dial
        target.dialer = caller.uniqueid
        if not call.started and caller.uniqueid == call.origin and caller.role is not Role.TRUNK:
            self._start_from_origin(call, caller, target, event, out)
        if not self._faces_customer(call, caller):
            return
        target.target_of = call.linkedid
        target.dial = _Dial.DIALING
        call.targets[target.uniqueid] = target
        if target.role is Role.TRUNK and call.customer is None:
            call.customer = target.uniqueid
        if target.up:
            self._target_answered(call, target, when, out)

    def _on_originate_dial(self, target: _Channel, event: Event, when: datetime, out: Out) -> None:
        target.dialer = ""
        call = self._call_of(target)
        if call is None:
            return
        call.originated = True
        if call.origin is None:
            call.origin = target.uniqueid
            call.facing.add(target.uniqueid)
        if target.uniqueid == call.origin and target.role is Role.TRUNK and not call.started:
            call.customer = target.uniqueid
            self._start(
                call,
                Direction.OUTBOUND,
                target.created_at,
                out,
                number=_dialled_number(event) or target.caller_num,
                line=parse_channel(target.name).endpoint,
            )

    def _start_from_origin(
        self, call: _Call, caller: _Channel, target: _Channel, event: Event, out: Out
    ) -> None:
        extension = call.origin_extension
        if target.role is Role.TRUNK:
            number = _dialled_number(event) or target.caller_num or caller.exten
            call.number = number
            self._start(
                call,
                Direction.OUTBOUND,
                caller.created_at,
                out,
                number=number,
                line=parse_channel(target.name).endpoint,
                extension=extension,
            )
        elif target.role in (Role.PHONE, Role.LOCAL):
            number = target.extension or _clean(event.get("DestExten")) or caller.exten
            self._start(
                call,
                Direction.INTERNAL,
                caller.created_at,
                out,
                number=number,
                line="",
                extension=extension,
            )

    def _faces_customer(self, call: _Call, caller: _Channel) -> bool:
        """Whether a dial by ``caller`` rings on the customer's behalf."""
        if caller.uniqueid in call.facing:
            # The employee dialling again once the far end answered is a consultation.
            return not (
                caller.uniqueid == call.origin
                and call.direction is not Direction.INBOUND
                and call.answered_at is not None
            )
        if caller.role is Role.LOCAL and caller.local_side == 2:
            # The second half of a Local pair dials for whoever dialled its first half (a
            # queue or ring group member, a follow-me list); an Originate's Local pair
            # ringing the employee's own phone is not that.
            first = self._local_peer(caller)
            return first is not None and first.target_of == call.linkedid
        return False

    def _local_peer(self, channel: _Channel) -> _Channel | None:
        if channel.local_pair is None or channel.local_side is None:
            return None
        halves = self._locals.get(channel.local_pair, {})
        peer = halves.get(3 - channel.local_side)
        return self._channels.get(peer) if peer is not None else None

    def _on_dial_state(self, event: Event, when: datetime, out: Out) -> None:
        if (event.get("DialStatus") or "").upper() not in _RINGING_STATUSES:
            return
        target = self._channel(event, when, out, "Dest")
        if target is not None:
            self._target_rings(target, event, when, out)

    def _target_rings(self, target: _Channel, event: Event, when: datetime, out: Out) -> None:
        call = self._calls.get(target.target_of or "")
        if call is None or target.dial is not _Dial.DIALING:
            return
        target.dial = _Dial.RINGING
        self._sync_ringing(call, target, event.name, when, out)

    def _on_dial_end(self, event: Event, when: datetime, out: Out) -> None:
        target = self._channel(event, when, out, "Dest")
        if target is None:
            return
        status = (event.get("DialStatus") or "").upper()
        if not event.get("Channel"):
            call = self._call_of(target)
            if call is not None:
                call.originate_status = status  # the employee's own phone: not a customer fact
            return
        call = self._calls.get(target.target_of or "")
        # Queues send a second DialEnd (CANCEL after NOANSWER): the target is gone by then.
        if call is None or target.uniqueid not in call.targets:
            return
        if status == "ANSWER":
            self._target_answered(call, target, when, out)
            return
        disposition, cause = disposition_from_dial_status(status)
        self._target_ended(call, target, disposition, cause, event.name, when, out)

    def _on_ring_no_answer(self, event: Event, when: datetime, out: Out) -> None:
        target = self._channel(event, when, out, "Dest")
        call = self._calls.get(target.target_of or "") if target is not None else None
        if target is not None and call is not None and target.uniqueid in call.targets:
            self._target_ended(call, target, Disposition.NO_ANSWER, None, event.name, when, out)

    def _on_agent_connect(self, event: Event, when: datetime, out: Out) -> None:
        target = self._channel(event, when, out, "Dest")
        call = self._calls.get(target.target_of or "") if target is not None else None
        if target is not None and call is not None and target.uniqueid in call.targets:
            self._target_answered(call, target, when, out)

    def _on_abandon(self, event: Event, when: datetime, out: Out) -> None:
        channel = self._channel(event, when, out)
        call = self._call_of(channel) if channel is not None else None
        if call is not None:
            call.abandoned = True

    # -- ringing, answers, leg endings ---------------------------------------------------------

    def _target_extension(self, target: _Channel) -> str | None:
        return target.extension if target.role in (Role.PHONE, Role.LOCAL) else None

    def _sync_ringing(
        self, call: _Call, cause: _Channel, trigger: str, when: datetime, out: Out
    ) -> None:
        """Report the ringing set if it changed and every extension dialled has reported."""
        if not call.started or call.talking:
            # While someone talks, ringing is a consultation or the tail of a cancelled
            # group: nothing the customer's card follows.
            return
        extensions: set[str] = set()
        for target in call.targets.values():
            extension = self._target_extension(target)
            if extension is None:
                continue
            if target.dial is _Dial.DIALING:
                return  # a ring group's members report one by one: wait for the last
            extensions.add(extension)
        ringing = frozenset(extensions)
        if ringing == call.last_ringing:
            return
        call.last_ringing = ringing
        key = f"ringing:{trigger}:{cause.uniqueid}:{','.join(sorted(ringing))}"
        self._emit(out, Ringing, call, key, when, extensions=ringing)

    def _target_answered(self, call: _Call, target: _Channel, when: datetime, out: Out) -> None:
        call.targets.pop(target.uniqueid, None)
        target.dial = _Dial.DONE
        target.talked = True
        extension = self._answer_extension(call, target)
        self._answer(call, extension, target.uniqueid, when, out)
        if not call.talking:
            self._sync_ringing(call, target, "answer", when, out)

    def _answer(
        self, call: _Call, extension: str | None, key: str, when: datetime, out: Out
    ) -> None:
        if not call.started:
            return
        if call.talking and extension == call.talker:
            return  # the same person reached again (FreePBX: the phone, then its Local half)
        call.talking = True
        call.talker = extension
        if call.answered_at is None:
            call.answered_at = when
        call.last_ringing = frozenset()
        self._emit(out, Answered, call, f"answered:{key}", when, extension=extension)

    def _answer_extension(self, call: _Call, target: _Channel) -> str | None:
        """Who talks: the extension that answered, or for an outside party our side's."""
        extension = self._target_extension(target)
        if extension is not None:
            return extension
        channel = self._channels.get(target.dialer or "")
        for _ in range(_MAX_CHAIN):
            if channel is None:
                break
            if channel.role is Role.PHONE:
                return channel.extension
            if channel.role is Role.LOCAL:
                if channel.extension:
                    return channel.extension
                peer = self._local_peer(channel) if channel.local_side == 2 else channel
                if peer is None:
                    break
                channel = self._channels.get(peer.dialer or "")
                continue
            break  # a trunk dialled it: a forward to an outside number, nobody of ours
        return call.origin_extension if call.direction is not Direction.INBOUND else None

    def _target_ended(
        self,
        call: _Call,
        target: _Channel,
        disposition: Disposition,
        cause: int | None,
        trigger: str,
        when: datetime,
        out: Out,
    ) -> None:
        call.targets.pop(target.uniqueid, None)
        target.dial = _Dial.DONE
        call.outcome = (disposition, cause)
        extension = self._target_extension(target)
        if extension is not None and call.started:
            # FreePBX rings one extension through a Local half and its phone: the first
            # reason counts, and the leg ends when neither rings any more.
            outcome = call.ext_outcome.setdefault(extension, (disposition, cause))
            still = any(self._target_extension(t) == extension for t in call.targets.values())
            if not still:
                del call.ext_outcome[extension]
                self._emit(
                    out,
                    LegEnded,
                    call,
                    f"leg_ended:{target.uniqueid}",
                    when,
                    extension=extension,
                    disposition=outcome[0],
                    hangup_cause=outcome[1],
                )
        self._sync_ringing(call, target, trigger, when, out)

    # -- hangups and the end -------------------------------------------------------------------

    def _gone(self, channel: _Channel, cause: int | None, when: datetime, out: Out) -> None:
        uid = channel.uniqueid
        self._channels.pop(uid, None)
        if channel.local_pair is not None:
            halves = self._locals.get(channel.local_pair)
            if halves is not None:
                halves.pop(channel.local_side or 0, None)
                if not halves:
                    del self._locals[channel.local_pair]
        if channel.bridge is not None:
            members = self._bridges.get(channel.bridge)
            if members is not None:
                members.discard(uid)
        for linkedid in (channel.linkedid, *channel.joined):
            call = self._calls.get(linkedid)
            if call is not None:
                self._leave_call(call, channel, cause, when, out)

    def _leave_call(
        self, call: _Call, channel: _Channel, cause: int | None, when: datetime, out: Out
    ) -> None:
        uid = channel.uniqueid
        call.live.discard(uid)
        if cause is not None:
            call.last_cause = cause
        if uid in (call.customer, call.origin) and call.customer_cause is None:
            call.customer_cause = cause
        if uid == call.linkedid:
            call.first_gone = True
        if uid in call.targets:
            # Stopped ringing without a DialEnd (filtered, or lost in a reconnect).
            disposition = _CAUSE_DISPOSITION.get(cause or 0, Disposition.CANCELLED)
            self._target_ended(call, channel, disposition, cause, "Hangup", when, out)
        elif channel.role is Role.PHONE and channel.extension and call.started:
            self._phone_hung_up(call, channel, cause, when, out)
        if channel.recording is not None and call.started:
            self._recording_ready(call, channel.recording, when, out)
        if not call.live and (not call.adopted or call.first_gone or not call.started):
            self._end(call, when, out)

    def _phone_hung_up(
        self, call: _Call, channel: _Channel, cause: int | None, when: datetime, out: Out
    ) -> None:
        extension = channel.extension
        assert extension is not None
        is_origin = channel.uniqueid == call.origin
        if channel.talked or (is_origin and call.answered_at is not None):
            disposition: Disposition | None = Disposition.ANSWERED
        elif is_origin:
            # The employee who dialled out gave up (or the far end never answered).
            disposition = call.outcome[0] if call.outcome else Disposition.CANCELLED
        else:
            return  # a phone whose ringing already ended, or a consultation leg
        if call.talking and call.talker == extension:
            call.talking = False
        self._emit(
            out,
            LegEnded,
            call,
            f"leg_ended:{channel.uniqueid}",
            when,
            extension=extension,
            disposition=disposition,
            hangup_cause=cause,
        )

    def _recording_ready(self, call: _Call, path: str, when: datetime, out: Out) -> None:
        if path in call.reported_recordings:
            return
        call.reported_recordings.add(path)
        owner = call.recordings.get(path)
        config = self.config
        name = path.rsplit("/", 1)[-1]
        stem, dot, suffix = name.rpartition(".")
        file_format = suffix.lower() if dot and stem and suffix.isalnum() else None
        url = None
        if config.recording_base_url:
            root = config.recording_root.rstrip("/") + "/"
            relative = path[len(root) :] if path.startswith(root) else name
            url = config.recording_base_url.rstrip("/") + "/" + relative.lstrip("/")
        digest = hashlib.sha1(path.encode(), usedforsecurity=False).hexdigest()[:16]
        self._emit(
            out,
            RecordingReady,
            call,
            f"recording:{digest}",
            when,
            format=file_format or config.default_recording_format,
            path=path,
            url=url,
            extension=owner,
        )

    def _end(self, call: _Call, when: datetime, out: Out) -> None:
        del self._calls[call.linkedid]
        if self.config.max_ended:
            self._ended[call.linkedid] = None
            while len(self._ended) > self.config.max_ended:
                self._ended.popitem(last=False)
        for uid in list(call.live):
            self._channels.pop(uid, None)
        if not call.started:
            origin = call.origin_extension
            if call.b24_call_id is None or origin is None:
                return  # e.g. a phone that dialled voicemail: no call for the CRM
            # A click-to-call whose employee never answered: Bitrix24 still has it open.
            call.direction = Direction.OUTBOUND
            self._start(
                call,
                Direction.OUTBOUND,
                when,
                out,
                number=call.number,
                line="",
                extension=origin,
            )
        disposition, cause = self._disposition(call)
        talk = None
        if call.answered_at is not None:
            talk = max(0, int((when - call.answered_at).total_seconds() + 0.5))
        # Recordings of channels that never hung up in our sight: complete now too.
        for path in call.recordings:
            self._recording_ready(call, path, when, out)
        self._emit(
            out,
            Ended,
            call,
            "ended",
            when,
            disposition=disposition,
            hangup_cause=cause,
            talk_seconds=talk,
        )

    def _disposition(self, call: _Call) -> tuple[Disposition, int | None]:
        cause = call.customer_cause if call.customer_cause is not None else call.last_cause
        if call.answered_at is not None:
            return Disposition.ANSWERED, cause
        if call.abandoned:
            return Disposition.CANCELLED, cause
        if call.outcome is not None:
            disposition, implied = call.outcome
            if disposition is Disposition.BUSY or cause in (None, 0, 16):
                cause = implied if implied is not None else cause
            return disposition, cause
        if call.originate_status and call.originate_status != "ANSWER":
            disposition, implied = disposition_from_dial_status(call.originate_status)
            return disposition, implied if implied is not None else cause
        if cause == 17:
            return Disposition.BUSY, cause
        if cause in (None, 0, 16, 19, 31) or call.direction is Direction.INBOUND:
            return Disposition.CANCELLED, cause
        return Disposition.FAILED, cause

    # -- bridges and transfers -----------------------------------------------------------------

    def _on_bridge_enter(self, event: Event, when: datetime, out: Out) -> None:
        channel = self._channel(event, when, out)
        bridge = event.get("BridgeUniqueid")
        if channel is None or not bridge:
            return
        if channel.bridge is not None and channel.bridge != bridge:
            self._bridges.get(channel.bridge, set()).discard(channel.uniqueid)
        members = self._bridges.setdefault(bridge, set())
        members.add(channel.uniqueid)
        channel.bridge = bridge
        self._check_bridge(bridge, when, out)

    def _on_bridge_leave(self, event: Event, when: datetime, out: Out) -> None:
        uid = event.get("Uniqueid") or ""
        bridge = event.get("BridgeUniqueid") or ""
        self._bridges.get(bridge, set()).discard(uid)
        channel = self._channels.get(uid)
        if channel is not None and channel.bridge == bridge:
            channel.bridge = None

    def _on_bridge_merge(self, event: Event, when: datetime, out: Out) -> None:
        source = self._bridges.pop(event.get("FromBridgeUniqueid") or "", set())
        into = event.get("ToBridgeUniqueid")
        if not into:
            return
        members = self._bridges.setdefault(into, set())
        members.update(source)
        for uid in source:
            channel = self._channels.get(uid)
            if channel is not None:
                channel.bridge = into
        self._check_bridge(into, when, out)

    def _on_bridge_destroy(self, event: Event, when: datetime, out: Out) -> None:
        self._bridges.pop(event.get("BridgeUniqueid") or "", None)

    def _check_bridge(self, bridge: str, when: datetime, out: Out) -> None:
        """A phone alone with a customer talks with them (pickups, parking, late answers)."""
        members = self._bridges.get(bridge, set())
        if len(members) != 2:
            return  # conferences and half-built bridges say nothing about who talks
        first, second = (self._channels.get(uid) for uid in members)
        if first is None or second is None:
            return
        for phone, other in ((first, second), (second, first)):
            if phone.role is not Role.PHONE or not phone.extension:
                continue
            for call in self._calls_with_customer(other):
                phone.talked = True
                if call.talking and call.talker == phone.extension:
                    continue
                if call.origin == phone.uniqueid:
                    continue  # the employee who dialled out meets the far end
                self._join(call, phone)
                self._answer(call, phone.extension, f"{phone.uniqueid}:{bridge}", when, out)

    def _calls_with_customer(self, channel: _Channel) -> list[_Call]:
        calls = []
        for linkedid in (channel.linkedid, *channel.joined):
            call = self._calls.get(linkedid)
            if call is not None and call.started and call.customer == channel.uniqueid:
                calls.append(call)
        return calls

    def _join(self, call: _Call, channel: _Channel) -> None:
        """Count a channel of another linkedid as the call's own until it hangs up."""
        if channel.linkedid != call.linkedid and call.linkedid not in channel.joined:
            channel.joined.append(call.linkedid)
        call.live.add(channel.uniqueid)

    def _on_blind_transfer(self, event: Event, when: datetime, out: Out) -> None:
        if (event.get("Result") or "Success").lower() != "success":
            return
        transferee = self._channel(event, when, out, "Transferee")
        transferer = self._channel(event, when, out, "Transferer")
        if transferee is None:
            return
        call = self._calls.get(event.get("TransfereeLinkedid") or transferee.linkedid)
        target = (event.get("Extension") or "").strip()
        if call is None or not call.started or not target:
            return
        if transferer is not None:
            transferer.talked = transferer.talked or transferer.role is Role.PHONE
        from_extension = self._party_extension(transferer)
        self._transferred(
            call,
            TransferKind.BLIND,
            from_extension,
            target,
            f"{transferer.uniqueid if transferer else '-'}:{target}",
            when,
            out,
        )
        # The transferee dials the target from the dialplan: its dials are the customer's.
        call.facing.add(transferee.uniqueid)
        call.talking = False
        call.talker = None
        call.last_ringing = frozenset()

    def _on_attended_transfer(self, event: Event, when: datetime, out: Out) -> None:
        if (event.get("Result") or "").lower() != "success":
            return
        transferee = self._channel(event, when, out, "Transferee")
        original = self._channel(event, when, out, "OrigTransferer")
        target = self._channel(event, when, out, "TransferTarget")
        linkedid = (
            event.get("TransfereeLinkedid")
            or (transferee.linkedid if transferee else None)
            or event.get("OrigTransfererLinkedid")
        )
        call = self._calls.get(linkedid or "")
        if call is None or not call.started:
            return
        if target is not None and target.role in (Role.PHONE, Role.LOCAL):
            destination = target.extension or ""
        elif target is not None:
            destination = target.caller_num
        else:
            # No target snapshot (a target in an application): the consultation's other end.
            destination = _clean(event.get("SecondTransfererConnectedLineNum"))
        if not destination:
            return
        state = (event.get("TransferTargetChannelStateDesc") or "up").lower()
        kind = TransferKind.ATTENDED if state == "up" else TransferKind.BLIND
        transferer = original.uniqueid if original is not None else "-"
        self._transferred(
            call,
            kind,
            self._party_extension(original),
            destination,
            f"{transferer}:{destination}",
            when,
            out,
        )
        if target is not None:
            self._join(call, target)
        if kind is TransferKind.ATTENDED:
            if target is not None:
                target.talked = True
            call.talking = True
            call.talker = destination if self._classifier.is_extension(destination) else None
        else:
            call.talking = False
            call.talker = None
            call.last_ringing = frozenset()

    def _party_extension(self, channel: _Channel | None) -> str | None:
        if channel is None or channel.role not in (Role.PHONE, Role.LOCAL):
            return None
        return channel.extension

    def _transferred(
        self,
        call: _Call,
        kind: TransferKind,
        from_extension: str | None,
        target: str,
        key: str,
        when: datetime,
        out: Out,
    ) -> None:
        if self._classifier.is_extension(target):
            fields: dict[str, str | None] = {"to_extension": target, "to_number": None}
        else:
            fields = {"to_extension": None, "to_number": target}
        self._emit(
            out,
            Transferred,
            call,
            f"transferred:{kind.value}:{key}",
            when,
            kind=kind,
            from_extension=from_extension,
            **fields,
        )


def _clean(value: str | None) -> str:
    """A caller ID or exten, empty when Asterisk says it does not know."""
    if value is None:
        return ""
    value = value.strip()
    return "" if value.lower() in _UNKNOWN else value


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        return None
    number = int(value)
    return number if 0 <= number <= 255 else None


def _listed_seconds(event: Event) -> int | None:
    """A listed channel's age: ``Duration: HH:MM:SS`` (or plain seconds), else ``Seconds``."""
    duration = (event.get("Duration") or "").strip()
    if duration:
        total = 0
        for part in duration.split(":"):
            if not part.isdigit() or len(part) > 9:
                return None
            total = total * 60 + int(part)
        return total if duration.count(":") <= 2 else None
    seconds = (event.get("Seconds") or "").strip()
    return int(seconds) if seconds.isdigit() and len(seconds) <= 9 else None


def _uniqueid_time(uniqueid: str | None) -> datetime | None:
    """When a channel was created: Asterisk's uniqueids are ``[system-]<epoch>.<sequence>``."""
    if not uniqueid:
        return None
    seconds = uniqueid.rpartition("-")[2].partition(".")[0]
    if not seconds.isdigit() or len(seconds) > 11:
        return None
    return datetime.fromtimestamp(int(seconds), UTC)


def _dialled_number(event: Event) -> str:
    """The outside number a dial goes to (``+7495...@trunk``, ``trunk/0791234``, ``sip:...``)."""
    dial_string = (event.get("DialString") or "").strip()
    user = dial_string.partition("@")[0] if "@" in dial_string else dial_string
    user = user.rpartition("/")[2]
    for scheme in ("sip:", "sips:", "tel:"):
        if user.startswith(scheme):
            user = user[len(scheme) :]
    if user and user.lstrip("+").replace("*", "").replace("#", "").isdigit():
        return user
    for key in ("DestExten", "DestCallerIDNum"):
        value = _clean(event.get(key))
        if value and value.lstrip("+").isdigit():
            return value
    return ""
