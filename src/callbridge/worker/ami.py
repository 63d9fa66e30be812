"""The AMI supervisor: a worker side task that keeps one listener per PBX across processes.

Every ``poll_interval`` seconds it reads the active enterprises with an AMI URL and starts,
restarts (URL or ``settings["ami"]`` changed) or stops their listeners. On PostgreSQL each
listener runs only while this process holds the enterprise's session-level advisory lock, on a
connection of its own that is checked every ``lock_check_interval`` seconds; a process that
does not get the lock is a standby and tries again every ``lock_retry_interval`` seconds. The
lock dies with its connection, so when the holder dies (or loses the database) a standby takes
over within one retry interval. On SQLite there is one process: listeners just run.

The listener's facts go to the call-tracking use case, one transaction per AMI event, filed in
the inbox under the PBX's source (``ami:host:port``); its status goes to ``ami_status``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from callbridge.domain.errors import StorageError
from callbridge.domain.events import Event as CallFact
from callbridge.pbx.ami.listener import (
    AmiListener,
    AmiUrl,
    ListenerStatus,
    OpenCall,
    OpenCalls,
    translator_config,
)
from callbridge.pbx.ami.translate_config import TranslatorConfig
from callbridge.services.call_tracking import track_events
from callbridge.storage.ami import (
    AmiStatusRepository,
    StatusUpdate,
    advisory_lock_key,
    lock_connection_alive,
    try_advisory_lock,
)
from callbridge.storage.call_tracking import RoutingCache, call_tracking_ports
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_unpooled_engine
from callbridge.storage.types import utcnow

__all__ = ["AmiSupervisor"]

logger = structlog.stdlib.get_logger("callbridge.worker.ami")

# Errors that mean "the database is away": the listener waits them out instead of dropping.
_STORAGE_ERRORS = (OperationalError, InterfaceError, PoolTimeoutError, OSError, TimeoutError)


@dataclass(frozen=True)
class _Target:
    enterprise_id: int
    number: str
    url: AmiUrl
    config: TranslatorConfig


@dataclass
class _Slot:
    target: _Target
    task: asyncio.Task[None]


class AmiSupervisor:
    """Starts and stops the AMI listeners of every enterprise; one per PBX cluster-wide."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        engine: AsyncEngine,
        box: SecretBox,
        *,
        holder: str = "",
        poll_interval: float = 10.0,
        lock_retry_interval: float = 5.0,
        lock_check_interval: float = 5.0,
        status_interval: float = 5.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.engine = engine
        self.box = box
        self.holder = holder
        self.poll_interval = poll_interval
        self.lock_retry_interval = lock_retry_interval
        self.lock_check_interval = lock_check_interval
        self.status_interval = status_interval
        self.client_options = dict(client_options or {})
        #: The listeners running in this process, by enterprise id.
        self.listeners: dict[int, AmiListener] = {}
        self._slots: dict[int, _Slot] = {}
        self._routing = RoutingCache()
        self._lock_engine: AsyncEngine | None = None
        self._bad_config: dict[int, str] = {}

    async def run(self) -> None:
        """Supervise until cancelled (a worker side task)."""
        if self.engine.dialect.name == "postgresql":
            # Lock connections live as long as their listeners: kept out of the shared pool.
            url = self.engine.url.render_as_string(hide_password=False)
            self._lock_engine = create_unpooled_engine(url)
        try:
            while True:
                try:
                    await self.sync()
                except Exception:
                    logger.exception("ami.supervisor_sync_failed")
                await asyncio.sleep(self.poll_interval)
        finally:
            await self._stop_all()
            if self._lock_engine is not None:
                await self._lock_engine.dispose()
                self._lock_engine = None

    async def sync(self) -> None:
        """Start, restart or stop listeners to match the enterprises now configured."""
        targets = await self._targets()
        for enterprise_id, slot in list(self._slots.items()):
            target = targets.get(enterprise_id)
            if target is None or target != slot.target:
                logger.info(
                    "ami.listener_reconfigured" if target else "ami.listener_removed",
                    enterprise=slot.target.number,
                )
                await self._stop(enterprise_id)
        for enterprise_id, target in targets.items():
            if enterprise_id not in self._slots:
                task = asyncio.create_task(self._hold(target), name=f"ami {target.number}")
                self._slots[enterprise_id] = _Slot(target, task)

    async def _targets(self) -> dict[int, _Target]:
        async with self.session_factory() as session:
            repository = AmiStatusRepository(session)
            rows = await repository.with_ami_url()
            found: dict[int, _Target] = {}
            for row in rows:
                assert row.ami_url_enc is not None
                try:
                    url = AmiUrl.parse(self.box.decrypt(row.ami_url_enc))
                    config = translator_config((row.settings or {}).get("ami"))
                except Exception as err:  # noqa: BLE001 - one bad enterprise must not stop others
                    message = f"cannot listen: {getattr(err, 'message', None) or err}"
                    if self._bad_config.get(row.id) != message:
                        self._bad_config[row.id] = message
                        logger.error("ami.bad_configuration", enterprise=row.number, error=message)
                        await repository.report(row.id, _refused(message, self.holder))
                        await session.commit()
                    continue
                self._bad_config.pop(row.id, None)
                found[row.id] = _Target(row.id, row.number, url, config)
            return found

    async def _stop(self, enterprise_id: int) -> None:
        slot = self._slots.pop(enterprise_id, None)
        if slot is not None and not slot.task.done():
            slot.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slot.task

    async def _stop_all(self) -> None:
        for enterprise_id in list(self._slots):
            await self._stop(enterprise_id)

    # -- holding one PBX -------------------------------------------------------------------------

    async def _hold(self, target: _Target) -> None:
        """Run the target's listener whenever this process may: always on SQLite, else locked."""
        lock_engine = self._lock_engine
        if lock_engine is None:
            await self._listen(target)
            return
        key = advisory_lock_key(target.enterprise_id)
        standby_logged = False
        while True:
            try:
                async with lock_engine.connect() as connection:
                    autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                    if await try_advisory_lock(autocommit, key):
                        standby_logged = False
                        logger.info(
                            "ami.lock_acquired", enterprise=target.number, holder=self.holder
                        )
                        await self._listen_while_locked(target, autocommit)
                    elif not standby_logged:
                        standby_logged = True
                        logger.info("ami.standby", enterprise=target.number, holder=self.holder)
            except _STORAGE_ERRORS as err:
                logger.warning("ami.lock_unavailable", enterprise=target.number, error=repr(err))
            await asyncio.sleep(self.lock_retry_interval)

    async def _listen_while_locked(self, target: _Target, connection: AsyncConnection) -> None:
        listening = asyncio.create_task(self._listen(target), name=f"ami-listener {target.number}")
        try:
            while True:
                done, _ = await asyncio.wait({listening}, timeout=self.lock_check_interval)
                if done:
                    listening.result()  # a listener never returns; this raises what it raised
                    return
                try:
                    async with asyncio.timeout(self.lock_check_interval):
                        await lock_connection_alive(connection)
                except Exception as err:  # noqa: BLE001 - any failure means the lock may be gone
                    logger.error(
                        "ami.lock_lost", enterprise=target.number, error=repr(err) or "timeout"
                    )
                    return
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening

    async def _listen(self, target: _Target) -> None:
        enterprise_id = target.enterprise_id
        source = target.url.source

        async def apply(facts: Sequence[CallFact]) -> None:
            try:
                async with self.session_factory() as session, session.begin():
                    ports = call_tracking_ports(session, self.box, routing_cache=self._routing)
                    await track_events(ports, enterprise_id, facts, source=source)
            except _STORAGE_ERRORS as err:
                raise StorageError(f"cannot store call events: {err}") from err

        async def report(status: ListenerStatus) -> None:
            async with self.session_factory() as session, session.begin():
                await AmiStatusRepository(session).report(enterprise_id, _update(status, self))

        async def open_calls() -> OpenCalls:
            async with self.session_factory() as session:
                repository = AmiStatusRepository(session)
                rows = await repository.open_calls(enterprise_id, source)
                heartbeat = await repository.heartbeat(enterprise_id, target.url.address)
            calls = [OpenCall(row.linkedid, row.answered, row.last_seen) for row in rows]
            return OpenCalls(calls, heartbeat)

        listener = AmiListener(
            target.url,
            apply,
            name=target.number,
            config=target.config,
            on_status=report,
            open_calls=open_calls,
            status_interval=self.status_interval,
            client_options=self.client_options,
        )
        self.listeners[enterprise_id] = listener
        try:
            await listener.run()
        finally:
            if self.listeners.get(enterprise_id) is listener:
                del self.listeners[enterprise_id]


def _update(status: ListenerStatus, supervisor: AmiSupervisor) -> StatusUpdate:
    return StatusUpdate(
        state=status.state.value,
        pbx=status.pbx,
        holder=supervisor.holder,
        last_error=status.last_error,
        reconnects=status.reconnects,
        events_in=status.events_in,
        last_event_at=status.last_event_at,
        since=status.since,
        heartbeat_at=status.heartbeat,
    )


def _refused(message: str, holder: str) -> StatusUpdate:
    return StatusUpdate(
        state="refused",
        pbx="",
        holder=holder,
        last_error=message,
        reconnects=0,
        events_in=0,
        last_event_at=None,
        since=utcnow(),
    )
