"""The durable job queue: the ``jobs`` table as an outbox that workers drain.

Jobs are enqueued inside the caller's transaction (flush, never commit), so a job exists exactly
when the change that implied it was committed. Workers *claim* jobs: a claim marks them
``running``, stamps ``locked_by`` and a lease (``lease_expires_at``) and counts an attempt.
Claiming uses ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so any number of workers share the table
without blocking each other; on SQLite every transaction is ``BEGIN IMMEDIATE`` (see ``db.py``),
so claims are serialised by the write lock.

Life of a job::

    queued ──claim──▶ running ──complete──▶ succeeded
      ▲                 │ fail (retryable, attempts left) → queued, run_after = now + backoff
      │                 │ fail (permanent or attempts used up) → dead
      │                 └ lease expires (worker died)   → queued again (or dead if out of attempts)
      └──── retry_job (operator) ◀── dead
    queued/dead ──cancel_job──▶ cancelled (and, transitively, the queued jobs that depend on it)

Leases and fencing. A worker extends its leases while a job runs (:meth:`JobQueue.extend_leases`).
If it dies, the lease expires and the next claim puts the job back in the queue (a crash costs one
attempt, so a job that kills its worker every time ends up ``dead`` instead of looping). Every
write a worker makes about a claimed job is fenced on ``(id, locked_by, attempts)``: a worker whose
lease was taken over gets :class:`LeaseLostError`, and its transaction (the handler's writes
included) must be rolled back. Delivery is therefore at-least-once; handlers are idempotent.

Ordering keys. Jobs with the same ``ordering_key`` run one at a time, in id (= enqueue) order:
a job is claimable only while no *earlier* job with its key is ``queued``, ``running`` or
``dead``. (:meth:`JobQueue.claim_chains` takes a key's run of ready jobs together, for a worker
that sends them in order in one request, e.g. one Bitrix24 ``batch``.) Decisions:

- a **dead** predecessor blocks its key, because order is the point (a call's ``finish`` must not
  overtake its ``register``). The key stays visibly stuck until an operator runs ``jobs retry``
  (which unblocks it when the job then succeeds) or cancels the dead job;
- a **cancelled** predecessor does not block: cancelling is the operator's (or the system's)
  statement that the job will never run, so its successors go on;
- ids are the order, so transactions enqueueing jobs of one key must be serialised by the caller
  (e.g. holding the call's row lock). Two concurrent transactions could otherwise commit in the
  opposite order of their ids. On SQLite the write lock already serialises them.

Dependencies. ``depends_on`` makes a job claimable only once that job has ``succeeded``
(a dependency purged from the table no longer blocks). If the dependency is **dead**, the
dependent stays ``queued`` and visibly blocked (``jobs show`` says by what) until the dependency
is retried and succeeds. If the dependency is **cancelled**, the dependent is cancelled too (at
cancel time, and at enqueue time if the dependency was already cancelled): it can never run.

Retries. The queue records decisions, it does not make them: the worker's ``RetryPolicy`` turns
an exception into a delay or ``dead`` and calls :meth:`JobQueue.fail`. ``jobs retry`` puts a dead
job back with its attempts reset and keeps its ``last_error`` (as history, until the next failure
overwrites it).

LISTEN/NOTIFY. On PostgreSQL, :meth:`JobQueue.enqueue` (and ``retry``/``cancel``) issue
``NOTIFY callbridge_jobs`` (delivered on commit, once per transaction); workers listen and claim
at once. Polling is the fallback, and the only mode on SQLite. Completing a job does *not*
notify: PostgreSQL serialises the commits of notifying transactions, which capped four workers
at the rate of one; the worker that completes a job looks for its successor itself.

Time comes from the injected clock (``now``), so tests move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    not_,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from callbridge.domain.errors import JobNotFoundError, JobStateError, LeaseLostError
from callbridge.domain.ports import NewJob
from callbridge.storage.models import Job, JobStatus
from callbridge.storage.types import utcnow

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "callbridge_jobs"
DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_LEASE_SECONDS = 60.0
MAX_ERROR_LENGTH = 4000

# Statuses of an earlier job that hold back later jobs of the same ordering key.
BLOCKING_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.DEAD.value)
FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.CANCELLED)

Clock = Callable[[], datetime]

_jobs = cast(Table, Job.__table__)
_CLAIMED_COLUMNS = (
    _jobs.c.id,
    _jobs.c.kind,
    _jobs.c.payload,
    _jobs.c.attempts,
    _jobs.c.max_attempts,
    _jobs.c.locked_by,
    _jobs.c.lease_expires_at,
    _jobs.c.ordering_key,
    _jobs.c.depends_on,
    _jobs.c.integration_id,
    _jobs.c.call_id,
)
_NOTIFIED_KEY = "callbridge.job_queue.notified"
# Built once: constructing an INSERT … RETURNING costs more than running it. The ids come back
# in the parameters' order, which the ordering keys need.
_INSERT_JOBS = insert(_jobs).returning(_jobs.c.id, sort_by_parameter_order=True)
# SQLite: SQLAlchemy cannot sort RETURNING rows by parameter there, so the statement above runs
# once per job. One multi-row INSERT allocates its rowids in the VALUES order (the next rowid is
# the largest plus one; the transaction holds the write lock), so its ids, sorted, are in the
# parameters' order.
_INSERT_JOBS_SQLITE = insert(_jobs).returning(_jobs.c.id)


@dataclass(frozen=True)
class ClaimedJob:
    """A job as a worker claimed it: the row's data, detached from any session."""

    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    locked_by: str
    lease_expires_at: datetime
    ordering_key: str | None = None
    depends_on: int | None = None
    integration_id: int | None = None
    call_id: int | None = None


