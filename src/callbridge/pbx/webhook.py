"""The PBX webhook contract, v1: what a PBX POSTs to ``/pbx/{enterprise}/events``, and its auth.

The body is one event or a JSON list of events. Each event names its ``type``, its call
(``call_id``: the PBX's linkedid), a unique ``event_id`` and a ``timestamp`` with a UTC
offset, and the fields of its type. :func:`parse_events` validates a decoded body and
:meth:`WebhookEvent.to_domain` turns each event into a :mod:`callbridge.domain.events` fact.

The contract is lenient where a dialplan cannot help itself and strict everywhere else:
empty strings count as "not given" for optional fields (an unset ``${ANSWEREDTIME}`` expands
to nothing), numbers may arrive as strings, ``disposition`` also takes Asterisk's
``${DIALSTATUS}`` words, and ``extensions`` also takes ``"101,102"``; unknown fields are
refused, so a typo is an error rather than a silently missing value.

Authentication (:class:`WebhookVerifier`) takes either the enterprise's token as
``Authorization: Bearer <token>``, or an HMAC-SHA256 signature keyed with that token over
``<unix timestamp> + "." + <raw body>``, sent as ``X-Callbridge-Signature: sha256=<hex>`` with
``X-Callbridge-Timestamp: <unix timestamp>``; signatures older or newer than the replay window
are refused. Every comparison is constant-time. Documented in ``docs/pbx-webhooks.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

from callbridge.domain import events as domain
from callbridge.domain.status import disposition_from_dial_status

__all__ = [
    "AUTHORIZATION_HEADER",
    "CONTRACT_VERSION",
    "DEFAULT_REPLAY_WINDOW_SECONDS",
    "EVENT_TYPES",
    "MAX_EVENTS_PER_REQUEST",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "CallAnswered",
    "CallEnded",
    "CallLegEnded",
    "CallRecording",
    "CallRinging",
    "CallStarted",
    "CallTransferred",
    "EventBatch",
    "WebhookEvent",
    "WebhookVerifier",
    "parse_events",
    "sign",
]

CONTRACT_VERSION: Final = 1
AUTHORIZATION_HEADER: Final = "Authorization"
SIGNATURE_HEADER: Final = "X-Callbridge-Signature"
TIMESTAMP_HEADER: Final = "X-Callbridge-Timestamp"
SIGNATURE_SCHEME: Final = "sha256="
DEFAULT_REPLAY_WINDOW_SECONDS: Final = 300.0
#: A bigger backlog is sent in several requests: one request is one transaction.
MAX_EVENTS_PER_REQUEST: Final = 500


def _blank_to_none(value: Any) -> Any:
    # A dialplan variable that is not set expands to "", which means "not given".
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _split_extensions(value: Any) -> Any:
    if isinstance(value, str):
        return [part for part in re.split(r"[,&\s]+", value) if part]
    return value


_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
_Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
_Extension = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)]
_Number = Annotated[str, StringConstraints(strip_whitespace=True, max_length=64)]
_OptionalExtension = Annotated[_Extension | None, BeforeValidator(_blank_to_none)]
_OptionalText = Annotated[_Text | None, BeforeValidator(_blank_to_none)]
_OptionalCause = Annotated[
    Annotated[int, Field(ge=0, le=255)] | None, BeforeValidator(_blank_to_none)
]

#: Asterisk's ``${DIALSTATUS}`` words, so a dialplan can pass it through unchanged.
_DIALSTATUS: Final[Mapping[str, domain.Disposition]] = {
    "answer": domain.Disposition.ANSWERED,
    "noanswer": domain.Disposition.NO_ANSWER,
    "busy": domain.Disposition.BUSY,
    "cancel": domain.Disposition.CANCELLED,
    "chanunavail": domain.Disposition.FAILED,
    "congestion": domain.Disposition.FAILED,
    "dontcall": domain.Disposition.FAILED,
    "torture": domain.Disposition.FAILED,
    "invalidargs": domain.Disposition.FAILED,
}


def _disposition(value: Any) -> Any:
    if isinstance(value, str):
        word = value.strip().lower()
        return _DIALSTATUS.get(word, word)
    return value


_Disposition = Annotated[domain.Disposition, BeforeValidator(_disposition)]


def _cause_of_dial_status(data: Any) -> Any:
    """Fill ``hangup_cause`` from a ``${DIALSTATUS}`` word that implies one, when none is given.

    ``CONGESTION`` and ``CHANUNAVAIL`` both mean ``failed``; only the cause they imply (34, 20)
    tells Bitrix24's ``503`` from ``480`` (bitrix24-api.md §1.2), as the AMI translator does.
    """
    if not isinstance(data, Mapping):
        return data
    word = data.get("disposition")
    cause = data.get("hangup_cause")
    if not isinstance(word, str) or (cause is not None and str(cause).strip() != ""):
        return data
    if word.strip().lower() not in _DIALSTATUS:
        return data
    _, implied = disposition_from_dial_status(word)
    return data if implied is None else {**data, "hangup_cause": implied}


class _Event(BaseModel):
    """What every event carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    call_id: _Id = Field(description="The PBX's linkedid: the same for every event of a call.")
    event_id: _Text = Field(
        description="Unique per enterprise; a repeat is acknowledged as `duplicate`."
    )
    timestamp: AwareDatetime = Field(
        description="When it happened on the PBX: ISO-8601 with a UTC offset (or `Z`)."
    )

    def _common(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "event_id": self.event_id, "timestamp": self.timestamp}


