"""The call aggregate: PBX facts in, Bitrix24 commands out (DESIGN.md §4).

A call is split into *legs*, one per employee conversation, each a Bitrix24 registration
with its own ``EXTERNAL_CALL_ID`` (``<linkedid>-<leg>``):

* leg 0 is registered when the call starts: for the caller's user on outbound calls, for the
  responsible (else default) user on inbound calls, whose cards then follow the ringing set
  (ring groups: one ``ShowCard`` for all; queues: show the new member, hide the previous one);
* a transfer finishes the talking leg (its duration ends at the transfer) and opens a leg for
  the target, so the part after the transfer belongs to the new employee;
* a leg that was answered is finished with ``200`` whatever the PBX reports later.

Per-party endings (:class:`~callbridge.domain.events.LegEnded`) only update the ringing set or
mark when the talking employee hung up; nothing is finished before the whole call has
:class:`~callbridge.domain.events.Ended`, unless a transfer or a takeover hands the customer
to someone else. So legs hanging up in any order, repeated or late, cannot turn an answered
call into a missed one, and the vote the customer leaves after the employee hung up still
reaches that employee's finish.

Each :meth:`Call.apply` returns the commands for one event, mutates the call, and ignores
repeats (by ``event_id``) and anything after the end but recordings, which are held until
their legs are finished. :meth:`Call.to_dict` / :meth:`Call.from_dict` carry the state
between events as plain JSON.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from callbridge.domain import status as statuses
from callbridge.domain.commands import (
    AttachRecord,
    CallType,
    Command,
    FinishCall,
    HideCard,
    RegisterCall,
    ShowCard,
    command_from_dict,
    command_to_dict,
)
from callbridge.domain.errors import CallStateError, InvalidEventError, WrongCallError
from callbridge.domain.events import (
    Answered,
    CallStarted,
    Direction,
    Disposition,
    Ended,
    Event,
    LegEnded,
    RecordingReady,
    Ringing,
    TransferKind,
    Transferred,
    event_from_dict,
    event_to_dict,
)
from callbridge.domain.phone import DEFAULT_RULES, PhoneRules, normalize

__all__ = [
    "MAX_PENDING_EVENTS",
    "AttachRecord",
    "Call",
    "CallPolicy",
    "CallState",
    "CallType",
    "Command",
    "FinishCall",
    "HideCard",
    "LeadCreation",
    "Leg",
    "LegState",
    "Recording",
    "RegisterCall",
    "ShowCard",
    "command_from_dict",
    "command_to_dict",
]

#: Version of the :meth:`Call.to_dict` layout; bump it with a reader for the old one.
SCHEMA_VERSION: Final = 1
#: Events held while a call's ``CallStarted`` has not arrived; beyond this they are dropped.
MAX_PENDING_EVENTS: Final = 256

_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


class LeadCreation(StrEnum):
    """For which calls an unknown number becomes a lead (``CRM_CREATE=1``)."""

    NEVER = "never"
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    ALL = "all"


@dataclass(frozen=True, kw_only=True)
class CallPolicy:
    """An integration's settings and user directory, as the call model needs them."""

    default_user_id: int
    users_by_extension: Mapping[str, int] = field(default_factory=dict)
    #: Employees reachable on outside numbers (mobiles), keyed by E.164.
    users_by_number: Mapping[str, int] = field(default_factory=dict)
    #: Who answers for a missed inbound call, when the service knows (e.g. the CRM owner).
    responsible_user_id: int | None = None
    lead_creation: LeadCreation = LeadCreation.INBOUND
    #: ``CRM_SOURCE`` per line (DID), else ``default_crm_source``.
    crm_sources: Mapping[str, str] = field(default_factory=dict)
    default_crm_source: str | None = None
    #: Bitrix24 ``LINE_NUMBER`` per PBX line (DID/trunk); unmapped lines are sent as they are.
    line_numbers: Mapping[str, str] = field(default_factory=dict)
    ignore_internal: bool = True
    add_to_chat: bool = True
    show_card: bool = True
    phone_rules: PhoneRules = DEFAULT_RULES
    #: ``PHONE_NUMBER`` for a caller with no number (Bitrix24 refuses an empty one).
    anonymous_number: str = "0"

    def user_for_extension(self, extension: str | None) -> int:
        """The Bitrix24 user of an extension; the default user when unknown."""
        if extension is None:
            return self.default_user_id
        return self.users_by_extension.get(extension, self.default_user_id)

    def user_for_number(self, number: str) -> int | None:
        """The employee owning an outside number (a mobile), if any."""
        key = normalize(number, self.phone_rules).key
        return self.users_by_number.get(key)

    def creates_lead(self, direction: Direction) -> bool:
        """Whether an unknown number on a call in this direction becomes a lead."""
        if direction is Direction.INBOUND:
            return self.lead_creation in (LeadCreation.INBOUND, LeadCreation.ALL)
        if direction is Direction.OUTBOUND:
            return self.lead_creation in (LeadCreation.OUTBOUND, LeadCreation.ALL)
        return False

    def crm_source(self, line: str) -> str | None:
        """``CRM_SOURCE`` for calls on this line."""
        return self.crm_sources.get(line, self.default_crm_source)

    def line_number(self, line: str) -> str | None:
        """Bitrix24 ``LINE_NUMBER`` for this PBX line."""
        if not line:
            return None
        return self.line_numbers.get(line, line)


