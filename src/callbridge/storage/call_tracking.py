"""The storage side of call tracking: the ports of :mod:`callbridge.services.call_tracking`.

:func:`call_tracking_ports` puts them on one session (the caller's unit of work).
:func:`policy_from_settings` turns an integration's ``settings`` and its synced users into the
:class:`~callbridge.domain.call.CallPolicy` the call model applies. Integration settings it
reads (all optional)::

    default_user_id       int   the user for unknown extensions and unmapped calls (else 1)
    responsible_user_id   int   who a missed inbound call belongs to (else who rang, else default)
    lead_creation         str   never | inbound | outbound | all  (default inbound)
    crm_sources           {line: CRM_SOURCE};  default_crm_source  str
    line_numbers          {PBX line/DID: Bitrix24 LINE_NUMBER}
    lines                 [{number, name, pbx_line?, crm_source?}]  (the portal's external lines)
    extension_users       {extension: user id}  manual overrides of the synced mapping
    ignore_internal, add_to_chat, show_card   bool (defaults true, true, true)
    anonymous_number      str   PHONE_NUMBER for a caller without a number (default "0")

A bad value is logged and replaced by its default: a typo in the settings must not make the
PBX's events bounce.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from callbridge.domain.call import Call, CallPolicy, LeadCreation
from callbridge.domain.events import Event, event_to_dict
from callbridge.domain.phone import DEFAULT_RULES, normalize
from callbridge.domain.ports import (
    CallKey,
    CallRouting,
    InboxEntry,
    NewJob,
    SavedCall,
    StoredCall,
)
from callbridge.services.call_tracking import CallTrackingPorts
from callbridge.storage.crypto import SecretBox
from callbridge.storage.job_queue import JobQueue
from callbridge.storage.models import (
    Bitrix24Integration,
    Bitrix24User,
    IntegrationStatus,
    PbxEvent,
)
from callbridge.storage.repositories.bitrix24_users import Bitrix24UserRepository
from callbridge.storage.repositories.calls import CallRepository
from callbridge.storage.repositories.integrations import IntegrationRepository
from callbridge.storage.repositories.pbx_events import PbxEventRepository
from callbridge.storage.types import utcnow

__all__ = [
    "FALLBACK_USER_ID",
    "RoutingCache",
    "SqlCallStore",
    "SqlEventInbox",
    "SqlJobOutbox",
    "SqlRoutingSource",
    "call_tracking_ports",
    "policy_from_settings",
]

logger = logging.getLogger(__name__)

#: Bitrix24's first user (the portal's creator) when no default user is configured.
FALLBACK_USER_ID = 1
# Integrations whose jobs are worth queueing: a token waiting for re-authorisation pauses its
# jobs (kept); an uninstalled app or a deleted portal will never take them.
_LIVE_STATUSES = (IntegrationStatus.ACTIVE.value, IntegrationStatus.NEEDS_REAUTH.value)
_pbx_events = cast(Table, PbxEvent.__table__)
# Settings that stand for a policy with nobody to show a card to: the call is only tracked.
_UNROUTED = CallPolicy(default_user_id=FALLBACK_USER_ID)


@functools.cache
def _add_many_statement(dialect: str) -> Any:
    # Built once: constructing an INSERT … RETURNING costs more than running it.
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_pbx_events)
    return insert.on_conflict_do_nothing(
        index_elements=["enterprise_id", "source", "event_id"]
    ).returning(_pbx_events.c.enterprise_id, _pbx_events.c.source, _pbx_events.c.event_id)


class SqlEventInbox:
    """The ``pbx_events`` table as the service's :class:`~callbridge.domain.ports.EventInbox`."""

    def __init__(self, session: AsyncSession) -> None:
        self._events = PbxEventRepository(session)

    async def add(self, enterprise_id: int, source: str, event: Event) -> int | None:
        """Store the event, handled, unless stored before; its id if new.

        Like :meth:`PbxEventRepository.insert_new` (one ON CONFLICT DO NOTHING statement),
        with ``handled_at`` set at once: the caller applies the event in this transaction, and
        a second statement to mark it would cost a round trip per request.
        """
        dialect = self._events.dialect
        dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        now = utcnow()
        statement = (
            dialect_insert(PbxEvent)
            .values(
                enterprise_id=enterprise_id,
                source=source,
                event_id=event.event_id,
                linkedid=event.call_id,
                kind=event.name,
                payload=event_to_dict(event),
                occurred_at=event.timestamp,
                received_at=now,
                handled_at=now,
            )
            .on_conflict_do_nothing(index_elements=["enterprise_id", "source", "event_id"])
            .returning(PbxEvent.id)
        )
        result = await self._events.session.execute(statement)
        return result.scalar_one_or_none()

    async def add_many(self, entries: Sequence[InboxEntry]) -> list[bool]:
        """Store events like :meth:`add`, in one statement; for each, whether it was new."""
        first: dict[tuple[int, str, str], int] = {}
        for index, (enterprise_id, source, event) in enumerate(entries):
            first.setdefault((enterprise_id, source, event.event_id), index)
        if not first:
            return []
        now = utcnow()
        statement = _add_many_statement(self._events.dialect)
        params = []
        for index in first.values():
            enterprise_id, source, event = entries[index]
            params.append(
                {
                    "enterprise_id": enterprise_id,
                    "source": source,
                    "event_id": event.event_id,
                    "linkedid": event.call_id,
                    "kind": event.name,
                    "payload": event_to_dict(event),
                    "occurred_at": event.timestamp,
                    "received_at": now,
                    "handled_at": now,
                }
            )
        result = await self._events.session.execute(statement, params)
        stored = {(row.enterprise_id, row.source, row.event_id) for row in result}
        new_at = {index for key, index in first.items() if key in stored}
        return [index in new_at for index in range(len(entries))]


