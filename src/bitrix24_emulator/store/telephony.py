"""External calls, their cards, statistics rows, records and external lines (spec §1)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

CallState = Literal["registered", "finished"]


@dataclass
class CardEvent:
    """A call card shown to or hidden from one employee."""

    user_id: int
    action: Literal["show", "hide"]
    time: float
    by: str  # "register", "show", "hide", "finish", "click_to_call"


@dataclass
class StoredFile:
    """A call recording on the portal's drive."""

    id: int
    name: str
    content: bytes
    call_id: str
    created: float


@dataclass
class ExternalCall:
    """One ``telephony.externalCall.register`` (or click-to-call) registration."""

    call_id: str
    client_id: str | None
    user_id: int
    phone_number: str
    type: int
    start: float
    registered_at: float
    line_number: str | None = None
    external_call_id: str | None = None
    crm_entity_type: str | None = None
    crm_entity_id: int | None = None
    crm_created_lead: int | None = None
    crm_created_entities: list[dict[str, Any]] = field(default_factory=list)
    crm_source: str | None = None
    call_list_id: int = 0
    origin: str = "register"
    dedup_key: tuple[Any, ...] = ()
    state: CallState = "registered"
    visible: dict[int, bool] = field(default_factory=dict)
    card_log: list[CardEvent] = field(default_factory=list)
    statistic: dict[str, Any] | None = None  # the finish result
    finished_at: float | None = None
    record_file_id: int | None = None
    records: list[int] = field(default_factory=list)  # every file ever attached, last wins
    added_to_chat: bool = False

    def card(self, user_id: int, action: Literal["show", "hide"], now: float, by: str) -> None:
        """Record a card shown or hidden."""
        self.visible[user_id] = action == "show"
        self.card_log.append(CardEvent(user_id, action, now, by))

    def summary(self) -> dict[str, Any]:
        """The call as the inspection API shows it."""
        stat = self.statistic or {}
        return {
            "CALL_ID": self.call_id,
            "client_id": self.client_id,
            "origin": self.origin,
            "state": self.state,
            "USER_ID": self.user_id,
            "PHONE_NUMBER": self.phone_number,
            "TYPE": self.type,
            "LINE_NUMBER": self.line_number,
            "EXTERNAL_CALL_ID": self.external_call_id,
            "CALL_START": self.start,
            "registered_at": self.registered_at,
            "finished_at": self.finished_at,
            "CRM_ENTITY_TYPE": self.crm_entity_type,
            "CRM_ENTITY_ID": self.crm_entity_id,
            "CRM_CREATED_LEAD": self.crm_created_lead,
            "CRM_SOURCE": self.crm_source,
            "DURATION": stat.get("CALL_DURATION"),
            "STATUS_CODE": stat.get("CALL_FAILED_CODE"),
            "CRM_ACTIVITY_ID": stat.get("CRM_ACTIVITY_ID"),
            "cards_visible": sorted(u for u, shown in self.visible.items() if shown),
            "cards_shown": sorted({e.user_id for e in self.card_log if e.action == "show"}),
            "cards_hidden": sorted({e.user_id for e in self.card_log if e.action == "hide"}),
            "card_log": [
                {"user_id": e.user_id, "action": e.action, "time": e.time, "by": e.by}
                for e in self.card_log
            ],
            "record_file_id": self.record_file_id,
            "records": list(self.records),
            "added_to_chat": self.added_to_chat,
        }


@dataclass
class ExternalLine:
    """A line added by ``telephony.externalLine.add`` (belongs to the calling app)."""

    id: int
    number: str
    name: str
    crm_auto_create: str = "Y"


class TelephonyStore:
    """Calls by CALL_ID, statistics rows, files and lines of one portal."""

    def __init__(self) -> None:
        self.calls: dict[str, ExternalCall] = {}
        self.statistics: list[dict[str, Any]] = []  # voximplant.statistic.get rows
        self.files: dict[int, StoredFile] = {}
        self.uploads: dict[str, tuple[str, str, float]] = {}  # token → (CALL_ID, FILENAME, expiry)
        self.lines: dict[str, dict[str, ExternalLine]] = {}  # client_id → NUMBER → line
        self._next_stat = 1
        self._next_file = 1
        self._next_line = 1

    @staticmethod
    def new_call_id(now: float) -> str:
        """A CALL_ID in the format of every documented example."""
        return f"externalCall.{secrets.token_hex(16)}.{int(now)}"

    def add_call(self, call: ExternalCall) -> ExternalCall:
        """Store a registration."""
        self.calls[call.call_id] = call
        return call

    def find_recent(
        self, key: tuple[Any, ...], since: float, include_finished: bool
    ) -> ExternalCall | None:
        """The newest registration with this dedup key made after ``since``."""
        for call in reversed(list(self.calls.values())):
            if call.registered_at < since:
                break
            if call.dedup_key == key and (include_finished or call.state == "registered"):
                return call
        return None

    def next_stat_id(self) -> int:
        """Id for a new statistics row."""
        value = self._next_stat
        self._next_stat += 1
        return value

    def add_file(self, name: str, content: bytes, call_id: str, now: float) -> StoredFile:
        """Store a recording."""
        stored = StoredFile(self._next_file, name, content, call_id, now)
        self._next_file += 1
        self.files[stored.id] = stored
        return stored

    def new_upload(self, call_id: str, filename: str, expires: float) -> str:
        """A one-time token for the multipart upload of a record."""
        token = secrets.token_hex(16)
        self.uploads[token] = (call_id, filename, expires)
        return token

    def app_lines(self, client_id: str) -> dict[str, ExternalLine]:
        """The external lines of one app."""
        return self.lines.setdefault(client_id, {})

    def add_line(
        self, client_id: str, number: str, name: str, crm_auto_create: str
    ) -> ExternalLine:
        """Add a line for an app."""
        line = ExternalLine(self._next_line, number, name, crm_auto_create)
        self._next_line += 1
        self.app_lines(client_id)[number] = line
        return line

    def find_line(self, number: str) -> ExternalLine | None:
        """A line with this number, of any app."""
        for lines in self.lines.values():
            if number in lines:
                return lines[number]
        return None
