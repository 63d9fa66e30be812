"""The worker: a lifecycle object that drains the job queue (CONVENTIONS #5).

It owns every task it starts. The fetch loop waits on whichever comes first: a new-job wake-up
(PostgreSQL NOTIFY, or a job of its own finishing, which may unblock the next job of a key),
the poll interval, or the stop event. A semaphore caps the jobs running at once. Named side
tasks (the NOTIFY listener, the lease heartbeat, and later AMI listeners and token refreshers)
are watched by a monitor that stops the worker if one of them ends. The loop is shielded from
cancellation: cancelling :meth:`Worker.run` asks for a graceful stop and waits for it.

Shutdown: stop claiming; cancel the side tasks (the heartbeat keeps running while jobs drain, so
their leases hold); give running jobs ``shutdown_timeout`` seconds; cancel the rest. A cancelled
job's transaction rolls back and its lease runs out, so another worker runs it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callbridge.domain.errors import LeaseLostError
from callbridge.storage.job_queue import ClaimedJob, JobQueue, listen_for_jobs
from callbridge.worker.registry import JobContext, JobRegistry
from callbridge.worker.retry import RetryPolicy

logger = logging.getLogger(__name__)

SideTaskFactory = Callable[[], Awaitable[Any]]

# After a database error in the fetch loop, wait this long (at most) before claiming again.
MAX_FETCH_ERROR_DELAY = 30.0


@dataclass
class _Running:
    job: ClaimedJob
    task: asyncio.Task[None]
    # Once the runner starts writing the job's outcome, a lost lease is left to the fence
    # (the write fails on its own) rather than cancelling the task mid-commit.
    finishing: bool = False


class Worker:
    """Claims jobs, runs their handlers, records outcomes; stops gracefully."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        registry: JobRegistry,
        *,
        queue: JobQueue | None = None,
        retry_policy: RetryPolicy | None = None,
        concurrency: int = 8,
        poll_interval: float = 1.0,
        shutdown_timeout: float = 30.0,
        listen_url: str | None = None,
        heartbeat_interval: float | None = None,
        kinds: Iterable[str] | None = None,
        integration_id: int | None = None,
        name: str | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.session_factory = session_factory
        self.registry = registry
        self.queue = queue or JobQueue()
        self.retry_policy = retry_policy or RetryPolicy()
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.shutdown_timeout = shutdown_timeout
        self.listen_url = listen_url
        self.heartbeat_interval = heartbeat_interval or self.queue.lease_seconds / 3
        self.kinds = frozenset(kinds) if kinds is not None else None
        self.integration_id = integration_id
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._rand = rand
        self._stop_event = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._semaphore = asyncio.Semaphore(concurrency)
        self._running: dict[int, _Running] = {}
        self._side_task_factories: dict[str, SideTaskFactory] = {}
        self._signals: list[signal.Signals] = []
        self._started = False
        #: Set while the PostgreSQL listener holds its LISTEN (tests wait on it).
        self.listening = asyncio.Event()
        self.jobs_run = 0

    # -- public API ----------------------------------------------------------------------------

    def add_side_task(self, name: str, factory: SideTaskFactory) -> None:
        """Run ``factory()`` alongside the worker; if it ever ends, the worker stops."""
        if self._started:
            raise RuntimeError("side tasks are added before run()")
        if name in self._side_task_factories or name in ("job-listener", "lease-heartbeat"):
            raise ValueError(f"side task {name!r} already exists")
        self._side_task_factories[name] = factory

    def stop(self) -> None:
        """Ask the worker to stop (idempotent; safe from signal handlers)."""
        if not self._stop_event.is_set():
            logger.info("worker %s: stop requested", self.name)
            self._stop_event.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stop_event.is_set()

    def wake(self) -> None:
        """Look for jobs now instead of at the next poll."""
        self._wakeup.set()

    def install_signal_handlers(self) -> None:
        """Stop gracefully on SIGTERM and SIGINT (call from the running loop's main thread)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
            self._signals.append(sig)

    async def run(self) -> None:
        """Run until stopped; a cancelled run() stops gracefully first, then re-raises."""
        if self._started:
            raise RuntimeError("a Worker runs once; build a new one")
        self._started = True
        loop_task = asyncio.create_task(self._run_loop(), name=f"worker {self.name}")
        try:
            # Shielded: cancellation becomes a graceful stop instead of killing jobs mid-write.
            await asyncio.shield(loop_task)
        except asyncio.CancelledError:
            self.stop()
            await loop_task
            raise

    # -- the loop ------------------------------------------------------------------------------

    async def _run_loop(self) -> None:
        logger.info("worker %s: started (concurrency %d)", self.name, self.concurrency)
        side_tasks = self._start_side_tasks()
        heartbeat = asyncio.create_task(self._heartbeat(), name="lease-heartbeat")
        monitor = asyncio.create_task(
            self._monitor_side_tasks([*side_tasks, heartbeat]), name="side-task-monitor"
        )
        try:
            while not self._stop_event.is_set():
                # Cleared before claiming: a wake-up that arrives during the claim is kept.
                self._wakeup.clear()
                exhausted = await self._claim_and_start()
                if exhausted and not self._stop_event.is_set():
                    await _wait_any(
                        self._wakeup.wait(),
                        asyncio.sleep(self.poll_interval),
                        self._stop_event.wait(),
                    )
        finally:
            monitor.cancel()
            await self._shutdown(side_tasks, heartbeat)

    async def _claim_and_start(self) -> bool:
        """Claim jobs for the free slots; True when the queue had fewer due jobs than slots."""
        acquired = await _wait_any(self._semaphore.acquire(), self._stop_event.wait())
        if not acquired:
            return False
        if self._stop_event.is_set():
            self._semaphore.release()
            return False
        slots = 1
        # Claim for every free slot in one transaction (acquire() does not block when free).
        while slots < self.concurrency and not self._semaphore.locked():
            await self._semaphore.acquire()
            slots += 1
        try:
            async with self.session_factory() as session:
                jobs = await self.queue.claim(
                    session,
                    self.name,
                    limit=slots,
                    kinds=self.kinds,
                    integration_id=self.integration_id,
                )
                await session.commit()
        except Exception:
            for _ in range(slots):
                self._semaphore.release()
            logger.exception("worker %s: claiming jobs failed; retrying", self.name)
            await _wait_any(
                asyncio.sleep(min(self.poll_interval * 5, MAX_FETCH_ERROR_DELAY)),
                self._stop_event.wait(),
            )
            return False
        for _ in range(slots - len(jobs)):
            self._semaphore.release()
        for job in jobs:
            task = asyncio.create_task(self._run_job(job), name=f"job {job.kind}[{job.id}]")
            self._running[job.id] = _Running(job, task)
        return len(jobs) < slots

    async def _run_job(self, job: ClaimedJob) -> None:
        try:
            await self._execute(job)
        finally:
            self._running.pop(job.id, None)
            self._semaphore.release()
            self.jobs_run += 1
            # Its successor (same ordering key) or dependents may be claimable now.
            self._wakeup.set()

    async def _execute(self, job: ClaimedJob) -> None:
        try:
            handler = self.registry.get(job.kind)
            async with self.session_factory() as session:
                context = JobContext(
                    id=job.id,
                    kind=job.kind,
                    payload=job.payload,
                    attempts=job.attempts,
                    max_attempts=job.max_attempts,
                    session=session,
                    worker=self.name,
                    ordering_key=job.ordering_key,
                    depends_on=job.depends_on,
                    integration_id=job.integration_id,
                    call_id=job.call_id,
                )
                result = await handler(context)
                self._mark_finishing(job)
                # The handler's writes and the job's success commit together, or not at all.
                await self.queue.complete(session, job, result)
                await session.commit()
        except LeaseLostError as err:
            logger.warning("worker %s: %s; its writes were rolled back", self.name, err)
        except Exception as err:  # noqa: BLE001 - any handler failure is the job's failure
            await self._record_failure(job, err)

    async def _record_failure(self, job: ClaimedJob, error: Exception) -> None:
        self._mark_finishing(job)
        decision = self.retry_policy.decide(error, job.attempts, job.max_attempts, rand=self._rand)
        retry_at = self.queue.now() + timedelta(seconds=decision.delay) if decision.retry else None
        log = logger.warning if decision.retry else logger.error
        log(
            "worker %s: job %s %s[%d] failed (%s: %s): %s",
            self.name,
            job.kind,
            "attempt",
            job.attempts,
            type(error).__name__,
            error,
            f"retry in {decision.delay:.1f}s" if decision.retry else f"dead ({decision.reason})",
        )
        try:
            async with self.session_factory() as session:
                await self.queue.fail(
                    session,
                    job,
                    _describe(error),
                    retry_at=retry_at,
                    spend_attempt=decision.spend_attempt,
                )
                await session.commit()
        except LeaseLostError as err:
            logger.warning("worker %s: %s", self.name, err)
        except Exception:
            # The lease will expire and the job will run again: at-least-once still holds.
            logger.exception("worker %s: could not record the failure of job %d", self.name, job.id)

    def _mark_finishing(self, job: ClaimedJob) -> None:
        running = self._running.get(job.id)
        if running is not None:
            running.finishing = True

    # -- side tasks ----------------------------------------------------------------------------

    def _start_side_tasks(self) -> list[asyncio.Task[Any]]:
        factories = dict(self._side_task_factories)
        if self.listen_url is not None:
            url = self.listen_url
            factories["job-listener"] = lambda: listen_for_jobs(
                url, self._wakeup.set, connected=self.listening
            )
        tasks = []
        for name, factory in factories.items():

            async def side_task(factory: SideTaskFactory = factory) -> Any:
                return await factory()

            tasks.append(asyncio.create_task(side_task(), name=name))
        return tasks

    async def _monitor_side_tasks(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Stop the worker if a side task ends: nothing is left unwatched."""
        if not tasks:
            return
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.cancelled():
                logger.error("worker %s: side task %s was cancelled", self.name, task.get_name())
            elif (error := task.exception()) is not None:
                logger.error(
                    "worker %s: side task %s died; stopping",
                    self.name,
                    task.get_name(),
                    exc_info=error,
                )
            else:
                logger.error("worker %s: side task %s ended; stopping", self.name, task.get_name())
        self.stop()

    async def _heartbeat(self) -> None:
        """Extend the leases of running jobs; cancel the jobs whose lease was taken over."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            snapshot = [running.job for running in self._running.values()]
            if not snapshot:
                continue
            try:
                async with self.session_factory() as session:
                    held = await self.queue.extend_leases(session, self.name, snapshot)
                    await session.commit()
            except Exception:
                # A missed beat is not fatal: leases last several intervals.
                logger.exception("worker %s: lease heartbeat failed", self.name)
                continue
            for job in snapshot:
                running = self._running.get(job.id)
                if job.id in held or running is None or running.finishing:
                    continue
                logger.warning(
                    "worker %s: lost the lease of job %d; cancelling its run", self.name, job.id
                )
                running.task.cancel()

    # -- shutdown ------------------------------------------------------------------------------

    async def _shutdown(
        self, side_tasks: list[asyncio.Task[Any]], heartbeat: asyncio.Task[None]
    ) -> None:
        await _cancel_and_wait(side_tasks)
        running = [entry.task for entry in self._running.values()]
        if running:
            logger.info(
                "worker %s: waiting up to %.0fs for %d running jobs",
                self.name,
                self.shutdown_timeout,
                len(running),
            )
            _done, pending = await asyncio.wait(running, timeout=self.shutdown_timeout or None)
            if pending:
                logger.warning(
                    "worker %s: abandoning %d jobs to lease expiry", self.name, len(pending)
                )
                await _cancel_and_wait(list(pending))
        await _cancel_and_wait([heartbeat])
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()
        logger.info("worker %s: stopped", self.name)


def _describe(error: BaseException) -> str:
    """``Type: message`` on the first line (what ``jobs list`` shows), the traceback after."""
    summary = f"{type(error).__name__}: {error}"
    details = "".join(traceback.format_exception(error))
    return f"{summary}\n{details}"


async def _wait_any(*awaitables: Awaitable[Any]) -> bool:
    """Wait for the first awaitable to finish, cancel the rest; True if the first one won."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks[1:]:
            task.cancel()
        first = tasks[0]
        if not first.done():
            first.cancel()
            try:
                await first
            except asyncio.CancelledError:
                pass
        await asyncio.gather(*tasks[1:], return_exceptions=True)
    # A semaphore acquired by a cancelled waiter still counts; report it so it is released.
    return first.done() and not first.cancelled() and first.exception() is None


async def _cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            logger.error("task %s failed while stopping", task.get_name(), exc_info=result)
