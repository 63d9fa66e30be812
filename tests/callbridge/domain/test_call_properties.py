"""Properties of the call model under any order, repetition and mix of PBX facts."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callbridge.domain.call import Call, CallPolicy, CallState, Command
from callbridge.domain.commands import AttachRecord, FinishCall, HideCard, RegisterCall, ShowCard
from callbridge.domain.events import (
    CallEvent,
    Direction,
    Disposition,
    Ended,
    LegEnded,
    TransferKind,
)

from .factories import CALL_ID, CUSTOMER, DEFAULT, T0, USERS, Pbx, policy, run

EXTENSIONS = ["101", "102", "103", "199"]  # 199 is nobody's: the default user gets it
# Focused properties get many examples; the whole-alphabet fuzzers, whose scripts are long,
# fewer each (they are three, over the same scripts).
PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

dispositions = st.sampled_from(Disposition)
causes = st.none() | st.sampled_from([16, 17, 19, 21, 26, 34, 1])
# Tenths of a second, so that rounding of durations is exercised.
instants = st.integers(min_value=21, max_value=1200).map(lambda tenths: tenths / 10)


def user_of(extension: str) -> int:
    return USERS.get(extension, DEFAULT)


def offset(seconds: float) -> int:
    """The model's rounding: whole seconds from the call's start, halves away from zero."""
    return int(seconds + 0.5) if seconds >= 0 else -int(-seconds + 0.5)


def seconds_of(event: CallEvent) -> float:
    return (event.timestamp - T0).total_seconds()


def apply_all(call: Call, settings_: CallPolicy, events: list[CallEvent]) -> list[list[Command]]:
    """The commands of each event, one list per event."""
    return [run(call, settings_, [event]) for event in events]


# -- 1. an answered call stays answered ---------------------------------------------------------


@dataclass
class AnsweredScript:
    ringing: list[str]
    answerer: str
    opening: list[CallEvent]
    endings: list[CallEvent]


@st.composite
def answered_scripts(draw: st.DrawFn) -> AnsweredScript:
    pbx = Pbx()
    ringing = draw(st.lists(st.sampled_from(EXTENSIONS), min_size=1, max_size=4, unique=True))
    answerer = draw(st.sampled_from(ringing))
    opening: list[CallEvent] = [
        pbx.started(0),
        pbx.ringing(0.1, *ringing),
        pbx.answered(2, answerer),
    ]
    endings: list[CallEvent] = []
    for extension in ringing:
        endings.append(pbx.leg_ended(draw(instants), extension, draw(dispositions), draw(causes)))
    for _ in range(draw(st.integers(0, 3))):
        extension = draw(st.sampled_from(ringing))
        endings.append(pbx.leg_ended(draw(instants), extension, draw(dispositions), draw(causes)))
    for _ in range(draw(st.integers(1, 3))):
        endings.append(
            pbx.ended(
                draw(instants),
                draw(dispositions),
                cause=draw(causes),
                talk_seconds=draw(st.none() | st.integers(0, 500)),
            )
        )
    if draw(st.booleans()):
        endings.append(pbx.recording(draw(instants)))
    # Repeats of the same event (the same event_id), as at-least-once delivery produces.
    endings += draw(st.lists(st.sampled_from(endings), max_size=6))
    endings = draw(st.permutations(endings))
    return AnsweredScript(ringing, answerer, opening, endings)


class TestAnsweredIsNeverMissed:
    @PROPERTY_SETTINGS
    @given(answered_scripts(), st.booleans())
    def test_any_order_of_endings_gives_one_finish_with_200(
        self, script: AnsweredScript, show_card: bool
    ) -> None:
        settings_ = policy(show_card=show_card)
        call = Call.new(CALL_ID)
        run(call, settings_, script.opening)
        after = [
            command
            for per_event in apply_all(call, settings_, script.endings)
            for command in per_event
        ]

        finishes = [c for c in after if isinstance(c, FinishCall)]
        assert len(finishes) == 1
        (done,) = finishes
        assert done.leg == 0
        assert done.status_code == "200"
        assert done.user_id == user_of(script.answerer)
        # Talk time stops at whichever came first: the answerer hanging up or the call's end.
        stop = next(
            e
            for e in script.endings
            if isinstance(e, Ended) or (isinstance(e, LegEnded) and e.extension == script.answerer)
        )
        assert done.duration == max(0, offset(seconds_of(stop)) - offset(2))
        # Nothing but the finish and recordings after the answer: no card flickers.
        assert all(isinstance(c, FinishCall | AttachRecord) for c in after)
        index = after.index(done)
        assert all(isinstance(c, AttachRecord) for c in after[index + 1 :])
        assert call.state is CallState.ENDED
        assert call.status_code == "200"
        assert len(call.legs) == 1


# -- 2. any mix of facts: the invariants of the commands ---------------------------------------


@dataclass
class Script:
    events: list[CallEvent]
    policy: CallPolicy
    replays: list[bool] = field(default_factory=list)


def event_strategy(pbx: Pbx, at: float) -> st.SearchStrategy[CallEvent]:
    extension = st.sampled_from(EXTENSIONS)
    return st.one_of(
        st.builds(lambda exts: pbx.ringing(at, *exts), st.lists(extension, max_size=3)),
        st.builds(lambda ext: pbx.answered(at, ext), st.none() | extension),
        st.builds(
            lambda kind, ext, number, use_number: pbx.transferred(
                at,
                kind,
                to_extension=None if use_number else ext,
                to_number=number if use_number else None,
            ),
            st.sampled_from(TransferKind),
            extension,
            st.sampled_from(["+79161234567", "84957654321"]),
            st.booleans(),
        ),
        st.builds(
            lambda ext, d, c: pbx.leg_ended(at, ext, d, c),
            extension,
            st.none() | dispositions,
            causes,
        ),
        st.builds(
            lambda d, c, talk, vote: pbx.ended(at, d, cause=c, talk_seconds=talk, vote=vote),
            dispositions,
            causes,
            st.none() | st.integers(0, 300),
            st.none() | st.integers(1, 5),
        ),
        st.builds(
            lambda ext, url: pbx.recording(
                at, extension=ext, url=url, path=None if url else "/r.wav"
            ),
            st.none() | extension,
            st.none() | st.just("https://pbx/r.wav"),
        ),
    )


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    pbx = Pbx()
    settings_ = policy(
        show_card=draw(st.booleans()),
        ignore_internal=draw(st.booleans()),
        add_to_chat=draw(st.booleans()),
        responsible_user_id=draw(st.none() | st.just(42)),
        users_by_number={"+79161234567": 55},
    )
    start_at = draw(st.sampled_from([0.0, 0.0, 0.0, 1.5]))  # sometimes not the first fact
    started = pbx.started(
        start_at,
        direction=draw(st.sampled_from(Direction)),
        number=draw(st.sampled_from([CUSTOMER, "", "101", "84957654321"])),
        extension=draw(st.none() | st.sampled_from(EXTENSIONS)),
        bitrix24_call_id=draw(st.none() | st.just("externalCall.abc.1")),
    )
    events: list[CallEvent] = []
    at = 0.0
    for _ in range(draw(st.integers(0, 14))):
        at += draw(st.integers(0, 40)) / 10
        events.append(draw(event_strategy(pbx, at)))
    position = draw(st.integers(0, min(len(events), 2) if start_at else 0))
    events.insert(position, started)
    # Repeats: the same event (same event_id) delivered again later.
    for _ in range(draw(st.integers(0, 4))):
        if events:
            index = draw(st.integers(0, len(events) - 1))
            events.insert(draw(st.integers(index + 1, len(events))), events[index])
    if draw(st.booleans()):
        at += 1
        events.append(pbx.ended(at, draw(dispositions)))
    return Script(events, settings_)


class CommandLog:
    """Checks each leg's command sequence as commands stream out of the model."""

    def __init__(self, settings_: CallPolicy) -> None:
        self.policy = settings_
        self.registered: set[int] = set()
        self.finished: dict[int, FinishCall] = {}
        self.shown: dict[int, set[int]] = defaultdict(set)
        self.attached: dict[int, int] = defaultdict(int)

    def check(self, call: Call, command: Command) -> None:
        leg = command.leg
        assert 0 <= leg < len(call.legs), command
        if isinstance(command, RegisterCall):
            assert leg not in self.registered, "a leg is registered once"
            assert not call.legs[leg].preregistered, "click-to-call legs are never registered"
            assert command.external_call_id == f"{CALL_ID}-{leg}"
            assert leg == 0 or command.crm_create is False
            datetime.fromisoformat(command.call_start_date).utcoffset()  # has an offset
            self.registered.add(leg)
            if command.show:
                self.shown[leg].add(command.user_id)
            return
        if call.legs[leg].preregistered and leg not in self.registered:
            # Click-to-call: Bitrix24 registered it and showed the card to the clicking user.
            self.registered.add(leg)
            if self.policy.show_card and call.direction is not Direction.INBOUND:
                self.shown[leg].add(call.legs[leg].user_id)
        assert leg in self.registered, "register comes first"
        if isinstance(command, AttachRecord):
            assert leg in self.finished, "attachRecord only after finish"
            self.attached[leg] += 1
            return
        assert leg not in self.finished, f"{type(command).__name__} after finish of leg {leg}"
        if isinstance(command, ShowCard):
            assert command.user_ids
            assert list(command.user_ids) == sorted(set(command.user_ids))
            assert not set(command.user_ids) & self.shown[leg], "shown twice"
            self.shown[leg] |= set(command.user_ids)
        elif isinstance(command, HideCard):
            assert command.user_ids
            assert list(command.user_ids) == sorted(set(command.user_ids))
            assert set(command.user_ids) <= self.shown[leg], "hidden but never shown"
            self.shown[leg] -= set(command.user_ids)
        else:
            assert command.duration >= 0
            self.finished[leg] = command


