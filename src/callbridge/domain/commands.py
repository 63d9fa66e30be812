"""What the call model asks of Bitrix24: one command per ``telephony.externalCall.*`` request.

Commands name a *leg* of the call, never a Bitrix24 ``CALL_ID``: the dispatcher resolves the
leg to the ``CALL_ID`` its ``RegisterCall`` returned (or, for click-to-call, the one Bitrix24
gave in ``ONEXTERNALCALLSTART``) and adds it as ``CALL_ID``. ``to_params`` gives the rest of
the request's parameters, with Bitrix24's names and types (flags as 0/1, codes as strings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, TypeAlias

from callbridge.domain.errors import CallStateError
from callbridge.domain.events import field_names

__all__ = [
    "AttachRecord",
    "CallType",
    "Command",
    "FinishCall",
    "HideCard",
    "RegisterCall",
    "ShowCard",
    "command_from_dict",
    "command_to_dict",
    "portal_external_call_id",
    "split_portal_external_call_id",
]

#: Between the enterprise number and the leg's id in a portal-wide ``EXTERNAL_CALL_ID``. An
#: enterprise number never holds it (it is a path segment of the PBX webhook URL).
EXTERNAL_CALL_ID_SEPARATOR = "/"


def portal_external_call_id(enterprise_number: str, leg_external_call_id: str) -> str:
    """The ``EXTERNAL_CALL_ID`` Bitrix24 sees: the leg's id, unique across enterprises.

    The call model names a leg ``<linkedid>-<leg>``, unique within one PBX. Several
    enterprises may share a portal and two PBXs do produce the same linkedid
    (``1700000000.1``); Bitrix24 would then answer a register with the other enterprise's
    ``CALL_ID`` (its 30-minute dedup includes ``EXTERNAL_CALL_ID``), so the enterprise
    number goes first: ``<enterprise number>/<linkedid>-<leg>``.
    """
    return f"{enterprise_number}{EXTERNAL_CALL_ID_SEPARATOR}{leg_external_call_id}"


def split_portal_external_call_id(value: str) -> tuple[str | None, str]:
    """``(enterprise number, leg id)`` of an ``EXTERNAL_CALL_ID``; no number for an old one.

    Legs registered before the ids were qualified carry the bare ``<linkedid>-<leg>``.
    """
    number, separator, rest = value.partition(EXTERNAL_CALL_ID_SEPARATOR)
    if not separator or not number:
        return None, value
    return number, rest


class CallType(IntEnum):
    """Bitrix24 ``TYPE`` of a registered call."""

    OUTBOUND = 1
    INBOUND = 2
    INBOUND_REDIRECTED = 3
    CALLBACK = 4
    INFO = 5


@dataclass(frozen=True, kw_only=True, slots=True)
class RegisterCall:
    """``telephony.externalCall.register`` for one leg (never for a click-to-call leg 0)."""

    name: ClassVar[str] = "register"
    method: ClassVar[str] = "telephony.externalCall.register"

    leg: int
    external_call_id: str
    user_id: int
    phone_number: str
    type: CallType
    call_start_date: str
    line_number: str | None = None
    crm_create: bool = False
    crm_source: str | None = None
    show: bool = False

    def to_params(self) -> dict[str, Any]:
        """Bitrix24 parameters of the request."""
        params: dict[str, Any] = {
            "USER_ID": self.user_id,
            "PHONE_NUMBER": self.phone_number,
            "TYPE": int(self.type),
            "CALL_START_DATE": self.call_start_date,
            "CRM_CREATE": int(self.crm_create),
            "SHOW": int(self.show),
            "EXTERNAL_CALL_ID": self.external_call_id,
        }
        if self.line_number:
            params["LINE_NUMBER"] = self.line_number
        if self.crm_source:
            params["CRM_SOURCE"] = self.crm_source
        return params


@dataclass(frozen=True, kw_only=True, slots=True)
class ShowCard:
    """``telephony.externalCall.show`` for these users at once."""

    name: ClassVar[str] = "show"
    method: ClassVar[str] = "telephony.externalCall.show"

    leg: int
    user_ids: tuple[int, ...]

    def to_params(self) -> dict[str, Any]:
        """Bitrix24 parameters of the request."""
        return {"USER_ID": list(self.user_ids)}


@dataclass(frozen=True, kw_only=True, slots=True)
class HideCard:
    """``telephony.externalCall.hide`` for these users at once."""

    name: ClassVar[str] = "hide"
    method: ClassVar[str] = "telephony.externalCall.hide"

    leg: int
    user_ids: tuple[int, ...]

    def to_params(self) -> dict[str, Any]:
        """Bitrix24 parameters of the request."""
        return {"USER_ID": list(self.user_ids)}


@dataclass(frozen=True, kw_only=True, slots=True)
class FinishCall:
    """``telephony.externalCall.finish``: who, how long, how it ended."""

    name: ClassVar[str] = "finish"
    method: ClassVar[str] = "telephony.externalCall.finish"

    leg: int
    user_id: int
    duration: int
    status_code: str
    add_to_chat: bool
    vote: int | None = None
    cost: float | None = None
    cost_currency: str | None = None
    failed_reason: str | None = None

    def to_params(self) -> dict[str, Any]:
        """Bitrix24 parameters of the request."""
        params: dict[str, Any] = {
            "USER_ID": self.user_id,
            "DURATION": self.duration,
            "STATUS_CODE": self.status_code,
            # Its default changed from 0 to 1 between doc editions: always say it.
            "ADD_TO_CHAT": int(self.add_to_chat),
        }
        if self.vote is not None:
            params["VOTE"] = self.vote
        if self.cost is not None:
            params["COST"] = self.cost
            if self.cost_currency:
                params["COST_CURRENCY"] = self.cost_currency
        if self.failed_reason:
            params["FAILED_REASON"] = self.failed_reason
        return params


@dataclass(frozen=True, kw_only=True, slots=True)
class AttachRecord:
    """``telephony.externalCall.attachRecord`` for a finished leg.

    With ``url`` Bitrix24 downloads the file itself; with ``path`` (a file on the PBX)
    callbridge reads it and uploads it (Base64 or the upload URL), in a job of its own.
    ``format`` other than wav/mp3 must be converted first.
    """

    name: ClassVar[str] = "attach_record"
    method: ClassVar[str] = "telephony.externalCall.attachRecord"

    leg: int
    filename: str
    format: str
    url: str | None = None
    path: str | None = None

    def to_params(self) -> dict[str, Any]:
        """Bitrix24 parameters of the request (the file content is the uploader's)."""
        params: dict[str, Any] = {"FILENAME": self.filename}
        if self.url:
            params["RECORD_URL"] = self.url
        return params


Command: TypeAlias = RegisterCall | ShowCard | HideCard | FinishCall | AttachRecord

_COMMAND_TYPES: dict[str, type[Command]] = {
    cls.name: cls for cls in (RegisterCall, ShowCard, HideCard, FinishCall, AttachRecord)
}


def command_to_dict(command: Command) -> dict[str, Any]:
    """The command as a JSON-safe dict tagged with its ``kind`` (for a job's payload)."""
    data: dict[str, Any] = {"kind": command.name}
    for name in field_names(type(command)):
        value = getattr(command, name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, IntEnum):
            value = int(value)
        data[name] = value
    return data


def command_from_dict(data: Mapping[str, Any]) -> Command:
    """Rebuild a command written by :func:`command_to_dict`."""
    kind = data.get("kind")
    cls = _COMMAND_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise CallStateError(f"unknown command kind {kind!r}")
    kwargs = {key: value for key, value in data.items() if key != "kind"}
    try:
        if "user_ids" in kwargs:
            kwargs["user_ids"] = tuple(kwargs["user_ids"])
        if "type" in kwargs:
            kwargs["type"] = CallType(kwargs["type"])
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise CallStateError(f"{kind}: {err}") from err
