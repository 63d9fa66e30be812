"""Errors of the AMI client, grouped by what the caller should do about them.

::

    CallbridgeError
    └── AmiError                       anything the AMI client refuses or cannot do
        ├── AmiTransientError          the connection is the problem: try again later
        │   ├── AmiConnectError        could not open a TCP connection to the PBX
        │   ├── AmiNotConnected        an action was sent while disconnected; it was NOT sent
        │   ├── AmiConnectionLost      the connection dropped with the action in flight; it is
        │   │                          never re-sent (an Originate may or may not have happened)
        │   └── AmiTimeout             no response in time (the action may have run)
        ├── AmiPermanentError          retrying cannot help until someone changes configuration
        │   ├── AmiAuthenticationError the PBX refused our login; the message names the fix
        │   └── AmiProtocolError       the peer does not speak AMI
        └── AmiActionError             the PBX answered ``Response: Error`` to an action

Each class's docstring is its default message. ``AmiTransientError`` and ``AmiPermanentError``
mirror the job queue's ``Retryable`` / ``Permanent`` split, so a job wrapping an AMI call can
translate them with ``raise ... from err`` at its boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from callbridge.domain.errors import CallbridgeError

if TYPE_CHECKING:
    from callbridge.pbx.ami.protocol import Response


class AmiError(CallbridgeError):
    """The AMI client could not do what was asked."""


class AmiTransientError(AmiError):
    """The connection to the PBX is not usable right now; try again later."""


class AmiConnectError(AmiTransientError):
    """Could not connect to the PBX's AMI port."""


class AmiNotConnected(AmiTransientError):
    """Not connected to the PBX's AMI; the action was not sent."""


class AmiConnectionLost(AmiTransientError):
    """The AMI connection dropped before the PBX answered; the action is not re-sent."""

    def __init__(
        self, message: str | None = None, *, action: str = "", action_id: str = ""
    ) -> None:
        super().__init__(message)
        self.action = action
        self.action_id = action_id


class AmiTimeout(AmiTransientError):
    """The PBX did not answer in time; the action may or may not have run."""


class AmiPermanentError(AmiError):
    """Retrying cannot help until the configuration changes."""


class AmiAuthenticationError(AmiPermanentError):
    """The PBX refused the AMI login: check the user's secret and `permit` in manager.conf."""


class AmiProtocolError(AmiPermanentError):
    """The peer does not speak the Asterisk Manager Interface."""


class AmiActionError(AmiError):
    """The PBX refused the action."""

    def __init__(self, message: str | None = None, *, response: Response | None = None) -> None:
        super().__init__(message)
        self.response = response
