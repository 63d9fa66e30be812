"""Group commit for PBX webhooks: many requests' events applied and committed together.

A webhook request verifies its sender and validates its body on its own, then hands the events
to the process's :class:`IntakeWriter` and waits. The writer takes every request waiting (up to
``max_events``), applies them in arrival order in one transaction
(:func:`~callbridge.services.call_tracking.track_event_groups`), commits, and only then answers
each request: 202 still means committed. While a transaction runs, the requests that arrive
queue for the next one, so a lone request waits for nobody and a busy process pays one
``BEGIN IMMEDIATE``/commit (SQLite) or one set of round trips (PostgreSQL) for many requests.
The transaction's statements are plain SQL on the driver's connection
(:class:`~callbridge.storage.intake_sql.IntakeStore`); the enterprises' routing is read (or
taken from the cache) before it begins.

One bad request must not fail the others: when a group's transaction fails, it is rolled back
and each of its requests is applied again in a transaction of its own; each then gets its own
outcome or error. A database that fails the commit itself fails every request of the group
(503, nothing stored): none of them was answered.

Credentials are checked again inside the transaction, against the committed enterprise row:
a request verified against a secret that has since been rotated, or an enterprise deactivated
since, is answered 401 and nothing of it is stored (the check before the body may use a
cached secret, see :class:`~callbridge.web.pbx.CachedVerifiedEnterprise`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callbridge.domain.errors import CallbridgeError, StorageError
from callbridge.domain.events import Event
from callbridge.domain.ports import CallRouting
from callbridge.services.call_tracking import (
    WEBHOOK_SOURCE,
    EventGroup,
    Outcome,
    track_event_groups,
)
from callbridge.storage.call_tracking import RoutingCache, SqlRoutingSource, call_tracking_ports
from callbridge.storage.crypto import SecretBox
from callbridge.storage.intake_sql import IntakeStore, PreloadedRouting
from callbridge.storage.repositories import EnterpriseRepository

__all__ = ["Credential", "CredentialCache", "CredentialsChangedError", "IntakeWriter"]

logger = logging.getLogger(__name__)

#: Events per transaction, at most (one request may bring up to 500 on its own).
DEFAULT_MAX_EVENTS = 500


class CredentialsChangedError(CallbridgeError):
    """The enterprise was deactivated, or its webhook secret changed, since the request began."""


#: Enterprises whose credentials and routings a starting app reads before their first request.
WARM_UP_LIMIT = 1000


@dataclass(frozen=True)
class Credential:
    """An enterprise's webhook secret: as stored (encrypted) and in clear."""

    enterprise_id: int
    secret_enc: str
    secret: str = field(repr=False)


@dataclass
class CredentialCache:
    """Enterprises' webhook secrets by number, decrypted, kept by one process for a while.

    Saves a read transaction and a decryption per request. Staleness is harmless: a request
    whose cached secret no longer works is checked against the database before it is refused,
    and the intake writer re-checks every accepted request's secret inside its transaction.
    """

    # Long: a stale entry costs one database read at most (see above), an expired one a read
    # while the PBX waits for its answer.
    ttl_seconds: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _entries: dict[str, tuple[float, Credential]] = field(default_factory=dict, repr=False)

    def get(self, number: str) -> Credential | None:
        """The cached credential, if still fresh."""
        entry = self._entries.get(number)
        if entry is None or self.clock() >= entry[0]:
            return None
        return entry[1]

    def put(self, number: str, credential: Credential) -> None:
        """Remember a credential for ``ttl_seconds``."""
        self._entries[number] = (self.clock() + self.ttl_seconds, credential)

    def forget(self, number: str) -> None:
        """Drop a credential (it turned out stale)."""
        self._entries.pop(number, None)


@dataclass
class _Request:
    enterprise_id: int
    secret_enc: str
    events: Sequence[Event]
    future: asyncio.Future[list[Outcome]] = field(repr=False)


