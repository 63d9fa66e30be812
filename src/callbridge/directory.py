"""Who is who on a portal: users sync, the CRM owner of a number, missed-call notifications.

Like :mod:`callbridge.portals`, this module sits above ``crm`` and ``storage`` (it needs both)
and below the web app, the worker and the CLI, which all use it:

* :func:`sync_integration_users` / :func:`sync_due_integrations`: ``user.get`` → ``bitrix24_users``
  (the worker every 5 minutes, ``callbridge users sync`` on demand);
* :class:`ResponsibleFinder`: the extension of the CRM owner of a phone number
  (``GET /pbx/{enterprise}/responsible``), cached briefly and time-boxed;
* :func:`notify_missed_call`: the ``bitrix24.notify_missed`` job's core (``im.notify``).

Calls to Bitrix24 never run inside a write transaction: on SQLite an open write transaction
would hold every other writer for as long as the portal takes to answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge.crm.bitrix24.client import Bitrix24Client
from callbridge.crm.bitrix24.errors import Bitrix24Error
from callbridge.crm.phones import PhoneNormaliser
from callbridge.portals import Portals
from callbridge.services.call_tracking import NOTIFY_MISSED_JOB
from callbridge.services.responsible import (
    Responsible,
    ResponsibleCache,
    ResponsibleMiss,
    choose_responsible,
)
from callbridge.services.user_sync import (
    SyncReport,
    extension_overrides,
    extensions_by_user,
    sync_users,
)
from callbridge.storage.models import Bitrix24Integration, IntegrationStatus
from callbridge.storage.repositories import IntegrationRepository
from callbridge.storage.repositories.bitrix24_users import Bitrix24UserRepository
from callbridge.storage.types import utcnow
from callbridge.storage.user_directory import SqlUserDirectory, stored_user

__all__ = [
    "NOTIFY_MISSED_JOB",
    "USER_SYNC_INTERVAL",
    "ResponsibleFinder",
    "missed_call_message",
    "notify_missed_call",
    "sync_due_integrations",
    "sync_integration_users",
]

logger = logging.getLogger(__name__)

USER_SYNC_INTERVAL = timedelta(minutes=5)
# user.get pages are ordered by ID so that ``start`` offsets stay stable while paging.
_USER_GET_PARAMS: Final[Mapping[str, Any]] = {"sort": "ID", "order": "ASC"}


# --- users sync ---------------------------------------------------------------------------------


@dataclass
class _FetchedUsers:
    """A portal's users read whole before the directory is touched (the service's source)."""

    items: list[Mapping[str, Any]]

    async def users(self) -> AsyncIterator[Mapping[str, Any]]:
        for item in self.items:
            yield item


async def fetch_users(client: Bitrix24Client) -> list[Mapping[str, Any]]:
    """Every ``user.get`` item of the portal, page by page, fired users included."""
    return [item async for item in client.iterate("user.get", _USER_GET_PARAMS)]


async def sync_integration_users(
    portals: Portals,
    integration_id: int,
    *,
    phones: PhoneNormaliser | None = None,
    now: datetime | None = None,
) -> SyncReport:
    """Sync one integration's users; the portal is read first, then one short transaction."""
    phones = phones or PhoneNormaliser()
    async with portals.session_factory() as session:
        row = await IntegrationRepository(session, portals.box).get(integration_id)
    if row is None:
        raise LookupError(f"no integration with id {integration_id}")
    items = await fetch_users(portals.client_for(row))
    async with portals.session_factory() as session, session.begin():
        report = await sync_users(
            _FetchedUsers(items),
            SqlUserDirectory(session, integration_id),
            e164=phones.e164,
            now=now or utcnow(),
        )
    logger.info(
        "Bitrix24 users of %s synced: %d seen, %d added, %d updated, %d deactivated",
        row.domain,
        report.seen,
        report.added,
        report.updated,
        report.deactivated,
    )
    return report


async def active_integrations(
    session_factory: async_sessionmaker[AsyncSession], portals: Portals
) -> list[Bitrix24Integration]:
    """Integrations that can be called now (installed, tokens accepted)."""
    async with session_factory() as session:
        repo = IntegrationRepository(session, portals.box)
        rows = await repo.all(repo.select().order_by(Bitrix24Integration.id))
    return [row for row in rows if row.status == IntegrationStatus.ACTIVE.value]


async def sync_due_integrations(
    portals: Portals,
    *,
    interval: timedelta = USER_SYNC_INTERVAL,
    now: datetime | None = None,
) -> dict[int, SyncReport | Exception]:
    """Sync every active integration whose users are older than ``interval``.

    Several workers may run this; the first one's sync stamps ``synced_at`` and the others
    then find the integration fresh, so a portal is read about once per interval. One portal
    failing does not stop the others.
    """
    now = now or utcnow()
    outcomes: dict[int, SyncReport | Exception] = {}
    for row in await active_integrations(portals.session_factory, portals):
        async with portals.session_factory() as session:
            last = await Bitrix24UserRepository(session).last_synced(row.id)
        if last is not None and now - last < interval:
            continue
        try:
            outcomes[row.id] = await sync_integration_users(portals, row.id, now=now)
        except (Bitrix24Error, LookupError) as err:
            logger.warning("users sync of %s failed: %s", row.domain, err)
            outcomes[row.id] = err
    return outcomes


async def run_user_sync(
    portals: Portals,
    *,
    interval: timedelta = USER_SYNC_INTERVAL,
    check_every: float = 30.0,
) -> None:
    """Keep every portal's users fresh until cancelled (a worker side task)."""
    while True:
        try:
            await sync_due_integrations(portals, interval=interval)
        except Exception:  # a database hiccup must not stop the worker: retry next round
            logger.exception("users sync round failed; retrying in %.0f s", check_every)
        await asyncio.sleep(check_every)


