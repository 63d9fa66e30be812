"""The worker: drains the job queue, runs side tasks, stops gracefully.

The web app's lifespan and the CLI call :func:`build_worker`, run ``await worker.run()`` in a
task, and call ``worker.stop()`` on shutdown.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callbridge.config import Settings
from callbridge.storage.crypto import SecretBox
from callbridge.storage.job_queue import JobQueue
from callbridge.worker.ami import AmiSupervisor
from callbridge.worker.click_to_call import register_click_to_call_jobs
from callbridge.worker.directory import USER_SYNC_TASK, register_directory_jobs, user_sync_task
from callbridge.worker.dispatcher import DISPATCHER_KIND
from callbridge.worker.maintenance import Retention, run_maintenance
from callbridge.worker.registry import JobContext, JobRegistry, default_registry
from callbridge.worker.retry import RetryDecision, RetryPolicy
from callbridge.worker.uploads import UPLOAD_KIND, run_bitrix24
from callbridge.worker.worker import Worker

__all__ = [
    "JobContext",
    "JobRegistry",
    "RetryDecision",
    "RetryPolicy",
    "Worker",
    "build_worker",
]


def build_worker(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    registry: JobRegistry | None = None,
) -> Worker:
    """A worker configured from settings; it listens for NOTIFY when the engine is PostgreSQL."""
    listen_url = None
    if engine.dialect.name == "postgresql":
        listen_url = engine.url.render_as_string(hide_password=False)
    registry = registry if registry is not None else default_registry()
    # Missed-call notifications and users sync every 5 minutes (users and CRM).
    directory = register_directory_jobs(registry, settings, session_factory)
    register_click_to_call_jobs(registry, directory)
    queue = JobQueue(lease_seconds=settings.job_lease_seconds)
    worker = Worker(
        session_factory,
        registry,
        queue=queue,
        # Bitrix24 commands belong to the dispatcher, which batches them per portal; recording
        # uploads to a worker of their own.
        kinds=registry.kinds - {DISPATCHER_KIND, UPLOAD_KIND},
        concurrency=settings.worker_concurrency,
        poll_interval=settings.worker_poll_interval_seconds,
        shutdown_timeout=settings.worker_shutdown_timeout_seconds,
        listen_url=listen_url,
    )
    # Bitrix24 commands per portal lane, and recordings uploaded outside the lanes: one Portals
    # (HTTP pool, rate budget) for both.
    worker.add_side_task(
        "bitrix24-dispatcher",
        lambda: run_bitrix24(
            settings, session_factory, queue=queue, listen_url=listen_url, name=worker.name
        ),
    )
    worker.add_side_task(USER_SYNC_TASK, user_sync_task(directory))
    retention = Retention(
        api_log=timedelta(days=settings.api_log_retention_days),
        finished_jobs=timedelta(days=settings.job_retention_days),
    )
    worker.add_side_task(
        "maintenance",
        lambda: run_maintenance(session_factory, retention, settings.maintenance_interval_seconds),
    )
    if settings.ami_enabled:
        ami = AmiSupervisor(
            session_factory,
            engine,
            SecretBox(settings.fernet_keys()),
            holder=worker.name,
            poll_interval=settings.ami_poll_interval_seconds,
        )
        worker.add_side_task("ami-listeners", ami.run)
    return worker
