"""Recordings on the PBX uploaded to Bitrix24: ``bitrix24.upload_recording`` jobs.

A recording reported as a file on the PBX is read and uploaded by a job of its own kind, run by
a worker of its own (:func:`upload_worker`), never in a portal's dispatch lane: a 50 MB upload
there held up every register and finish of the portal's other calls. What stays the same:

- **after the call's finish**: the job shares its call's ordering key, so it is claimed only once
  every earlier command of the call (register, finish) succeeded, and a later one waits for it;
- **in the rate budget**: the ``attachRecord`` request and the upload go through the same
  :class:`~callbridge.portals.Portals` as the dispatcher's commands (:func:`run_bitrix24`), so
  each takes a slot of the portal's budget, and is counted in the portal's lane's view of the
  bucket (its reserve for registers; see :class:`callbridge.worker.dispatcher.Dispatcher`);
- **retries and dead jobs** follow the error's class (the worker's retry policy): a file outside
  the recordings directories or above the size cap dies at once, naming the fix; a file not
  there yet is waited for with backoff up to ``recording_wait_seconds``; an integration that
  needs re-authorisation is paused (``needs_reauth``) and the job waits without spending
  attempts; a network or server error is retried with backoff, asking for a new ``uploadUrl``.

At most ``recording_upload_concurrency`` uploads run at once in a process. No database session is
open while a file is read or Bitrix24 is called.

Which files an enterprise may upload: see :mod:`callbridge.worker.recordings`. The directories
are the enterprise's own (``callbridge enterprise set-recordings``) inside the bridge's
``CALLBRIDGE_RECORDINGS_DIRS``; an enterprise without any on a bridge serving several is warned
about, once per process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge.config import Settings
from callbridge.crm.bitrix24.errors import (
    REAUTH_RETRY_AFTER,
    PortalGone,
    ReauthRequired,
    UnexpectedResponse,
)
from callbridge.domain.commands import AttachRecord, command_from_dict
from callbridge.domain.errors import CallStateError, Permanent, RetryLater
from callbridge.portals import Portals, running_portals
from callbridge.services.call_tracking import BITRIX24_UPLOAD_JOB
from callbridge.storage.crypto import SecretBox
from callbridge.storage.dispatch import DispatchRepository
from callbridge.storage.job_queue import JobQueue
from callbridge.storage.models import Bitrix24Integration, IntegrationStatus
from callbridge.storage.repositories import EnterpriseRepository
from callbridge.worker.dispatcher import Dispatcher, LegNotRegisteredError
from callbridge.worker.recordings import (
    RecordingMissingError,
    missing_recording_error,
    open_recording,
)
from callbridge.worker.registry import JobContext, JobRegistry
from callbridge.worker.worker import Worker

__all__ = [
    "UPLOAD_KIND",
    "IntegrationGoneError",
    "RecordingUploader",
    "run_bitrix24",
    "upload_worker",
]

logger = logging.getLogger(__name__)

UPLOAD_KIND: Final = BITRIX24_UPLOAD_JOB

_AUDIO_TYPES: Final = {"wav": "audio/wav", "mp3": "audio/mpeg"}


class IntegrationGoneError(Permanent):
    """The job's Bitrix24 integration no longer exists."""


@dataclass(frozen=True)
class _Target:
    """What one upload needs from the database, read before any I/O."""

    integration: Bitrix24Integration
    call_id: str | None
    enterprise: str
    enterprise_id: int
    enterprise_dirs: tuple[Path, ...]
    shared_bridge: bool


