"""What the AMI translator must know about one PBX: which channels are trunks, which are phones.

Asterisk names a channel after its technology and endpoint (``PJSIP/101-0000001c``,
``SIP/trunk-0000000a``, ``Local/101@from-queue-00000003;1``). Nothing in AMI says "this is a
phone": the translator decides once per channel, when it first sees it, from (in order)

1. ``Local/`` in the name: a Local channel half, never a party of its own;
2. the configured trunk endpoints (exact names or regular expressions);
3. the configured phone endpoints, or an endpoint name shaped like an extension (``101``);
4. the channel's context when it was created (the endpoint's context in ``pjsip.conf``):
   trunk contexts (``from-trunk``, ``from-pstn``... matched as prefixes, so FreePBX's
   ``from-pstn-e164-us`` counts) and phone contexts (``from-internal``; the extension is then
   the caller ID number);
5. otherwise a SIP-like channel is an outside party (a trunk) and anything else is ignored.

The defaults fit vanilla Asterisk and FreePBX/Issabel/VitalPBX without configuration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

__all__ = [
    "B24_CALL_ID_VARIABLE",
    "CALLBACK_VARIABLE",
    "DEFAULT_PHONE_CONTEXTS",
    "DEFAULT_TRUNK_CONTEXTS",
    "RECORDING_VARIABLE",
    "ChannelName",
    "Classifier",
    "Role",
    "TranslatorConfig",
    "parse_channel",
]

#: Channel variable an Originate sets to the Bitrix24 ``CALL_ID`` of a click-to-call.
B24_CALL_ID_VARIABLE: Final = "CALLBRIDGE_B24_CALL_ID"
#: Channel variable an Originate sets (to ``1``) for a Bitrix24 callback request.
CALLBACK_VARIABLE: Final = "CALLBRIDGE_CALLBACK"
#: Where MixMonitor tells the recording's file name (``MixMonitorStart`` does not).
RECORDING_VARIABLE: Final = "MIXMONITOR_FILENAME"

#: Context prefixes of calls arriving from providers (vanilla examples and FreePBX's own).
DEFAULT_TRUNK_CONTEXTS: Final = (
    "from-trunk",
    "from-pstn",
    "from-external",
    "from-sip-external",
    "from-did",
    "ext-did",
    "from-provider",
)
#: Contexts of employees' phones.
DEFAULT_PHONE_CONTEXTS: Final = ("from-internal", "from-phones", "from-users", "internal")

# Technologies whose unclassified channels are outside parties rather than internals
# (ConfBridge, Announcer, Snoop/ChanSpy, Message and friends are none of ours).
_PARTY_TECHS: Final = frozenset(
    {"pjsip", "sip", "iax2", "dahdi", "motif", "skinny", "unistim", "mgcp", "ooh323", "h323"}
)
# FreePBX follow-me wraps the extension: Local/FMPR-101@..., Local/FMGL-101#@...
_FREEPBX_PREFIX: Final = re.compile(r"^FM[A-Z]{2}-")
# Asterisk's channel name suffix: "-" then a sequence number (hex for PJSIP/SIP).
_SUFFIX: Final = re.compile(r"-[0-9a-fA-F]+$")


class Role(StrEnum):
    """What a channel is to the call."""

    TRUNK = "trunk"  # the provider side: the customer
    PHONE = "phone"  # an employee's phone (an extension)
    LOCAL = "local"  # half of a Local channel pair (queues, follow-me, ring groups)
    OTHER = "other"  # conference, announcer, spy...: ignored


@dataclass(frozen=True, slots=True)
class ChannelName:
    """A channel name taken apart."""

    tech: str
    #: The endpoint (``101``, ``trunk``); for a Local channel the dialled exten (``101``).
    endpoint: str
    #: Local channels only: the dialplan context, the pair key both halves share, the side.
    local_context: str | None = None
    local_pair: str | None = None
    local_side: int | None = None


def parse_channel(name: str) -> ChannelName:
    """``PJSIP/101-0000001c`` → (PJSIP, 101); ``Local/101@from-queue-0000001;2`` → Local side 2."""
    # Masquerades leave <ZOMBIE>/<MASQ> marks on old channels; the name before them is enough.
    name = name.partition("<")[0].strip()
    tech, _, rest = name.partition("/")
    if tech.lower() == "local":
        side: int | None = None
        if len(rest) > 2 and rest[-2] == ";" and rest[-1] in "12":
            side = int(rest[-1])
            rest = rest[:-2]
        exten, _, context_and_id = rest.partition("@")
        context = _SUFFIX.sub("", context_and_id) or None
        return ChannelName(tech, exten, context, rest if side is not None else None, side)
    # PJSIP/trunk/sip:... (dial strings sometimes show up as names) keeps the endpoint only.
    endpoint = rest.partition("/")[0]
    endpoint = _SUFFIX.sub("", endpoint) if "-" in endpoint else endpoint
    return ChannelName(tech, endpoint)


@dataclass(frozen=True, kw_only=True)
class TranslatorConfig:
    """How one PBX's channels map to trunks and phones, and where its recordings live."""

    #: Endpoint names that are trunks (``trunk``, ``provider-1``).
    trunk_endpoints: frozenset[str] = frozenset()
    #: Regular expressions (full match) for trunk endpoint names.
    trunk_endpoint_patterns: tuple[str, ...] = ()
    #: Endpoint names that are phones even if not shaped like an extension.
    phone_endpoints: frozenset[str] = frozenset()
    #: Full-match pattern of an extension number (endpoint names, transfer targets).
    extension_pattern: str = r"\d{2,6}"
    #: Context prefixes that mark a channel created by a provider call.
    trunk_contexts: tuple[str, ...] = DEFAULT_TRUNK_CONTEXTS
    #: Contexts that mark an employee's phone.
    phone_contexts: tuple[str, ...] = DEFAULT_PHONE_CONTEXTS
    b24_call_id_variable: str = B24_CALL_ID_VARIABLE
    callback_variable: str = CALLBACK_VARIABLE
    #: The PBX's recording directory; paths below it become URLs under ``recording_base_url``.
    recording_root: str = "/var/spool/asterisk/monitor"
    recording_base_url: str | None = None
    #: The file type of a recording whose name has no extension (MixMonitor's default).
    default_recording_format: str = "wav"
    #: Calls tracked at once; beyond this the oldest is forgotten (a PBX that never hangs up).
    max_calls: int = 10_000
    #: Ended calls remembered so their late events are ignored rather than seen as new calls.
    max_ended: int = 10_000

    def __post_init__(self) -> None:
        for pattern in (self.extension_pattern, *self.trunk_endpoint_patterns):
            re.compile(pattern)  # a bad pattern fails at start-up, not on the first call
        if self.max_calls < 1 or self.max_ended < 0:
            raise ValueError("max_calls must be positive and max_ended not negative")