@dataclass
class SqlJobOutbox:
    """The ``jobs`` table as the service's :class:`~callbridge.domain.ports.JobQueue`."""

    session: AsyncSession
    queue: JobQueue = field(default_factory=JobQueue)

    async def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        ordering_key: str | None = None,
        depends_on: int | None = None,
        integration_id: int | None = None,
        call_id: int | None = None,
    ) -> int:
        """Queue a job in the session's transaction; its id."""
        job = await self.queue.enqueue(
            self.session,
            kind,
            dict(payload),
            ordering_key=ordering_key,
            depends_on=depends_on,
            integration_id=integration_id,
            call_id=call_id,
        )
        return job.id

    async def enqueue_many(self, jobs: Sequence[NewJob]) -> list[int]:
        """Queue jobs in one statement, in order; their ids."""
        return await self.queue.enqueue_many(self.session, jobs)


class SqlCallStore:
    """The ``calls`` table as the service's :class:`~callbridge.domain.ports.CallRepository`."""

    def __init__(self, session: AsyncSession) -> None:
        self.repository = CallRepository(session)

    async def get(self, enterprise_id: int, linkedid: str) -> Call | None:
        """The stored call, locked until the transaction ends; None if new."""
        return await self.repository.load_locked(enterprise_id, linkedid)

    async def save(self, enterprise_id: int, call: Call) -> int:
        """Write the call; its row id."""
        return await self.repository.save(enterprise_id, call)

    async def get_many(self, keys: Sequence[CallKey]) -> dict[CallKey, StoredCall]:
        """Each call as stored, locked (in ``keys`` order) until commit."""
        return await self.repository.lock_many(keys)

    async def save_many(self, calls: Sequence[SavedCall]) -> None:
        """Write calls (row id, call, integration) in one statement."""
        await self.repository.save_many(calls)