class CallStarted(_Event):
    """``call.started``: a call entered the PBX, or an employee dialled out."""

    type: Literal["call.started"]
    direction: domain.Direction
    external_number: Annotated[_Number, BeforeValidator(lambda v: "" if v is None else v)] = Field(
        default="",
        description="The customer's number (caller for inbound, dialled for outbound); "
        "for internal calls the called extension. Empty for an anonymous caller.",
    )
    line: Annotated[_Number, BeforeValidator(lambda v: "" if v is None else v)] = Field(
        default="", description="The DID or trunk the call came in on or went out by."
    )
    extension: _OptionalExtension = Field(
        default=None, description="The employee who dialled (required for outbound, internal)."
    )
    bitrix24_call_id: _OptionalText = Field(
        default=None, description="The Bitrix24 CALL_ID of a click-to-call call."
    )
    callback: bool = Field(default=False, description="An outbound callback (Bitrix24 TYPE 4).")

    @model_validator(mode="after")
    def _who_dialled(self) -> CallStarted:
        if self.direction is not domain.Direction.INBOUND and self.extension is None:
            raise ValueError(f"extension is required for {self.direction.value} calls")
        if self.direction is not domain.Direction.INBOUND and not self.external_number:
            raise ValueError(f"external_number is required for {self.direction.value} calls")
        return self

    def to_domain(self) -> domain.CallStarted:
        """The domain fact."""
        return domain.CallStarted(
            **self._common(),
            direction=self.direction,
            external_number=self.external_number,
            line=self.line,
            extension=self.extension,
            bitrix24_call_id=self.bitrix24_call_id,
            callback=self.callback,
        )


class CallRinging(_Event):
    """``call.ringing``: the complete set of extensions ringing now (empty: none any more)."""

    type: Literal["call.ringing"]
    extensions: Annotated[
        list[_Extension], BeforeValidator(_split_extensions), Field(max_length=200)
    ] = Field(description='A list, or one string such as "101,102" or "101&102".')

    def to_domain(self) -> domain.Ringing:
        """The domain fact."""
        return domain.Ringing(**self._common(), extensions=frozenset(self.extensions))


class CallAnswered(_Event):
    """``call.answered``: the customer is talking with ``extension``."""

    type: Literal["call.answered"]
    extension: _OptionalExtension = Field(
        default=None, description="Who answered (inbound) or who talks (outbound)."
    )

    def to_domain(self) -> domain.Answered:
        """The domain fact."""
        return domain.Answered(**self._common(), extension=self.extension)