class CallState(StrEnum):
    """Where the whole call is."""

    NEW = "new"  # events seen, but not its start: they wait
    ACTIVE = "active"
    ENDED = "ended"
    IGNORED = "ignored"  # an internal call, ignored by setting


class LegState(StrEnum):
    """Where one leg is."""

    RINGING = "ringing"  # registered, nobody talks yet
    TALKING = "talking"
    HUNG_UP = "hung_up"  # the employee hung up; finished with the call or the next leg
    FINISHED = "finished"


@dataclass
class Recording:
    """A recording the PBX reported, held until the legs it belongs to are finished."""

    event_id: str
    format: str
    url: str | None = None
    path: str | None = None
    extension: str | None = None


@dataclass
class Leg:
    """One Bitrix24 registration: an employee's part of the call."""

    number: int
    external_call_id: str
    user_id: int
    opened_at: datetime
    state: LegState = LegState.RINGING
    #: The extension or number the leg was opened for (a transfer target).
    target: str | None = None
    #: Known up front for click-to-call (then never registered), else written back.
    bitrix24_call_id: str | None = None
    preregistered: bool = False
    ringing: dict[str, int] = field(default_factory=dict)
    shown: set[int] = field(default_factory=set)
    rang_users: set[int] = field(default_factory=set)
    outcome: Disposition | None = None
    outcome_cause: int | None = None
    talker: str | None = None
    talker_user: int | None = None
    answered: bool = False
    answered_at: datetime | None = None
    hung_up_at: datetime | None = None
    status_code: str | None = None
    duration: int | None = None
    finish_user_id: int | None = None
    crm_entity_type: str | None = None
    crm_entity_id: int | None = None
    attached: list[str] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        """Not finished yet."""
        return self.state is not LegState.FINISHED

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict."""
        return {
            "number": self.number,
            "external_call_id": self.external_call_id,
            "user_id": self.user_id,
            "opened_at": self.opened_at.isoformat(),
            "state": self.state.value,
            "target": self.target,
            "bitrix24_call_id": self.bitrix24_call_id,
            "preregistered": self.preregistered,
            "ringing": dict(sorted(self.ringing.items())),
            "shown": sorted(self.shown),
            "rang_users": sorted(self.rang_users),
            "outcome": self.outcome.value if self.outcome else None,
            "outcome_cause": self.outcome_cause,
            "talker": self.talker,
            "talker_user": self.talker_user,
            "answered": self.answered,
            "answered_at": _iso(self.answered_at),
            "hung_up_at": _iso(self.hung_up_at),
            "status_code": self.status_code,
            "duration": self.duration,
            "finish_user_id": self.finish_user_id,
            "crm_entity_type": self.crm_entity_type,
            "crm_entity_id": self.crm_entity_id,
            "attached": list(self.attached),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Leg:
        """Rebuild a leg written by :meth:`to_dict`."""
        return cls(
            number=int(data["number"]),
            external_call_id=str(data["external_call_id"]),
            user_id=int(data["user_id"]),
            opened_at=_parse_dt(data["opened_at"]),
            state=LegState(data["state"]),
            target=data["target"],
            bitrix24_call_id=data["bitrix24_call_id"],
            preregistered=bool(data["preregistered"]),
            ringing={str(k): int(v) for k, v in data["ringing"].items()},
            shown={int(u) for u in data["shown"]},
            rang_users={int(u) for u in data["rang_users"]},
            outcome=Disposition(data["outcome"]) if data["outcome"] else None,
            outcome_cause=data["outcome_cause"],
            talker=data["talker"],
            talker_user=data["talker_user"],
            answered=bool(data["answered"]),
            answered_at=_parse_optional_dt(data["answered_at"]),
            hung_up_at=_parse_optional_dt(data["hung_up_at"]),
            status_code=data["status_code"],
            duration=data["duration"],
            finish_user_id=data["finish_user_id"],
            crm_entity_type=data["crm_entity_type"],
            crm_entity_id=data["crm_entity_id"],
            attached=[str(r) for r in data["attached"]],
        )


@dataclass
class Call:
    """One PBX call (by linkedid) and the Bitrix24 legs it became."""

    call_id: str
    state: CallState = CallState.NEW
    direction: Direction | None = None
    external_number: str = ""
    #: What is sent as ``PHONE_NUMBER``: E.164 when the number allows it.
    phone_number: str = ""
    line: str = ""
    extension: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    disposition: Disposition | None = None
    hangup_cause: int | None = None
    legs: list[Leg] = field(default_factory=list)
    recordings: list[Recording] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    pending: list[Event] = field(default_factory=list)

    @classmethod
    def new(cls, call_id: str) -> Call:
        """A call nothing is known about yet."""
        return cls(call_id=call_id)

    # -- reading -------------------------------------------------------------------------------

    @property
    def is_ended(self) -> bool:
        """The call is over (or ignored): only recordings still do something."""
        return self.state in (CallState.ENDED, CallState.IGNORED)

    @property
    def answered(self) -> bool:
        """Someone talked with the customer."""
        return any(leg.answered for leg in self.legs)

    @property
    def answered_by(self) -> str | None:
        """The extension that answered first."""
        return next((leg.talker for leg in self.legs if leg.answered), None)

    @property
    def talk_seconds(self) -> int:
        """Talk time over all finished legs."""
        return sum(leg.duration or 0 for leg in self.legs if leg.answered)

    @property
    def status_code(self) -> str | None:
        """The call's outcome in Bitrix24 terms once it has ended: 200 if anyone talked."""
        if self.state is not CallState.ENDED or not self.legs:
            return None
        return statuses.ANSWERED if self.answered else self.legs[0].status_code

    def leg(self, number: int) -> Leg:
        """The leg with this number."""
        if not 0 <= number < len(self.legs):
            raise CallStateError(f"call {self.call_id} has no leg {number}")
        return self.legs[number]

    def leg_registered(
        self,
        number: int,
        bitrix24_call_id: str,
        *,
        crm_entity_type: str | None = None,
        crm_entity_id: int | None = None,
    ) -> None:
        """Write back what ``register`` returned for a leg (idempotent)."""
        leg = self.leg(number)
        leg.bitrix24_call_id = bitrix24_call_id
        if crm_entity_type is not None:
            leg.crm_entity_type = crm_entity_type
            leg.crm_entity_id = crm_entity_id

    # -- applying events -----------------------------------------------------------------------

    def apply(self, event: Event, policy: CallPolicy) -> list[Command]:
        """Apply one PBX fact; the Bitrix24 commands it implies, in order."""
        if event.call_id != self.call_id:
            raise WrongCallError(f"event {event.event_id} is for call {event.call_id}")
        if event.event_id in self.seen or self.state is CallState.IGNORED:
            return []
        if self.state is CallState.ENDED and not isinstance(event, RecordingReady):
            return []
        if self.state is CallState.NEW and not isinstance(event, CallStarted):
            # Delivery may reorder a call's first events; hold them until the start is known.
            if len(self.pending) < MAX_PENDING_EVENTS:
                self.seen.add(event.event_id)
                self.pending.append(event)
            return []
        self.seen.add(event.event_id)
        if isinstance(event, CallStarted):
            return self._on_started(event, policy)
        if isinstance(event, Ringing):
            return self._on_ringing(event, policy)
        if isinstance(event, Answered):
            return self._on_answered(event, policy)
        if isinstance(event, Transferred):
            return self._on_transferred(event, policy)
        if isinstance(event, LegEnded):
            return self._on_leg_ended(event, policy)
        if isinstance(event, Ended):
            return self._on_ended(event, policy)
        return self._on_recording(event)

    def _on_started(self, event: CallStarted, policy: CallPolicy) -> list[Command]:
        if self.state is not CallState.NEW:
            return []  # a second start under another event id: the first one stands
        self.direction = event.direction
        self.started_at = event.timestamp
        self.line = event.line
        self.extension = event.extension
        self.external_number = event.external_number
        if event.direction is Direction.INTERNAL and policy.ignore_internal:
            self.state = CallState.IGNORED
            self.pending.clear()
            return []
        self.state = CallState.ACTIVE
        number = normalize(event.external_number, policy.phone_rules)
        self.phone_number = number.key or policy.anonymous_number
        inbound = event.direction is Direction.INBOUND
        if inbound:
            # Nobody rings yet: the registration is the responsible's until someone answers.
            user = (
                policy.responsible_user_id
                if policy.responsible_user_id is not None
                else policy.default_user_id
            )
        else:
            user = policy.user_for_extension(event.extension)
        if event.callback and not inbound:
            call_type = CallType.CALLBACK
        else:
            call_type = CallType.INBOUND if inbound else CallType.OUTBOUND
        leg = Leg(
            number=0,
            external_call_id=self._external_call_id(0),
            user_id=user,
            opened_at=event.timestamp,
            bitrix24_call_id=event.bitrix24_call_id,
            preregistered=event.bitrix24_call_id is not None,
        )
        self.legs.append(leg)
        commands: list[Command] = []
        # Outbound: the employee who dials sees the card at once. Inbound: nobody rings yet.
        show = policy.show_card and not inbound
        if leg.preregistered:
            # Click-to-call: Bitrix24 registered it and showed the card to the clicking user.
            if show:
                leg.shown.add(user)
        else:
            commands.append(
                RegisterCall(
                    leg=0,
                    external_call_id=leg.external_call_id,
                    user_id=user,
                    phone_number=self.phone_number,
                    type=call_type,
                    call_start_date=_bitrix_datetime(event.timestamp),
                    line_number=policy.line_number(event.line),
                    # Only a real outside number can become a lead.
                    crm_create=number.is_external and policy.creates_lead(event.direction),
                    crm_source=policy.crm_source(event.line),
                    show=show,
                )
            )
            if show:
                leg.shown.add(user)
        pending, self.pending = self.pending, []
        # Sorted by PBX time (stable), since it was delivery that scrambled them.
        for held in sorted(pending, key=lambda e: e.timestamp):
            self.seen.discard(held.event_id)
            commands.extend(self.apply(held, policy))
        return commands

    def _on_ringing(self, event: Ringing, policy: CallPolicy) -> list[Command]:
        leg = self.legs[-1]
        if leg.state is LegState.RINGING:
            if self._is_origin_of_outbound(leg):
                return []  # the far end rings; the dialling employee already has the card
            return self._ring(leg, event.extensions, policy)
        if leg.state is LegState.TALKING or not event.extensions:
            # A consultation call (attended transfer) rings while the customer talks or waits.
            return []
        # The employee hung up but the call goes on (parked, sent to a group): a new leg.
        users = sorted(policy.user_for_extension(ext) for ext in event.extensions)
        commands = self._close_for_next_leg(leg, event.timestamp, policy)
        new_leg, register = self._open_leg(
            event.timestamp, user=users[0], target=None, policy=policy, show=False
        )
        commands.append(register)
        commands.extend(self._ring(new_leg, event.extensions, policy))
        return commands

    def _on_answered(self, event: Answered, policy: CallPolicy) -> list[Command]:
        leg = self.legs[-1]
        if leg.state is LegState.RINGING:
            return self._answer(leg, event.extension, event.timestamp, policy)
        extension = event.extension
        if leg.state is LegState.TALKING and (extension is None or extension == leg.talker):
            return []  # the same answer reported twice
        if extension is None:
            # Someone picked up after the employee left, and the PBX does not say who.
            extension = leg.talker
        # Another extension took over without a transfer being reported, or the employee
        # who hung up took the call back (from parking): either way a new conversation.
        commands = self._close_for_next_leg(leg, event.timestamp, policy)
        user = policy.user_for_extension(extension)
        new_leg, register = self._open_leg(
            event.timestamp, user=user, target=extension, policy=policy, show=policy.show_card
        )
        commands.append(register)
        commands.extend(self._answer(new_leg, extension, event.timestamp, policy))
        return commands

    def _on_transferred(self, event: Transferred, policy: CallPolicy) -> list[Command]:
        leg = self.legs[-1]
        if leg.state is LegState.RINGING:
            # Redirected before anyone talked (IVR, queue, pickup): nothing to split; the
            # Ringing events that follow move the cards.
            return []
        if event.to_extension is not None:
            target = event.to_extension
            user = policy.user_for_extension(target)
        else:
            assert event.to_number is not None
            target = normalize(event.to_number, policy.phone_rules).key or event.to_number
            # An outside number that is no employee's: the transferring employee keeps it.
            owner = policy.user_for_number(event.to_number)
            if owner is None:
                owner = leg.talker_user
            user = owner if owner is not None else policy.user_for_extension(event.from_extension)
        if target == leg.talker:
            return []  # already handed over (a takeover was reported first)
        commands = self._close_for_next_leg(leg, event.timestamp, policy)
        new_leg, register = self._open_leg(
            event.timestamp, user=user, target=target, policy=policy, show=policy.show_card
        )
        commands.append(register)
        if event.kind is TransferKind.ATTENDED:
            # The target has been talking with the employee; from now on with the customer.
            commands.extend(self._answer(new_leg, target, event.timestamp, policy, user=user))
        return commands

    def _on_leg_ended(self, event: LegEnded, policy: CallPolicy) -> list[Command]:
        leg = self.legs[-1]
        extension = event.extension
        if leg.state is LegState.RINGING:
            if not self._concerns(leg, extension):
                return []  # e.g. the employee who just transferred the call hangs up
            was_ringing = extension in leg.ringing
            if not self._is_origin_of_outbound(leg):
                # Offered to this user even if no Ringing said so (a busy phone never rings).
                leg.rang_users.add(policy.user_for_extension(extension))
            if event.disposition is not None and (was_ringing or leg.outcome is None):
                # A queue reports NOANSWER then CANCEL for one member: the first one counts.
                leg.outcome = event.disposition
                leg.outcome_cause = event.hangup_cause
            if not was_ringing:
                return []
            remaining = dict(leg.ringing)
            del remaining[extension]
            leg.ringing = remaining
            return self._sync_cards(leg, set(remaining.values()), policy)
        if leg.state is LegState.TALKING and extension == leg.talker:
            # Talk time stops here; the finish waits for the end of the call (the customer
            # may still rate it) or for the next leg.
            leg.state = LegState.HUNG_UP
            leg.hung_up_at = event.timestamp
        return []

    def _on_ended(self, event: Ended, policy: CallPolicy) -> list[Command]:
        self.state = CallState.ENDED
        self.ended_at = event.timestamp
        self.disposition = event.disposition
        self.hangup_cause = event.hangup_cause
        open_legs = [leg for leg in self.legs if leg.is_open]
        if (
            event.disposition is Disposition.ANSWERED
            and not self.answered
            and open_legs
            and open_legs[-1].state is LegState.RINGING
        ):
            # The PBX says it was answered but never said by whom (a minimal webhook
            # integration): the last leg talked for the PBX's talk seconds.
            last = open_legs[-1]
            only = _only(set(last.ringing.values()) or last.rang_users)
            self._mark_answered(last, None, None, only or last.user_id)
        # Vote and cost rate the conversation: they go with the last talking leg.
        rated = next((leg for leg in reversed(open_legs) if leg.answered), None)
        if rated is None and open_legs:
            rated = open_legs[-1]
        commands: list[Command] = []
        for leg in open_legs:
            extras = event if leg is rated else None
            commands.extend(self._finish(leg, event.timestamp, policy, ended=event, rating=extras))
        commands.extend(self._attach_recordings())
        return commands

    def _on_recording(self, event: RecordingReady) -> list[Command]:
        self.recordings.append(
            Recording(
                event_id=event.event_id,
                format=event.format,
                url=event.url,
                path=event.path,
                extension=event.extension,
            )
        )
        return self._attach_recordings()

    # -- legs and cards ------------------------------------------------------------------------

    def _is_origin_of_outbound(self, leg: Leg) -> bool:
        return leg.number == 0 and self.direction is not Direction.INBOUND

    def _concerns(self, leg: Leg, extension: str) -> bool:
        """Whether a ringing leg's outcome may be told by this extension's ending."""
        if extension in leg.ringing or extension == leg.target:
            return True
        if self._is_origin_of_outbound(leg):
            return extension == self.extension
        # Without Ringing events any dialled extension may report, but never one that
        # already had its own conversation in an earlier leg.
        return not leg.rang_users and all(extension != old.talker for old in self.legs[:-1])

    def _ring(self, leg: Leg, extensions: frozenset[str], policy: CallPolicy) -> list[Command]:
        leg.ringing = {ext: policy.user_for_extension(ext) for ext in sorted(extensions)}
        leg.rang_users.update(leg.ringing.values())
        return self._sync_cards(leg, set(leg.ringing.values()), policy)

    def _sync_cards(self, leg: Leg, wanted: set[int], policy: CallPolicy) -> list[Command]:
        """Show the card to ``wanted`` users only: one show and one hide at most."""
        if not policy.show_card:
            return []
        to_show = wanted - leg.shown
        to_hide = leg.shown - wanted
        leg.shown = set(wanted)
        commands: list[Command] = []
        # Showing first: the phone that rings now matters more than the one that stopped.
        if to_show:
            commands.append(ShowCard(leg=leg.number, user_ids=tuple(sorted(to_show))))
        if to_hide:
            commands.append(HideCard(leg=leg.number, user_ids=tuple(sorted(to_hide))))
        return commands

    def _answer(
        self,
        leg: Leg,
        extension: str | None,
        when: datetime,
        policy: CallPolicy,
        *,
        user: int | None = None,
    ) -> list[Command]:
        if extension is None:
            if self._is_origin_of_outbound(leg):
                extension = self.extension
            elif leg.target is not None:
                extension = leg.target
        if user is None:
            if extension is not None and extension != leg.target:
                user = policy.user_for_extension(extension)
            elif extension is None:
                user = _only(set(leg.ringing.values())) or leg.user_id
            else:
                user = leg.user_id  # the target the leg was opened (and registered) for
        self._mark_answered(leg, extension, when, user)
        leg.ringing = {}
        # The card stays with whoever answered and goes away for everyone else.
        return self._sync_cards(leg, {user}, policy)

    @staticmethod
    def _mark_answered(leg: Leg, extension: str | None, when: datetime | None, user: int) -> None:
        leg.state = LegState.TALKING
        leg.answered = True
        leg.answered_at = when
        leg.talker = extension
        leg.talker_user = user

    def _open_leg(
        self,
        when: datetime,
        *,
        user: int,
        target: str | None,
        policy: CallPolicy,
        show: bool,
    ) -> tuple[Leg, RegisterCall]:
        number = len(self.legs)
        leg = Leg(
            number=number,
            external_call_id=self._external_call_id(number),
            user_id=user,
            opened_at=when,
            target=target,
        )
        self.legs.append(leg)
        if show:
            leg.shown.add(user)
        assert self.direction is not None
        inbound = self.direction is Direction.INBOUND
        register = RegisterCall(
            leg=number,
            external_call_id=leg.external_call_id,
            user_id=user,
            phone_number=self.phone_number,
            type=CallType.INBOUND if inbound else CallType.OUTBOUND,
            call_start_date=_bitrix_datetime(when),
            line_number=policy.line_number(self.line),
            # Leg 0 already created the lead if one was due; a second would duplicate it.
            crm_create=False,
            crm_source=policy.crm_source(self.line),
            show=show,
        )
        return leg, register

    def _close_for_next_leg(self, leg: Leg, when: datetime, policy: CallPolicy) -> list[Command]:
        """Finish the talking (or hung-up) leg because the customer moves to another one."""
        if leg.state in (LegState.TALKING, LegState.HUNG_UP):
            return self._finish(leg, when, policy, ended=None, rating=None)
        return []

    def _finish(
        self,
        leg: Leg,
        when: datetime,
        policy: CallPolicy,
        *,
        ended: Ended | None,
        rating: Ended | None,
    ) -> list[Command]:
        commands: list[Command] = []
        assert self.direction is not None
        failed_reason: str | None = None
        if leg.answered:
            status = statuses.ANSWERED
            user = leg.talker_user if leg.talker_user is not None else leg.user_id
            if leg.answered_at is None:
                duration = (ended.talk_seconds or 0) if ended is not None else 0
            else:
                duration = self._elapsed(leg.answered_at, leg.hung_up_at or when)
        else:
            disposition, cause = self._missed_outcome(leg, ended)
            status = statuses.status_code(
                answered=False,
                direction=self.direction,
                disposition=disposition,
                hangup_cause=cause,
            )
            user = self._missed_user(leg, policy)
            duration = 0
            if status != statuses.MISSED:
                # A plain missed call needs no reason; a failure (busy, bad number) does.
                failed_reason = statuses.hangup_cause_text(cause) or None
            if not self._is_origin_of_outbound(leg):
                # Ringing stopped for everyone still shown the card. (The employee who
                # dialled out keeps theirs, to note why nobody answered.)
                commands.extend(self._sync_cards(leg, set(), policy))
        leg.state = LegState.FINISHED
        leg.status_code = status
        leg.duration = duration
        leg.finish_user_id = user
        leg.ringing = {}
        commands.append(
            FinishCall(
                leg=leg.number,
                user_id=user,
                duration=duration,
                status_code=status,
                add_to_chat=policy.add_to_chat,
                # A rating describes a conversation: a missed leg gets none.
                vote=rating.vote if rating and leg.answered else None,
                cost=rating.cost if rating else None,
                cost_currency=rating.cost_currency if rating else None,
                failed_reason=failed_reason,
            )
        )
        return commands

    def _missed_outcome(
        self, leg: Leg, ended: Ended | None
    ) -> tuple[Disposition | None, int | None]:
        if ended is None:
            return leg.outcome, leg.outcome_cause
        if self.answered or ended.disposition is Disposition.ANSWERED:
            # The call's own outcome describes the conversation someone else had; this leg
            # (e.g. an unanswered transfer target) has only its own endings to go by.
            if leg.outcome is not None:
                return leg.outcome, leg.outcome_cause
            if ended.disposition is Disposition.ANSWERED:
                return None, None
            return ended.disposition, ended.hangup_cause
        return ended.disposition, ended.hangup_cause

    def _missed_user(self, leg: Leg, policy: CallPolicy) -> int:
        if leg.number == 0 and self.direction is Direction.INBOUND:
            if policy.responsible_user_id is not None:
                return policy.responsible_user_id
            # A direct line to one employee: the missed call is theirs.
            return _only(leg.rang_users) or policy.default_user_id
        return leg.user_id

    def _elapsed(self, start: datetime, end: datetime) -> int:
        """Whole seconds between two instants, rounded on the call's own time axis.

        Rounding offsets from the call's start (rather than each interval alone) makes the
        durations of back-to-back legs add up exactly to the whole conversation.
        """
        assert self.started_at is not None
        return max(0, _offset(self.started_at, end) - _offset(self.started_at, start))

    # -- recordings ----------------------------------------------------------------------------

    def _attach_recordings(self) -> list[Command]:
        if self.state is not CallState.ENDED:
            return []  # a leg's recording may go only after its finish: hold it
        commands: list[Command] = []
        for recording in self.recordings:
            for leg in self._legs_for(recording):
                if recording.event_id in leg.attached:
                    continue
                leg.attached.append(recording.event_id)
                commands.append(
                    AttachRecord(
                        leg=leg.number,
                        filename=f"{_safe(self.call_id)}-{leg.number}.{_safe(recording.format)}",
                        format=recording.format,
                        url=recording.url,
                        path=recording.path,
                    )
                )
        return commands

    def _legs_for(self, recording: Recording) -> list[Leg]:
        """The legs a recording belongs to: every conversation it holds."""
        if recording.extension is not None:
            own = [leg for leg in self.legs if leg.answered and leg.talker == recording.extension]
            if own:
                return own
        talked = [leg for leg in self.legs if leg.answered]
        # Nobody talked: what the caller left (voicemail) goes with the last leg.
        return talked or self.legs[-1:]

    def _external_call_id(self, leg: int) -> str:
        return f"{self.call_id}-{leg}"

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The whole state as a JSON-safe dict."""
        return {
            "version": SCHEMA_VERSION,
            "call_id": self.call_id,
            "state": self.state.value,
            "direction": self.direction.value if self.direction else None,
            "external_number": self.external_number,
            "phone_number": self.phone_number,
            "line": self.line,
            "extension": self.extension,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "disposition": self.disposition.value if self.disposition else None,
            "hangup_cause": self.hangup_cause,
            "legs": [leg.to_dict() for leg in self.legs],
            "recordings": [
                {
                    "event_id": r.event_id,
                    "format": r.format,
                    "url": r.url,
                    "path": r.path,
                    "extension": r.extension,
                }
                for r in self.recordings
            ],
            "seen": sorted(self.seen),
            "pending": [event_to_dict(event) for event in self.pending],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Call:
        """Rebuild a call written by :meth:`to_dict`."""
        version = data.get("version") if isinstance(data, Mapping) else None
        if version != SCHEMA_VERSION:
            raise CallStateError(f"stored call has version {version!r}, expected 1")
        try:
            return cls(
                call_id=str(data["call_id"]),
                state=CallState(data["state"]),
                direction=Direction(data["direction"]) if data["direction"] else None,
                external_number=str(data["external_number"]),
                phone_number=str(data["phone_number"]),
                line=str(data["line"]),
                extension=data["extension"],
                started_at=_parse_optional_dt(data["started_at"]),
                ended_at=_parse_optional_dt(data["ended_at"]),
                disposition=Disposition(data["disposition"]) if data["disposition"] else None,
                hangup_cause=data["hangup_cause"],
                legs=[Leg.from_dict(leg) for leg in data["legs"]],
                recordings=[Recording(**r) for r in data["recordings"]],
                seen={str(e) for e in data["seen"]},
                pending=[event_from_dict(e) for e in data["pending"]],
            )
        except CallStateError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, InvalidEventError) as err:
            raise CallStateError(f"stored call is malformed: {err!r}") from err


def _only(users: set[int]) -> int | None:
    return next(iter(users)) if len(users) == 1 else None


def _offset(origin: datetime, instant: datetime) -> int:
    seconds = (instant - origin).total_seconds()
    # Half-up rounding (round() would round halves to even, making 2.5 s and 3.5 s both 4 s).
    return int(seconds + 0.5) if seconds >= 0 else -int(-seconds + 0.5)


def _bitrix_datetime(value: datetime) -> str:
    """ISO-8601 with its offset, to the second, as ``CALL_START_DATE`` wants it."""
    return value.isoformat(timespec="seconds")


def _safe(text: str) -> str:
    return _UNSAFE_FILENAME.sub("_", text) or "call"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_dt(value: Any) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.utcoffset() is None:
        raise CallStateError("stored call has a timestamp without a timezone")
    return parsed


def _parse_optional_dt(value: Any) -> datetime | None:
    return None if value is None else _parse_dt(value)