@dataclass(frozen=True)
class Classifier:
    """A :class:`TranslatorConfig` with its patterns compiled."""

    config: TranslatorConfig
    _extension: re.Pattern[str] = field(init=False, repr=False)
    _trunks: tuple[re.Pattern[str], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_extension", re.compile(self.config.extension_pattern))
        object.__setattr__(
            self, "_trunks", tuple(re.compile(p) for p in self.config.trunk_endpoint_patterns)
        )

    def is_extension(self, text: str | None) -> bool:
        """Whether ``text`` is shaped like an extension number."""
        return bool(text) and self._extension.fullmatch(text or "") is not None

    def local_extension(self, name: ChannelName) -> str | None:
        """The extension a Local channel stands for (``Local/FMGL-101#@from-internal`` → 101)."""
        exten = _FREEPBX_PREFIX.sub("", name.endpoint).rstrip("#*")
        return exten if self.is_extension(exten) else None

    def classify(
        self, name: ChannelName, context: str | None, caller_num: str | None
    ) -> tuple[Role, str | None]:
        """The channel's role and, for phones and Local halves, its extension."""
        config = self.config
        if name.tech.lower() == "local":
            return Role.LOCAL, self.local_extension(name)
        endpoint = name.endpoint
        if endpoint in config.trunk_endpoints or any(p.fullmatch(endpoint) for p in self._trunks):
            return Role.TRUNK, None
        if endpoint in config.phone_endpoints or self.is_extension(endpoint):
            return Role.PHONE, endpoint
        if context:
            if context.startswith(config.trunk_contexts):
                return Role.TRUNK, None
            if context in config.phone_contexts:
                # A phone endpoint named by person ("ivan"): its caller ID is the extension.
                if self.is_extension(caller_num):
                    return Role.PHONE, caller_num
                return Role.PHONE, endpoint or None
        if name.tech.lower() in _PARTY_TECHS:
            return Role.TRUNK, None
        return Role.OTHER, None