class TestInvariants:
    @FUZZ_SETTINGS
    @given(scripts())
    def test_commands_are_well_ordered_and_nothing_is_lost(self, script: Script) -> None:
        call = Call.new(CALL_ID)
        log = CommandLog(script.policy)
        ended = False
        seen: set[str] = set()
        for event in script.events:
            before = call.to_dict()
            commands = call.apply(event, script.policy)  # type: ignore[arg-type]
            for command in commands:
                log.check(call, command)
            if event.event_id in seen:
                assert commands == [], "a repeated event does nothing"
                assert call.to_dict() == before
            seen.add(event.event_id)
            if ended:
                assert all(isinstance(c, AttachRecord) for c in commands), "only records after end"
            if call.state is CallState.ENDED:
                ended = True
            # Storage may hold the call between any two events.
            restored = Call.from_dict(json.loads(json.dumps(call.to_dict())))
            assert restored == call

        if call.state is CallState.IGNORED:
            assert not log.registered
            assert not log.finished
        if call.state is CallState.ENDED:
            # Every leg was finished exactly once, answered legs with 200 and others not.
            assert set(log.finished) == set(range(len(call.legs)))
            for number, finish in log.finished.items():
                leg = call.legs[number]
                assert (finish.status_code == "200") is leg.answered
                assert finish.add_to_chat is script.policy.add_to_chat
                assert finish.vote is None or leg.answered
            # The answered legs' times never overlap: together at most the whole conversation.
            timed = [leg for leg in call.legs if leg.answered and leg.answered_at is not None]
            if timed:
                assert call.started_at is not None
                assert call.ended_at is not None
                origin = (call.started_at - T0).total_seconds()
                end = (call.ended_at - T0).total_seconds()
                first = min((leg.answered_at - T0).total_seconds() for leg in timed)  # type: ignore[operator]
                total = sum(log.finished[leg.number].duration for leg in timed)
                assert total <= max(0, offset(end - origin) - offset(first - origin))
        # Legs have consecutive numbers and unique external ids.
        assert [leg.number for leg in call.legs] == list(range(len(call.legs)))
        assert len({leg.external_call_id for leg in call.legs}) == len(call.legs)

    @FUZZ_SETTINGS
    @given(scripts(), st.data())
    def test_stored_and_restored_call_behaves_the_same(
        self, script: Script, data: st.DataObject
    ) -> None:
        split = data.draw(st.integers(0, len(script.events)))
        original = Call.new(CALL_ID)
        run(original, script.policy, script.events[:split])
        restored = Call.from_dict(json.loads(json.dumps(original.to_dict())))
        rest = script.events[split:]
        assert run(restored, script.policy, rest) == run(original, script.policy, rest)
        assert restored.to_dict() == original.to_dict()

    @FUZZ_SETTINGS
    @given(scripts(), st.data())
    def test_events_after_the_end_change_nothing(self, script: Script, data: st.DataObject) -> None:
        call = Call.new(CALL_ID)
        pbx = Pbx(namespace="late")
        run(call, script.policy, [*script.events, pbx.started(0), pbx.ended(500)])
        assert call.is_ended
        snapshot = call.to_dict()
        late = data.draw(st.lists(event_strategy(pbx, 600), max_size=5))
        late = [e for e in late if e.name != "call.recording"]
        assert run(call, script.policy, late) == []
        assert call.to_dict() == snapshot


