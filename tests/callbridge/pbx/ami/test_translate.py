"""The AMI translator on constructed events: shapes production PBXs send, missing from the files."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from callbridge.domain.call import Call, CallPolicy
from callbridge.domain.commands import FinishCall, HideCard, RegisterCall, ShowCard
from callbridge.domain.events import (
    Answered,
    CallStarted,
    Ended,
    LegEnded,
    RecordingReady,
    Ringing,
    Transferred,
)
from callbridge.domain.events import Event as Fact
from callbridge.pbx.ami.protocol import Event
from callbridge.pbx.ami.translate import HANDLED_EVENTS, AmiTranslator
from callbridge.pbx.ami.translate_config import (
    Classifier,
    Role,
    TranslatorConfig,
    parse_channel,
)

POLICY = CallPolicy(default_user_id=9, users_by_extension={"101": 1, "102": 2, "103": 3})
START = 1_800_000_000.0


@dataclass
class Chan:
    name: str
    uniqueid: str
    linkedid: str
    context: str
    caller: str
    exten: str = "s"
    state: str = "Down"

    def snapshot(self, prefix: str = "") -> list[tuple[str, str]]:
        return [
            (f"{prefix}Channel", self.name),
            (f"{prefix}ChannelStateDesc", self.state),
            (f"{prefix}CallerIDNum", self.caller),
            (f"{prefix}Context", self.context),
            (f"{prefix}Exten", self.exten),
            (f"{prefix}Uniqueid", self.uniqueid),
            (f"{prefix}Linkedid", self.linkedid),
        ]


@dataclass
class Pbx:
    """Builds a consistent AMI event stream, one event per call, with Timestamp headers."""

    now: float = START
    events: list[Event] = field(default_factory=list)
    stamps: bool = True
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count())
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def at(self, seconds: float) -> Pbx:
        self.now = START + seconds
        return self

    def emit(self, name: str, *items: tuple[str, str]) -> Event:
        headers = [("Event", name), ("Privilege", "call,all")]
        if self.stamps:
            headers.append(("Timestamp", f"{self.now:.6f}"))
        event = Event([*headers, *items])
        self.events.append(event)
        return event

    def channel(
        self,
        endpoint: str,
        *,
        linkedid: str | None = None,
        context: str = "from-internal",
        caller: str | None = None,
        exten: str = "s",
        state: str = "Down",
        name: str | None = None,
    ) -> Chan:
        uniqueid = f"{int(START)}.{next(self._seq)}"
        chan = Chan(
            name=name or f"PJSIP/{endpoint}-{next(self._names):08x}",
            uniqueid=uniqueid,
            linkedid=linkedid or uniqueid,
            context=context,
            caller=caller if caller is not None else endpoint,
            exten=exten,
            state=state,
        )
        self.emit("Newchannel", *chan.snapshot())
        return chan

    def inbound(self, did: str = "4951110300", caller: str = "+74951234567") -> Chan:
        return self.channel("trunk", context="from-trunk", caller=caller, exten=did, state="Ring")

    def local(self, exten: str, context: str, linkedid: str) -> tuple[Chan, Chan]:
        base = f"Local/{exten}@{context}-{next(self._names):08x}"
        one = self.channel("", linkedid=linkedid, context=context, name=f"{base};1", exten=exten)
        two = self.channel("", linkedid=linkedid, context=context, name=f"{base};2", exten=exten)
        return one, two

    def phone(self, ext: str, linkedid: str) -> Chan:
        return self.channel(ext, linkedid=linkedid)

    def dial_begin(self, caller: Chan | None, dest: Chan, dial: str = "") -> None:
        own = caller.snapshot() if caller else []
        self.emit("DialBegin", *own, *dest.snapshot("Dest"), ("DialString", dial or dest.name))

    def dial_state(self, caller: Chan, dest: Chan, status: str = "RINGING") -> None:
        self.emit("DialState", *caller.snapshot(), *dest.snapshot("Dest"), ("DialStatus", status))

    def dial_end(self, caller: Chan | None, dest: Chan, status: str) -> None:
        own = caller.snapshot() if caller else []
        self.emit("DialEnd", *own, *dest.snapshot("Dest"), ("DialStatus", status))

    def state(self, chan: Chan, state: str) -> None:
        chan.state = state
        self.emit("Newstate", *chan.snapshot())

    def ring(self, caller: Chan, dest: Chan) -> None:
        self.state(dest, "Ringing")
        self.dial_state(caller, dest)

    def hangup(self, chan: Chan, cause: int = 16) -> None:
        self.emit("Hangup", *chan.snapshot(), ("Cause", str(cause)))

    def bridge(self, bridge: str, *chans: Chan) -> None:
        for chan in chans:
            self.emit("BridgeEnter", *chan.snapshot(), ("BridgeUniqueid", bridge))

    def agent(self, name: str, caller: Chan, dest: Chan, **extra: str) -> None:
        self.emit(
            name,
            *caller.snapshot(),
            *dest.snapshot("Dest"),
            ("Queue", "support"),
            ("Interface", dest.name.rsplit("-", 1)[0]),
            *extra.items(),
        )

    def varset(self, chan: Chan, variable: str, value: str) -> None:
        self.emit("VarSet", *chan.snapshot(), ("Variable", variable), ("Value", value))

    def translate(self, config: TranslatorConfig | None = None) -> list[Fact]:
        return AmiTranslator(config).feed_all(self.events)


def rows(facts: list[Fact]) -> list[tuple[Any, ...]]:
    """(seconds since START, kind, details) per fact."""
    out: list[tuple[Any, ...]] = []
    for fact in facts:
        at = round(fact.timestamp.timestamp() - START, 3)
        if isinstance(fact, CallStarted):
            row: tuple[Any, ...] = ("started", fact.direction.value, fact.external_number)
        elif isinstance(fact, Ringing):
            row = ("ringing", set(fact.extensions))
        elif isinstance(fact, Answered):
            row = ("answered", fact.extension)
        elif isinstance(fact, Transferred):
            target = fact.to_extension or fact.to_number
            row = ("transferred", fact.kind.value, fact.from_extension, target)
        elif isinstance(fact, LegEnded):
            row = ("leg_ended", fact.extension, fact.disposition and fact.disposition.value)
        elif isinstance(fact, Ended):
            row = ("ended", fact.disposition.value, fact.hangup_cause)
        elif isinstance(fact, RecordingReady):
            row = ("recording", fact.path, fact.format, fact.extension)
        else:  # pragma: no cover
            row = (fact.name,)
        out.append((at, *row))
    return out


def apply(facts: list[Fact]) -> list[Any]:
    call = Call.new(facts[0].call_id)
    return [command for fact in facts for command in call.apply(fact, POLICY)]


class TestQueue:
    def scenario(self) -> tuple[Pbx, Chan]:
        pbx = Pbx()
        caller = pbx.inbound()
        pbx.at(0.1).state(caller, "Up")  # the queue answers before ringing anyone
        first = pbx.at(0.2).phone("101", caller.linkedid)
        pbx.agent("AgentCalled", caller, first)
        pbx.dial_begin(caller, first)
        pbx.at(0.3).ring(caller, first)
        # 101 does not answer within the member timeout: AgentRingNoAnswer, then two DialEnds.
        pbx.at(6.3).agent("AgentRingNoAnswer", caller, first, RingTime="6000")
        pbx.dial_end(caller, first, "NOANSWER")
        pbx.dial_end(caller, first, "CANCEL")
        pbx.hangup(first, 19)
        second = pbx.at(7.0).phone("102", caller.linkedid)
        pbx.agent("AgentCalled", caller, second)
        pbx.dial_begin(caller, second)
        pbx.at(7.1).ring(caller, second)
        pbx.at(9.0).state(second, "Up")
        pbx.dial_end(caller, second, "ANSWER")
        pbx.agent("AgentConnect", caller, second, RingTime="2", HoldTime="9")
        pbx.bridge("b1", second, caller)
        return pbx, second

    def test_member_rings_in_turn(self) -> None:
        pbx, second = self.scenario()
        caller_chan = _chan_of(pbx.events[0])
        pbx.at(20.0).hangup(second)
        pbx.hangup(caller_chan)
        assert rows(pbx.translate()) == [
            (0.0, "started", "inbound", "+74951234567"),
            (0.3, "ringing", {"101"}),
            (6.3, "leg_ended", "101", "no_answer"),
            (6.3, "ringing", set()),
            (7.1, "ringing", {"102"}),
            (9.0, "answered", "102"),
            (20.0, "leg_ended", "102", "answered"),
            (20.0, "ended", "answered", 16),
        ]

    def test_commands_show_then_hide_each_member(self) -> None:
        pbx, second = self.scenario()
        pbx.at(20.0).hangup(second)
        pbx.hangup(_chan_of(pbx.events[0]))
        commands = apply(pbx.translate())
        assert commands[1:] == [
            ShowCard(leg=0, user_ids=(1,)),
            HideCard(leg=0, user_ids=(1,)),
            ShowCard(leg=0, user_ids=(2,)),
            FinishCall(leg=0, user_id=2, duration=11, status_code="200", add_to_chat=True),
        ]

    def test_caller_abandons_the_queue(self) -> None:
        pbx = Pbx()
        caller = pbx.inbound()
        pbx.at(0.1).state(caller, "Up")
        member = pbx.phone("101", caller.linkedid)
        pbx.dial_begin(caller, member)
        pbx.at(0.2).ring(caller, member)
        pbx.at(5.0).emit("QueueCallerAbandon", *caller.snapshot(), ("Queue", "support"))
        pbx.dial_end(caller, member, "CANCEL")
        pbx.hangup(member, 16)
        pbx.hangup(caller, 16)
        facts = pbx.translate()
        assert rows(facts)[-3:] == [
            (5.0, "leg_ended", "101", "cancelled"),
            (5.0, "ringing", set()),
            (5.0, "ended", "cancelled", 16),
        ]
        finish = apply(facts)[-1]
        assert isinstance(finish, FinishCall)
        assert finish.status_code == "304"


def _chan_of(newchannel: Event) -> Chan:
    return Chan(
        name=newchannel["Channel"],
        uniqueid=newchannel["Uniqueid"],
        linkedid=newchannel["Linkedid"],
        context=newchannel["Context"],
        caller=newchannel["CallerIDNum"],
        exten=newchannel["Exten"],
        state="Up",
    )


class TestBusyAndGivingUp:
    def test_busy_phone(self) -> None:
        pbx = Pbx()
        caller = pbx.inbound("4951110101")
        phone = pbx.phone("101", caller.linkedid)
        pbx.dial_begin(caller, phone)
        pbx.at(0.1).dial_end(caller, phone, "BUSY")
        pbx.hangup(phone, 17)
        pbx.hangup(caller, 17)
        facts = pbx.translate()
        assert rows(facts) == [
            (0.0, "started", "inbound", "+74951234567"),
            (0.1, "leg_ended", "101", "busy"),
            (0.1, "ended", "busy", 17),
        ]
        finish = apply(facts)[-1]
        assert isinstance(finish, FinishCall)
        assert (finish.status_code, finish.user_id) == ("486", 1)

    def test_caller_gives_up_while_ringing(self) -> None:
        pbx = Pbx()
        caller = pbx.inbound("4951110101")
        phone = pbx.phone("101", caller.linkedid)
        pbx.dial_begin(caller, phone)
        pbx.at(0.1).ring(caller, phone)
        pbx.at(4.0).emit("HangupRequest", *caller.snapshot(), ("Cause", "16"))
        pbx.dial_end(caller, phone, "CANCEL")
        pbx.hangup(phone, 16)
        pbx.hangup(caller, 16)
        facts = pbx.translate()
        assert rows(facts)[1:] == [
            (0.1, "ringing", {"101"}),
            (4.0, "leg_ended", "101", "cancelled"),
            (4.0, "ringing", set()),
            (4.0, "ended", "cancelled", 16),
        ]
        assert [type(c) for c in apply(facts)] == [RegisterCall, ShowCard, HideCard, FinishCall]

    def test_outbound_busy_far_end(self) -> None:
        pbx = Pbx()
        phone = pbx.channel("101", exten="+74957654321", state="Ring")
        trunk = pbx.channel("trunk", linkedid=phone.linkedid, context="from-trunk")
        pbx.dial_begin(phone, trunk, "+74957654321@trunk")
        pbx.at(1.0).dial_end(phone, trunk, "BUSY")
        pbx.hangup(trunk, 17)
        pbx.hangup(phone, 17)
        facts = pbx.translate()
        assert rows(facts) == [
            (0.0, "started", "outbound", "+74957654321"),
            (1.0, "leg_ended", "101", "busy"),
            (1.0, "ended", "busy", 17),
        ]
        finish = apply(facts)[-1]
        assert isinstance(finish, FinishCall)
        assert finish.status_code == "486"


class TestAttendedTransfer:
    def test_consultation_then_transfer(self) -> None:
        pbx = Pbx()
        caller = pbx.inbound("4951110101")
        first = pbx.phone("101", caller.linkedid)
        pbx.dial_begin(caller, first)
        pbx.at(0.1).ring(caller, first)
        pbx.at(2.0).state(first, "Up")
        pbx.dial_end(caller, first, "ANSWER")
        pbx.bridge("b1", first, caller)
        # 101 consults 102 through a Local pair the transfer feature creates (no DialBegin).
        pbx.at(5.0).emit("Hold", *caller.snapshot())
        one, two = pbx.local("102", "from-internal", caller.linkedid)
        target = pbx.phone("102", caller.linkedid)
        pbx.dial_begin(two, target)
        pbx.at(5.1).ring(two, target)
        pbx.at(7.0).state(target, "Up")
        pbx.dial_end(two, target, "ANSWER")
        pbx.bridge("b2", target, two)
        pbx.at(10.0).emit(
            "AttendedTransfer",
            ("Result", "Success"),
            *first.snapshot("OrigTransferer"),
            ("OrigBridgeUniqueid", "b1"),
            *caller.snapshot("Transferee"),
            *target.snapshot("TransferTarget"),
            ("DestType", "Bridge"),
        )
        pbx.hangup(first)
        pbx.hangup(one)  # the consultation's Local pair goes once the target is bridged
        pbx.hangup(two)
        pbx.at(30.0).hangup(caller)
        pbx.hangup(target)
        facts = pbx.translate()
        assert rows(facts) == [
            (0.0, "started", "inbound", "+74951234567"),
            (0.1, "ringing", {"101"}),
            (2.0, "answered", "101"),
            (10.0, "transferred", "attended", "101", "102"),
            (10.0, "leg_ended", "101", "answered"),
            (30.0, "leg_ended", "102", "answered"),
            (30.0, "ended", "answered", 16),
        ]
        finishes = [c for c in apply(facts) if isinstance(c, FinishCall)]
        assert [(f.leg, f.user_id, f.duration) for f in finishes] == [(0, 1, 8), (1, 2, 20)]

    def test_target_from_another_call_joins_until_it_hangs_up(self) -> None:
        pbx = Pbx()
        caller = pbx.inbound("4951110101")
        first = pbx.phone("101", caller.linkedid)
        pbx.dial_begin(caller, first)
        pbx.at(1.0).state(first, "Up")
        pbx.bridge("b1", first, caller)
        # The phone places its own consultation call (a new linkedid), then transfers.
        consult = pbx.at(3.0).channel("101", exten="102", state="Ring")
        target = pbx.phone("102", consult.linkedid)
        pbx.dial_begin(consult, target)
        pbx.at(4.0).state(target, "Up")
        pbx.at(6.0).emit(
            "AttendedTransfer",
            ("Result", "Success"),
            *first.snapshot("OrigTransferer"),
            *consult.snapshot("SecondTransferer"),
            *caller.snapshot("Transferee"),
            *target.snapshot("TransferTarget"),
        )
        pbx.hangup(first)
        pbx.hangup(consult)
        pbx.at(9.0).hangup(caller)
        pbx.at(9.5).hangup(target)
        facts = [f for f in pbx.translate() if f.call_id == caller.linkedid]
        assert rows(facts)[-3:] == [
            (6.0, "leg_ended", "101", "answered"),
            (9.5, "leg_ended", "102", "answered"),
            (9.5, "ended", "answered", 16),
        ]


class TestFreePbxLocalChannels:
    def test_follow_me_local_pair_is_not_an_extra_leg(self) -> None:
        pbx = Pbx()
        caller = pbx.inbound("4951110101")
        one, two = pbx.local("FMGL-101#", "from-internal", caller.linkedid)
        pbx.dial_begin(caller, one)
        phone = pbx.phone("101", caller.linkedid)
        pbx.dial_begin(two, phone)
        mobile_one, mobile_two = pbx.local("89161234567#", "from-internal", caller.linkedid)
        pbx.dial_begin(two, mobile_one)
        trunk = pbx.channel("trunk", linkedid=caller.linkedid, context="from-trunk")
        pbx.dial_begin(mobile_two, trunk, "89161234567@trunk")
        pbx.at(0.2).ring(two, phone)
        pbx.dial_state(caller, one)
        # The mobile answers: the employee behind the follow-me list is 101.
        pbx.at(3.0).state(trunk, "Up")
        pbx.dial_end(mobile_two, trunk, "ANSWER")
        pbx.state(mobile_one, "Up")
        pbx.dial_end(two, mobile_one, "ANSWER")
        pbx.dial_end(two, phone, "CANCEL")
        pbx.hangup(phone, 26)
        pbx.state(one, "Up")
        pbx.dial_end(caller, one, "ANSWER")
        pbx.at(8.0).hangup(caller)
        for chan in (one, two, mobile_one, mobile_two, trunk):
            pbx.hangup(chan)
        assert rows(pbx.translate()) == [
            (0.0, "started", "inbound", "+74951234567"),
            (0.2, "ringing", {"101"}),
            (3.0, "answered", "101"),
            (8.0, "ended", "answered", 16),
        ]

    def test_queue_member_through_local_channel(self) -> None:
        pbx = Pbx()
        caller = pbx.inbound()
        one, two = pbx.local("101", "from-queue", caller.linkedid)
        pbx.agent("AgentCalled", caller, one)
        pbx.dial_begin(caller, one)
        phone = pbx.phone("101", caller.linkedid)
        pbx.dial_begin(two, phone)
        pbx.at(0.2).ring(two, phone)
        pbx.ring(caller, one)
        pbx.at(2.0).state(phone, "Up")
        pbx.dial_end(two, phone, "ANSWER")
        pbx.state(two, "Up")
        pbx.state(one, "Up")
        pbx.dial_end(caller, one, "ANSWER")
        pbx.agent("AgentConnect", caller, one)
        pbx.at(5.0).hangup(phone)
        pbx.hangup(two)
        pbx.hangup(one)
        pbx.hangup(caller)
        assert rows(pbx.translate()) == [
            (0.0, "started", "inbound", "+74951234567"),
            (0.2, "ringing", {"101"}),
            (2.0, "answered", "101"),
            (5.0, "leg_ended", "101", "answered"),
            (5.0, "ended", "answered", 16),
        ]

    def test_click_to_call_through_local_channel(self) -> None:
        pbx = Pbx()
        one = pbx.channel("", context="from-internal", name="Local/101@from-internal-0001;1")
        two = pbx.channel(
            "", linkedid=one.linkedid, name="Local/101@from-internal-0001;2", exten="101"
        )
        pbx.varset(one, "CALLBRIDGE_B24_CALL_ID", "B24-9")
        pbx.dial_begin(None, one)
        phone = pbx.phone("101", one.linkedid)
        pbx.dial_begin(two, phone)
        pbx.at(0.1).ring(two, phone)
        pbx.at(2.0).state(phone, "Up")
        pbx.state(one, "Up")
        pbx.dial_end(None, one, "ANSWER")
        trunk = pbx.channel("trunk", linkedid=one.linkedid, context="from-trunk")
        pbx.dial_begin(one, trunk, "+74957654321@trunk")
        pbx.at(5.0).state(trunk, "Up")
        pbx.at(9.0).hangup(trunk)
        for chan in (one, two, phone):
            pbx.hangup(chan)
        facts = pbx.translate()
        assert rows(facts) == [
            (0.0, "started", "outbound", "+74957654321"),
            (5.0, "answered", "101"),
            (9.0, "ended", "answered", 16),
        ]
        assert isinstance(facts[0], CallStarted)
        assert facts[0].bitrix24_call_id == "B24-9"


class TestClickToCallUnanswered:
    def test_employee_never_answers_finishes_the_call_id(self) -> None:
        pbx = Pbx()
        phone = pbx.channel("101")
        pbx.varset(phone, "__CALLBRIDGE_B24_CALL_ID", "B24-1")
        pbx.dial_begin(None, phone)
        pbx.at(0.1).state(phone, "Ringing")
        pbx.at(30.0).dial_end(None, phone, "NOANSWER")
        pbx.hangup(phone, 19)
        facts = pbx.translate()
        assert [type(f) for f in facts] == [CallStarted, Ended]
        started, ended = facts
        assert isinstance(started, CallStarted)
        assert started.bitrix24_call_id == "B24-1"
        assert isinstance(ended, Ended)
        assert ended.disposition.value == "no_answer"
        finish = apply(facts)[-1]
        assert isinstance(finish, FinishCall)
        assert finish.status_code == "304"


class TestRecording:
    def test_ready_only_after_the_recording_channel_hangs_up(self) -> None:
        pbx = Pbx()
        caller = pbx.inbound("4951110400")
        path = "/var/spool/asterisk/monitor/2030/01/in-1.WAV"
        pbx.emit("MixMonitorStart", *caller.snapshot())
        pbx.varset(caller, "MIXMONITOR_FILENAME", path)
        phone = pbx.phone("101", caller.linkedid)
        pbx.dial_begin(caller, phone)
        pbx.at(1.0).state(phone, "Up")
        pbx.at(4.0).hangup(phone)
        pbx.at(4.1).hangup(caller)
        config = TranslatorConfig(recording_base_url="https://pbx.example/rec/")
        facts = pbx.translate(config)
        assert rows(facts)[-2:] == [
            (4.1, "recording", path, "wav", None),
            (4.1, "ended", "answered", 16),
        ]
        recording = facts[-2]
        assert isinstance(recording, RecordingReady)
        assert recording.url == "https://pbx.example/rec/2030/01/in-1.WAV"
        attach = apply(facts)[-1]
        assert attach.name == "attach_record"


class TestRobustness:
    def test_missing_timestamp_uses_arrival_time(self) -> None:
        pbx = Pbx(stamps=False)
        caller = pbx.inbound()
        pbx.hangup(caller)
        pbx.events[0].received_at = START + 5
        pbx.events[1].received_at = START + 7
        facts = pbx.translate()
        assert [round(f.timestamp.timestamp() - START) for f in facts] == [5, 7]

    def test_no_time_at_all_falls_back_to_the_uniqueid(self) -> None:
        pbx = Pbx(stamps=False)
        caller = pbx.inbound()
        pbx.hangup(caller)
        facts = pbx.translate()
        assert facts[0].timestamp.timestamp() == START

    def test_unknown_linkedid_is_adopted_quietly(self) -> None:
        pbx = Pbx()
        ghost = Chan("PJSIP/101-000000aa", "1799999999.5", "1799999999.1", "from-internal", "101")
        pbx.emit("DialEnd", *ghost.snapshot("Dest"), ("DialStatus", "CANCEL"))
        pbx.emit("BridgeLeave", *ghost.snapshot(), ("BridgeUniqueid", "nope"))
        translator = AmiTranslator()
        assert translator.feed_all(pbx.events) == []
        assert translator.active_calls == ["1799999999.1"]
        # Its last known channel goes: nothing was started, so nothing is reported.
        end = Pbx()
        end.hangup(ghost)
        assert translator.feed_all(end.events) == []
        assert translator.active_calls == []

    def test_restart_after_answer_still_ends_the_call(self) -> None:
        pbx = Pbx()
        caller = pbx.inbound("4951110101")
        phone = pbx.phone("101", caller.linkedid)
        pbx.dial_begin(caller, phone)
        pbx.at(1.0).state(phone, "Up")
        pbx.bridge("b1", phone, caller)
        cut = len(pbx.events)
        pbx.at(5.0).hangup(phone)
        pbx.hangup(caller)
        restarted = AmiTranslator()
        # The listener reconciles with CoreShowChannels first: the live channels are seeded.
        listed = Pbx().at(3.0)
        for chan in (caller, phone):
            listed.emit("CoreShowChannel", *chan.snapshot(), ("BridgeId", "b1"))
        facts = restarted.feed_all([*listed.events, *pbx.events[cut:]])
        assert rows(facts) == [
            (0.0, "started", "inbound", "+74951234567"),
            (3.0, "answered", "101"),  # learnt from the bridge, when we learnt it
            (5.0, "leg_ended", "101", "answered"),
            (5.0, "ended", "answered", 16),
        ]
        assert facts[0].event_id == f"{caller.linkedid}:started"

    def test_reconcile_ends_calls_that_vanished(self) -> None:
        pbx = Pbx()
        caller = pbx.inbound()
        phone = pbx.phone("101", caller.linkedid)
        pbx.dial_begin(caller, phone)
        pbx.at(1.0).ring(caller, phone)
        translator = AmiTranslator()
        translator.feed_all(pbx.events)
        facts = translator.reconcile([], _at(60))
        assert [type(f) for f in facts] == [LegEnded, Ringing, Ended]
        assert translator.active_calls == []

    def test_ignored_events_are_not_parsed(self) -> None:
        event = Event.from_block("Event: Newexten\nChannel: PJSIP/101-1\nUniqueid: 1.1")
        assert isinstance(event, Event)
        assert AmiTranslator().feed(event) == []
        assert "Newexten" not in HANDLED_EVENTS


class TestChannelNames:
    def test_parse(self) -> None:
        assert parse_channel("PJSIP/101-00000012").endpoint == "101"
        assert parse_channel("SIP/my-trunk-0000000a").endpoint == "my-trunk"
        local = parse_channel("Local/101@from-queue-0000001;1")
        assert (local.endpoint, local.local_context, local.local_side) == ("101", "from-queue", 1)
        assert local.local_pair == "101@from-queue-0000001"

    def test_classify_defaults(self) -> None:
        classify = Classifier(TranslatorConfig()).classify
        assert classify(parse_channel("PJSIP/101-1"), "from-internal", "101") == (
            Role.PHONE,
            "101",
        )
        assert classify(parse_channel("PJSIP/trunk-1"), "from-trunk", "+7") == (Role.TRUNK, None)
        assert classify(parse_channel("SIP/prov-1"), "from-pstn-e164-us", "") == (
            Role.TRUNK,
            None,
        )
        assert classify(parse_channel("PJSIP/ivan-1"), "from-internal", "105") == (
            Role.PHONE,
            "105",
        )
        assert classify(parse_channel("Local/FMPR-101@from-internal-1;2"), None, "") == (
            Role.LOCAL,
            "101",
        )
        assert classify(parse_channel("ConfBridge/0x1"), None, "")[0] is Role.OTHER

    def test_configured_trunk_wins(self) -> None:
        classify = Classifier(TranslatorConfig(trunk_endpoint_patterns=(r"\d{7,}",))).classify
        assert classify(parse_channel("PJSIP/4951110101-1"), "from-internal", "")[0] is (Role.TRUNK)


# -- property: arbitrary sequences of plausible events never raise -----------------------------

_NAMES = sorted(HANDLED_EVENTS | {"Newexten", "Cdr", "HangupRequest"})
_CHANNELS = [
    "PJSIP/trunk-00000001",
    "PJSIP/101-00000002",
    "PJSIP/102-00000003",
    "Local/101@from-queue-00000004;1",
    "Local/101@from-queue-00000004;2",
    "Local/FMGL-102#@from-internal-00000005;1",
    "Local/FMGL-102#@from-internal-00000005;2",
    "ConfBridge/0x1",
    "",
]
_IDS = ["1.1", "1.2", "1.3", "1.4", "1.5", "2.1", "<unknown>", ""]
_VALUES = st.sampled_from(
    ["", "Up", "Ringing", "Ring", "Down", "ANSWER", "NOANSWER", "BUSY", "CANCEL", "RINGING",
     "Success", "Failure", "16", "17", "abc", "101", "+74951234567", "from-trunk",
     "from-internal", "MIXMONITOR_FILENAME", "CALLBRIDGE_B24_CALL_ID", "/tmp/x.wav", "b1", "b2",
     "1e400", "nan", "-5", "1800000000.5"]
)  # fmt: skip
_HEADER = st.one_of(
    st.tuples(st.sampled_from(["Channel", "DestChannel", "TransfereeChannel",
                               "TransferTargetChannel", "OrigTransfererChannel",
                               "TransfererChannel"]), st.sampled_from(_CHANNELS)),
    st.tuples(st.sampled_from(["Uniqueid", "Linkedid", "DestUniqueid", "DestLinkedid",
                               "TransfereeUniqueid", "TransfereeLinkedid",
                               "TransferTargetUniqueid", "OrigTransfererUniqueid",
                               "TransfererUniqueid"]), st.sampled_from(_IDS)),
    st.tuples(st.sampled_from(["ChannelStateDesc", "DestChannelStateDesc", "DialStatus",
                               "Cause", "Context", "DestContext", "CallerIDNum", "Exten",
                               "Variable", "Value", "BridgeUniqueid", "Result", "Extension",
                               "Timestamp", "FromBridgeUniqueid", "ToBridgeUniqueid",
                               "TransferTargetChannelStateDesc", "BridgeId"]), _VALUES),
)  # fmt: skip
_EVENTS = st.builds(
    lambda name, headers: Event([("Event", name), *headers]),
    st.sampled_from(_NAMES),
    st.lists(_HEADER, max_size=12),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_EVENTS, max_size=40))
def test_arbitrary_event_sequences_never_raise(events: list[Event]) -> None:
    translator = AmiTranslator(TranslatorConfig(max_calls=3, max_ended=2))
    facts = translator.feed_all(events)
    assert all(f.timestamp.utcoffset() is not None for f in facts)
    translator.reconcile([], facts[-1].timestamp if facts else _at(0))
    # Each call gets at most one start and one end.
    for kind in ("started", "ended"):
        ids = [f.event_id for f in facts if f.event_id.endswith(f":{kind}")]
        assert len(ids) == len(set(ids))


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(START + seconds, UTC)


class TestJoiningMidCall:
    """Channels met in ``CoreShowChannels``, and times in the PBX's clock."""

    @staticmethod
    def _listed(chan: Chan, at: float, duration: str, *, stamped: bool = True) -> Event:
        listing = Pbx(stamps=stamped).at(at)
        event = listing.emit("CoreShowChannel", *chan.snapshot(), ("Duration", duration))
        return event

    def test_a_listed_channel_is_dated_by_its_duration_and_its_uniqueid(self) -> None:
        caller = Pbx().inbound()  # uniqueid 1800000000.0: created in START's second
        # Listed 5.4 s after START as 5 s old: created 5 to 6 s before, i.e. in [-0.6, 0.4];
        # its uniqueid says [0, 1): the middle of both.
        facts = AmiTranslator().feed(self._listed(caller, 5.4, "00:00:05"))
        assert rows(facts) == [(0.2, "started", "inbound", "+74951234567")]

    def test_a_uniqueid_that_is_not_an_epoch_leaves_the_duration(self) -> None:
        caller = Pbx().inbound()
        caller.uniqueid = caller.linkedid = "1234.5"  # e.g. an Originate's ChannelId
        facts = AmiTranslator().feed(self._listed(caller, 5.4, "00:00:05"))
        assert rows(facts) == [(-0.1, "started", "inbound", "+74951234567")]

    def test_hours_and_plain_seconds(self) -> None:
        caller = Pbx().inbound()
        caller.uniqueid = caller.linkedid = "no-epoch"
        for duration in ("01:00:05", "3605"):
            facts = AmiTranslator().feed(self._listed(caller, 3605.4, duration))
            assert rows(facts) == [(-0.1, "started", "inbound", "+74951234567")]

    def test_arrival_times_move_into_the_pbx_clock(self) -> None:
        caller = Pbx().inbound()
        listed = self._listed(caller, 0, "00:00:05", stamped=False)
        # We read it at START + 1 h + 5.4 s of our clock, an hour ahead of the PBX's.
        listed.received_at = START + 3600 + 5.4
        translator = AmiTranslator()
        translator.clock_offset = -3600.0
        assert rows(translator.feed(listed)) == [(0.2, "started", "inbound", "+74951234567")]
        hangup = Pbx(stamps=False).emit("Hangup", *caller.snapshot(), ("Cause", "16"))
        hangup.received_at = START + 3600 + 9.0
        assert rows(translator.feed(hangup)) == [(9.0, "ended", "cancelled", 16)]
        # A Timestamp header is the PBX's own time already.
        stamped = AmiTranslator()
        stamped.clock_offset = -3600.0
        pbx = Pbx().at(7.0)
        pbx.inbound()
        newchannel = pbx.events[-1]
        newchannel.received_at = START + 3600 + 7.0
        assert rows(stamped.feed(newchannel)) == [(7.0, "started", "inbound", "+74951234567")]

    def test_without_the_pbx_clock_a_disagreement_keeps_the_uniqueid(self) -> None:
        caller = Pbx().inbound()
        listed = self._listed(caller, 0, "00:00:05", stamped=False)
        # Our clock an hour ahead, the PBX's unknown: the uniqueid is in its clock, as the
        # Timestamp headers of its events would be.
        listed.received_at = START + 3600 + 5.4
        assert rows(AmiTranslator().feed(listed)) == [(0.0, "started", "inbound", "+74951234567")]