@dataclass
class IntakeWriter:
    """Applies webhook requests in groups, one transaction per group, one group at a time."""

    session_factory: async_sessionmaker[AsyncSession]
    box: SecretBox
    routing_cache: RoutingCache = field(default_factory=RoutingCache)
    max_events: int = DEFAULT_MAX_EVENTS
    #: How long a writer holding a kept connection waits for more requests before giving it
    #: back (PostgreSQL): at a few hundred requests a second the next one is that close.
    linger_seconds: float = 0.02
    #: Transactions committed and requests answered from them (for tests and metrics).
    commits: int = field(default=0, init=False)
    committed_requests: int = field(default=0, init=False)
    _waiting: deque[_Request] = field(default_factory=deque, init=False, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _store: IntakeStore | None = field(default=None, init=False, repr=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    # Routings being read anew in the background, and the tasks reading them.
    _refreshing: set[int] = field(default_factory=set, init=False, repr=False)
    _background: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)

    async def submit(
        self, enterprise_id: int, secret_enc: str, events: Sequence[Event]
    ) -> list[Outcome]:
        """Apply one request's events; each event's outcome, once they are committed.

        ``secret_enc`` is the enterprise's stored secret the request was verified with.
        """
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Request(enterprise_id, secret_enc, events, future))
        self._wake.set()
        if self._task is None or self._task.done():
            # A task only while there is work: nothing to start or stop with the app.
            self._task = asyncio.create_task(self._run(), name="callbridge-intake-writer")
        return await future

    async def warm_up(self, credentials: CredentialCache, *, limit: int = WARM_UP_LIMIT) -> int:
        """Read the webhook enterprises' credentials and routings before their first request.

        Without it the first request of each enterprise after a start waits for both reads
        (tens of milliseconds on PostgreSQL before its call card can be shown). Reads the first
        ``limit`` active enterprises that have a webhook secret; returns how many.
        """
        async with self.session_factory() as session:
            enterprises = [
                row
                for row in await EnterpriseRepository(session).list_all()
                if row.active and row.webhook_secret_enc
            ][:limit]
            # Cached as it is read (none of an enterprise without a portal: see RoutingCache).
            source = SqlRoutingSource(session, self.box, self.routing_cache)
            for row in enterprises:
                assert row.webhook_secret_enc is not None
                secret = self.box.decrypt(row.webhook_secret_enc)
                credentials.put(row.number, Credential(row.id, row.webhook_secret_enc, secret))
                await source.reload(row.id)
        return len(enterprises)

    async def close(self) -> None:
        """Finish the group in progress (the server has stopped sending requests)."""
        if self._background:
            # Short reads: let them end rather than leave one running on a driver's thread.
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._store is not None:
            await self._store.release()

    async def _run(self) -> None:
        group: list[_Request] = []
        try:
            while True:
                while self._waiting:
                    group = self._next_group()
                    if group:
                        await self._apply_safely(group)
                group = []
                if self._store is not None and not self._store.keeps_idle:
                    # SQLite's one connection: other sessions of the process wait for it.
                    await self._store.release()
                if self._store is None or self._store.idle_seconds() is None:
                    # Nothing awaited since the queue was last seen empty: a request that
                    # comes after this starts a new task.
                    return
                # Kept (PostgreSQL) while requests follow each other; given back once they
                # stop, so a writer nobody closes leaves no connection checked out. Requests
                # that come meanwhile are served by this task: it looks again.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.linger_seconds):
                        await self._wake.wait()
                if not self._waiting:
                    await self._store.release()
        except asyncio.CancelledError:
            # Cancelled mid-transaction (the process is stopping): the transaction is rolled
            # back, so nobody waiting may be left hanging, nor told it was accepted.
            if self._store is not None:
                await self._store.release()
            err = StorageError("the server is stopping; try again later")
            _fail([*group, *self._waiting], err)
            self._waiting.clear()
            raise

    async def _apply_safely(self, group: list[_Request]) -> None:
        try:
            await self._apply_group(group)
        except Exception as err:  # noqa: BLE001 - each request gets its own answer below
            if isinstance(err, StorageError):
                # The database failed the whole transaction (or its commit): no request of it
                # was answered, and retrying one by one would meet the same database.
                _fail(group, err)
                return
            for request in group:
                if not request.future.done():
                    await self._apply_alone(request)

    def _next_group(self) -> list[_Request]:
        group: list[_Request] = []
        events = 0
        while self._waiting and (not group or events < self.max_events):
            request = self._waiting.popleft()
            # A request whose caller went away is dropped unapplied: it was never answered.
            if not request.future.done():
                group.append(request)
                events += len(request.events)
        return group

    async def _apply_group(self, group: list[_Request]) -> None:
        outcomes = await self._transaction(group)
        for request, result in zip(group, outcomes, strict=True):
            if isinstance(result, BaseException):
                if not request.future.done():
                    request.future.set_exception(result)
            elif not request.future.done():
                request.future.set_result(result)

    async def _apply_alone(self, request: _Request) -> None:
        try:
            (result,) = await self._transaction([request])
        except Exception as err:  # noqa: BLE001 - handed to the request that caused it
            if not request.future.done():
                request.future.set_exception(err)
            return
        if request.future.done():
            return
        if isinstance(result, BaseException):
            request.future.set_exception(result)
        else:
            request.future.set_result(result)

    async def _transaction(
        self, group: list[_Request]
    ) -> list[list[Outcome] | CredentialsChangedError]:
        """Apply the group and commit; each request's outcomes (or why it was refused)."""
        store = self._intake_store()
        if store is None:
            return await self._session_transaction(group)
        routing = PreloadedRouting(await self._routings({r.enterprise_id for r in group}))
        async with store.transaction(more=self._more_waiting) as transaction:
            valid = await transaction.admit(
                [(r.enterprise_id, r.secret_enc, r.events) for r in group], WEBHOOK_SOURCE
            )
            applied = iter(
                await track_event_groups(
                    transaction.ports(routing),
                    [
                        EventGroup(request.enterprise_id, request.events)
                        for request, ok in zip(group, valid, strict=True)
                        if ok
                    ],
                )
            )
        self.commits += 1
        self.committed_requests += len(group)
        return [next(applied) if ok else CredentialsChangedError() for ok in valid]

    def _more_waiting(self) -> bool:
        return bool(self._waiting)

    def _intake_store(self) -> IntakeStore | None:
        if self._store is None:
            engine = self.session_factory.kw.get("bind")
            if isinstance(engine, AsyncEngine):
                self._store = IntakeStore(engine)
        return self._store

    async def _routings(self, enterprise_ids: set[int]) -> dict[int, CallRouting]:
        """Each enterprise's routing: cached, or read before the write transaction begins."""
        routings: dict[int, CallRouting] = {}
        missing = set()
        for enterprise_id in enterprise_ids:
            cached = self.routing_cache.get(enterprise_id)
            if cached is None:
                missing.add(enterprise_id)
            else:
                routings[enterprise_id] = cached
                if self.routing_cache.due(enterprise_id):
                    self._refresh_in_background(enterprise_id)
        if missing:
            if self._store is not None and not self._store.keeps_idle:
                # The session below needs SQLite's one connection.
                await self._store.release()
            try:
                async with self.session_factory() as session:
                    source = SqlRoutingSource(session, self.box, self.routing_cache)
                    for enterprise_id in missing:
                        routings[enterprise_id] = await source.for_enterprise(enterprise_id)
            except (OperationalError, InterfaceError, OSError) as err:
                raise StorageError("the database is unavailable; try again later") from err
        return routings

    def _refresh_in_background(self, enterprise_id: int) -> None:
        """Read a routing anew while the cached one is still served (once at a time)."""
        if enterprise_id in self._refreshing:
            return
        self._refreshing.add(enterprise_id)
        task = asyncio.create_task(
            self._refresh(enterprise_id), name=f"callbridge-routing-{enterprise_id}"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(self, enterprise_id: int) -> None:
        try:
            async with self.session_factory() as session:
                await SqlRoutingSource(session, self.box, self.routing_cache).reload(enterprise_id)
        except (OperationalError, InterfaceError, OSError) as err:
            # The cached routing serves until it expires; then a request reads it itself.
            logger.warning("routing of enterprise %s not read anew: %s", enterprise_id, err)
        finally:
            self._refreshing.discard(enterprise_id)

    async def _session_transaction(
        self, group: list[_Request]
    ) -> list[list[Outcome] | CredentialsChangedError]:
        """:meth:`_transaction` through an ORM session (a factory bound to no engine)."""
        try:
            async with self.session_factory() as session, session.begin():
                current = await EnterpriseRepository(session).active_webhook_secrets(
                    {request.enterprise_id for request in group}
                )
                valid = [current.get(r.enterprise_id) == r.secret_enc for r in group]
                ports = call_tracking_ports(session, self.box, routing_cache=self.routing_cache)
                applied = iter(
                    await track_event_groups(
                        ports,
                        [
                            EventGroup(request.enterprise_id, request.events)
                            for request, ok in zip(group, valid, strict=True)
                            if ok
                        ],
                    )
                )
        except (OperationalError, InterfaceError, OSError) as err:
            raise StorageError("the database is unavailable; try again later") from err
        self.commits += 1
        self.committed_requests += len(group)
        return [next(applied) if ok else CredentialsChangedError() for ok in valid]


def _fail(group: list[_Request], err: BaseException) -> None:
    for request in group:
        if not request.future.done():
            request.future.set_exception(err)
