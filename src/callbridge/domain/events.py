"""PBX-neutral facts about a call, as the webhook contract and the AMI translator report them.

Every fact names its call by the PBX's ``linkedid`` (``call_id``), has a unique ``event_id``
(repeats are recognised by it) and an aware ``timestamp`` taken on the PBX: the call model
reads time only from here, never from a clock.

Extensions are the employees' internal numbers as the PBX knows them (``101``); mapping them
to Bitrix24 users is the call model's job, with the integration's settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias

from callbridge.domain.errors import InvalidEventError

__all__ = [
    "Answered",
    "CallEvent",
    "CallStarted",
    "Direction",
    "Disposition",
    "Ended",
    "Event",
    "LegEnded",
    "RecordingReady",
    "Ringing",
    "TransferKind",
    "Transferred",
    "event_from_dict",
    "event_to_dict",
]


class Direction(StrEnum):
    """Who placed the call, seen from the company."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"
    INTERNAL = "internal"


class Disposition(StrEnum):
    """How a call, or one party's part in it, ended (the webhook contract's words)."""

    ANSWERED = "answered"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    CANCELLED = "cancelled"
    FAILED = "failed"


class TransferKind(StrEnum):
    """Blind: the target still has to answer. Attended: the target already talks."""

    BLIND = "blind"
    ATTENDED = "attended"


