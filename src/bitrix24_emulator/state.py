"""The state of emulated portals.

``Portal`` holds everything one Bitrix24 portal knows. The user and CRM data live in
:mod:`bitrix24_emulator.store` (``UserStore``, ``CrmStore``); telephony, apps, tokens, limits and
the request log are added here by the modules that own them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bitrix24_emulator.store.crm import CrmStore
from bitrix24_emulator.store.users import UserStore


@dataclass
class Portal:
    """One emulated Bitrix24 portal."""

    domain: str
    member_id: str
    users: UserStore = field(default_factory=UserStore)
    crm: CrmStore = field(default_factory=CrmStore)