# -- 3. transfers: a leg per employee, and the conversation adds up ----------------------------


@st.composite
def transfer_chains(draw: st.DrawFn) -> tuple[list[CallEvent], list[tuple[int, int, int]]]:
    """A call transferred along a chain; each talk as (user, from, to) in tenths of a second."""
    pbx = Pbx()
    first = draw(st.sampled_from(EXTENSIONS))
    # Integer tenths: the oracle must not accumulate float error the model does not have.
    at = draw(st.integers(21, 1200))
    events: list[CallEvent] = [
        pbx.started(0),
        pbx.ringing(0.1, first),
        pbx.answered(at / 10, first),
    ]
    talks: list[tuple[int, int, int]] = []
    talker, talk_from = first, at
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from([e for e in EXTENSIONS if e != talker]))
        kind = draw(st.sampled_from(TransferKind))
        at += draw(st.integers(0, 600))
        events.append(pbx.transferred(at / 10, kind, from_extension=talker, to_extension=target))
        talks.append((user_of(talker), talk_from, at))
        if kind is TransferKind.BLIND:
            at += draw(st.integers(0, 200))  # the target rings: nobody talks meanwhile
            events.append(pbx.ringing(at / 10, target))
            events.append(pbx.leg_ended(at / 10, talker, Disposition.ANSWERED, 16))
            events.append(pbx.answered(at / 10, target))
        talker, talk_from = target, at
    at += draw(st.integers(0, 600))
    events.append(pbx.ended(at / 10))
    talks.append((user_of(talker), talk_from, at))
    return events, talks


