"""Originate for click-to-call and callbacks: ring the employee first, then dial the customer.

The action is built from the enterprise's settings (``ami.originate_channel``, default
``PJSIP/{extension}``; ``ami.originate_context``, default ``from-internal``) and sent over a
short-lived connection (connect, login, Originate, logoff), so any worker process can send it.

An Originate is never re-sent: a refused one is a failure, and a connection lost before the
answer is *unknown* (the PBX may be ringing the employee already), reported as such.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from callbridge.pbx.ami.client import AmiClient
from callbridge.pbx.ami.errors import (
    AmiActionError,
    AmiConnectionLost,
    AmiError,
    AmiTimeout,
)
from callbridge.pbx.ami.listener import AmiUrl
from callbridge.pbx.ami.translate_config import B24_CALL_ID_VARIABLE, CALLBACK_VARIABLE

__all__ = [
    "DEFAULT_ORIGINATE_CHANNEL",
    "DEFAULT_ORIGINATE_CONTEXT",
    "OriginateOutcome",
    "OriginateRequest",
    "OriginateResult",
    "originate",
    "originate_headers",
    "originate_settings",
]

DEFAULT_ORIGINATE_CHANNEL: Final = "PJSIP/{extension}"
DEFAULT_ORIGINATE_CONTEXT: Final = "from-internal"
#: Seconds the employee's phone rings before the PBX gives up (AMI ``Timeout`` is in ms).
DEFAULT_RING_SECONDS: Final = 30


class OriginateOutcome(StrEnum):
    """What became of an Originate."""

    QUEUED = "queued"  # the PBX accepted it (Async: the call is under way)
    REFUSED = "refused"  # the PBX answered Error, or we could not connect: nothing rings
    UNKNOWN = "unknown"  # sent, then no answer: it may ring; never re-sent


@dataclass(frozen=True)
class OriginateRequest:
    """One Originate: whose phone rings first and which number it then dials."""

    extension: str
    number: str
    bitrix24_call_id: str | None = None
    callback: bool = False
    caller_id: str = ""
    channel_pattern: str = DEFAULT_ORIGINATE_CHANNEL
    context: str = DEFAULT_ORIGINATE_CONTEXT
    ring_seconds: int = DEFAULT_RING_SECONDS


@dataclass(frozen=True)
class OriginateResult:
    """The outcome and, when not queued, why."""

    outcome: OriginateOutcome
    detail: str = ""
    action_id: str | None = None


def _setting(settings: Mapping[str, Any], name: str) -> Any:
    # Both a flat ``"ami.originate_channel"`` key and a nested ``{"ami": {...}}`` are accepted.
    if name in settings:
        return settings[name]
    nested = settings.get("ami")
    if isinstance(nested, Mapping):
        return nested.get(name.removeprefix("ami."))
    return None


def originate_settings(settings: Mapping[str, Any]) -> tuple[str, str]:
    """The enterprise's channel pattern and dialplan context for Originates."""
    channel = str(_setting(settings, "ami.originate_channel") or DEFAULT_ORIGINATE_CHANNEL)
    context = str(_setting(settings, "ami.originate_context") or DEFAULT_ORIGINATE_CONTEXT)
    return channel, context


def originate_headers(request: OriginateRequest) -> dict[str, str | list[str]]:
    """The Originate action's headers (without ActionID)."""
    if "{extension}" in request.channel_pattern:
        channel = request.channel_pattern.replace("{extension}", request.extension)
    else:
        channel = f"{request.channel_pattern.rstrip('/')}/{request.extension}"
    variables: list[str] = []
    if request.bitrix24_call_id:
        variables.append(f"{B24_CALL_ID_VARIABLE}={request.bitrix24_call_id}")
    if request.callback:
        variables.append(f"{CALLBACK_VARIABLE}=1")
    caller_id = request.caller_id or request.number
    headers: dict[str, str | list[str]] = {
        "Channel": channel,
        "Context": request.context,
        "Exten": request.number,
        "Priority": "1",
        # The employee's phone shows whom it is about to call.
        "CallerID": f'"{caller_id}" <{request.number}>',
        "Timeout": str(request.ring_seconds * 1000),
        "Async": "true",
    }
    if variables:
        headers["Variable"] = variables
    return headers


async def originate(
    url: AmiUrl,
    request: OriginateRequest,
    *,
    connect_timeout: float = 5.0,
    response_timeout: float = 10.0,
) -> OriginateResult:
    """Connect, log in, send one Originate, log off; never raises for AMI trouble."""
    client = AmiClient(
        url.host,
        url.port,
        url.username,
        url.secret,
        events="off",
        ping_interval=None,
        connect_timeout=connect_timeout,
        action_timeout=response_timeout,
    )
    try:
        await client.connect()
    except AmiError as err:
        with contextlib.suppress(AmiError, OSError):
            await client.close()
        return OriginateResult(OriginateOutcome.REFUSED, f"cannot reach the PBX: {err}")
    try:
        response = await client.send_action("Originate", originate_headers(request))
        return OriginateResult(OriginateOutcome.QUEUED, response.message, response.action_id)
    except AmiActionError as err:
        return OriginateResult(OriginateOutcome.REFUSED, f"the PBX refused: {err}")
    except (AmiConnectionLost, AmiTimeout) as err:
        return OriginateResult(OriginateOutcome.UNKNOWN, f"no answer from the PBX: {err}")
    except AmiError as err:
        # Not connected any more before sending: nothing was sent, nothing rings.
        return OriginateResult(OriginateOutcome.REFUSED, f"the PBX connection failed: {err}")
    finally:
        with contextlib.suppress(AmiError, OSError):
            await client.close()