class CallTransferred(_Event):
    """``call.transferred``: the talking employee handed the customer on."""

    type: Literal["call.transferred"]
    kind: domain.TransferKind = Field(
        description="`blind`: the target still has to answer; `attended`: it already talks."
    )
    from_extension: _OptionalExtension = None
    to_extension: _OptionalExtension = None
    to_number: Annotated[
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
        | None,
        BeforeValidator(_blank_to_none),
    ] = None

    @model_validator(mode="after")
    def _one_target(self) -> CallTransferred:
        if (self.to_extension is None) == (self.to_number is None):
            raise ValueError("give exactly one of to_extension, to_number")
        return self

    def to_domain(self) -> domain.Transferred:
        """The domain fact."""
        return domain.Transferred(
            **self._common(),
            kind=self.kind,
            from_extension=self.from_extension,
            to_extension=self.to_extension,
            to_number=self.to_number,
        )


class CallLegEnded(_Event):
    """``call.leg_ended``: one extension stopped ringing or hung up (never ends the call)."""

    type: Literal["call.leg_ended"]
    extension: _Extension
    disposition: Annotated[_Disposition | None, BeforeValidator(_blank_to_none)] = None
    hangup_cause: _OptionalCause = None

    @model_validator(mode="before")
    @classmethod
    def _implied_cause(cls, data: Any) -> Any:
        return _cause_of_dial_status(data)

    def to_domain(self) -> domain.LegEnded:
        """The domain fact."""
        return domain.LegEnded(
            **self._common(),
            extension=self.extension,
            disposition=self.disposition,
            hangup_cause=self.hangup_cause,
        )


class CallEnded(_Event):
    """``call.ended``: the whole call is over."""

    type: Literal["call.ended"]
    disposition: _Disposition = Field(
        description="answered, no_answer, busy, cancelled, failed (or a ${DIALSTATUS} word)."
    )
    hangup_cause: _OptionalCause = Field(default=None, description="Q.850, ${HANGUPCAUSE}.")
    talk_seconds: Annotated[Annotated[int, Field(ge=0)] | None, BeforeValidator(_blank_to_none)] = (
        Field(default=None, description="The PBX's talk time, ${ANSWEREDTIME}.")
    )
    vote: Annotated[Annotated[int, Field(ge=1, le=5)] | None, BeforeValidator(_blank_to_none)] = (
        None
    )
    cost: Annotated[
        Annotated[float, Field(ge=0, allow_inf_nan=False)] | None, BeforeValidator(_blank_to_none)
    ] = None
    cost_currency: Annotated[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$")] | None,
        BeforeValidator(_blank_to_none),
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _implied_cause(cls, data: Any) -> Any:
        return _cause_of_dial_status(data)

    def to_domain(self) -> domain.Ended:
        """The domain fact."""
        return domain.Ended(
            **self._common(),
            disposition=self.disposition,
            hangup_cause=self.hangup_cause,
            talk_seconds=self.talk_seconds,
            vote=self.vote,
            cost=self.cost,
            cost_currency=self.cost_currency.upper() if self.cost_currency else None,
        )


class CallRecording(_Event):
    """``call.recording``: a finished recording, as a file on the PBX or a URL."""

    type: Literal["call.recording"]
    path: _OptionalText = Field(default=None, description="A file on the PBX.")
    url: Annotated[
        Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^https?://\S+$")] | None,
        BeforeValidator(_blank_to_none),
    ] = Field(default=None, description="Where Bitrix24 (or callbridge) downloads it.")
    format: Annotated[
        Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\.?[A-Za-z0-9]{2,8}$")]
        | None,
        BeforeValidator(_blank_to_none),
    ] = Field(default=None, description="wav, mp3...; taken from the file name when omitted.")
    extension: _OptionalExtension = Field(
        default=None, description="Whose part of the call it holds, if only one employee's."
    )

    @model_validator(mode="after")
    def _has_file(self) -> CallRecording:
        if self.path is None and self.url is None:
            raise ValueError("give a path or a url")
        if self.format is None and _suffix(self.path or self.url or "") is None:
            raise ValueError("give format: the file name has no extension to take it from")
        return self

    def to_domain(self) -> domain.RecordingReady:
        """The domain fact."""
        fmt = self.format or _suffix(self.path or self.url or "") or ""
        return domain.RecordingReady(
            **self._common(),
            format=fmt,
            url=self.url,
            path=self.path,
            extension=self.extension,
        )


def _suffix(name: str) -> str | None:
    match = re.search(r"\.([A-Za-z0-9]{2,8})(?:[?#].*)?$", name)
    return match.group(1).lower() if match else None


WebhookEvent: TypeAlias = Annotated[
    CallStarted
    | CallRinging
    | CallAnswered
    | CallTransferred
    | CallLegEnded
    | CallEnded
    | CallRecording,
    Field(discriminator="type"),
]

EVENT_TYPES: Final = (
    "call.started",
    "call.ringing",
    "call.answered",
    "call.transferred",
    "call.leg_ended",
    "call.ended",
    "call.recording",
)


def _as_list(value: Any) -> Any:
    # One event or a list of them: the handler sees a list either way.
    return [value] if isinstance(value, dict) else value


EventBatch: TypeAlias = Annotated[
    list[WebhookEvent],
    BeforeValidator(_as_list),
    Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST),
]

