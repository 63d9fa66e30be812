"""Every recorded AMI stream through the translator, then through the call model."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from callbridge.domain.call import Call, CallPolicy
from callbridge.domain.commands import (
    CallType,
    Command,
    FinishCall,
    HideCard,
    RegisterCall,
    ShowCard,
)
from callbridge.domain.events import (
    Answered,
    CallStarted,
    Ended,
    LegEnded,
    Ringing,
    Transferred,
)
from callbridge.domain.events import Event as Fact
from callbridge.pbx.ami.protocol import Event
from callbridge.pbx.ami.replay import Recording
from callbridge.pbx.ami.translate import AmiTranslator
from callbridge.pbx.ami.translate_config import B24_CALL_ID_VARIABLE

from .conftest import STREAMS, stream

POLICY = CallPolicy(default_user_id=9, users_by_extension={"101": 1, "102": 2, "103": 3})
CALLER = "+74951234567"
FAR_END = "+74957654321"


def recorded_events(
    path: Path, *, stamp: str = "header", call_id: str | None = None
) -> list[Event]:
    """A stream's events timed as the replayer would: ``Timestamp`` headers or arrival times.

    ``call_id`` injects the click-to-call variable after the first ``Newchannel``, as the
    replayer does for an Originate's ``Variable``.
    """
    events: list[Event] = []
    for recorded in Recording.load(path).events:
        event = recorded.message
        if event.timestamp is None and recorded.epoch is not None:
            if stamp == "header":
                stamped = event.with_headers({"Timestamp": f"{recorded.epoch:.6f}"})
                assert isinstance(stamped, Event)
                event = stamped
            else:
                event.received_at = recorded.epoch
        events.append(event)
        if call_id is not None and event.name == "Newchannel":
            variable = Event(
                [
                    ("Event", "VarSet"),
                    *((k, event[k]) for k in ("Channel", "Uniqueid", "Linkedid")),
                    ("Variable", B24_CALL_ID_VARIABLE),
                    ("Value", call_id),
                ]
            )
            variable.received_at = recorded.epoch
            events.append(variable)
            call_id = None
    return events


def translate(name: str, **kwargs: Any) -> list[Fact]:
    translator = AmiTranslator()
    facts = translator.feed_all(recorded_events(stream(name), **kwargs))
    assert translator.active_calls == []  # every call ended, nothing left behind
    return facts


def summary(facts: list[Fact]) -> list[tuple[Any, ...]]:
    """Facts as (offset from the first, kind, details) with offsets in milliseconds."""
    origin = facts[0].timestamp
    rows: list[tuple[Any, ...]] = []
    for fact in facts:
        at = round((fact.timestamp - origin).total_seconds() * 1000)
        if isinstance(fact, CallStarted):
            row: tuple[Any, ...] = (
                "started",
                fact.direction.value,
                fact.external_number,
                fact.line,
                fact.extension,
                fact.bitrix24_call_id,
            )
        elif isinstance(fact, Ringing):
            row = ("ringing", set(fact.extensions))
        elif isinstance(fact, Answered):
            row = ("answered", fact.extension)
        elif isinstance(fact, Transferred):
            row = ("transferred", fact.kind.value, fact.from_extension, fact.to_extension)
        elif isinstance(fact, LegEnded):
            disposition = fact.disposition.value if fact.disposition else None
            row = ("leg_ended", fact.extension, disposition, fact.hangup_cause)
        elif isinstance(fact, Ended):
            row = ("ended", fact.disposition.value, fact.hangup_cause, fact.talk_seconds)
        else:
            row = (fact.name,)
        rows.append((at, *row))
    return rows


def commands(facts: list[Fact], policy: CallPolicy = POLICY) -> tuple[Call, list[Command]]:
    call = Call.new(facts[0].call_id)
    out: list[Command] = []
    for fact in facts:
        out.extend(call.apply(fact, policy))
    return call, out


def test_every_stream_has_a_test() -> None:
    names = {path.stem for path in STREAMS}
    tested = {
        "a_inbound_answered",
        "a2_inbound_answered_timestamps",
        "b_inbound_noanswer",
        "d_inbound_ringgroup",
        "f_blind_transfer_refer",
        "h_click2call_outbound",
        "k_outbound_from_phone",
    }
    assert names == tested


class TestInboundAnswered:
    EXPECTED = [
        (0, "started", "inbound", CALLER, "4951110101", None, None),
        (16, "ringing", {"101"}),
        (3017, "answered", "101"),
        (6028, "leg_ended", "101", "answered", 16),
        (6029, "ended", "answered", 16, 3),
    ]

    def test_facts_with_timestamp_headers(self) -> None:
        assert summary(translate("a_inbound_answered")) == self.EXPECTED

    def test_facts_with_arrival_times(self) -> None:
        assert summary(translate("a_inbound_answered", stamp="arrival")) == self.EXPECTED

    def test_pbx_timestamps(self) -> None:
        facts = translate("a2_inbound_answered_timestamps")
        assert [row[1:] for row in summary(facts)] == [row[1:] for row in self.EXPECTED]
        # The PBX's own clock (the Newchannel's Timestamp), not the recorder's arrival times.
        assert facts[0].timestamp == datetime.fromtimestamp(1795711843.000573, UTC)
        assert summary(facts)[2][0] == 3008

    def test_ids_are_stable_across_replays(self) -> None:
        first = [f.event_id for f in translate("a_inbound_answered")]
        again = [f.event_id for f in translate("a_inbound_answered", stamp="arrival")]
        assert first == again
        assert len(set(first)) == len(first)
        assert first[0] == "1795708539.0:started"

    def test_commands(self) -> None:
        call, out = commands(translate("a_inbound_answered"))
        register, show, finish = out
        assert isinstance(register, RegisterCall)
        assert (register.user_id, register.phone_number, register.type) == (
            9,
            CALLER,
            CallType.INBOUND,
        )
        assert register.line_number == "4951110101"
        assert register.call_start_date == "2026-11-26T15:55:39+00:00"
        assert show == ShowCard(leg=0, user_ids=(1,))
        assert isinstance(finish, FinishCall)
        assert (finish.user_id, finish.status_code, finish.duration) == (1, "200", 3)
        assert call.answered_by == "101"


class TestInboundNoAnswer:
    def test_facts(self) -> None:
        assert summary(translate("b_inbound_noanswer")) == [
            (0, "started", "inbound", CALLER, "4951110101", None, None),
            (9, "ringing", {"101"}),
            (15017, "leg_ended", "101", "no_answer", None),
            (15017, "ringing", set()),
            (15017, "ended", "no_answer", 16, None),
        ]

    def test_commands(self) -> None:
        _, out = commands(translate("b_inbound_noanswer"))
        assert [type(c) for c in out] == [RegisterCall, ShowCard, HideCard, FinishCall]
        finish = out[-1]
        assert isinstance(finish, FinishCall)
        assert (finish.user_id, finish.status_code, finish.duration) == (1, "304", 0)


class TestRingGroup:
    def test_facts(self) -> None:
        # One Ringing once all three phones report; CANCELs after the answer end their legs.
        assert summary(translate("d_inbound_ringgroup")) == [
            (0, "started", "inbound", CALLER, "4951110200", None, None),
            (9, "ringing", {"101", "102", "103"}),
            (4012, "answered", "102"),
            (4015, "leg_ended", "101", "cancelled", None),
            (4015, "leg_ended", "103", "cancelled", None),
            (7024, "leg_ended", "102", "answered", 16),
            (7024, "ended", "answered", 16, 3),
        ]

    def test_one_show_one_hide(self) -> None:
        _, out = commands(translate("d_inbound_ringgroup"))
        assert out[1:] == [
            ShowCard(leg=0, user_ids=(1, 2, 3)),
            HideCard(leg=0, user_ids=(1, 3)),
            FinishCall(leg=0, user_id=2, duration=3, status_code="200", add_to_chat=True),
        ]


class TestBlindTransferRefer:
    def test_facts(self) -> None:
        assert summary(translate("f_blind_transfer_refer")) == [
            (0, "started", "inbound", CALLER, "4951110101", None, None),
            (1, "ringing", {"101"}),
            (3006, "answered", "101"),
            (6014, "transferred", "blind", "101", "102"),
            # The transferer hangs up after the transfer: the call model ignores it.
            (6014, "leg_ended", "101", "answered", 16),
            (6019, "ringing", {"102"}),
            (9022, "answered", "102"),
            (18016, "leg_ended", "102", "answered", 16),
            (18016, "ended", "answered", 16, 15),
        ]

    def test_two_legs(self) -> None:
        call, out = commands(translate("f_blind_transfer_refer"))
        finishes = [c for c in out if isinstance(c, FinishCall)]
        registers = [c for c in out if isinstance(c, RegisterCall)]
        assert [(r.leg, r.user_id) for r in registers] == [(0, 9), (1, 2)]
        assert [(f.leg, f.user_id, f.status_code, f.duration) for f in finishes] == [
            (0, 1, "200", 3),
            (1, 2, "200", 9),
        ]
        assert call.talk_seconds == 12


class TestClickToCall:
    def test_facts(self) -> None:
        facts = translate("h_click2call_outbound", call_id="B24-CALL-7")
        # The employee's phone ringing and answering the Originate is not the customer's.
        assert summary(facts) == [
            (0, "started", "outbound", FAR_END, "trunk", "101", "B24-CALL-7"),
            (6020, "answered", "101"),
            (12530, "leg_ended", "101", "answered", 16),
            (12530, "ended", "answered", 16, 7),
        ]

    def test_finishes_the_known_call_id_without_registering(self) -> None:
        call, out = commands(translate("h_click2call_outbound", call_id="B24-CALL-7"))
        assert out == [
            FinishCall(leg=0, user_id=1, duration=7, status_code="200", add_to_chat=True)
        ]
        assert call.legs[0].bitrix24_call_id == "B24-CALL-7"

    def test_without_the_variable_it_is_a_plain_outbound_call(self) -> None:
        _, out = commands(translate("h_click2call_outbound"))
        assert isinstance(out[0], RegisterCall)
        assert out[0].type is CallType.OUTBOUND


class TestOutboundFromPhone:
    def test_facts(self) -> None:
        assert summary(translate("k_outbound_from_phone")) == [
            (0, "started", "outbound", FAR_END, "trunk", "101", None),
            (3010, "answered", "101"),
            (8018, "leg_ended", "101", "answered", 16),
            (8018, "ended", "answered", 16, 5),
        ]

    def test_commands(self) -> None:
        _, out = commands(translate("k_outbound_from_phone"))
        register, finish = out
        assert isinstance(register, RegisterCall)
        assert (register.type, register.user_id, register.phone_number, register.show) == (
            CallType.OUTBOUND,
            1,
            FAR_END,
            True,
        )
        assert finish == FinishCall(
            leg=0, user_id=1, duration=5, status_code="200", add_to_chat=True
        )


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_half_the_stream_then_a_new_translator_never_raises(path: Path) -> None:
    """A listener restarted mid-call (state lost) keeps going and still ends the call."""
    events = recorded_events(path)
    for cut in range(0, len(events), 7):
        AmiTranslator().feed_all(events[:cut])
        restarted = AmiTranslator()
        facts = restarted.feed_all(events[cut:])
        ended = [f for f in facts if isinstance(f, Ended)]
        assert len(ended) <= 1
        assert restarted.active_calls in ([], [events[0]["Linkedid"]])
