"""Asterisk Manager Interface: a typed asyncio client, its protocol, and a replay server.

``protocol`` frames and parses the byte stream (pure), ``correlation`` routes responses to the
actions that asked, ``client`` owns the connection (login, events, keep-alive, reconnects) and
``replay`` serves recorded streams to clients for tests and the demo.
"""

from callbridge.pbx.ami.client import (
    AmiClient,
    Backoff,
    Disconnected,
    ListResult,
    Pong,
    Reconnected,
)
from callbridge.pbx.ami.errors import (
    AmiActionError,
    AmiAuthenticationError,
    AmiConnectError,
    AmiConnectionLost,
    AmiError,
    AmiNotConnected,
    AmiPermanentError,
    AmiProtocolError,
    AmiTimeout,
    AmiTransientError,
)
from callbridge.pbx.ami.protocol import Action, AmiParser, Event, Message, Response

__all__ = [
    "Action",
    "AmiActionError",
    "AmiAuthenticationError",
    "AmiClient",
    "AmiConnectError",
    "AmiConnectionLost",
    "AmiError",
    "AmiNotConnected",
    "AmiParser",
    "AmiPermanentError",
    "AmiProtocolError",
    "AmiTimeout",
    "AmiTransientError",
    "Backoff",
    "Disconnected",
    "Event",
    "ListResult",
    "Message",
    "Pong",
    "Reconnected",
    "Response",
]