def _require_text(event: object, name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise InvalidEventError(f"{type(event).__name__}.{name} must be a non-empty string")


@dataclass(frozen=True, kw_only=True, slots=True)
class CallEvent:
    """What every fact carries: the call (PBX linkedid), a unique event id and when."""

    name: ClassVar[str] = ""

    call_id: str
    event_id: str
    timestamp: datetime

    def __post_init__(self) -> None:
        _require_text(self, "call_id", self.call_id)
        _require_text(self, "event_id", self.event_id)
        if not isinstance(self.timestamp, datetime) or self.timestamp.utcoffset() is None:
            raise InvalidEventError(f"{type(self).__name__}.timestamp must be timezone-aware")


@dataclass(frozen=True, kw_only=True, slots=True)
class CallStarted(CallEvent):
    """A call entered the PBX (inbound) or an extension dialled out.

    ``external_number`` is the customer's number (the caller for inbound, the dialled number
    for outbound; for internal calls, the called extension). ``line`` is the DID or trunk.
    ``extension`` is the calling employee for outbound and internal calls. A call placed by
    click-to-call already has a Bitrix24 ``CALL_ID``: ``bitrix24_call_id``.
    """

    name: ClassVar[str] = "call.started"

    direction: Direction
    external_number: str = ""
    line: str = ""
    extension: str | None = None
    bitrix24_call_id: str | None = None
    callback: bool = False

    def __post_init__(self) -> None:
        CallEvent.__post_init__(self)
        object.__setattr__(self, "direction", Direction(self.direction))
        _require_text(self, "extension", self.extension, optional=True)
        _require_text(self, "bitrix24_call_id", self.bitrix24_call_id, optional=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Ringing(CallEvent):
    """The complete set of extensions ringing now (empty: nobody rings any more).

    A ring group rings several at once; a queue rings its members in turn, each change a new
    ``Ringing`` with the new full set. The set replaces the previous one; it is not a delta.
    """

    name: ClassVar[str] = "call.ringing"

    extensions: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        CallEvent.__post_init__(self)
        if isinstance(self.extensions, str):
            raise InvalidEventError("Ringing.extensions is a set of extensions, not one string")
        extensions = frozenset(self.extensions)
        for extension in extensions:
            _require_text(self, "extensions[]", extension)
        object.__setattr__(self, "extensions", extensions)


@dataclass(frozen=True, kw_only=True, slots=True)
class Answered(CallEvent):
    """A conversation with the customer began.

    Inbound: ``extension`` picked up. Outbound: the far end picked up, and ``extension`` (if
    given) is the employee talking; a leg answered on the employee's own phone before the far
    end answers (click-to-call) is not an answer.
    """

    name: ClassVar[str] = "call.answered"

    extension: str | None = None

    def __post_init__(self) -> None:
        CallEvent.__post_init__(self)
        _require_text(self, "extension", self.extension, optional=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Transferred(CallEvent):
    """The employee talking handed the customer to another extension or an outside number.

    Blind: the target starts ringing now and talks once it answers (an ``Answered`` follows).
    Attended: the target already spoke with the employee and talks with the customer from now.
    """

    name: ClassVar[str] = "call.transferred"

    kind: TransferKind
    from_extension: str | None = None
    to_extension: str | None = None
    to_number: str | None = None

    def __post_init__(self) -> None:
        CallEvent.__post_init__(self)
        object.__setattr__(self, "kind", TransferKind(self.kind))
        _require_text(self, "from_extension", self.from_extension, optional=True)
        _require_text(self, "to_extension", self.to_extension, optional=True)
        _require_text(self, "to_number", self.to_number, optional=True)
        if (self.to_extension is None) == (self.to_number is None):
            raise InvalidEventError("Transferred needs exactly one of to_extension, to_number")


@dataclass(frozen=True, kw_only=True, slots=True)
class LegEnded(CallEvent):
    """One extension's part of the call is over: its ringing stopped or its phone hung up.

    This is the per-channel fact AMI gives (``DialEnd`` without an answer, ``Hangup`` of a
    phone channel); it may repeat (a queue member's ``DialEnd`` comes twice) and may arrive in
    any order with the other legs' endings and with ``Ended``. It never ends the call.
    ``disposition`` describes this party only: ``busy`` for a busy phone, ``no_answer`` for a
    ring timeout, ``cancelled`` when the ringing was called off, ``answered`` for a hang-up
    after talking.
    """

    name: ClassVar[str] = "call.leg_ended"

    extension: str
    disposition: Disposition | None = None
    hangup_cause: int | None = None

    def __post_init__(self) -> None:
        CallEvent.__post_init__(self)
        _require_text(self, "extension", self.extension)
        if self.disposition is not None:
            object.__setattr__(self, "disposition", Disposition(self.disposition))
        _check_cause(self, self.hangup_cause)


@dataclass(frozen=True, kw_only=True, slots=True)
class Ended(CallEvent):
    """The whole call is over (the customer's channel is gone).

    ``disposition`` is the call's outcome as the PBX saw it, ``hangup_cause`` a Q.850 number,
    ``talk_seconds`` the PBX's own count (used only when no answer time is known). ``vote`` (1-5),
    ``cost`` and ``cost_currency`` are passed to Bitrix24 when present.
    """

    name: ClassVar[str] = "call.ended"

    disposition: Disposition
    hangup_cause: int | None = None
    talk_seconds: int | None = None
    vote: int | None = None
    cost: float | None = None
    cost_currency: str | None = None

    def __post_init__(self) -> None:
        CallEvent.__post_init__(self)
        object.__setattr__(self, "disposition", Disposition(self.disposition))
        _check_cause(self, self.hangup_cause)
        if self.talk_seconds is not None and (
            isinstance(self.talk_seconds, bool) or self.talk_seconds < 0
        ):
            raise InvalidEventError("Ended.talk_seconds must be a non-negative integer")
        if self.vote is not None and (isinstance(self.vote, bool) or not 1 <= self.vote <= 5):
            raise InvalidEventError("Ended.vote must be 1 to 5")
        if self.cost is not None and (self.cost != self.cost or self.cost < 0):
            raise InvalidEventError("Ended.cost must be a non-negative number")


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordingReady(CallEvent):
    """A complete recording of the call (or of ``extension``'s part) can be fetched.

    ``path`` is a file on the PBX, ``url`` a place to download it; ``format`` is the file
    type (``wav``, ``mp3``; others need converting before Bitrix24 takes them).
    """

    name: ClassVar[str] = "call.recording"

    format: str
    url: str | None = None
    path: str | None = None
    extension: str | None = None

    def __post_init__(self) -> None:
        CallEvent.__post_init__(self)
        _require_text(self, "format", self.format)
        object.__setattr__(self, "format", self.format.strip().lower().lstrip("."))
        _require_text(self, "url", self.url, optional=True)
        _require_text(self, "path", self.path, optional=True)
        _require_text(self, "extension", self.extension, optional=True)
        if self.url is None and self.path is None:
            raise InvalidEventError("RecordingReady needs a url or a path")


def _check_cause(event: object, cause: int | None) -> None:
    if cause is not None and (isinstance(cause, bool) or not 0 <= cause <= 255):
        raise InvalidEventError(f"{type(event).__name__}.hangup_cause must be 0 to 255")


Event: TypeAlias = (
    CallStarted | Ringing | Answered | Transferred | LegEnded | Ended | RecordingReady
)

_EVENT_TYPES: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (CallStarted, Ringing, Answered, Transferred, LegEnded, Ended, RecordingReady)
}


def event_to_dict(event: CallEvent) -> dict[str, Any]:
    """The event as a JSON-safe dict, tagged with its ``type`` (``call.started``…)."""
    data: dict[str, Any] = {"type": event.name}
    for name in field_names(type(event)):
        value = getattr(event, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, StrEnum):
            value = value.value
        data[name] = value
    return data


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def field_names(cls: type[Any]) -> tuple[str, ...]:
    """A dataclass's field names, worked out once per class."""
    # dataclasses.fields() filters the class's fields anew on every call, and every stored
    # event and every queued job's command is converted field by field.
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(field.name for field in fields(cls))
    return names


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "timestamp": datetime.fromisoformat,
    "extensions": lambda value: frozenset(_as_iterable(value)),
}


def _as_iterable(value: Any) -> Iterable[Any]:
    if not isinstance(value, list | tuple | set | frozenset):
        raise InvalidEventError("extensions must be a list")
    return value


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Rebuild an event written by :func:`event_to_dict`."""
    kind = data.get("type")
    cls = _EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidEventError(f"unknown event type {kind!r}")
    names = {field.name for field in fields(cls)}
    unknown = set(data) - names - {"type"}
    if unknown:
        raise InvalidEventError(f"{kind} has unknown fields: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "type":
            continue
        decode = _DECODERS.get(key)
        try:
            kwargs[key] = decode(value) if decode is not None and value is not None else value
        except (TypeError, ValueError) as err:
            raise InvalidEventError(f"{kind}.{key}: {err}") from err
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        # Missing fields and bad enum values surface here; InvalidEventError passes through.
        raise InvalidEventError(f"{kind}: {err}") from err