@dataclass
class RoutingCache:
    """Each enterprise's routing, kept for a few seconds by one process.

    Building it costs two queries per request (integration, users); it changes when an admin
    edits settings, users sync (every few minutes) or the app is uninstalled, all of which may
    take ``ttl_seconds`` to reach calls. Jobs queued meanwhile for a removed integration are
    the dispatcher's to cancel.
    """

    ttl_seconds: float = 10.0
    #: Past this age a routing is still served, but due to be read anew (in the background, by
    #: a user that does so), so that an enterprise taking calls never waits for its read.
    refresh_after_seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _entries: dict[int, tuple[float, CallRouting]] = field(default_factory=dict)

    def get(self, enterprise_id: int) -> CallRouting | None:
        """The cached routing, if still fresh."""
        entry = self._entries.get(enterprise_id)
        if entry is None or self.clock() >= entry[0]:
            return None
        return entry[1]

    def due(self, enterprise_id: int) -> bool:
        """Whether a cached routing is old enough to be read anew (it is still fresh)."""
        entry = self._entries.get(enterprise_id)
        if entry is None:
            return False
        read_at = entry[0] - self.ttl_seconds
        return self.clock() >= read_at + self.refresh_after_seconds

    def put(self, enterprise_id: int, routing: CallRouting) -> None:
        """Remember a routing for ``ttl_seconds``; not one without a live integration.

        A call keeps the integration it started with: a call that started on a cached "none"
        while the enterprise had just been linked would never be sent to Bitrix24. Read each
        time instead, an unlinked enterprise costs a read per batch of its events.
        """
        if routing.integration_id is None:
            self._entries.pop(enterprise_id, None)
            return
        self._entries[enterprise_id] = (self.clock() + self.ttl_seconds, routing)

    def clear(self) -> None:
        """Forget everything (e.g. after changing settings in this process)."""
        self._entries.clear()


class SqlRoutingSource:
    """An enterprise's live integration and its policy, from settings and synced users."""

    def __init__(
        self, session: AsyncSession, box: SecretBox, cache: RoutingCache | None = None
    ) -> None:
        self._integrations = IntegrationRepository(session, box)
        self._users = Bitrix24UserRepository(session)
        self._cache = cache

    async def for_enterprise(self, enterprise_id: int) -> CallRouting:
        """The first live integration (by id) of the enterprise, or none; and the others."""
        if self._cache is not None:
            cached = self._cache.get(enterprise_id)
            if cached is None:
                cached = await self._load(enterprise_id)
                self._cache.put(enterprise_id, cached)
            return cached
        return await self._load(enterprise_id)

    async def reload(self, enterprise_id: int) -> CallRouting:
        """Read the routing afresh (and cache it), whatever the cache holds."""
        routing = await self._load(enterprise_id)
        if self._cache is not None:
            self._cache.put(enterprise_id, routing)
        return routing

    async def _load(self, enterprise_id: int) -> CallRouting:
        live = [
            row
            for row in await self._integrations.for_enterprise(enterprise_id)
            if row.status in _LIVE_STATUSES
        ]
        if not live:
            return CallRouting(integration_id=None, policy=_UNROUTED)
        if len(live) > 1:
            # The call model keeps one set of legs and cards per call: one portal gets it.
            logger.warning(
                "enterprise %s has %d live Bitrix24 integrations; new calls go to integration %s",
                enterprise_id,
                len(live),
                live[0].id,
            )
        policies = {row.id: await self._policy(row) for row in live}
        return CallRouting(
            integration_id=live[0].id,
            policy=policies.pop(live[0].id),
            also_live=policies,
        )

    async def _policy(self, integration: Bitrix24Integration) -> CallPolicy:
        users = await self._users.active_for_integration(integration.id)
        return policy_from_settings(integration.settings or {}, users)