def offset_tenths(tenths: int) -> int:
    """Whole seconds, halves up, of a non-negative number of tenths."""
    return (tenths + 5) // 10


class TestTransfers:
    @PROPERTY_SETTINGS
    @given(transfer_chains())
    def test_each_employee_gets_their_part_and_nothing_is_lost(
        self, chain: tuple[list[CallEvent], list[tuple[int, int, int]]]
    ) -> None:
        events, talks = chain
        call = Call.new(CALL_ID)
        commands = run(call, policy(), events)
        registers = [c for c in commands if isinstance(c, RegisterCall)]
        finishes = [c for c in commands if isinstance(c, FinishCall)]
        assert [r.leg for r in registers] == list(range(len(talks)))
        assert len({r.external_call_id for r in registers}) == len(talks)
        assert [f.leg for f in finishes] == list(range(len(talks)))
        assert [f.user_id for f in finishes] == [user for user, _, _ in talks]
        assert all(f.status_code == "200" for f in finishes)
        for finish, (_, start, stop) in zip(finishes, talks, strict=True):
            assert finish.duration == offset_tenths(stop) - offset_tenths(start)
        # The parts add up to the conversation (ringing gaps of blind transfers excluded).
        expected = sum(offset_tenths(stop) - offset_tenths(start) for _, start, stop in talks)
        assert sum(f.duration for f in finishes) == expected == call.talk_seconds
