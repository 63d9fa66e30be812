"""How a call ended, in PBX terms, turned into the Bitrix24 ``STATUS_CODE`` string.

Bitrix24 codes (bitrix24-api.md §1.2) are strings, ``"603-S"`` and ``"OTHER"`` included. The
mapping from Asterisk outcomes follows the spec's suggestion: an inbound caller who gives up
while ringing is a *missed* call (``304``) so that someone calls back, while an outbound call
the employee abandons is *cancelled* (``603-S``). Hangup causes are ITU-T Q.850 numbers, which
Asterisk reports as ``HANGUPCAUSE`` / ``Cause``.
"""

from __future__ import annotations

from typing import Final

from callbridge.domain.events import Direction, Disposition

__all__ = [
    "ANSWERED",
    "BLOCKED",
    "BUSY",
    "CANCELLED",
    "DECLINED",
    "FORBIDDEN",
    "MISSED",
    "NOT_FOUND",
    "OTHER",
    "STATUS_CODES",
    "TEMPORARILY_UNAVAILABLE",
    "UNAVAILABLE",
    "disposition_from_dial_status",
    "hangup_cause_text",
    "status_code",
]


ANSWERED: Final = "200"
MISSED: Final = "304"
DECLINED: Final = "603"
CANCELLED: Final = "603-S"
FORBIDDEN: Final = "403"
NOT_FOUND: Final = "404"
BUSY: Final = "486"
UNAVAILABLE: Final = "503"
TEMPORARILY_UNAVAILABLE: Final = "480"
BLOCKED: Final = "423"
OTHER: Final = "OTHER"

#: Every code Bitrix24 documents for ``STATUS_CODE`` / ``CALL_FAILED_CODE``.
STATUS_CODES: Final = frozenset(
    {"200", "304", "603", "603-S", "403", "404", "486", "484", "503", "480", "402", "423", "OTHER"}
)

# Q.850 cause → Bitrix24 code, for calls that failed (or whose disposition is unknown).
_CAUSE_STATUS: Final[dict[int, str]] = {
    1: NOT_FOUND,  # unallocated (unassigned) number
    2: NOT_FOUND,  # no route to specified transit network
    3: NOT_FOUND,  # no route to destination
    17: BUSY,  # user busy
    18: TEMPORARILY_UNAVAILABLE,  # no user responding
    19: MISSED,  # no answer from user (user alerted)
    20: TEMPORARILY_UNAVAILABLE,  # subscriber absent (phone offline: CHANUNAVAIL)
    21: DECLINED,  # call rejected
    22: NOT_FOUND,  # number changed
    27: UNAVAILABLE,  # destination out of order
    28: NOT_FOUND,  # invalid number format
    34: UNAVAILABLE,  # no circuit/channel available (CONGESTION)
    38: UNAVAILABLE,  # network out of order
    41: UNAVAILABLE,  # temporary failure
    42: UNAVAILABLE,  # switching equipment congestion
    44: UNAVAILABLE,  # requested channel not available
    47: UNAVAILABLE,  # resource unavailable
    50: FORBIDDEN,  # requested facility not subscribed
    52: BLOCKED,  # outgoing calls barred
    54: BLOCKED,  # incoming calls barred
    55: FORBIDDEN,  # incoming calls barred within CUG
    57: FORBIDDEN,  # bearer capability not authorised
    58: UNAVAILABLE,  # bearer capability not presently available
}

_CAUSE_TEXT: Final[dict[int, str]] = {
    1: "unallocated number",
    2: "no route to transit network",
    3: "no route to destination",
    16: "normal clearing",
    17: "user busy",
    18: "no user responding",
    19: "no answer",
    20: "subscriber absent",
    21: "call rejected",
    22: "number changed",
    27: "destination out of order",
    28: "invalid number format",
    31: "normal, unspecified",
    34: "no circuit available",
    38: "network out of order",
    41: "temporary failure",
    42: "switching equipment congestion",
    44: "requested channel not available",
    47: "resource unavailable",
    50: "facility not subscribed",
    52: "outgoing calls barred",
    54: "incoming calls barred",
    55: "incoming calls barred within CUG",
    57: "bearer capability not authorised",
    58: "bearer capability not available",
}

# Asterisk DIALSTATUS / DialEnd DialStatus → (disposition, the cause it implies when the PBX
# gave none). CHANUNAVAIL is an offline phone or trunk (20), CONGESTION an overloaded route (34).
_DIAL_STATUS: Final[dict[str, tuple[Disposition, int | None]]] = {
    "ANSWER": (Disposition.ANSWERED, None),
    "NOANSWER": (Disposition.NO_ANSWER, None),
    "BUSY": (Disposition.BUSY, 17),
    "CANCEL": (Disposition.CANCELLED, None),
    "CONGESTION": (Disposition.FAILED, 34),
    "CHANUNAVAIL": (Disposition.FAILED, 20),
    "DONTCALL": (Disposition.FAILED, 21),
    "TORTURE": (Disposition.FAILED, 21),
    "INVALIDARGS": (Disposition.FAILED, None),
}


def disposition_from_dial_status(dial_status: str) -> tuple[Disposition, int | None]:
    """An Asterisk ``DIALSTATUS`` as a disposition and the hangup cause it implies."""
    return _DIAL_STATUS.get(dial_status.strip().upper(), (Disposition.FAILED, None))


def hangup_cause_text(cause: int | None) -> str:
    """A short English reason for a Q.850 cause, for ``FAILED_REASON``."""
    if cause is None:
        return ""
    text = _CAUSE_TEXT.get(cause)
    return f"Q.850 cause {cause}: {text}" if text else f"Q.850 cause {cause}"


def status_code(
    *,
    answered: bool,
    direction: Direction,
    disposition: Disposition | None,
    hangup_cause: int | None = None,
) -> str:
    """The Bitrix24 ``STATUS_CODE`` for one finished call leg."""
    # A conversation happened: nothing the legs report afterwards makes it a missed call.
    if answered:
        return ANSWERED
    if disposition is None or disposition is Disposition.ANSWERED:
        # Told "answered" yet nobody answered this leg (e.g. a transfer target that never
        # picked up), or told nothing: let the hangup cause speak, else it rang unanswered.
        if hangup_cause is not None and hangup_cause in _CAUSE_STATUS:
            return _CAUSE_STATUS[hangup_cause]
        return MISSED
    if disposition is Disposition.BUSY:
        return BUSY
    if disposition is Disposition.NO_ANSWER:
        return MISSED
    if disposition is Disposition.CANCELLED:
        return MISSED if direction is Direction.INBOUND else CANCELLED
    # FAILED: only the cause can tell a wrong number from an overloaded trunk.
    if hangup_cause is None:
        return OTHER
    return _CAUSE_STATUS.get(hangup_cause, OTHER)