def call_tracking_ports(
    session: AsyncSession,
    box: SecretBox,
    *,
    queue: JobQueue | None = None,
    routing_cache: RoutingCache | None = None,
) -> CallTrackingPorts:
    """Every port of the call-tracking service on one session."""
    return CallTrackingPorts(
        inbox=SqlEventInbox(session),
        calls=SqlCallStore(session),
        jobs=SqlJobOutbox(session, queue or JobQueue()),
        routing=SqlRoutingSource(session, box, routing_cache),
    )


# -- policy --------------------------------------------------------------------------------------


def policy_from_settings(settings: Mapping[str, Any], users: Sequence[Bitrix24User]) -> CallPolicy:
    """The call policy of an integration: its settings plus its users' extensions and mobiles."""
    reader = _Reader(settings)
    default_user = reader.user_id("default_user_id")
    if default_user is None:
        default_user = FALLBACK_USER_ID
    by_extension: dict[str, int] = {}
    by_number: dict[str, int] = {}
    for user in users:
        if user.extension:
            by_extension.setdefault(user.extension.strip(), user.user_id)
        if user.mobile:
            key = normalize(user.mobile, DEFAULT_RULES).key
            if key:
                by_number.setdefault(key, user.user_id)
    for extension, user_id in reader.mapping("extension_users").items():
        try:
            by_extension[extension] = int(user_id)
        except (TypeError, ValueError):
            reader.bad("extension_users", f"{extension}: {user_id!r}")

    crm_sources = {k: str(v) for k, v in reader.mapping("crm_sources").items()}
    line_numbers = {k: str(v) for k, v in reader.mapping("line_numbers").items()}
    for line in reader.list_of_mappings("lines"):
        number = str(line.get("number") or "").strip()
        if not number:
            continue
        pbx_line = str(line.get("pbx_line") or number).strip()
        line_numbers.setdefault(pbx_line, number)
        if line.get("crm_source"):
            crm_sources.setdefault(pbx_line, str(line["crm_source"]))

    lead_creation = LeadCreation.INBOUND
    raw_lead = settings.get("lead_creation")
    if raw_lead is not None:
        try:
            lead_creation = LeadCreation(str(raw_lead).lower())
        except ValueError:
            reader.bad("lead_creation", raw_lead)
    default_source = settings.get("default_crm_source")
    return CallPolicy(
        default_user_id=default_user,
        users_by_extension=by_extension,
        users_by_number=by_number,
        responsible_user_id=reader.user_id("responsible_user_id"),
        lead_creation=lead_creation,
        crm_sources=crm_sources,
        default_crm_source=str(default_source) if default_source else None,
        line_numbers=line_numbers,
        ignore_internal=reader.flag("ignore_internal", True),
        add_to_chat=reader.flag("add_to_chat", True),
        show_card=reader.flag("show_card", True),
        anonymous_number=str(settings.get("anonymous_number") or "0"),
    )


@dataclass
class _Reader:
    settings: Mapping[str, Any]

    def bad(self, name: str, value: object) -> None:
        logger.warning("integration setting %s has a bad value %r; using its default", name, value)

    def user_id(self, name: str) -> int | None:
        value = self.settings.get(name)
        if value is None or value == "":
            return None
        try:
            user = int(value)
        except (TypeError, ValueError):
            user = 0
        if user <= 0 or isinstance(value, bool):
            self.bad(name, value)
            return None
        return user

    def flag(self, name: str, default: bool) -> bool:
        value = self.settings.get(name, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, int | str) and str(value).lower() in ("0", "1", "true", "false"):
            return str(value).lower() in ("1", "true")
        self.bad(name, value)
        return default

    def mapping(self, name: str) -> dict[str, Any]:
        value = self.settings.get(name) or {}
        if not isinstance(value, Mapping):
            self.bad(name, value)
            return {}
        return {str(k).strip(): v for k, v in value.items()}

    def list_of_mappings(self, name: str) -> list[Mapping[str, Any]]:
        value = self.settings.get(name) or []
        if not isinstance(value, list):
            self.bad(name, value)
            return []
        return [item for item in value if isinstance(item, Mapping)]