_BATCH: TypeAdapter[list[WebhookEvent]] = TypeAdapter(EventBatch)


def parse_events(data: Any) -> list[WebhookEvent]:
    """Validate a decoded body (one event or a list); raises pydantic's ``ValidationError``."""
    return _BATCH.validate_python(data)


def parse_events_json(body: bytes) -> list[WebhookEvent]:
    """Validate a raw JSON body; raises pydantic's ``ValidationError``."""
    return _BATCH.validate_json(body)


# -- authentication ----------------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Callbridge-Signature`` value for a body sent at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return SIGNATURE_SCHEME + digest.hexdigest()


# Compared against when the enterprise is unknown, so that answer takes as long as a bad token.
_DUMMY_SECRET: Final = "callbridge-unknown-enterprise-" + "0" * 32


@dataclass(frozen=True)
class WebhookVerifier:
    """Checks a request's bearer token or HMAC signature against an enterprise's secret.

    Callable: ``verifier(secret, headers, body) -> bool``. ``secret`` is None for an unknown
    enterprise; the same work is done and the answer is False, so neither the status nor the
    time tells an unknown enterprise from a wrong token.
    """

    replay_window_seconds: float = DEFAULT_REPLAY_WINDOW_SECONDS
    clock: Callable[[], float] = time.time

    def __call__(self, secret: str | None, headers: Mapping[str, str], body: bytes) -> bool:
        """Whether the request proves knowledge of ``secret``."""
        known = secret is not None and secret != ""
        key = secret if known and secret is not None else _DUMMY_SECRET
        signature = headers.get(SIGNATURE_HEADER.lower()) or headers.get(SIGNATURE_HEADER)
        if signature is not None:
            ok = self._signature_ok(key, headers, body, signature)
        else:
            ok = self._bearer_ok(key, headers)
        return ok and known

    def _bearer_ok(self, key: str, headers: Mapping[str, str]) -> bool:
        value = headers.get(AUTHORIZATION_HEADER.lower()) or headers.get(AUTHORIZATION_HEADER)
        scheme, _, token = (value or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            token = ""
        # Digests first: compare_digest leaks the length of what it compares.
        given = hashlib.sha256(token.strip().encode()).digest()
        expected = hashlib.sha256(key.encode()).digest()
        return hmac.compare_digest(given, expected) and bool(token)

    def _signature_ok(
        self, key: str, headers: Mapping[str, str], body: bytes, signature: str
    ) -> bool:
        stamp = (
            headers.get(TIMESTAMP_HEADER.lower()) or headers.get(TIMESTAMP_HEADER) or ""
        ).strip()
        fresh = self._fresh(stamp)
        expected = sign(key, stamp, body).encode()
        matches = hmac.compare_digest(signature.strip().lower().encode(), expected)
        return matches and fresh

    def _fresh(self, stamp: str) -> bool:
        if not re.fullmatch(r"\d{1,12}(?:\.\d{1,6})?", stamp):
            return False
        return abs(self.clock() - float(stamp)) <= self.replay_window_seconds
