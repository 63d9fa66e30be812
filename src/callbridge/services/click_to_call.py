"""Click-to-call and callback: what to do with a Bitrix24 ``ONEXTERNALCALL(BACK)START`` event.

Pure decisions, no I/O: the worker reads what is needed (the event, earlier events, the users'
extensions, the enterprises that may host the PBX), asks :func:`plan` what to do, sends the
Originate, and on failure sends the commands :func:`failure_commands` builds.

* Repeats within :data:`REPEAT_WINDOW` (same ``CALL_ID``, or same user and number) are ignored:
  the portal re-delivers events and people double-click.
* Events older than :data:`MAX_AGE` are dropped: the employee has given up by then, and a phone
  ringing a minute after a click surprises more than it helps.
* A click-to-call that cannot be placed is finished in Bitrix24 with a status (else the card
  stays open) and the employee is told why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

__all__ = [
    "CALLBACK_QUEUE_SETTING",
    "MAX_AGE",
    "REPEAT_WINDOW",
    "Drop",
    "Fail",
    "Originate",
    "PbxCandidate",
    "PhoneRequest",
    "choose_pbx",
    "failure_commands",
    "failure_message",
    "is_repeat",
    "is_stale",
    "plan",
]

REPEAT_WINDOW: Final = timedelta(seconds=5)
MAX_AGE: Final = timedelta(seconds=30)
CALLBACK_QUEUE_SETTING: Final = "callback_queue"
CLICK_TO_CALL: Final = "click_to_call"
CALLBACK: Final = "callback"

Kind = Literal["click_to_call", "callback"]
FailureReason = Literal["no_pbx", "no_ami", "unknown_extension", "refused", "no_user"]

#: Bitrix24 status codes a click-to-call that never rang is finished with.
_STATUS_CODES: Final[Mapping[str, str]] = {
    "refused": "603-S",
    "no_pbx": "OTHER",
    "no_ami": "OTHER",
    "unknown_extension": "OTHER",
    "no_user": "OTHER",
}

_MESSAGES: Final[Mapping[str, Mapping[str, str]]] = {
    "ru": {
        "head_click_to_call": "Не удалось позвонить на {phone}",  # noqa: RUF001
        "head_callback": "Не удалось заказать обратный звонок на {phone}",  # noqa: RUF001
        "no_pbx": "к порталу не подключена АТС",  # noqa: RUF001
        "no_ami": "для АТС не настроено подключение AMI",  # noqa: RUF001
        "unknown_extension": "у вас не указан внутренний номер",  # noqa: RUF001
        "refused": "АТС отклонила вызов",  # noqa: RUF001
        "no_user": "не найден ответственный сотрудник",
    },
    "en": {
        "head_click_to_call": "Could not call {phone}",
        "head_callback": "Could not place the callback to {phone}",
        "no_pbx": "no PBX is linked to the portal",
        "no_ami": "the PBX has no AMI connection configured",
        "unknown_extension": "you have no extension number",
        "refused": "the PBX refused the call",
        "no_user": "no responsible employee was found",
    },
}


def _int(value: Any) -> int:
    try:
        return int(str(value).strip() or 0)
    except (TypeError, ValueError):
        return 0


def _digits(phone: str) -> str:
    return "".join(ch for ch in phone if ch.isdigit())


@dataclass(frozen=True)
class PhoneRequest:
    """One click-to-call or callback request, from a job's payload."""

    kind: Kind
    phone: str
    user_id: int = 0
    call_id: str = ""
    line_number: str = ""
    crm_entity_type: str = ""
    crm_entity_id: int = 0
    sent_at: datetime | None = None

    @classmethod
    def from_payload(cls, kind: Kind, payload: Mapping[str, Any]) -> PhoneRequest:
        """Read the stored event (``data`` holds the portal's form fields, ``ts`` epoch seconds)."""
        data = payload.get("data") or {}
        sent_at = None
        ts = _int(payload.get("ts"))
        if ts > 0:
            sent_at = datetime.fromtimestamp(ts, UTC)
        return cls(
            kind=kind,
            phone=str(data.get("PHONE_NUMBER") or data.get("PHONE_NUMBER_INTERNATIONAL") or ""),
            user_id=_int(data.get("USER_ID")),
            call_id=str(data.get("CALL_ID") or ""),
            line_number=str(data.get("LINE_NUMBER") or ""),
            crm_entity_type=str(data.get("CRM_ENTITY_TYPE") or ""),
            crm_entity_id=_int(data.get("CRM_ENTITY_ID")),
            sent_at=sent_at,
        )

    def same_as(self, other: PhoneRequest) -> bool:
        """Whether ``other`` asks for the same call (same CALL_ID, or same user and number)."""
        if self.kind != other.kind:
            return False
        if self.call_id and self.call_id == other.call_id:
            return True
        return self.user_id == other.user_id and _digits(self.phone) == _digits(other.phone)


@dataclass(frozen=True)
class PbxCandidate:
    """An enterprise (one PBX) the portal's calls may go through."""

    enterprise_id: int
    has_ami: bool
    #: The extensions this PBX hosts, when known (``None``: any).
    extensions: frozenset[str] | None = None
    channel_pattern: str = "PJSIP/{extension}"
    context: str = "from-internal"


