"""The state of emulated portals.

``Portal`` holds everything one Bitrix24 portal knows. The user and CRM data live in
:mod:`bitrix24_emulator.store` (``UserStore``, ``CrmStore``); telephony, apps, tokens, limits and
the request log are added here by the modules that own them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bitrix24_emulator.apps import AppRegistry
from bitrix24_emulator.config import Behaviour
from bitrix24_emulator.store.crm import CrmStore
from bitrix24_emulator.store.telephony import TelephonyStore
from bitrix24_emulator.store.users import UserStore


@dataclass
class OutgoingEvent:
    """An event a method fired; delivered to bound handlers after the response is built."""

    event: str
    data: dict[str, Any]
    user_id: int
    client_id: str | None = None  # only this app's handlers; None: every app bound to it


@dataclass
class Portal:
    """One emulated Bitrix24 portal."""

    domain: str
    member_id: str
    users: UserStore = field(default_factory=UserStore)
    crm: CrmStore = field(default_factory=CrmStore)
    telephony: TelephonyStore = field(default_factory=TelephonyStore)
    apps: AppRegistry = field(default_factory=AppRegistry)
    behaviour: Behaviour = field(default_factory=Behaviour)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[OutgoingEvent] = field(default_factory=list)
    license: str = "ru_basic"
    timezone_offset_hours: int = 3
    # How the portal downloads a RECORD_URL: url → (HTTP status, body); 0 = unreachable.
    fetch: Callable[[str], Awaitable[tuple[int, bytes]]] | None = None