class RecordingUploader:
    """The ``bitrix24.upload_recording`` handler: read the file, attach it to its leg."""

    def __init__(self, settings: Settings, portals: Portals) -> None:
        self.settings = settings
        self.portals = portals
        self._warned: set[int] = set()

    async def __call__(self, job: JobContext) -> dict[str, Any]:
        """Run one job (its session stays unused: on SQLite its connection is the only one)."""
        return await self.upload(job.integration_id, job.payload, job.attempts, job.max_attempts)

    async def upload(
        self,
        integration_id: int | None,
        payload: Mapping[str, Any],
        attempt: int,
        max_attempts: int,
    ) -> dict[str, Any]:
        """Upload the recording the job names; the portal's answer and ``uploaded_bytes``."""
        command = command_from_dict(payload.get("command") or {})
        if not isinstance(command, AttachRecord) or not command.path or command.url:
            raise CallStateError(f"{UPLOAD_KIND} needs an attach_record of a file on the PBX")
        if integration_id is None:
            raise IntegrationGoneError(f"{UPLOAD_KIND} job names no integration")
        call_row_id = int(payload.get("call_id") or 0)
        enterprise_id = int(payload.get("enterprise_id") or 0)
        target = await self._target(integration_id, enterprise_id, call_row_id, command.leg)
        row = target.integration
        if row.status != IntegrationStatus.ACTIVE.value:
            # As the dispatcher does with its commands: kept, untried, until it is active again.
            raise RetryLater(
                REAUTH_RETRY_AFTER,
                f"the Bitrix24 integration {row.domain} is {row.status}: the recording waits "
                "until it is active again",
            )
        if target.call_id is None:
            raise LegNotRegisteredError(
                f"leg {command.leg} of call {payload.get('linkedid')} has no Bitrix24 CALL_ID "
                "(its register was cancelled or failed)"
            )
        self._warn_if_shared(target)
        try:
            recording = await asyncio.to_thread(
                open_recording,
                command.path,
                self.settings.recordings_dirs,
                self.settings.recording_max_bytes,
                enterprise_dirs=target.enterprise_dirs,
                enterprise=target.enterprise,
            )
        except RecordingMissingError as err:
            raise self._missing(err, attempt, max_attempts) from err
        params = command.to_params()
        params["CALL_ID"] = target.call_id
        method = command.method
        client = self.portals.client_for(row)
        try:
            with contextlib.closing(recording):
                if recording.size <= self.settings.recording_inline_max_bytes:
                    content = await recording.read_all()
                    params["FILE_CONTENT"] = base64.b64encode(content).decode("ascii")
                    value = await client.call(method, params)
                else:
                    answer = await client.call(method, params)
                    where = answer if isinstance(answer, Mapping) else {}
                    url = where.get("uploadUrl")
                    if not isinstance(url, str) or not url:
                        raise UnexpectedResponse(
                            f"{method} without FILE_CONTENT answered no uploadUrl: {answer!r}",
                            method=method,
                        )
                    value = await client.upload(
                        url,
                        str(where.get("fieldName") or "file"),
                        command.filename,
                        recording.chunks(),
                        recording.size,
                        content_type=_AUDIO_TYPES.get(command.format.lower(), "audio/wav"),
                    )
        except RecordingMissingError as err:
            raise self._missing(err, attempt, max_attempts) from err
        except ReauthRequired as err:
            await self._pause(row, IntegrationStatus.NEEDS_REAUTH, err)
            raise
        except PortalGone as err:
            await self._pause(row, IntegrationStatus.PORTAL_DELETED, err)
            raise
        result = dict(value) if isinstance(value, Mapping) else {"result": value}
        result["uploaded_bytes"] = recording.size
        return result

    # -- helpers -------------------------------------------------------------------------------

    async def _target(
        self, integration_id: int, enterprise_id: int, call_row_id: int, leg: int
    ) -> _Target:
        """The integration, the leg's CALL_ID and the directories of the call's enterprise."""
        async with self.portals.session_factory() as session:
            repo = DispatchRepository(session)
            row = await repo.integration(integration_id)
            if row is None:
                raise IntegrationGoneError(f"Bitrix24 integration {integration_id} is gone")
            context = await repo.call_context([call_row_id])
            enterprises = EnterpriseRepository(session)
            # The enterprise whose PBX reported the call, which may not be the portal's own.
            enterprise = await enterprises.get(enterprise_id)
            shared = await enterprises.count() > 1
        return _Target(
            integration=row,
            call_id=context.call_ids.get((call_row_id, leg)),
            enterprise=enterprise.number if enterprise is not None else "",
            enterprise_id=enterprise.id if enterprise is not None else 0,
            enterprise_dirs=tuple(Path(d) for d in (enterprise.recordings_dirs or []))
            if enterprise is not None
            else (),
            shared_bridge=shared,
        )

    def _warn_if_shared(self, target: _Target) -> None:
        if target.enterprise_dirs or not target.shared_bridge:
            return
        if target.enterprise_id in self._warned:
            return
        self._warned.add(target.enterprise_id)
        number = target.enterprise or "NUMBER"
        logger.warning(
            "enterprise %s has no recordings directories of its own, and this bridge serves "
            "several enterprises: its recordings by path are read from anywhere in "
            "CALLBRIDGE_RECORDINGS_DIRS (%s), other enterprises' files included. Give it its "
            "own: `callbridge enterprise set-recordings %s DIR...`",
            number,
            ", ".join(str(d) for d in self.settings.recordings_dirs),
            number,
        )

    def _missing(self, err: RecordingMissingError, attempt: int, max_attempts: int) -> Exception:
        return missing_recording_error(
            err, attempt, max_attempts, self.settings.recording_wait_seconds
        )

    async def _pause(
        self, row: Bitrix24Integration, status: IntegrationStatus, err: Exception
    ) -> None:
        try:
            async with self.portals.session_factory() as session:
                paused = await DispatchRepository(session).pause_integration(
                    row.id, status.value, str(err)
                )
                await session.commit()
        except Exception:
            logger.exception("uploads: could not pause the Bitrix24 portal %s", row.domain)
            return
        if paused:
            logger.error("uploads: Bitrix24 portal %s paused (%s): %s", row.domain, status, err)


