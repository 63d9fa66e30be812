"""Event factories for call-model tests: a scripted PBX with a clock in seconds."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import TypeVar, cast

from callbridge.domain.call import Call, CallPolicy, Command
from callbridge.domain.events import (
    Answered,
    CallEvent,
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
)

MSK = timezone(timedelta(hours=3))
T0 = datetime(2026, 3, 7, 10, 20, 30, tzinfo=MSK)
CALL_ID = "1773130779.12"
CUSTOMER = "+74951234567"
DID = "4951110101"

# Extensions as in the recorded AMI streams: 101 Ivan, 102 Maria, 103 Oleg.
IVAN, MARIA, OLEG, DEFAULT = 11, 12, 13, 1
USERS = {"101": IVAN, "102": MARIA, "103": OLEG}


def policy(**overrides: object) -> CallPolicy:
    """The integration settings most tests use."""
    values: dict[str, object] = {
        "default_user_id": DEFAULT,
        "users_by_extension": USERS,
        "crm_sources": {DID: "CALL"},
    }
    values.update(overrides)
    return CallPolicy(**values)  # type: ignore[arg-type]


class Pbx:
    """Builds one call's events; ``at`` is seconds after T0, event ids are unique."""

    def __init__(self, call_id: str = CALL_ID, *, namespace: str = "e") -> None:
        self.call_id = call_id
        self.namespace = namespace
        self._ids = itertools.count(1)

    def _base(self, at: float) -> dict[str, object]:
        return {
            "call_id": self.call_id,
            "event_id": f"{self.call_id}/{self.namespace}{next(self._ids)}",
            "timestamp": T0 + timedelta(seconds=at),
        }

    def started(
        self,
        at: float = 0,
        *,
        direction: Direction = Direction.INBOUND,
        number: str = CUSTOMER,
        line: str = DID,
        extension: str | None = None,
        bitrix24_call_id: str | None = None,
        callback: bool = False,
    ) -> CallStarted:
        return CallStarted(
            **self._base(at),  # type: ignore[arg-type]
            direction=direction,
            external_number=number,
            line=line,
            extension=extension,
            bitrix24_call_id=bitrix24_call_id,
            callback=callback,
        )

    def ringing(self, at: float, *extensions: str) -> Ringing:
        return Ringing(**self._base(at), extensions=frozenset(extensions))  # type: ignore[arg-type]

    def answered(self, at: float, extension: str | None = None) -> Answered:
        return Answered(**self._base(at), extension=extension)  # type: ignore[arg-type]

    def transferred(
        self,
        at: float,
        kind: TransferKind,
        *,
        to_extension: str | None = None,
        to_number: str | None = None,
        from_extension: str | None = None,
    ) -> Transferred:
        return Transferred(
            **self._base(at),  # type: ignore[arg-type]
            kind=kind,
            from_extension=from_extension,
            to_extension=to_extension,
            to_number=to_number,
        )

    def leg_ended(
        self,
        at: float,
        extension: str,
        disposition: Disposition | None = None,
        cause: int | None = None,
    ) -> LegEnded:
        return LegEnded(
            **self._base(at),  # type: ignore[arg-type]
            extension=extension,
            disposition=disposition,
            hangup_cause=cause,
        )

    def ended(
        self,
        at: float,
        disposition: Disposition = Disposition.ANSWERED,
        *,
        cause: int | None = 16,
        talk_seconds: int | None = None,
        vote: int | None = None,
        cost: float | None = None,
        currency: str | None = None,
    ) -> Ended:
        return Ended(
            **self._base(at),  # type: ignore[arg-type]
            disposition=disposition,
            hangup_cause=cause,
            talk_seconds=talk_seconds,
            vote=vote,
            cost=cost,
            cost_currency=currency,
        )

    def recording(
        self,
        at: float,
        *,
        url: str | None = None,
        path: str | None = "/var/spool/asterisk/monitor/rec.wav",
        fmt: str = "wav",
        extension: str | None = None,
    ) -> RecordingReady:
        return RecordingReady(
            **self._base(at),  # type: ignore[arg-type]
            format=fmt,
            url=url,
            path=path,
            extension=extension,
        )


def run(call: Call, settings: CallPolicy, events: Iterable[CallEvent]) -> list[Command]:
    """Apply events in order; every command they produced."""
    commands: list[Command] = []
    for event in events:
        commands.extend(call.apply(cast(Event, event), settings))
    return commands


C = TypeVar("C")


def of_type(commands: Iterable[object], kind: type[C]) -> list[C]:
    """The commands of one class, in order."""
    return [command for command in commands if isinstance(command, kind)]
