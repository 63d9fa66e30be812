"""The call model, scenario by scenario: which Bitrix24 commands each PBX fact implies."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from callbridge.domain.call import (
    MAX_PENDING_EVENTS,
    Call,
    CallState,
    LeadCreation,
    LegState,
)
from callbridge.domain.commands import (
    AttachRecord,
    CallType,
    FinishCall,
    HideCard,
    RegisterCall,
    ShowCard,
    command_from_dict,
    command_to_dict,
)
from callbridge.domain.errors import CallStateError, InvalidEventError, WrongCallError
from callbridge.domain.events import (
    CallEvent,
    CallStarted,
    Direction,
    Disposition,
    Ringing,
    TransferKind,
    event_from_dict,
    event_to_dict,
)

from .factories import (
    CALL_ID,
    CUSTOMER,
    DEFAULT,
    DID,
    IVAN,
    MARIA,
    OLEG,
    T0,
    Pbx,
    of_type,
    policy,
    run,
)

OUTSIDE = "+74957654321"
BLIND, ATTENDED = TransferKind.BLIND, TransferKind.ATTENDED
ANSWERED, NO_ANSWER, BUSY, CANCELLED, FAILED = (
    Disposition.ANSWERED,
    Disposition.NO_ANSWER,
    Disposition.BUSY,
    Disposition.CANCELLED,
    Disposition.FAILED,
)


def finish(leg: int, user: int, duration: int, status: str, **extra: object) -> FinishCall:
    values: dict[str, object] = {
        "leg": leg,
        "user_id": user,
        "duration": duration,
        "status_code": status,
        "add_to_chat": True,
    }
    values.update(extra)
    return FinishCall(**values)  # type: ignore[arg-type]


def register(leg: int, user: int, *, at: float = 0, **extra: object) -> RegisterCall:
    values: dict[str, object] = {
        "leg": leg,
        "external_call_id": f"{CALL_ID}-{leg}",
        "user_id": user,
        "phone_number": CUSTOMER,
        "type": CallType.INBOUND,
        "call_start_date": (T0 + timedelta(seconds=at)).isoformat(timespec="seconds"),
        "line_number": DID,
        "crm_create": leg == 0,
        "crm_source": "CALL",
        "show": leg > 0,
    }
    values.update(extra)
    return RegisterCall(**values)  # type: ignore[arg-type]


@pytest.fixture
def pbx() -> Pbx:
    return Pbx()


@pytest.fixture
def call() -> Call:
    return Call.new(CALL_ID)


class TestInboundToOneExtension:
    def test_answered(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        assert call.apply(pbx.started(0), settings) == [register(0, DEFAULT)]
        assert call.apply(pbx.ringing(0.2, "101"), settings) == [ShowCard(leg=0, user_ids=(IVAN,))]
        assert call.apply(pbx.answered(3.2, "101"), settings) == []
        assert call.apply(pbx.leg_ended(6.4, "101", ANSWERED, 16), settings) == []
        assert call.apply(pbx.ended(6.5), settings) == [finish(0, IVAN, 3, "200")]
        assert call.state is CallState.ENDED
        assert call.answered_by == "101"
        assert call.talk_seconds == 3
        assert call.status_code == "200"

    def test_register_parameters(self, pbx: Pbx, call: Call) -> None:
        (command,) = call.apply(pbx.started(0), policy())
        assert isinstance(command, RegisterCall)
        assert command.method == "telephony.externalCall.register"
        assert command.to_params() == {
            "USER_ID": DEFAULT,
            "PHONE_NUMBER": "+74951234567",
            "TYPE": 2,
            "CALL_START_DATE": "2026-03-07T10:20:30+03:00",
            "CRM_CREATE": 1,
            "SHOW": 0,
            "EXTERNAL_CALL_ID": "1773130779.12-0",
            "LINE_NUMBER": "4951110101",
            "CRM_SOURCE": "CALL",
        }

    def test_not_answered(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0), pbx.ringing(0.1, "101")])
        assert call.apply(pbx.leg_ended(15.1, "101", NO_ANSWER, 19), settings) == [
            HideCard(leg=0, user_ids=(IVAN,))
        ]
        # A direct line: the missed call belongs to the one employee whose phone rang.
        assert call.apply(pbx.ended(15.2, NO_ANSWER, cause=16), settings) == [
            finish(0, IVAN, 0, "304")
        ]
        assert call.status_code == "304"
        assert not call.answered

    def test_not_answered_without_leg_endings_hides_then_finishes(
        self, pbx: Pbx, call: Call
    ) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0), pbx.ringing(0.1, "101")])
        assert call.apply(pbx.ended(15, NO_ANSWER), settings) == [
            HideCard(leg=0, user_ids=(IVAN,)),
            finish(0, IVAN, 0, "304"),
        ]

    def test_busy(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0)])
        # A busy phone never rings: no card, but the call was offered to Ivan.
        assert call.apply(pbx.leg_ended(0.1, "101", BUSY, 17), settings) == []
        assert call.apply(pbx.ended(0.2, BUSY, cause=17), settings) == [
            finish(0, IVAN, 0, "486", failed_reason="Q.850 cause 17: user busy")
        ]

    def test_caller_gave_up_while_ringing_is_missed(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0), pbx.ringing(0.1, "101")])
        commands = run(
            call,
            settings,
            [pbx.leg_ended(5, "101", CANCELLED, 16), pbx.ended(5.01, CANCELLED, cause=16)],
        )
        assert commands == [HideCard(leg=0, user_ids=(IVAN,)), finish(0, IVAN, 0, "304")]

    def test_responsible_user_gets_the_missed_call(self, pbx: Pbx, call: Call) -> None:
        settings = policy(responsible_user_id=77)
        assert call.apply(pbx.started(0), settings) == [register(0, 77)]
        commands = run(call, settings, [pbx.ringing(0.1, "101"), pbx.ended(9, CANCELLED)])
        assert commands[-1] == finish(0, 77, 0, "304")

    def test_hung_up_in_the_ivr_before_anything_rang(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        commands = run(call, settings, [pbx.started(0), pbx.ended(12, CANCELLED)])
        assert commands == [register(0, DEFAULT), finish(0, DEFAULT, 0, "304")]

    def test_failed(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        commands = run(call, settings, [pbx.started(0), pbx.ended(1, FAILED, cause=34)])
        assert commands[-1] == finish(
            0, DEFAULT, 0, "503", failed_reason="Q.850 cause 34: no circuit available"
        )

    def test_answer_without_a_ringing_event_shows_the_card(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0)])
        assert call.apply(pbx.answered(2, "101"), settings) == [ShowCard(leg=0, user_ids=(IVAN,))]

    def test_answer_that_does_not_name_the_extension(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        commands = run(
            call, settings, [pbx.started(0), pbx.ringing(1, "102"), pbx.answered(3), pbx.ended(9)]
        )
        assert commands[-1] == finish(0, MARIA, 6, "200")


class TestRingGroup:
    def test_one_show_for_all_then_one_hide_for_the_others(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0)])
        assert call.apply(pbx.ringing(0.1, "101", "102", "103"), settings) == [
            ShowCard(leg=0, user_ids=(IVAN, MARIA, OLEG))
        ]
        assert call.apply(pbx.answered(4.1, "102"), settings) == [
            HideCard(leg=0, user_ids=(IVAN, OLEG))
        ]
        late = [
            pbx.leg_ended(4.2, "101", CANCELLED, 26),
            pbx.leg_ended(4.2, "103", CANCELLED, 26),
            pbx.ringing(4.3),
        ]
        assert run(call, settings, late) == []
        assert run(call, settings, [pbx.leg_ended(10, "102", ANSWERED), pbx.ended(10.1)]) == [
            finish(0, MARIA, 6, "200")
        ]

    def test_nobody_answers(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0), pbx.ringing(0.1, "101", "102", "103")])
        assert call.apply(pbx.ended(20, NO_ANSWER), settings) == [
            HideCard(leg=0, user_ids=(IVAN, MARIA, OLEG)),
            finish(0, DEFAULT, 0, "304"),
        ]

    def test_members_stop_ringing_one_by_one(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0), pbx.ringing(0.1, "101", "102", "103")])
        assert call.apply(pbx.leg_ended(2, "101", BUSY, 17), settings) == [
            HideCard(leg=0, user_ids=(IVAN,))
        ]
        assert call.apply(pbx.ringing(3, "102"), settings) == [HideCard(leg=0, user_ids=(OLEG,))]
        assert call.apply(pbx.ringing(4, "102", "103"), settings) == [
            ShowCard(leg=0, user_ids=(OLEG,))
        ]

    def test_two_phones_of_one_employee(self, pbx: Pbx, call: Call) -> None:
        settings = policy(users_by_extension={"101": IVAN, "201": IVAN, "102": MARIA})
        run(call, settings, [pbx.started(0)])
        assert call.apply(pbx.ringing(0.1, "101", "201", "102"), settings) == [
            ShowCard(leg=0, user_ids=(IVAN, MARIA))
        ]
        # The desk phone stops, the softphone still rings: Ivan keeps his card.
        assert call.apply(pbx.leg_ended(3, "101", CANCELLED), settings) == []
        assert call.apply(pbx.answered(4, "201"), settings) == [HideCard(leg=0, user_ids=(MARIA,))]


class TestQueue:
    def test_cards_follow_the_ringing_member(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0)])
        assert call.apply(pbx.ringing(1, "101"), settings) == [ShowCard(leg=0, user_ids=(IVAN,))]
        # A member whose ring times out: NOANSWER, then CANCEL for the same destination.
        assert call.apply(pbx.leg_ended(16, "101", NO_ANSWER), settings) == [
            HideCard(leg=0, user_ids=(IVAN,))
        ]
        assert call.apply(pbx.leg_ended(16.01, "101", CANCELLED), settings) == []
        assert call.apply(pbx.ringing(17, "102"), settings) == [ShowCard(leg=0, user_ids=(MARIA,))]
        assert call.apply(pbx.answered(20, "102"), settings) == []
        assert call.apply(pbx.ended(30), settings) == [finish(0, MARIA, 10, "200")]

    def test_next_member_replaces_the_previous_in_one_step(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0), pbx.ringing(1, "101")])
        assert call.apply(pbx.ringing(16, "102"), settings) == [
            ShowCard(leg=0, user_ids=(MARIA,)),
            HideCard(leg=0, user_ids=(IVAN,)),
        ]

    def test_nobody_in_the_queue_answers(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        events = [
            pbx.started(0),
            pbx.ringing(1, "101"),
            pbx.leg_ended(16, "101", NO_ANSWER),
            pbx.ringing(17, "102"),
            pbx.leg_ended(32, "102", NO_ANSWER),
            pbx.ended(40, CANCELLED),
        ]
        commands = run(call, settings, events)
        assert commands[-1] == finish(0, DEFAULT, 0, "304")
        assert call.legs[0].rang_users == {IVAN, MARIA}


class TestTransfer:
    def answered_by_ivan(self, pbx: Pbx, call: Call) -> None:
        run(call, policy(), [pbx.started(0), pbx.ringing(0.1, "101"), pbx.answered(3, "101")])

    def test_blind(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        self.answered_by_ivan(pbx, call)
        transfer = pbx.transferred(10, BLIND, from_extension="101", to_extension="102")
        assert call.apply(transfer, settings) == [
            finish(0, IVAN, 7, "200"),
            register(1, MARIA, at=10),
        ]
        rest = [
            pbx.leg_ended(10.1, "101", ANSWERED, 16),
            pbx.ringing(10.2, "102"),
            pbx.answered(14, "102"),
            pbx.leg_ended(20, "102", ANSWERED),
        ]
        assert run(call, settings, rest) == []
        assert call.apply(pbx.ended(20.1), settings) == [finish(1, MARIA, 6, "200")]
        assert [leg.external_call_id for leg in call.legs] == [f"{CALL_ID}-0", f"{CALL_ID}-1"]
        # Talk time is all there: 3→10 with Ivan, 14→20 with Maria (10→14 it rang).
        assert call.talk_seconds == 7 + 6

    def test_attended(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        self.answered_by_ivan(pbx, call)
        # Ivan consults Maria while the customer waits: her phone rings for him, which is
        # no conversation with the customer.
        assert call.apply(pbx.ringing(8, "102"), settings) == []
        transfer = pbx.transferred(12, ATTENDED, from_extension="101", to_extension="102")
        assert call.apply(transfer, settings) == [
            finish(0, IVAN, 9, "200"),
            register(1, MARIA, at=12),
        ]
        assert call.legs[1].state is LegState.TALKING
        assert call.apply(pbx.ended(20), settings) == [finish(1, MARIA, 8, "200")]
        assert call.talk_seconds == 20 - 3

    def test_durations_add_up_despite_fractional_seconds(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        events = [
            pbx.started(0),
            pbx.answered(0.4, "101"),
            pbx.transferred(1.9, ATTENDED, to_extension="102"),
            pbx.transferred(3.6, ATTENDED, to_extension="103"),
            pbx.ended(5.5),
        ]
        finishes = of_type(run(call, settings, events), FinishCall)
        assert [f.user_id for f in finishes] == [IVAN, MARIA, OLEG]
        assert sum(f.duration for f in finishes) == round(5.5) - round(0.4)

    def test_to_an_employees_mobile(self, pbx: Pbx, call: Call) -> None:
        settings = policy(users_by_number={"+79161234567": 55})
        self.answered_by_ivan(pbx, call)
        commands = call.apply(pbx.transferred(10, BLIND, to_number="8 916 123-45-67"), settings)
        assert commands == [finish(0, IVAN, 7, "200"), register(1, 55, at=10)]
        assert call.legs[1].target == "+79161234567"
        run(call, settings, [pbx.answered(15)])
        assert call.apply(pbx.ended(25), settings) == [finish(1, 55, 10, "200")]

    def test_to_an_outside_number_nobody_owns(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        self.answered_by_ivan(pbx, call)
        commands = call.apply(pbx.transferred(10, ATTENDED, to_number="+442079460958"), settings)
        # The transferring employee keeps the forwarded part.
        assert commands == [finish(0, IVAN, 7, "200"), register(1, IVAN, at=10)]
        assert call.apply(pbx.ended(25), settings) == [finish(1, IVAN, 15, "200")]

    def test_target_does_not_answer(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        self.answered_by_ivan(pbx, call)
        run(call, settings, [pbx.transferred(10, BLIND, to_extension="102")])
        assert call.apply(pbx.ringing(10.1, "102"), settings) == []
        assert call.apply(pbx.leg_ended(25, "102", NO_ANSWER), settings) == [
            HideCard(leg=1, user_ids=(MARIA,))
        ]
        # The call as a whole was answered; Maria's part was not.
        assert call.apply(pbx.ended(26, ANSWERED), settings) == [finish(1, MARIA, 0, "304")]
        assert call.status_code == "200"

    def test_target_busy(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        self.answered_by_ivan(pbx, call)
        events = [
            pbx.transferred(10, BLIND, to_extension="102"),
            pbx.leg_ended(10.2, "102", BUSY, 17),
            pbx.ended(11, ANSWERED),
        ]
        assert run(call, settings, events)[-2:] == [
            HideCard(leg=1, user_ids=(MARIA,)),
            finish(1, MARIA, 0, "486", failed_reason="Q.850 cause 17: user busy"),
        ]

    def test_caller_hangs_up_while_the_target_rings(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        self.answered_by_ivan(pbx, call)
        events = [pbx.transferred(10, BLIND, to_extension="102"), pbx.ended(18, CANCELLED)]
        assert run(call, settings, events)[-1] == finish(1, MARIA, 0, "304")

    def test_transferer_hangup_does_not_count_for_the_target(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        self.answered_by_ivan(pbx, call)
        events = [
            pbx.transferred(10, BLIND, to_extension="102"),
            pbx.leg_ended(10.1, "101", BUSY, 17),
            pbx.ended(18, ANSWERED),
        ]
        assert run(call, settings, events)[-1] == finish(1, MARIA, 0, "304")

    def test_target_does_not_answer_and_the_call_comes_back(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        self.answered_by_ivan(pbx, call)
        run(call, settings, [pbx.transferred(10, BLIND, to_extension="102")])
        assert call.apply(pbx.ringing(25, "101"), settings) == [
            ShowCard(leg=1, user_ids=(IVAN,)),
            HideCard(leg=1, user_ids=(MARIA,)),
        ]
        assert call.apply(pbx.answered(27, "101"), settings) == []
        assert call.apply(pbx.ended(30), settings) == [finish(1, IVAN, 3, "200")]

    def test_transferer_hangup_reported_before_the_transfer(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        self.answered_by_ivan(pbx, call)
        assert call.apply(pbx.leg_ended(10, "101", ANSWERED), settings) == []
        assert call.legs[0].state is LegState.HUNG_UP
        transfer = pbx.transferred(10.05, BLIND, from_extension="101", to_extension="102")
        assert call.apply(transfer, settings) == [
            finish(0, IVAN, 7, "200"),
            register(1, MARIA, at=10.05),
        ]

    def test_transfer_while_ringing_only_moves_cards(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0), pbx.ringing(0.1, "101")])
        assert call.apply(pbx.transferred(2, BLIND, to_extension="102"), settings) == []
        assert call.apply(pbx.ringing(2.1, "102"), settings) == [
            ShowCard(leg=0, user_ids=(MARIA,)),
            HideCard(leg=0, user_ids=(IVAN,)),
        ]
        assert len(call.legs) == 1

    def test_takeover_without_a_transfer_event(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        self.answered_by_ivan(pbx, call)
        assert call.apply(pbx.answered(10, "102"), settings) == [
            finish(0, IVAN, 7, "200"),
            register(1, MARIA, at=10, external_call_id=f"{CALL_ID}-1"),
        ]
        # The transfer reported late changes nothing.
        late = pbx.transferred(10.1, ATTENDED, from_extension="101", to_extension="102")
        assert call.apply(late, settings) == []
        assert call.apply(pbx.ended(15), settings) == [finish(1, MARIA, 5, "200")]

    def test_parked_and_picked_up_by_someone_else(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        self.answered_by_ivan(pbx, call)
        assert call.apply(pbx.leg_ended(10, "101", ANSWERED), settings) == []
        assert call.apply(pbx.answered(30, "102"), settings) == [
            finish(0, IVAN, 7, "200"),
            register(1, MARIA, at=30),
        ]
        assert call.apply(pbx.ended(40), settings) == [finish(1, MARIA, 10, "200")]

    def test_sent_to_a_ring_group_after_the_employee_hung_up(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        self.answered_by_ivan(pbx, call)
        run(call, settings, [pbx.leg_ended(10, "101", ANSWERED)])
        assert call.apply(pbx.ringing(12, "102", "103"), settings) == [
            finish(0, IVAN, 7, "200"),
            register(1, MARIA, at=12, show=False),
            ShowCard(leg=1, user_ids=(MARIA, OLEG)),
        ]

    def test_transfer_of_an_outbound_call(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        events = [
            pbx.started(0, direction=Direction.OUTBOUND, number=OUTSIDE, extension="101", line=""),
            pbx.answered(5),
            pbx.transferred(9, ATTENDED, to_extension="103"),
        ]
        commands = run(call, settings, events)
        new_leg = of_type(commands, RegisterCall)[-1]
        assert new_leg.type is CallType.OUTBOUND
        assert new_leg.user_id == OLEG
        assert new_leg.crm_create is False
        assert of_type(commands, FinishCall) == [finish(0, IVAN, 4, "200")]


class TestOutboundFromDeskPhone:
    def started(self, pbx: Pbx, **kwargs: object) -> CallStarted:
        values: dict[str, object] = {
            "direction": Direction.OUTBOUND,
            "number": OUTSIDE,
            "extension": "101",
            "line": "",
        }
        values.update(kwargs)
        return pbx.started(0, **values)  # type: ignore[arg-type]

    def test_registered_for_the_extension_user(self, pbx: Pbx, call: Call) -> None:
        assert call.apply(self.started(pbx), policy()) == [
            RegisterCall(
                leg=0,
                external_call_id=f"{CALL_ID}-0",
                user_id=IVAN,
                phone_number=OUTSIDE,
                type=CallType.OUTBOUND,
                call_start_date="2026-03-07T10:20:30+03:00",
                line_number=None,
                crm_create=False,
                crm_source=None,
                show=True,
            )
        ]

    def test_answered(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        events = [
            self.started(pbx),
            pbx.ringing(0.5, "101"),  # the far end rings; the caller has the card already
            pbx.answered(5),
            pbx.leg_ended(10, "101", ANSWERED),
            pbx.ended(10.2),
        ]
        commands = run(call, settings, events)
        assert commands[1:] == [finish(0, IVAN, 5, "200")]

    @pytest.mark.parametrize(
        ("disposition", "cause", "status", "reason"),
        [
            (NO_ANSWER, 19, "304", None),
            (BUSY, 17, "486", "Q.850 cause 17: user busy"),
            (CANCELLED, 16, "603-S", "Q.850 cause 16: normal clearing"),
            (FAILED, 34, "503", "Q.850 cause 34: no circuit available"),
            (FAILED, 1, "404", "Q.850 cause 1: unallocated number"),
        ],
    )
    def test_not_answered(
        self,
        pbx: Pbx,
        call: Call,
        disposition: Disposition,
        cause: int,
        status: str,
        reason: str | None,
    ) -> None:
        settings = policy()
        events = [
            self.started(pbx),
            pbx.leg_ended(20, "101", disposition, cause),
            pbx.ended(20.1, disposition, cause=cause),
        ]
        # The employee who dialled keeps the card: no hide.
        assert run(call, settings, events)[1:] == [finish(0, IVAN, 0, status, failed_reason=reason)]

    def test_callback(self, pbx: Pbx, call: Call) -> None:
        (command,) = call.apply(self.started(pbx, callback=True), policy())
        assert isinstance(command, RegisterCall)
        assert command.type is CallType.CALLBACK

    def test_unknown_extension_falls_back_to_the_default_user(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        commands = run(
            call, settings, [self.started(pbx, extension="199"), pbx.ended(3, NO_ANSWER)]
        )
        assert [c.user_id for c in of_type(commands, RegisterCall)] == [DEFAULT]
        assert [c.user_id for c in of_type(commands, FinishCall)] == [DEFAULT]

    def test_no_extension_given(self, pbx: Pbx, call: Call) -> None:
        commands = call.apply(self.started(pbx, extension=None), policy())
        assert [c.user_id for c in of_type(commands, RegisterCall)] == [DEFAULT]


class TestInternalCalls:
    def events(self, pbx: Pbx) -> list[CallEvent]:
        return [
            pbx.started(0, direction=Direction.INTERNAL, number="102", extension="101", line=""),
            pbx.ringing(0.1, "102"),
            pbx.answered(2, "102"),
            pbx.ended(9),
            pbx.recording(10),
        ]

    def test_ignored_by_default(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        events = self.events(pbx)
        assert run(call, settings, events[:1]) == []
        snapshot = call.to_dict()
        assert run(call, settings, events[1:]) == []
        assert call.state is CallState.IGNORED
        assert call.is_ended
        assert call.to_dict() == snapshot

    def test_tracked_when_the_setting_says_so(self, pbx: Pbx, call: Call) -> None:
        settings = policy(ignore_internal=False, lead_creation=LeadCreation.ALL)
        commands = run(call, settings, self.events(pbx))
        (reg,) = of_type(commands, RegisterCall)
        assert (reg.type, reg.user_id, reg.phone_number, reg.crm_create) == (
            CallType.OUTBOUND,
            IVAN,
            "102",
            False,
        )
        assert of_type(commands, FinishCall) == [finish(0, MARIA, 7, "200")]


class TestClickToCall:
    def test_finished_never_registered(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        started = pbx.started(
            0,
            direction=Direction.OUTBOUND,
            number=OUTSIDE,
            extension="101",
            line="",
            bitrix24_call_id="externalCall.716f1cb73def9700a23842adf9c4c568.1773130779",
        )
        assert call.apply(started, settings) == []
        leg = call.leg(0)
        assert leg.preregistered
        assert leg.bitrix24_call_id == "externalCall.716f1cb73def9700a23842adf9c4c568.1773130779"
        commands = run(
            call,
            settings,
            [
                pbx.answered(8),
                pbx.ended(15),
                pbx.recording(16, url="https://pbx/r.mp3", path=None, fmt="mp3"),
            ],
        )
        assert commands == [
            finish(0, IVAN, 7, "200"),
            AttachRecord(leg=0, filename=f"{CALL_ID}-0.mp3", format="mp3", url="https://pbx/r.mp3"),
        ]
        assert not of_type(commands, RegisterCall)

    def test_not_answered(self, pbx: Pbx, call: Call) -> None:
        started = pbx.started(
            0, direction=Direction.OUTBOUND, number=OUTSIDE, extension="101", bitrix24_call_id="x"
        )
        commands = run(call, policy(), [started, pbx.ended(30, NO_ANSWER)])
        assert commands == [finish(0, IVAN, 0, "304")]


class TestUsersAndLeads:
    def test_unmapped_extension_gets_the_default_user(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        events = [pbx.started(0), pbx.ringing(1, "199"), pbx.answered(2, "199"), pbx.ended(5)]
        commands = run(call, settings, events)
        assert of_type(commands, ShowCard) == [ShowCard(leg=0, user_ids=(DEFAULT,))]
        assert of_type(commands, FinishCall) == [finish(0, DEFAULT, 3, "200")]

    @pytest.mark.parametrize(
        ("setting", "direction", "expected"),
        [
            (LeadCreation.NEVER, Direction.INBOUND, False),
            (LeadCreation.NEVER, Direction.OUTBOUND, False),
            (LeadCreation.INBOUND, Direction.INBOUND, True),
            (LeadCreation.INBOUND, Direction.OUTBOUND, False),
            (LeadCreation.OUTBOUND, Direction.INBOUND, False),
            (LeadCreation.OUTBOUND, Direction.OUTBOUND, True),
            (LeadCreation.ALL, Direction.INBOUND, True),
            (LeadCreation.ALL, Direction.OUTBOUND, True),
            (LeadCreation.ALL, Direction.INTERNAL, False),
        ],
    )
    def test_lead_creation_setting(
        self, pbx: Pbx, call: Call, setting: LeadCreation, direction: Direction, expected: bool
    ) -> None:
        settings = policy(lead_creation=setting, ignore_internal=False)
        (command,) = call.apply(pbx.started(0, direction=direction, extension="101"), settings)
        assert isinstance(command, RegisterCall)
        assert command.crm_create is expected
        assert command.to_params()["CRM_CREATE"] == int(expected)

    @pytest.mark.parametrize("number", ["", "anonymous", "Unknown"])
    def test_anonymous_caller(self, pbx: Pbx, call: Call, number: str) -> None:
        (command,) = call.apply(pbx.started(0, number=number), policy())
        assert isinstance(command, RegisterCall)
        assert command.phone_number == "0"
        assert command.crm_create is False

    def test_anonymous_number_is_a_setting(self, pbx: Pbx, call: Call) -> None:
        (command,) = call.apply(pbx.started(0, number=""), policy(anonymous_number="000"))
        assert isinstance(command, RegisterCall)
        assert command.phone_number == "000"

    def test_caller_given_as_an_extension_makes_no_lead(self, pbx: Pbx, call: Call) -> None:
        (command,) = call.apply(pbx.started(0, number="101"), policy())
        assert isinstance(command, RegisterCall)
        assert (command.phone_number, command.crm_create) == ("101", False)

    @pytest.mark.parametrize(
        ("number", "phone"),
        [("84951234567", CUSTOMER), ("4951234567", CUSTOMER), ("+7 (495) 123-45-67", CUSTOMER)],
    )
    def test_caller_number_is_normalised(
        self, pbx: Pbx, call: Call, number: str, phone: str
    ) -> None:
        (command,) = call.apply(pbx.started(0, number=number), policy())
        assert isinstance(command, RegisterCall)
        assert command.phone_number == phone
        assert call.external_number == number

    @pytest.mark.parametrize(
        ("line", "sources", "default", "expected"),
        [
            (DID, {DID: "CALL"}, None, "CALL"),
            ("4951110200", {DID: "CALL"}, "WEB", "WEB"),
            ("4951110200", {DID: "CALL"}, None, None),
            ("", {}, None, None),
        ],
    )
    def test_crm_source_per_line(
        self,
        pbx: Pbx,
        call: Call,
        line: str,
        sources: dict[str, str],
        default: str | None,
        expected: str | None,
    ) -> None:
        settings = policy(crm_sources=sources, default_crm_source=default)
        (command,) = call.apply(pbx.started(0, line=line), settings)
        assert isinstance(command, RegisterCall)
        assert command.crm_source == expected
        assert command.to_params().get("CRM_SOURCE") == expected

    def test_line_number_mapping(self, pbx: Pbx, call: Call) -> None:
        settings = policy(line_numbers={DID: "main"})
        (command,) = call.apply(pbx.started(0), settings)
        assert isinstance(command, RegisterCall)
        assert command.line_number == "main"

    def test_no_line(self, pbx: Pbx, call: Call) -> None:
        (command,) = call.apply(pbx.started(0, line=""), policy())
        assert isinstance(command, RegisterCall)
        assert "LINE_NUMBER" not in command.to_params()


class TestFinish:
    def answered_call(self, pbx: Pbx) -> list[CallEvent]:
        return [pbx.started(0), pbx.ringing(0.1, "101"), pbx.answered(2, "101")]

    @pytest.mark.parametrize("add_to_chat", [True, False])
    def test_add_to_chat_is_always_explicit(self, pbx: Pbx, call: Call, add_to_chat: bool) -> None:
        settings = policy(add_to_chat=add_to_chat)
        commands = run(call, settings, [*self.answered_call(pbx), pbx.ended(9)])
        (command,) = of_type(commands, FinishCall)
        assert command.to_params() == {
            "USER_ID": IVAN,
            "DURATION": 7,
            "STATUS_CODE": "200",
            "ADD_TO_CHAT": int(add_to_chat),
        }

    def test_vote_and_cost(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        ended = pbx.ended(9, vote=5, cost=1.25, currency="RUB")
        commands = run(call, settings, [*self.answered_call(pbx), ended])
        (command,) = of_type(commands, FinishCall)
        assert command.to_params() == {
            "USER_ID": IVAN,
            "DURATION": 7,
            "STATUS_CODE": "200",
            "ADD_TO_CHAT": 1,
            "VOTE": 5,
            "COST": 1.25,
            "COST_CURRENCY": "RUB",
        }

    def test_vote_after_the_employee_hung_up(self, pbx: Pbx, call: Call) -> None:
        # "Stay on the line to rate the call": the employee leaves, the customer votes.
        settings = policy()
        events = [
            *self.answered_call(pbx),
            pbx.leg_ended(9, "101", ANSWERED),
            pbx.ended(25, vote=4),
        ]
        commands = run(call, settings, events)
        assert of_type(commands, FinishCall) == [finish(0, IVAN, 7, "200", vote=4)]

    def test_vote_goes_to_the_last_conversation(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        events = [
            *self.answered_call(pbx),
            pbx.transferred(5, ATTENDED, to_extension="102"),
            pbx.ended(9, vote=3, cost=2.0),
        ]
        finishes = of_type(run(call, settings, events), FinishCall)
        assert [(f.leg, f.vote, f.cost) for f in finishes] == [(0, None, None), (1, 3, 2.0)]

    def test_missed_leg_gets_cost_but_no_vote(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        events = [pbx.started(0), pbx.ended(9, NO_ANSWER, vote=5, cost=0.5)]
        (command,) = of_type(run(call, settings, events), FinishCall)
        assert (command.vote, command.cost) == (None, 0.5)

    def test_answered_per_pbx_without_an_answer_event(self, pbx: Pbx, call: Call) -> None:
        # A minimal integration sends only start, ringing and end with talk seconds.
        settings = policy()
        events = [pbx.started(0), pbx.ringing(0.1, "101"), pbx.ended(60, ANSWERED, talk_seconds=42)]
        assert run(call, settings, events)[-1] == finish(0, IVAN, 42, "200")

    def test_answered_per_pbx_with_nothing_else_known(self, pbx: Pbx, call: Call) -> None:
        events = [pbx.started(0), pbx.ended(60, ANSWERED)]
        assert run(call, policy(), events)[-1] == finish(0, DEFAULT, 0, "200")

    def test_duration_never_negative(self, pbx: Pbx, call: Call) -> None:
        # Clocks on two PBX processes disagree: an end stamped before the answer.
        events = [pbx.started(0), pbx.answered(10, "101"), pbx.ended(8)]
        assert run(call, policy(), events)[-1] == finish(0, IVAN, 0, "200")

    def test_finish_params_of_a_failure(self) -> None:
        command = finish(2, 5, 0, "503", failed_reason="Q.850 cause 34: no circuit available")
        assert command.method == "telephony.externalCall.finish"
        assert command.to_params() == {
            "USER_ID": 5,
            "DURATION": 0,
            "STATUS_CODE": "503",
            "ADD_TO_CHAT": 1,
            "FAILED_REASON": "Q.850 cause 34: no circuit available",
        }


class TestRecordings:
    def test_held_until_the_finish(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0), pbx.answered(2, "101")])
        assert call.apply(pbx.recording(8), settings) == []
        assert call.apply(pbx.ended(9), settings) == [
            finish(0, IVAN, 7, "200"),
            AttachRecord(
                leg=0,
                filename=f"{CALL_ID}-0.wav",
                format="wav",
                path="/var/spool/asterisk/monitor/rec.wav",
            ),
        ]

    def test_after_the_end(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0), pbx.answered(2, "101"), pbx.ended(9)])
        record = pbx.recording(10, url="https://pbx.example/rec/1.mp3", path=None, fmt="MP3")
        (command,) = call.apply(record, settings)
        assert command == AttachRecord(
            leg=0, filename=f"{CALL_ID}-0.mp3", format="mp3", url="https://pbx.example/rec/1.mp3"
        )
        assert command.to_params() == {
            "FILENAME": f"{CALL_ID}-0.mp3",
            "RECORD_URL": "https://pbx.example/rec/1.mp3",
        }
        # The same event again: nothing. Another recording: attached again (it replaces).
        assert call.apply(record, settings) == []
        assert len(call.apply(pbx.recording(11), settings)) == 1

    def test_goes_to_every_conversation_of_a_transferred_call(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        events = [
            pbx.started(0),
            pbx.answered(2, "101"),
            pbx.transferred(5, BLIND, to_extension="102"),
            pbx.answered(8, "102"),
            pbx.recording(12),
            pbx.ended(12),
        ]
        commands = run(call, settings, events)
        assert [c.leg for c in of_type(commands, AttachRecord)] == [0, 1]
        # Each attach comes after its leg's finish.
        kinds = [(type(c).__name__, c.leg) for c in commands]
        for leg in (0, 1):
            assert kinds.index(("FinishCall", leg)) < kinds.index(("AttachRecord", leg))

    def test_per_extension_recording(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        events = [
            pbx.started(0),
            pbx.answered(2, "101"),
            pbx.transferred(5, ATTENDED, to_extension="102"),
            pbx.ended(12),
            pbx.recording(13, extension="102"),
            pbx.recording(14, extension="999"),
        ]
        commands = run(call, settings, events)
        assert [c.leg for c in of_type(commands, AttachRecord)] == [1, 0, 1]

    def test_voicemail_of_a_missed_call(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        events = [
            pbx.started(0),
            pbx.ringing(1, "101"),
            pbx.ended(40, NO_ANSWER),
            pbx.recording(41),
        ]
        assert [c.leg for c in of_type(run(call, settings, events), AttachRecord)] == [0]

    def test_unsafe_characters_in_the_filename(self) -> None:
        pbx, call = Pbx("pbx/1:2 3"), Call.new("pbx/1:2 3")
        commands = run(call, policy(), [pbx.started(0), pbx.ended(1, CANCELLED), pbx.recording(2)])
        (command,) = of_type(commands, AttachRecord)
        assert command.filename == "pbx_1_2_3-0.wav"


class TestIdempotencyAndOrder:
    def test_repeated_event_changes_nothing(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        events = [pbx.started(0), pbx.ringing(0.1, "101"), pbx.answered(2, "101")]
        run(call, settings, events)
        snapshot = call.to_dict()
        assert run(call, settings, events) == []
        assert call.to_dict() == snapshot

    def test_events_after_the_end_are_ignored(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.started(0), pbx.answered(2, "101"), pbx.ended(9)])
        snapshot = call.to_dict()
        late = [
            pbx.ringing(10, "102"),
            pbx.answered(11, "102"),
            pbx.transferred(12, BLIND, to_extension="103"),
            pbx.leg_ended(13, "101", CANCELLED),
            pbx.ended(14, NO_ANSWER),
            pbx.started(15),
        ]
        assert run(call, settings, late) == []
        assert call.to_dict() == snapshot

    def test_event_of_another_call_is_refused(self, call: Call) -> None:
        with pytest.raises(WrongCallError):
            call.apply(Pbx("other").started(0), policy())

    def test_second_start_is_ignored(self, pbx: Pbx, call: Call) -> None:
        run(call, policy(), [pbx.started(0)])
        assert call.apply(pbx.started(1), policy()) == []
        assert len(call.legs) == 1

    def test_events_before_the_start_wait_for_it(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        started = pbx.started(0)
        early = [pbx.answered(3, "101"), pbx.ringing(0.1, "101")]
        assert run(call, settings, early) == []
        assert call.state is CallState.NEW
        # Held events are replayed in PBX time order once the start arrives.
        assert call.apply(started, settings) == [
            register(0, DEFAULT),
            ShowCard(leg=0, user_ids=(IVAN,)),
        ]
        assert call.legs[0].talker == "101"
        assert call.pending == []
        # Repeats of the held events are still recognised.
        assert run(call, settings, early) == []

    def test_held_events_of_an_ignored_call_are_dropped(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        run(call, settings, [pbx.ringing(1, "102")])
        started = pbx.started(0, direction=Direction.INTERNAL, number="102", extension="101")
        assert call.apply(started, settings) == []
        assert call.pending == []

    def test_hold_is_bounded(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        for index in range(MAX_PENDING_EVENTS + 5):
            call.apply(pbx.ringing(index, "101"), settings)
        assert len(call.pending) == MAX_PENDING_EVENTS


class TestCardsDisabled:
    def test_no_show_or_hide(self, pbx: Pbx, call: Call) -> None:
        settings = policy(show_card=False)
        events = [
            pbx.started(0),
            pbx.ringing(0.1, "101", "102"),
            pbx.answered(3, "102"),
            pbx.transferred(5, BLIND, to_extension="103"),
            pbx.ended(9, ANSWERED),
        ]
        commands = run(call, settings, events)
        assert not of_type(commands, ShowCard)
        assert not of_type(commands, HideCard)
        assert all(not r.show for r in of_type(commands, RegisterCall))


class TestSerialisation:
    def test_round_trip_through_json(self, pbx: Pbx, call: Call) -> None:
        settings = policy()
        events = [
            pbx.started(0),
            pbx.ringing(0.1, "101", "102"),
            pbx.answered(2, "101"),
            pbx.recording(3),
            pbx.transferred(4, BLIND, to_number="+79161234567"),
            pbx.leg_ended(4.5, "101", ANSWERED, 16),
        ]
        run(call, settings, events)
        call.leg_registered(0, "externalCall.abc.1", crm_entity_type="LEAD", crm_entity_id=7)
        data = json.loads(json.dumps(call.to_dict()))
        restored = Call.from_dict(data)
        assert restored == call
        assert restored.to_dict() == call.to_dict()
        end = pbx.ended(9)
        assert restored.apply(end, settings) == call.apply(end, settings)

    def test_round_trip_with_held_events(self, pbx: Pbx, call: Call) -> None:
        run(call, policy(), [pbx.ringing(0.1, "101"), pbx.ended(3, CANCELLED)])
        restored = Call.from_dict(json.loads(json.dumps(call.to_dict())))
        assert restored == call
        assert restored.apply(pbx.started(0), policy()) == call.apply(pbx.started(0), policy())

    @pytest.mark.parametrize(
        "mutate",
        [
            lambda d: d.update(version=2),
            lambda d: d.pop("legs"),
            lambda d: d.update(state="bogus"),
            lambda d: d.update(started_at="2026-03-07T10:20:30"),
            lambda d: d["legs"][0].pop("user_id"),
            lambda d: d.update(pending=[{"type": "call.nonsense"}]),
            lambda d: d.update(recordings=[{"event_id": "x"}]),
        ],
    )
    def test_malformed_stored_call(self, pbx: Pbx, call: Call, mutate: object) -> None:
        run(call, policy(), [pbx.started(0), pbx.answered(1, "101")])
        data = json.loads(json.dumps(call.to_dict()))
        mutate(data)  # type: ignore[operator]
        with pytest.raises(CallStateError):
            Call.from_dict(data)

    def test_not_a_mapping(self) -> None:
        with pytest.raises(CallStateError):
            Call.from_dict([])  # type: ignore[arg-type]

    def test_leg_registered_is_written_back(self, pbx: Pbx, call: Call) -> None:
        run(call, policy(), [pbx.started(0)])
        call.leg_registered(0, "externalCall.abc.1")
        call.leg_registered(0, "externalCall.abc.1", crm_entity_type="CONTACT", crm_entity_id=9)
        leg = call.leg(0)
        assert (leg.bitrix24_call_id, leg.crm_entity_type, leg.crm_entity_id) == (
            "externalCall.abc.1",
            "CONTACT",
            9,
        )
        with pytest.raises(CallStateError):
            call.leg(1)

    @pytest.mark.parametrize(
        "command",
        [
            register(0, DEFAULT),
            ShowCard(leg=1, user_ids=(1, 2)),
            HideCard(leg=0, user_ids=(3,)),
            finish(0, 1, 5, "603-S", vote=2, cost=1.5, cost_currency="RUB", failed_reason="x"),
            AttachRecord(leg=1, filename="a.wav", format="wav", path="/a.wav"),
        ],
    )
    def test_command_round_trip(self, command: object) -> None:
        data = json.loads(json.dumps(command_to_dict(command)))  # type: ignore[arg-type]
        assert command_from_dict(data) == command

    @pytest.mark.parametrize(
        "data",
        [{"kind": "nope"}, {}, {"kind": "show", "leg": 0}, {"kind": "register", "type": 9}],
    )
    def test_bad_command_dict(self, data: dict[str, object]) -> None:
        with pytest.raises(CallStateError):
            command_from_dict(data)

    def test_call_status_before_the_end(self, pbx: Pbx, call: Call) -> None:
        assert call.status_code is None
        run(call, policy(), [pbx.started(0)])
        assert call.status_code is None


class TestEvents:
    def test_round_trip_of_every_kind(self, pbx: Pbx) -> None:
        events = [
            pbx.started(0, bitrix24_call_id="x", extension="101", callback=True),
            pbx.ringing(1, "101", "102"),
            pbx.answered(2, "101"),
            pbx.transferred(3, ATTENDED, from_extension="101", to_number="+74957654321"),
            pbx.leg_ended(4, "101", BUSY, 17),
            pbx.ended(5, ANSWERED, talk_seconds=3, vote=5, cost=0.1, currency="RUB"),
            pbx.recording(6, url="https://x/y.wav"),
        ]
        for event in events:
            data = json.loads(json.dumps(event_to_dict(event)))
            assert event_from_dict(data) == event
        assert event_to_dict(events[1])["extensions"] == ["101", "102"]
        assert event_to_dict(events[0])["type"] == "call.started"

    @pytest.mark.parametrize(
        "data",
        [
            {"type": "call.unknown"},
            {"type": 5},
            {"type": "call.answered", "call_id": "1", "event_id": "e", "timestamp": "bad"},
            {"type": "call.answered", "call_id": "1", "event_id": "e"},
            {
                "type": "call.answered",
                "call_id": "1",
                "event_id": "e",
                "timestamp": "2026-03-07T10:20:30+03:00",
                "extra": 1,
            },
            {
                "type": "call.ringing",
                "call_id": "1",
                "event_id": "e",
                "timestamp": "2026-03-07T10:20:30+03:00",
                "extensions": "101",
            },
            {
                "type": "call.ended",
                "call_id": "1",
                "event_id": "e",
                "timestamp": "2026-03-07T10:20:30+03:00",
                "disposition": "maybe",
            },
        ],
    )
    def test_bad_event_dict(self, data: dict[str, object]) -> None:
        with pytest.raises(InvalidEventError):
            event_from_dict(data)

    @pytest.mark.parametrize(
        ("factory", "match"),
        [
            (lambda p: p.ringing(0, ""), "extensions"),
            (lambda p: p.ended(0, vote=6), "vote"),
            (lambda p: p.ended(0, vote=0), "vote"),
            (lambda p: p.ended(0, talk_seconds=-1), "talk_seconds"),
            (lambda p: p.ended(0, cause=300), "hangup_cause"),
            (lambda p: p.ended(0, cost=-1.0), "cost"),
            (lambda p: p.leg_ended(0, "101", cause=-1), "hangup_cause"),
            (lambda p: p.leg_ended(0, ""), "extension"),
            (lambda p: p.transferred(0, BLIND), "exactly one"),
            (lambda p: p.transferred(0, BLIND, to_extension="1", to_number="2"), "exactly one"),
            (lambda p: p.recording(0, url=None, path=None), "url or a path"),
            (lambda p: p.recording(0, fmt=" "), "format"),
            (lambda p: p.answered(0, ""), "extension"),
            (lambda p: p.started(0, bitrix24_call_id=""), "bitrix24_call_id"),
            (lambda p: Pbx("").started(0), "call_id"),
        ],
    )
    def test_invalid_events(self, pbx: Pbx, factory: object, match: str) -> None:
        with pytest.raises(InvalidEventError, match=match):
            factory(pbx)  # type: ignore[operator]

    def test_naive_timestamp(self) -> None:
        with pytest.raises(InvalidEventError, match="timezone-aware"):
            Ringing(call_id="1", event_id="e", timestamp=datetime(2026, 3, 7, 10, 20, 30))  # noqa: DTZ001

    def test_ringing_set_from_a_list(self) -> None:
        event = Ringing(call_id="1", event_id="e", timestamp=T0, extensions=["101", "101"])  # type: ignore[arg-type]
        assert event.extensions == frozenset({"101"})