@dataclass(frozen=True)
class Originate:
    """Ring ``extension`` on this PBX, then dial ``number``."""

    enterprise_id: int
    extension: str
    number: str
    user_id: int
    bitrix24_call_id: str | None
    callback: bool
    channel_pattern: str
    context: str


@dataclass(frozen=True)
class Drop:
    """Nothing to do (a repeat, a stale event): ``reason`` is for the log."""

    reason: str


@dataclass(frozen=True)
class Fail:
    """The call cannot be placed: finish it in Bitrix24 and tell the employee."""

    reason: FailureReason
    user_id: int
    detail: str = ""


def is_repeat(
    request: PhoneRequest,
    received_at: datetime,
    earlier: Sequence[tuple[PhoneRequest, datetime]],
    window: timedelta = REPEAT_WINDOW,
) -> bool:
    """Whether an earlier request for the same call came in within ``window`` before this one."""
    return any(
        request.same_as(other) and timedelta(0) <= received_at - at <= window
        for other, at in earlier
    )


def is_stale(request: PhoneRequest, now: datetime, max_age: timedelta = MAX_AGE) -> bool:
    """Whether the portal sent the event more than ``max_age`` ago (unknown age: not stale)."""
    return request.sent_at is not None and now - request.sent_at > max_age


def choose_pbx(candidates: Sequence[PbxCandidate], extension: str) -> PbxCandidate | None:
    """The PBX that hosts ``extension``: one that lists it, else the only one, else None."""
    listed = [c for c in candidates if c.extensions is not None and extension in c.extensions]
    if listed:
        return listed[0]
    open_ended = [c for c in candidates if c.extensions is None]
    if len(open_ended) == 1:
        return open_ended[0]
    return None


def plan(
    request: PhoneRequest,
    *,
    now: datetime,
    received_at: datetime,
    earlier: Sequence[tuple[PhoneRequest, datetime]],
    extensions: Mapping[int, str],
    candidates: Sequence[PbxCandidate],
    responsible_user: int | None = None,
    default_user: int = 1,
    callback_queue: str = "",
) -> Originate | Drop | Fail:
    """What to do with ``request``: originate, drop it, or fail it."""
    if request.sent_at is not None and is_stale(request, now):
        return Drop(f"stale: sent {(now - request.sent_at).total_seconds():.0f} s ago")
    if is_repeat(request, received_at, earlier):
        return Drop("repeat within 5 s")
    callback = request.kind == CALLBACK
    if callback:
        user_id = responsible_user or request.user_id or default_user
    else:
        user_id = request.user_id
    if user_id <= 0 and not (callback and callback_queue):
        return Fail("no_user", 0)
    if not candidates:
        return Fail("no_pbx", user_id)
    if callback and callback_queue:
        target = callback_queue
    else:
        found = extensions.get(user_id)
        if not found:
            return Fail("unknown_extension", user_id)
        target = found
    pbx = choose_pbx(candidates, target)
    if pbx is None:
        return Fail("no_pbx", user_id, f"no PBX hosts extension {target}")
    if not pbx.has_ami:
        return Fail("no_ami", user_id)
    channel = pbx.channel_pattern
    if callback and callback_queue:
        # A queue is a dialplan extension, not a phone: reach it through a Local channel.
        channel = f"Local/{{extension}}@{pbx.context}"
    return Originate(
        enterprise_id=pbx.enterprise_id,
        extension=target,
        number=request.phone,
        user_id=user_id,
        bitrix24_call_id=None if callback else (request.call_id or None),
        callback=callback,
        channel_pattern=channel,
        context=pbx.context,
    )


def failure_message(request: PhoneRequest, reason: FailureReason, language: str) -> str:
    """A short note for the employee: what failed and why (Russian unless ``en``)."""
    texts = _MESSAGES.get(language, _MESSAGES["ru"])
    head = texts[f"head_{request.kind}"].format(phone=request.phone or "?")
    return f"{head}: {texts[reason]}"


def failure_commands(
    request: PhoneRequest, failure: Fail, language: str
) -> list[tuple[str, dict[str, Any]]]:
    """Bitrix24 calls for a failure: ``externalCall.finish`` (click-to-call) and ``im.notify``."""
    commands: list[tuple[str, dict[str, Any]]] = []
    if request.kind == CLICK_TO_CALL and request.call_id:
        commands.append(
            (
                "telephony.externalCall.finish",
                {
                    "CALL_ID": request.call_id,
                    "USER_ID": failure.user_id or request.user_id,
                    "DURATION": 0,
                    "STATUS_CODE": _STATUS_CODES[failure.reason],
                    "FAILED_REASON": failure.detail or failure.reason,
                },
            )
        )
    user_id = failure.user_id or request.user_id
    if user_id > 0:
        commands.append(
            (
                "im.notify",
                {
                    "USER_ID": user_id,
                    "MESSAGE": failure_message(request, failure.reason, language),
                    "TYPE": "SYSTEM",
                    # One note per call: a retried job replaces it instead of adding another.
                    "TAG": f"callbridge|c2c|{request.call_id or _digits(request.phone)}",
                },
            )
        )
    return commands