@dataclass
class JobQueue:
    """Queue operations on a session, with an injectable clock and lease length."""

    now: Clock = utcnow
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    default_max_attempts: int = DEFAULT_MAX_ATTEMPTS
    #: How often (at most) :meth:`claim` looks for expired leases first.
    recovery_interval: float = 1.0
    _lease: timedelta = field(init=False, repr=False)
    _next_recovery: datetime | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._lease = timedelta(seconds=self.lease_seconds)

    # -- producing -----------------------------------------------------------------------------

    async def enqueue(
        self,
        session: AsyncSession,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        ordering_key: str | None = None,
        depends_on: int | Job | None = None,
        run_after: datetime | None = None,
        max_attempts: int | None = None,
        integration_id: int | None = None,
        call_id: int | None = None,
    ) -> Job:
        """Add a job inside the caller's transaction (flushed, not committed)."""
        dependency_id = depends_on.id if isinstance(depends_on, Job) else depends_on
        status = JobStatus.QUEUED
        if dependency_id is not None:
            dependency_status = await session.scalar(
                select(Job.status).where(Job.id == dependency_id)
            )
            if dependency_status is None:
                raise JobNotFoundError(f"job {dependency_id} (the dependency) does not exist")
            if dependency_status == JobStatus.CANCELLED:
                status = JobStatus.CANCELLED
        now = self.now()
        job = Job(
            kind=kind,
            payload=payload or {},
            status=status.value,
            ordering_key=ordering_key,
            depends_on=dependency_id,
            run_after=run_after or now,
            max_attempts=max_attempts or self.default_max_attempts,
            integration_id=integration_id,
            call_id=call_id,
            attempts=0,
            created_at=now,
            updated_at=now,
            finished_at=now if status is JobStatus.CANCELLED else None,
        )
        if status is JobStatus.CANCELLED:
            job.last_error = f"cancelled: dependency {dependency_id} was cancelled"
        session.add(job)
        await session.flush()
        await _notify(session)
        return job

    async def enqueue_many(self, session: AsyncSession, jobs: Sequence[NewJob]) -> list[int]:
        """Add jobs in one statement (ids ascend in the given order); their ids.

        Like :meth:`enqueue` for each job in turn: a job whose dependency is cancelled is
        cancelled too, and a missing dependency raises :class:`JobNotFoundError`.
        """
        if not jobs:
            return []
        dependencies = {job.depends_on for job in jobs if job.depends_on is not None}
        statuses: dict[int, str] = {}
        if dependencies:
            rows = await session.execute(
                select(_jobs.c.id, _jobs.c.status).where(_jobs.c.id.in_(dependencies))
            )
            statuses = {row.id: row.status for row in rows}
            missing = dependencies - set(statuses)
            if missing:
                raise JobNotFoundError(f"job {min(missing)} (the dependency) does not exist")
        now = self.now()
        params = []
        for job in jobs:
            cancelled = (
                job.depends_on is not None and statuses[job.depends_on] == JobStatus.CANCELLED.value
            )
            params.append(
                {
                    "kind": job.kind,
                    "payload": dict(job.payload),
                    "status": (JobStatus.CANCELLED if cancelled else JobStatus.QUEUED).value,
                    "ordering_key": job.ordering_key,
                    "depends_on": job.depends_on,
                    "run_after": now,
                    "max_attempts": self.default_max_attempts,
                    "integration_id": job.integration_id,
                    "call_id": job.call_id,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    "finished_at": now if cancelled else None,
                    "last_error": (
                        f"cancelled: dependency {job.depends_on} was cancelled"
                        if cancelled
                        else None
                    ),
                }
            )
        if _is_postgres(session):
            ids = [int(row.id) for row in await session.execute(_INSERT_JOBS, params)]
        else:
            ids = sorted(int(row.id) for row in await session.execute(_INSERT_JOBS_SQLITE, params))
        await _notify(session)
        return ids

    # -- consuming -----------------------------------------------------------------------------

    async def claim(
        self,
        session: AsyncSession,
        worker: str,
        *,
        limit: int = 1,
        kinds: Iterable[str] | None = None,
        integration_id: int | None = None,
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs for ``worker``; the caller commits to make it stick."""
        now = self.now()
        if self._next_recovery is None or now >= self._next_recovery:
            # Not on every claim: it is a round trip, and a lease is many intervals long.
            await self.recover_expired(session)
            self._next_recovery = now + timedelta(seconds=self.recovery_interval)
        candidates = (
            select(Job.id)
            .where(*_ready(now, lambda earlier: earlier.status.in_(BLOCKING_STATUSES)))
            .order_by(Job.run_after, Job.id)
            .limit(limit)
        )
        if kinds is not None:
            candidates = candidates.where(Job.kind.in_(list(kinds)))
        if integration_id is not None:
            candidates = candidates.where(Job.integration_id == integration_id)
        if _is_postgres(session):
            candidates = candidates.with_for_update(skip_locked=True, of=Job)
            # Walk the claimable index in order and stop at ``limit``. A queue table's
            # statistics are often stale (a burst of enqueues, autovacuum not yet round), and
            # the planner then sorts every queued row and checks each one's ordering key:
            # 40 ms instead of 0.1 ms for 10,000 queued jobs. Transaction-local settings.
            await session.execute(_PLANNER)
        statement = (
            update(_jobs)
            .where(_jobs.c.id.in_(candidates.scalar_subquery()))
            .values(
                status=JobStatus.RUNNING.value,
                locked_by=worker,
                lease_expires_at=now + self._lease,
                attempts=_jobs.c.attempts + 1,
                updated_at=now,
            )
            .returning(*_CLAIMED_COLUMNS)
        )
        rows = (await session.execute(statement)).all()
        claimed = [ClaimedJob(**row._asdict()) for row in rows]
        claimed.sort(key=lambda job: job.id)
        return claimed

    async def claim_keys(
        self,
        session: AsyncSession,
        worker: str,
        keys: Collection[str],
        *,
        kind: str,
        integration_id: int | None = None,
        holding: Collection[int] = (),
        limit: int | None = None,
        only_if: ColumnElement[bool] | None = None,
    ) -> list[ClaimedJob]:
        """Claim the run of ready jobs of each of these ordering keys, in two statements.

        As :meth:`claim_chains`, restricted to ``keys``: a key's jobs are taken in id order
        while each is due, of ``kind`` (and ``integration_id``), and its dependency (if any)
        succeeded; jobs in ``holding`` (this worker's, unsent) are stepped over, and anything
        else pending ends the run. At most ``limit`` jobs. ``only_if`` is one more condition of
        the claim (e.g. that the portal is active). Expired leases are left to the other
        claims. Meant for the transaction that enqueued those jobs, just before it commits.
        """
        if not keys or (limit is not None and limit < 1):
            return []
        now = self.now()
        dependency = aliased(Job)
        dependency_ok = or_(
            Job.depends_on.is_(None),
            exists().where(
                dependency.id == Job.depends_on,
                dependency.status == JobStatus.SUCCEEDED.value,
            ),
        )
        takeable = and_(
            Job.status == JobStatus.QUEUED.value,
            Job.run_after <= now,
            Job.kind == kind,
            Job.integration_id == integration_id if integration_id is not None else true(),
            dependency_ok,
        )
        rows = await session.execute(
            select(Job.id, Job.ordering_key, takeable.label("takeable"))
            .where(Job.ordering_key.in_(sorted(keys)), Job.status.in_(BLOCKING_STATUSES))
            .order_by(Job.id)
        )
        held = set(holding)
        stopped: set[str | None] = set()
        chosen: list[int] = []
        for job_id, key, ok in rows:
            if key in stopped or job_id in held:
                continue
            if not ok or (limit is not None and len(chosen) >= limit):
                stopped.add(key)
                continue
            chosen.append(job_id)
        if not chosen:
            return []
        return await self._take(session, chosen, worker, now, only_if)

    async def claim_chains(
        self,
        session: AsyncSession,
        worker: str,
        *,
        limit: int,
        kinds: Iterable[str] | None = None,
        integration_id: int | None = None,
        holding: Collection[int] = (),
        scan: int | None = None,
        durable: bool = True,
    ) -> list[ClaimedJob]:
        """Claim due jobs together with their ready successors of the same ordering key.

        :meth:`claim` takes at most the first pending job of a key. Here a key's *run* of ready
        jobs is taken at once (e.g. a call's register, show and finish, for one Bitrix24
        batch): a job is taken only if every earlier pending job of its key is taken too, or is
        in ``holding`` (jobs this worker already claimed and has not finished). Runs are taken
        by their first job's (run_after, id), the last one cut to fit ``limit``; the result is in
        id order. ``scan`` bounds the rows looked at (default ``4 * limit``).

        ``durable=False`` (PostgreSQL): the transaction commits without waiting for its WAL to
        reach the disk (``synchronous_commit`` off for it alone), for a transaction that only
        claims. A server crash right after such a commit can undo the claim, which is no
        worse than a lease running out: the jobs are queued again, the claimer's fenced writes
        raise :class:`LeaseLostError`, and the jobs run again (at-least-once, as after any
        lost lease). Any later durable commit makes it durable too.
        """
        if limit < 1:
            return []
        now = self.now()
        if self._next_recovery is None or now >= self._next_recovery:
            await self.recover_expired(session)
            self._next_recovery = now + timedelta(seconds=self.recovery_interval)
        held = list(holding)
        postgres = _is_postgres(session)
        candidates = _chain_candidates(
            kinds=kinds is not None, integration=integration_id is not None, postgres=postgres
        )
        params: dict[str, Any] = {
            "now": now,
            "held": held,
            "scan": scan or 4 * limit,
            "kinds": list(kinds or ()),
            "integration_id": integration_id,
        }
        if postgres:
            # Locked rows (another claimer's) are skipped, so they are not candidates, and the
            # walk below stops a key's run before them.
            await session.execute(_NON_DURABLE_PLANNER if not durable else _PLANNER)
        rows = (await session.execute(candidates, params)).all()
        if not rows:
            return []
        ready = {row.id: row for row in rows}
        keys = sorted({row.ordering_key for row in rows if row.ordering_key is not None})
        pending: dict[str, list[int]] = {}
        if keys:
            pending_rows = await session.execute(_PENDING_OF_KEYS, {"keys": keys})
            for job_id, key in pending_rows:
                if key is not None:
                    pending.setdefault(key, []).append(job_id)
        held_ids = set(held)
        runs: list[list[int]] = []
        for key in keys:
            run: list[int] = []
            for job_id in pending.get(key, []):
                if job_id in held_ids:
                    continue
                if job_id not in ready:
                    break  # not due, locked, blocked by a dependency or of another kind
                run.append(job_id)
            if run:
                runs.append(run)
        runs.extend([row.id] for row in rows if row.ordering_key is None)
        runs.sort(key=lambda run: (ready[run[0]].run_after, run[0]))
        chosen: list[int] = []
        for run in runs:
            chosen.extend(run[: limit - len(chosen)])
            if len(chosen) >= limit:
                break
        return await self._take(session, chosen, worker, now)

    async def _take(
        self,
        session: AsyncSession,
        chosen: Sequence[int],
        worker: str,
        now: datetime,
        only_if: ColumnElement[bool] | None = None,
    ) -> list[ClaimedJob]:
        """Lease the chosen jobs that are still queued (and meet ``only_if``); them, by id."""
        values = {
            "chosen": list(chosen),
            "worker": worker,
            "lease_expires_at": now + self._lease,
            "now": now,
        }
        statement = _TAKE if only_if is None else _TAKE.where(only_if)
        claimed = [ClaimedJob(**row._asdict()) for row in await session.execute(statement, values)]
        claimed.sort(key=lambda job: job.id)
        return claimed

    async def recover_expired(self, session: AsyncSession) -> int:
        """Put jobs whose lease expired (their worker died) back in the queue; returns how many."""
        now = self.now()
        expired = select(_jobs.c.id).where(
            _jobs.c.status == JobStatus.RUNNING.value, _jobs.c.lease_expires_at < now
        )
        if _is_postgres(session):
            expired = expired.with_for_update(skip_locked=True)
        ids = list((await session.scalars(expired)).all())
        if not ids:
            return 0
        lost = "lease expired: the worker died or stalled while running the job"
        released = {"locked_by": None, "lease_expires_at": None, "last_error": lost}
        still_running = and_(_jobs.c.id.in_(ids), _jobs.c.status == JobStatus.RUNNING.value)
        # A crash costs an attempt: a job that kills its worker every time must end up dead.
        await session.execute(
            update(_jobs)
            .where(still_running, _jobs.c.attempts >= _jobs.c.max_attempts)
            .values(status=JobStatus.DEAD.value, finished_at=now, updated_at=now, **released)
        )
        await session.execute(
            update(_jobs)
            .where(still_running)
            .values(status=JobStatus.QUEUED.value, updated_at=now, **released)
        )
        return len(ids)

    async def extend_leases(
        self, session: AsyncSession, worker: str, jobs: Sequence[ClaimedJob]
    ) -> set[int]:
        """Push the leases of ``worker``'s running jobs forward; returns the ids still held."""
        if not jobs:
            return set()
        now = self.now()
        fenced = or_(
            *(and_(_jobs.c.id == job.id, _jobs.c.attempts == job.attempts) for job in jobs)
        )
        rows = await session.execute(
            update(_jobs)
            .where(fenced, _jobs.c.locked_by == worker, _jobs.c.status == JobStatus.RUNNING.value)
            .values(lease_expires_at=now + self._lease, updated_at=now)
            .returning(_jobs.c.id)
        )
        return {row.id for row in rows}

    async def complete(
        self, session: AsyncSession, job: ClaimedJob, result: dict[str, Any] | None = None
    ) -> None:
        """Mark a claimed job succeeded, in the same transaction as the handler's writes."""
        now = self.now()
        await self._fenced_update(
            session,
            job,
            status=JobStatus.SUCCEEDED.value,
            result=result,
            finished_at=now,
            locked_by=None,
            lease_expires_at=None,
            updated_at=now,
        )

    async def fail(
        self,
        session: AsyncSession,
        job: ClaimedJob,
        error: str,
        *,
        retry_at: datetime | None,
        spend_attempt: bool = True,
    ) -> None:
        """Record a failed run: queued again at ``retry_at``, or ``dead`` when it is None."""
        now = self.now()
        values: dict[str, Any] = {
            "last_error": error[:MAX_ERROR_LENGTH],
            "locked_by": None,
            "lease_expires_at": None,
            "updated_at": now,
        }
        if retry_at is None:
            values.update(status=JobStatus.DEAD.value, finished_at=now)
        else:
            values.update(status=JobStatus.QUEUED.value, run_after=retry_at)
            if not spend_attempt:
                values["attempts"] = job.attempts - 1
        await self._fenced_update(session, job, **values)

    async def _fenced_update(self, session: AsyncSession, job: ClaimedJob, **values: Any) -> None:
        updated = await session.execute(
            update(_jobs)
            .where(
                _jobs.c.id == job.id,
                _jobs.c.locked_by == job.locked_by,
                _jobs.c.attempts == job.attempts,
                _jobs.c.status == JobStatus.RUNNING.value,
            )
            .values(**values)
            .returning(_jobs.c.id)
        )
        if updated.first() is None:
            raise LeaseLostError(
                f"job {job.id}: lease lost (another worker claimed it after it expired)"
            )

    # -- operating -----------------------------------------------------------------------------

    async def retry_job(self, session: AsyncSession, job_id: int) -> Job:
        """Put a dead job back in the queue now, with its attempts reset (last_error is kept)."""
        job = await get_job(session, job_id)
        if job.status != JobStatus.DEAD:
            raise JobStateError(f"job {job_id} is {job.status}; only dead jobs can be retried")
        now = self.now()
        job.status = JobStatus.QUEUED.value
        job.attempts = 0
        job.run_after = now
        job.finished_at = None
        job.updated_at = now
        await session.flush()
        await _notify(session)
        return job

    async def retry_dead(
        self, session: AsyncSession, *, kind: str | None = None, integration_id: int | None = None
    ) -> int:
        """Put every dead job (optionally of one kind or integration) back; returns how many."""
        now = self.now()
        statement = update(_jobs).where(_jobs.c.status == JobStatus.DEAD.value)
        if kind is not None:
            statement = statement.where(_jobs.c.kind == kind)
        if integration_id is not None:
            statement = statement.where(_jobs.c.integration_id == integration_id)
        result = await session.execute(
            statement.values(
                status=JobStatus.QUEUED.value,
                attempts=0,
                run_after=now,
                finished_at=None,
                updated_at=now,
            ).returning(_jobs.c.id)
        )
        count = len(result.all())
        if count:
            await _notify(session)
        return count

    async def cancel_job(self, session: AsyncSession, job_id: int, reason: str = "") -> list[int]:
        """Cancel a queued or dead job and, transitively, its queued dependents; returns ids."""
        job = await get_job(session, job_id)
        if job.status not in (JobStatus.QUEUED, JobStatus.DEAD):
            raise JobStateError(
                f"job {job_id} is {job.status}; only queued or dead jobs can be cancelled"
            )
        now = self.now()
        cancellable = _jobs.c.status.in_((JobStatus.QUEUED.value, JobStatus.DEAD.value))
        await session.execute(
            update(_jobs)
            .where(_jobs.c.id == job_id, cancellable)
            .values(
                status=JobStatus.CANCELLED.value,
                finished_at=now,
                updated_at=now,
                last_error=f"cancelled: {reason}" if reason else "cancelled",
            )
        )
        cancelled = [job_id]
        frontier = [job_id]
        while frontier:
            # Dependents of a cancelled job can never run (DESIGN: cancelled cascades).
            result = await session.execute(
                update(_jobs)
                .where(_jobs.c.depends_on.in_(frontier), cancellable)
                .values(
                    status=JobStatus.CANCELLED.value,
                    finished_at=now,
                    updated_at=now,
                    last_error="cancelled: a job it depends on was cancelled",
                )
                .returning(_jobs.c.id)
            )
            frontier = [row.id for row in result]
            cancelled.extend(frontier)
        # The ORM copy of the job is stale after a Core update.
        await session.refresh(job)
        await _notify(session)
        return sorted(cancelled)

    async def purge(
        self,
        session: AsyncSession,
        older_than: timedelta,
        statuses: Iterable[JobStatus] = FINISHED_STATUSES,
    ) -> int:
        """Delete finished jobs older than ``older_than``; returns how many."""
        cutoff = self.now() - older_than
        wanted = [JobStatus(status).value for status in statuses]
        if JobStatus.QUEUED.value in wanted or JobStatus.RUNNING.value in wanted:
            raise JobStateError("only finished jobs (succeeded, cancelled, dead) can be purged")
        result = await session.execute(
            delete(_jobs)
            .where(_jobs.c.status.in_(wanted), _jobs.c.finished_at < cutoff)
            .returning(_jobs.c.id)
        )
        return len(result.all())


# -- reading (no clock needed) --------------------------------------------------------------------


async def get_job(session: AsyncSession, job_id: int) -> Job:
    """The job with this id, or JobNotFoundError."""
    # Core updates (claim, fail) bypass the identity map: always read the row afresh.
    job = await session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise JobNotFoundError(f"no job with id {job_id}")
    return job


async def list_jobs(
    session: AsyncSession,
    *,
    status: JobStatus | str | None = None,
    kind: str | None = None,
    integration_id: int | None = None,
    limit: int = 50,
) -> list[Job]:
    """The newest jobs first, optionally filtered."""
    statement = (
        select(Job).order_by(Job.id.desc()).limit(limit).execution_options(populate_existing=True)
    )
    if status is not None:
        statement = statement.where(Job.status == JobStatus(status).value)
    if kind is not None:
        statement = statement.where(Job.kind == kind)
    if integration_id is not None:
        statement = statement.where(Job.integration_id == integration_id)
    return list((await session.scalars(statement)).all())


async def counts_by_status(session: AsyncSession) -> dict[JobStatus, int]:
    """How many jobs are in each status (every status present, zeros included)."""
    rows = await session.execute(select(Job.status, func.count()).group_by(Job.status))
    counts = dict.fromkeys(JobStatus, 0)
    for status, count in rows:
        counts[JobStatus(status)] = count
    return counts


async def blocked_by(session: AsyncSession, job: Job) -> str | None:
    """Why a queued job cannot run yet (its dependency or an earlier job of its key), or None."""
    if job.status != JobStatus.QUEUED:
        return None
    if job.depends_on is not None:
        dependency = await session.get(Job, job.depends_on, populate_existing=True)
        if dependency is not None and dependency.status != JobStatus.SUCCEEDED:
            return f"waiting for job {dependency.id} ({dependency.kind}, {dependency.status})"
    if job.ordering_key is not None:
        earlier = await session.scalar(
            select(Job)
            .where(
                Job.ordering_key == job.ordering_key,
                Job.id < job.id,
                Job.status.in_(BLOCKING_STATUSES),
            )
            .order_by(Job.id)
            .limit(1)
            .execution_options(populate_existing=True)
        )
        if earlier is not None:
            return (
                f"after job {earlier.id} ({earlier.kind}, {earlier.status}) "
                f"of ordering key {job.ordering_key!r}"
            )
    return None


# -- module-level conveniences on a default queue -------------------------------------------------

_default = JobQueue()


async def enqueue(
    session: AsyncSession,
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    ordering_key: str | None = None,
    depends_on: int | Job | None = None,
    run_after: datetime | None = None,
    max_attempts: int | None = None,
    integration_id: int | None = None,
    call_id: int | None = None,
) -> Job:
    """Add a job inside the caller's transaction, on the wall clock (see JobQueue.enqueue)."""
    return await _default.enqueue(
        session,
        kind,
        payload,
        ordering_key=ordering_key,
        depends_on=depends_on,
        run_after=run_after,
        max_attempts=max_attempts,
        integration_id=integration_id,
        call_id=call_id,
    )


async def retry_job(session: AsyncSession, job_id: int) -> Job:
    """Put a dead job back in the queue (see JobQueue.retry_job)."""
    return await _default.retry_job(session, job_id)


async def retry_dead(
    session: AsyncSession, *, kind: str | None = None, integration_id: int | None = None
) -> int:
    """Put every dead job back in the queue (see JobQueue.retry_dead)."""
    return await _default.retry_dead(session, kind=kind, integration_id=integration_id)


async def cancel_job(session: AsyncSession, job_id: int, reason: str = "") -> list[int]:
    """Cancel a job and its dependents (see JobQueue.cancel_job)."""
    return await _default.cancel_job(session, job_id, reason)


async def purge(
    session: AsyncSession,
    older_than: timedelta,
    statuses: Iterable[JobStatus] = FINISHED_STATUSES,
) -> int:
    """Delete old finished jobs (see JobQueue.purge)."""
    return await _default.purge(session, older_than, statuses)


# -- helpers --------------------------------------------------------------------------------------


# claim_chains' and _take's statements, built once (with their cache keys): building them
# anew cost more CPU than running them, on the path from a call's commit to its register.
_TAKE = (
    update(_jobs)
    .where(
        _jobs.c.id.in_(bindparam("chosen", expanding=True)),
        _jobs.c.status == JobStatus.QUEUED.value,
    )
    .values(
        status=JobStatus.RUNNING.value,
        locked_by=bindparam("worker"),
        lease_expires_at=bindparam("lease_expires_at"),
        attempts=_jobs.c.attempts + 1,
        updated_at=bindparam("now"),
    )
    .returning(*_CLAIMED_COLUMNS)
)
_PENDING_OF_KEYS = (
    select(Job.id, Job.ordering_key)
    .where(
        Job.ordering_key.in_(bindparam("keys", expanding=True)),
        Job.status.in_(BLOCKING_STATUSES),
    )
    .order_by(Job.id)
)


def _ready(
    now: Any, blocked_by: Callable[[type[Job]], ColumnElement[bool]]
) -> tuple[ColumnElement[bool], ...]:
    """Where-clauses of a job ready to run: queued, due, unblocked by its key, dependency met.

    ``blocked_by(earlier)`` says whether an earlier job of the same ordering key holds it back.
    """
    earlier = aliased(Job)
    dependency = aliased(Job)
    return (
        Job.status == JobStatus.QUEUED.value,
        Job.run_after <= now,
        or_(
            Job.ordering_key.is_(None),
            not_(
                exists().where(
                    earlier.ordering_key == Job.ordering_key,
                    earlier.id < Job.id,
                    blocked_by(earlier),
                )
            ),
        ),
        or_(
            Job.depends_on.is_(None),
            exists().where(
                dependency.id == Job.depends_on,
                dependency.status == JobStatus.SUCCEEDED.value,
            ),
        ),
    )


@functools.cache
def _chain_candidates(
    *, kinds: bool, integration: bool, postgres: bool
) -> Select[int, str | None, datetime]:
    """claim_chains' candidates: due queued jobs whose key has no blocker before them.

    Parameters: ``now``, ``held`` (this worker's unsent jobs: running, yet no blocker),
    ``scan`` (the row limit), and ``kinds`` and ``integration_id`` when filtered on.
    """

    def blocker(earlier: type[Job]) -> ColumnElement[bool]:
        # Cheap pre-filter: a dead job, or a running one somebody else holds, ends its key's run.
        return or_(
            earlier.status == JobStatus.DEAD.value,
            and_(
                earlier.status == JobStatus.RUNNING.value,
                earlier.id.not_in(bindparam("held", expanding=True)),
            ),
        )

    candidates = (
        select(Job.id, Job.ordering_key, Job.run_after)
        .where(*_ready(bindparam("now"), blocker))
        .order_by(Job.run_after, Job.id)
        .limit(bindparam("scan"))
    )
    if kinds:
        candidates = candidates.where(Job.kind.in_(bindparam("kinds", expanding=True)))
    if integration:
        candidates = candidates.where(Job.integration_id == bindparam("integration_id"))
    if postgres:
        candidates = candidates.with_for_update(skip_locked=True, of=Job)
    return candidates


# The planner settings of claim_chains' candidate scan, for its transaction only; with them,
# at no extra round trip, a claim-only transaction's commit that does not wait for the disk.
_PLANNER = text(
    "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)"
)
_NON_DURABLE_PLANNER = text(
    "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true), "
    "set_config('synchronous_commit', 'off', true)"
)


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def _notify(session: AsyncSession) -> None:
    """Wake listening workers when this transaction commits (PostgreSQL only).

    PostgreSQL folds identical notifications of one transaction into one, but each NOTIFY is
    still a round trip, so a transaction sends it once.
    """
    if not _is_postgres(session):
        return
    transaction = session.sync_session.get_transaction()
    if transaction is not None and session.info.get(_NOTIFIED_KEY) is transaction:
        return
    await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
    session.info[_NOTIFIED_KEY] = transaction


async def listen_for_jobs(
    url: str,
    wake: Callable[[], None],
    *,
    reconnect_delay: float = 1.0,
    connected: asyncio.Event | None = None,
) -> None:
    """Call ``wake`` on every ``NOTIFY callbridge_jobs``, reconnecting forever (PostgreSQL).

    Runs until cancelled. It holds one raw asyncpg connection outside the pool, since a pooled
    connection would lose its LISTEN when handed back. After each (re)connection it calls
    ``wake`` once, because notifications sent while it was away are lost: the worker looks.
    """
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    while True:
        try:
            connection = await asyncpg.connect(dsn)
        except (OSError, asyncpg.PostgresError) as err:
            logger.warning("job listener cannot connect (%s); polling meanwhile", err)
            await asyncio.sleep(reconnect_delay)
            continue
        closed = asyncio.Event()
        try:
            connection.add_termination_listener(_setter(closed))
            await connection.add_listener(NOTIFY_CHANNEL, lambda *_args: wake())
            wake()
            if connected is not None:
                connected.set()
            await closed.wait()
            logger.warning("job listener lost its connection; reconnecting")
        except (OSError, asyncpg.PostgresError) as err:
            logger.warning("job listener failed (%s); reconnecting", err)
        finally:
            if connected is not None:
                connected.clear()
            # A close that hangs must not hold up shutdown.
            await asyncio.shield(_close_quietly(connection))
        await asyncio.sleep(reconnect_delay)


async def _close_quietly(connection: Any) -> None:
    try:
        await asyncio.wait_for(connection.close(), timeout=2.0)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        connection.terminate()


def _setter(event: asyncio.Event) -> Callable[..., None]:
    return lambda *_args: event.set()