def upload_worker(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    portals: Portals,
    *,
    queue: JobQueue | None = None,
    listen_url: str | None = None,
    poll_interval: float | None = None,
    name: str | None = None,
) -> Worker:
    """A worker that runs only ``bitrix24.upload_recording`` jobs, a few at a time."""
    registry = JobRegistry()
    registry.register(UPLOAD_KIND, RecordingUploader(settings, portals))
    return Worker(
        session_factory,
        registry,
        queue=queue or JobQueue(lease_seconds=settings.job_lease_seconds),
        kinds=[UPLOAD_KIND],
        concurrency=settings.recording_upload_concurrency,
        poll_interval=poll_interval or settings.worker_poll_interval_seconds,
        shutdown_timeout=settings.worker_shutdown_timeout_seconds,
        listen_url=listen_url,
        name=name,
    )


@contextlib.asynccontextmanager
async def _outbound_portals(
    settings: Settings, session_factory: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Portals]:
    timeout = httpx.Timeout(
        settings.http_timeout_seconds, connect=min(5.0, settings.http_timeout_seconds)
    )
    async with (
        httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http,
        running_portals(
            settings, session_factory, http, SecretBox(settings.fernet_keys())
        ) as portals,
    ):
        yield portals


async def run_bitrix24(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    *,
    queue: JobQueue,
    listen_url: str | None,
    name: str,
) -> None:
    """Run the dispatcher and the recording uploads on one :class:`Portals` until cancelled.

    One Portals: one HTTP pool, one credentials cache and one rate budget for both (on SQLite
    the budget is in memory, per Portals). If either stops, so does the other.
    """
    async with _outbound_portals(settings, session_factory) as portals:
        dispatcher = Dispatcher(
            settings,
            session_factory,
            portals=portals,
            queue=queue,
            listen_url=listen_url,
            name=f"{name}/b24",
        )
        uploads = upload_worker(
            settings,
            session_factory,
            portals,
            queue=queue,
            listen_url=listen_url,
            name=f"{name}/uploads",
        )
        tasks = [
            asyncio.create_task(dispatcher.run(), name="bitrix24-dispatcher"),
            asyncio.create_task(uploads.run(), name="recording-uploads"),
        ]
        try:
            done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            # Both stop gracefully on cancel (requests in flight are recorded) before the
            # HTTP pool closes.
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
        logger.error("%s ended; stopping the other", ", ".join(t.get_name() for t in done))