# --- responsible routing ------------------------------------------------------------------------


@dataclass
class ResponsibleFinder:
    """The extension of the CRM owner of a phone number, answered fast.

    Results (found or not) are cached per (enterprise, number) for ``cache.ttl_seconds``; the
    portal gets ``timeout_seconds`` to answer ``searchCrmEntities``, after which the caller is
    told to route as usual (a caller waiting in the dialplan matters more than the match).
    """

    portals: Portals
    cache: ResponsibleCache = field(default_factory=ResponsibleCache)
    timeout_seconds: float = 1.5
    phones: PhoneNormaliser = field(default_factory=PhoneNormaliser)
    _pending: dict[tuple[int, str], asyncio.Future[Responsible | ResponsibleMiss]] = field(
        default_factory=dict
    )

    async def find(self, enterprise_id: int, phone: str) -> Responsible | ResponsibleMiss:
        """Who owns ``phone`` in the enterprise's CRM, or why nobody is known.

        Reads use short sessions of their own, none open while Bitrix24 is asked: the client
        reads tokens in its own transactions, and SQLite has one connection per process.
        """
        number = self.phones.e164(phone)
        if number is None:
            return ResponsibleMiss("invalid_phone", "not a phone number")
        key = (enterprise_id, number)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        # Concurrent calls from one number (a redial storm) share one portal request.
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Responsible | ResponsibleMiss] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[key] = future
        try:
            outcome = await self._lookup(enterprise_id, number)
            future.set_result(outcome)
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._pending[key]
        if outcome.cacheable:
            self.cache.put(key, outcome)
        return outcome

    async def _lookup(self, enterprise_id: int, number: str) -> Responsible | ResponsibleMiss:
        async with self.portals.session_factory() as session:
            repo = IntegrationRepository(session, self.portals.box)
            live = [
                row
                for row in await repo.for_enterprise(enterprise_id)
                if row.status == IntegrationStatus.ACTIVE.value
            ]
        if not live:
            return ResponsibleMiss("no_integration", "the enterprise has no active Bitrix24 portal")
        row = live[0]
        client = self.portals.client_for(row)
        try:
            async with asyncio.timeout(self.timeout_seconds):
                found = await client.call(
                    "telephony.externalCall.searchCrmEntities", {"PHONE_NUMBER": number}
                )
        except TimeoutError:
            return ResponsibleMiss(
                "crm_timeout", f"Bitrix24 did not answer in {self.timeout_seconds:g} s", False
            )
        except Bitrix24Error as err:
            return ResponsibleMiss("crm_error", f"Bitrix24 refused the search: {err}", False)
        async with self.portals.session_factory() as session:
            users = await Bitrix24UserRepository(session).for_integration(row.id)
        extensions = extensions_by_user(
            [stored_user(user) for user in users], extension_overrides(row.settings or {})
        )
        return choose_responsible(found, extensions)


# --- missed-call notifications ------------------------------------------------------------------

_MESSAGES: Final[Mapping[str, Mapping[str, str]]] = {
    "ru": {
        "missed": "Пропущенный звонок от {phone}",
        "line": " на линию {line}",
        "anonymous": "скрытого номера",
    },
    "en": {
        "missed": "Missed call from {phone}",
        "line": " on line {line}",
        "anonymous": "a hidden number",
    },
}


def missed_call_message(payload: Mapping[str, Any], language: str) -> str:
    """The notification text in the portal's language (Russian unless ``en``)."""
    texts = _MESSAGES.get(language.lower()[:2], _MESSAGES["ru"])
    phone = str(payload.get("phone_number") or "").strip()
    if not phone or phone == "0":
        phone = texts["anonymous"]
    message = texts["missed"].format(phone=phone)
    line = str(payload.get("line") or "").strip()
    if line:
        message += texts["line"].format(line=line)
    return message


def notifications_enabled(settings: Mapping[str, Any]) -> bool:
    """The ``notify_missed_calls`` setting (default on)."""
    value = settings.get("notify_missed_calls", True)
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "n")
    return bool(value)


async def notify_missed_call(
    portals: Portals, integration_id: int | None, payload: Mapping[str, Any]
) -> dict[str, Any]:
    """Send ``im.notify`` about a missed call to its responsible user; what was done.

    The ``TAG`` names the call, so a retried job replaces its notification instead of
    adding a second one. The integration is read in a session of its own, closed before the
    request: the client reads tokens in its own transactions, and SQLite has one connection.
    """
    if integration_id is None:
        return {"skipped": "no integration"}
    async with portals.session_factory() as session:
        row = await IntegrationRepository(session, portals.box).get(integration_id)
    if row is None or row.status != IntegrationStatus.ACTIVE.value:
        return {"skipped": "integration not active"}
    settings = row.settings or {}
    if not notifications_enabled(settings):
        return {"skipped": "notify_missed_calls is off"}
    user_id = int(payload.get("user_id") or 0)
    if user_id <= 0:
        return {"skipped": "no responsible user"}
    params = {
        "USER_ID": user_id,
        "MESSAGE": missed_call_message(payload, str(settings.get("language") or "ru")),
        "TYPE": "SYSTEM",
        "TAG": f"callbridge|missed|{payload.get('enterprise_id')}|{payload.get('linkedid')}",
    }
    client = portals.client_for(row)
    result = await client.call("im.notify", params)
    return {"notification_id": result, "user_id": user_id}


def responsible_extension_table(
    users: Sequence[Any], settings: Mapping[str, Any]
) -> dict[int, str]:
    """Each user's effective extension (overrides applied), for listings."""
    return extensions_by_user([stored_user(user) for user in users], extension_overrides(settings))
