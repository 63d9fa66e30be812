"""The per-portal dispatcher: ``bitrix24.command`` jobs to Bitrix24, in order, batched, in budget.

One *lane* per portal (integration) claims, holds and sends its ready jobs, one request at a time:

1. claim the portal's ready jobs with :meth:`JobQueue.claim_chains` (a call's register, show and
   finish come together, so they can share a request) and hold them;
2. decide what goes now (:mod:`callbridge.worker.dispatch_policy`): a held ``register`` or
   ``show`` goes at once, taking every held bulk command (``hide``, ``finish``,
   ``attachRecord``) along as riders; bulk commands alone linger up to a second for company and
   go only while the portal's bucket keeps a reserve of free slots for the next register. Then
   take a slot of the portal's rate budget; if that meant waiting, claim what became ready
   meanwhile and send it too. One command goes alone; several go as one ``batch``;
3. a command names a leg: its ``CALL_ID`` is the one stored in the call model, or, when the leg's
   register rides in the same batch, the reference ``$result[j<register job>][CALL_ID]``. A
   register's ``EXTERNAL_CALL_ID`` is ``<enterprise number>/<linkedid>-<leg>``, unique across the
   enterprises sharing a portal;
4. write the results back (register's ``CALL_ID`` and CRM entity into the call model, a
   ``bitrix24_calls`` row per leg) and complete or fail the jobs, in one transaction, which also
   claims what became ready meanwhile (step 1 of the next round). No transaction is open while
   Bitrix24 is called (SQLite has one writer; the client reads tokens in its own transactions).

Batches run with ``halt=1``: the portal stops at the first failing command, so nothing after it,
in particular no command of the same call, runs out of order. The failed job gets its own fate
(per the retry policy); the jobs after it were not run and go back without spending an attempt,
and so do the held commands of its call, which then wait behind it in the queue.

An ``attachRecord`` of a recording known only as a file on the PBX is no command of the lane: it
is a job of its own kind, uploaded outside the lane (:mod:`callbridge.worker.uploads`), so a
large file never holds up the portal's other calls.

The reserve is kept on a mirror of the portal's bucket (:class:`_Mirrors`) that counts every
request this process sends to the portal, not only the lane's: recording uploads, click-to-call,
the users sync and missed-call notices take slots of the same budget, and a mirror blind to them
would let bulk commands eat the slots meant for the next register.

Commands retried after a lost answer (at-least-once delivery) are idempotent: a second
``register`` gets the same ``CALL_ID`` (Bitrix24 deduplicates on ``EXTERNAL_CALL_ID`` for 30
minutes), ``hide`` of a finished call answers ``false``, and a ``finish`` answered "Call is not
found" (:class:`CallNotFound`) for a ``CALL_ID`` Bitrix24 gave us is done: only a finish
consumes a registration.

What a failure of the whole request does, by the client's error class:

- ``ReauthRequired``: the integration goes to ``needs_reauth`` (reason kept); its jobs go back
  untouched with ``last_error`` saying why, and no lane runs for it until it is ``active`` again;
- ``OperationTimeLimit`` (429, alone or inside a batch): only that method is blocked for our app
  (spec §5.2): the lane pauses that method until its ``operating_reset_at`` (else a minute), its
  jobs go back for then without spending an attempt, and other methods keep flowing;
- ``RetryLater`` (503 ``QUERY_LIMIT_EXCEEDED``): the portal pauses for ``retry_after``, the
  jobs go back for then, no attempt spent;
- ``BackOff`` (5xx, network): the portal is down, not the jobs at fault: the lane pauses with
  exponential backoff (capped at a minute), the jobs go back without spending attempts, and after
  three failures in a row it probes with one command per request until one succeeds;
- ``PortalGone``: the integration becomes ``portal_deleted``, the jobs die (kept, retryable);
- another ``Permanent`` error of a batch: the commands are sent one by one for a while, so the
  culprit dies alone; of a single command: that job dies;
- anything else: the retry policy decides, spending an attempt.

Wake-ups: PostgreSQL ``NOTIFY``, a commit in this process that enqueued a command (all-in-one
mode, either database: it runs that portal's lane at once, with no look-up first; a Session's
commit is seen by its hooks, the webhook intake's plain-SQL commit is announced through
:mod:`callbridge.storage.job_signals`), a lane's own progress, or the poll interval.

Hand-off: a Session transaction of this process (the AMI listener's, a job's) that enqueues a
``register`` or ``show`` for a portal
whose lane is known and not paused claims, just before it commits (a ``before_commit`` hook),
the ready commands of those calls (:meth:`JobQueue.claim_keys`: the same leases and order rule
as the lane's claims, so a register, show and finish enqueued together still share a request,
and a command whose call has an earlier one pending elsewhere is left to the lane). Once it
commits, the lane holds them and sends the register at once: no claim transaction, and on
SQLite no wait for the one connection, between the commit and the request. A failed
commit rolls the claim back with everything else. A register or show handed over while the
lane sends goes next, before its next claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import Enum
from typing import Any, Final

import httpx
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_session, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.util import await_

from callbridge.config import Settings
from callbridge.crm.bitrix24.auth import Credentials
from callbridge.crm.bitrix24.client import BATCH_LIMIT, Bitrix24Client
from callbridge.crm.bitrix24.errors import (
    BackOff,
    CallNotFound,
    OperationTimeLimit,
    PortalGone,
    ReauthRequired,
)
from callbridge.crm.bitrix24.rate_limit import RateLimiter, RatePlan
from callbridge.domain.commands import (
    AttachRecord,
    Command,
    FinishCall,
    HideCard,
    RegisterCall,
    ShowCard,
    command_from_dict,
    portal_external_call_id,
)
from callbridge.domain.errors import (
    CallStateError,
    LeaseLostError,
    Permanent,
    RetryLater,
)
from callbridge.portals import Portals, running_portals, subscribe_requests
from callbridge.services.call_tracking import BITRIX24_COMMAND_JOB
from callbridge.storage.crypto import SecretBox
from callbridge.storage.dispatch import CallContext, DispatchRepository, LegUpdate
from callbridge.storage.job_queue import ClaimedJob, JobQueue, list_jobs, listen_for_jobs
from callbridge.storage.job_signals import subscribe as subscribe_to_commits
from callbridge.storage.models import Bitrix24Integration, IntegrationStatus, Job
from callbridge.storage.repositories.calls import CallRepository
from callbridge.worker.dispatch_policy import (
    BucketMirror,
    Decision,
    Held,
    Tuning,
    decide,
    is_critical,
)
from callbridge.worker.retry import RetryPolicy

__all__ = ["DISPATCHER_KIND", "Dispatcher", "LegNotRegisteredError"]

logger = logging.getLogger(__name__)

DISPATCHER_KIND: Final = BITRIX24_COMMAND_JOB
#: A portal that failed this many requests in a row is probed with one command at a time.
PROBE_AFTER_FAILURES: Final = 3
MAX_PORTAL_BACKOFF: Final = 60.0
#: Rounds sent one command per request after a batch was refused as a whole.
ISOLATION_ROUNDS: Final = 50
# Below this, waiting for a rate-budget slot is noise, not a reason to look for more jobs.
_TOPUP_AFTER_WAIT: Final = 0.002
# The Bitrix24 method of each command kind (for per-method pauses).
_METHODS: Final = {
    cls.name: cls.method for cls in (RegisterCall, ShowCard, HideCard, FinishCall, AttachRecord)
}


class LegNotRegisteredError(Permanent):
    """The command's leg has no Bitrix24 CALL_ID: its register did not succeed."""


# --- one request's plan and outcome ---------------------------------------------------------------


@dataclass
class _Planned:
    """A claimed job turned into a command of the next request."""

    job: ClaimedJob
    name: str
    call_row_id: int
    enterprise_id: int
    linkedid: str
    leg: int
    external_call_id: str
    command: Command | None = None
    params: dict[str, Any] = field(default_factory=dict)
    #: The register of the same request this command's CALL_ID refers to.
    refers_to: str | None = None
    #: Nothing to send (the leg is already registered): done with this result.
    ready: dict[str, Any] | None = None
    #: Cannot be sent at all.
    error: Exception | None = None

    @property
    def sendable(self) -> bool:
        return self.ready is None and self.error is None and self.command is not None


class _Fate(Enum):
    DONE = "done"
    FAILED = "failed"  # the retry policy decides
    NOT_RUN = "not_run"  # back in the queue after ``delay``, no attempt spent


@dataclass(frozen=True)
class _Outcome:
    fate: _Fate
    result: dict[str, Any] | None = None
    error: BaseException | None = None
    delay: float = 0.0
    note: str = ""


@dataclass
class _Lane:
    """A portal's dispatch state in this process."""

    task: asyncio.Task[None] | None = None
    #: Set when work was seen while the lane ran: it claims again before deciding.
    kick: bool = False
    #: The integration as last read (a claim, or a hand-off that found it active).
    row: Bitrix24Integration | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)
    paused_until: float = 0.0  # time.monotonic()
    failures: int = 0
    isolate_rounds: int = 0
    reauth: bool = False
    #: Claimed commands not sent yet (lingering bulk commands, or waiting for a slot).
    held: dict[int, tuple[ClaimedJob, Held]] = field(default_factory=dict)
    #: What the claims told about the held commands' calls: leg CALL_IDs, enterprise numbers.
    known: dict[tuple[int, int], str] = field(default_factory=dict)
    numbers: dict[int, str] = field(default_factory=dict)
    #: Methods blocked by OPERATION_TIME_LIMIT (lower-cased) → monotonic time they may run.
    paused_methods: dict[str, float] = field(default_factory=dict)
    #: ``time.operating_reset_at`` per lower-cased method, as the portal last reported it.
    operating_reset_at: dict[str, float] = field(default_factory=dict)


class _Prepaid:
    """A rate limiter whose first slot was already taken (the lane waited before claiming)."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter
        self._paid = True

    async def acquire(self, key: str, plan: RatePlan) -> float:
        """Free the first time; afterwards (refresh, a 503 retry) the real budget."""
        if self._paid:
            self._paid = False
            return 0.0
        return await self._limiter.acquire(key, plan)

    async def penalise(self, key: str, plan: RatePlan) -> None:
        """Pass the portal's complaint on."""
        await self._limiter.penalise(key, plan)


class _Mirrors:
    """Every portal's bucket as this process's requests fill it: the lanes' view, for the reserve.

    Keyed as the rate limiter keys portals (:attr:`Credentials.key`, the member_id) and fed by
    :func:`callbridge.portals.subscribe_requests`, which announces each slot any
    :class:`Portals` of the process takes from a portal's budget: the lanes' own requests (a
    slot each, and one per retry after a token refresh or a 503 inside the client) and those
    sent outside the lanes (recording uploads, click-to-call, the users sync, missed-call
    notices, the web app's responsible look-ups in all-in-one mode). The lanes never count
    their requests themselves, so none is counted twice. A ``QUERY_LIMIT_EXCEEDED`` any sender
    met fills the bucket: the client penalises the limiter, which announces it, before it raises.
    """

    def __init__(self) -> None:
        self._by_key: dict[str, BucketMirror] = {}
        #: The dispatcher's loop: an announcement from another thread is applied there.
        self.loop: asyncio.AbstractEventLoop | None = None

    def get(self, key: str, plan: RatePlan) -> BucketMirror:
        """The portal's mirror (a new, idle one at first)."""
        mirror = self._by_key.get(key)
        if mirror is None:
            target = plan.client_side()
            mirror = self._by_key[key] = BucketMirror(target.capacity, target.rate)
        return mirror

    def request_sent(self, key: str, plan: RatePlan) -> None:
        """A request of this process took a slot of the portal's bucket."""
        self._apply(key, plan, time.monotonic(), full=False)

    def bucket_full(self, key: str, plan: RatePlan) -> None:
        """The portal said its bucket is full."""
        self._apply(key, plan, time.monotonic(), full=True)

    def _apply(self, key: str, plan: RatePlan, now: float, *, full: bool) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            self._count(key, plan, now, full)
        else:
            _run_on(loop, self._count, key, plan, now, full)

    def _count(self, key: str, plan: RatePlan, now: float, full: bool) -> None:
        mirror = self.get(key, plan)
        if full:
            mirror.fill(now)
        else:
            mirror.take(now)


def _run_on(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Run ``callback(*args)`` on ``loop``: now when called there, else soon (from any thread)."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        callback(*args)
    else:
        loop.call_soon_threadsafe(callback, *args)


@dataclass(frozen=True)
class _HandOff:
    """Jobs claimed for a lane inside the transaction that enqueued them."""

    integration_id: int
    jobs: list[ClaimedJob]
    context: CallContext


# --- in-process wake-ups --------------------------------------------------------------------------

_ENQUEUED_KEY = "callbridge.dispatcher.enqueued"
_HANDED_KEY = "callbridge.dispatcher.handed"
#: Portals for which the transaction enqueued a register or show (worth a hand-off), and the
#: ordering keys (calls) of those commands.
_CRITICAL_KEY = "callbridge.dispatcher.critical"
_listening: weakref.WeakSet[Dispatcher] = weakref.WeakSet()
_hooked = False


def _critical(payload: Any) -> bool:
    command = payload.get("command") if isinstance(payload, Mapping) else None
    return isinstance(command, Mapping) and is_critical(command.get("kind"))


def _after_flush(session: Session, _context: Any) -> None:
    # ``session.new`` still lists what this flush inserted.
    for obj in session.new:
        if isinstance(obj, Job) and obj.kind == DISPATCHER_KIND:
            portals: set[int | None] = session.info.setdefault(_ENQUEUED_KEY, set())
            portals.add(obj.integration_id)
            if _critical(obj.payload) and obj.integration_id and obj.ordering_key:
                critical: dict[int, set[str]] = session.info.setdefault(_CRITICAL_KEY, {})
                critical.setdefault(obj.integration_id, set()).add(obj.ordering_key)


def _on_execute(state: ORMExecuteState) -> None:
    # Jobs enqueued in bulk (``JobQueue.enqueue_many``) are a Core INSERT: no flush sees them.
    if not state.is_insert:
        return
    table = getattr(state.statement, "table", None)
    if getattr(table, "name", None) != Job.__tablename__:
        return
    params = state.parameters
    rows: list[Mapping[str, Any]] = []
    if isinstance(params, Mapping):
        rows = [params]
    elif isinstance(params, Sequence):
        rows = list(params)
    ours = [row for row in rows if row.get("kind") == DISPATCHER_KIND]
    if ours:
        portals: set[int | None] = state.session.info.setdefault(_ENQUEUED_KEY, set())
        portals |= {row.get("integration_id") for row in ours}
        for row in ours:
            integration_id, key = row.get("integration_id"), row.get("ordering_key")
            if integration_id and key and _critical(row.get("payload")):
                critical: dict[int, set[str]] = state.session.info.setdefault(_CRITICAL_KEY, {})
                critical.setdefault(integration_id, set()).add(key)


def _before_commit(session: Session) -> None:
    # Claim the commands this transaction enqueued in it, for a dispatcher of this process:
    # the lane then sends a ringing call's register right after the commit, with no claim
    # transaction (and no wait for the database connection) in between.
    portals: dict[int, set[str]] | None = session.info.pop(_CRITICAL_KEY, None)
    if not portals or _HANDED_KEY in session.info:
        return
    proxy = async_session(session)
    if proxy is None:
        return
    for dispatcher in list(_listening):
        if isinstance(dispatcher, Dispatcher):
            handed = dispatcher.claim_before_commit(proxy, portals)
            if handed:
                session.info[_HANDED_KEY] = (dispatcher, handed)
                return


def _after_commit(session: Session) -> None:
    portals: set[int | None] | None = session.info.pop(_ENQUEUED_KEY, None)
    session.info.pop(_CRITICAL_KEY, None)
    handed: tuple[Dispatcher, list[_HandOff]] | None = session.info.pop(_HANDED_KEY, None)
    if handed is not None:
        receiver, hand_offs = handed
        receiver.receive(hand_offs)
    if portals:
        for dispatcher in list(_listening):
            if handed is not None and dispatcher is handed[0]:
                # Handed-off portals need no look-up; the others (if any) still do.
                rest = portals - {h.integration_id for h in handed[1]}
                if rest:
                    dispatcher.wake_threadsafe(rest)
                continue
            dispatcher.wake_threadsafe(portals)


def _after_rollback(session: Session) -> None:
    # The hand-off's claims were rolled back with the rest.
    for key in (_ENQUEUED_KEY, _CRITICAL_KEY, _HANDED_KEY):
        session.info.pop(key, None)


def _hook_commits() -> None:
    """Wake this process's dispatchers when a transaction that enqueued a command commits."""
    global _hooked
    if _hooked:
        return
    event.listen(Session, "after_flush", _after_flush)
    event.listen(Session, "do_orm_execute", _on_execute)
    event.listen(Session, "before_commit", _before_commit)
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_rollback", _after_rollback)
    _hooked = True


# --- the dispatcher -------------------------------------------------------------------------------


class Dispatcher:
    """Sends every portal's ``bitrix24.command`` jobs; run it as a worker side task.

    Parameters
    ----------
    settings
        HTTP timeout, poll interval, batching switch, and what :class:`Portals` needs.
    session_factory
        One short transaction per claim and per write-back.
    portals
        Clients for integrations; by default built in :meth:`run` with its own HTTP client.
    queue
        The job queue (its clock and lease length).
    batching
        Pack ready commands into ``batch`` requests (default: ``settings.dispatcher_batching``).
    listen_url
        PostgreSQL URL to LISTEN for new jobs on.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        portals: Portals | None = None,
        queue: JobQueue | None = None,
        retry_policy: RetryPolicy | None = None,
        batching: bool | None = None,
        max_batch: int = BATCH_LIMIT,
        tuning: Tuning | None = None,
        poll_interval: float | None = None,
        shutdown_timeout: float | None = None,
        listen_url: str | None = None,
        name: str = "dispatcher",
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.queue = queue or JobQueue(lease_seconds=settings.job_lease_seconds)
        self.retry_policy = retry_policy or RetryPolicy()
        self.batching = settings.dispatcher_batching if batching is None else batching
        self.max_batch = max(1, min(max_batch, BATCH_LIMIT))
        self.tuning = replace(tuning or Tuning(), max_batch=self.max_batch)
        self.poll_interval = poll_interval or settings.worker_poll_interval_seconds
        self.shutdown_timeout = (
            settings.worker_shutdown_timeout_seconds
            if shutdown_timeout is None
            else shutdown_timeout
        )
        self.listen_url = listen_url
        self.name = name
        self._given_portals = portals
        self._portals: Portals | None = portals
        self._lanes: dict[int, _Lane] = {}
        self._in_flight: dict[int, ClaimedJob] = {}
        self._wakeup = asyncio.Event()
        #: Portals with new jobs (from a commit), and whether to look for every ready portal.
        self._nudged: set[int] = set()
        self._rescan = True
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mirrors = _Mirrors()
        #: Set once :meth:`run` has warmed up (credentials loaded, each lane run once).
        self.warmed = asyncio.Event()
        #: Requests sent and commands in them (for benchmarks and tests).
        self.requests = 0
        self.commands = 0

    # -- public API ----------------------------------------------------------------------------

    def free_slots(self, credentials: Credentials) -> float:
        """Free slots of the portal's bucket as the lanes see it now (every request counted)."""
        return self._mirrors.get(credentials.key, credentials.plan).free(time.monotonic())

    def wake(self) -> None:
        """Look for ready jobs now."""
        self._rescan = True
        self._wakeup.set()

    def nudge(self, integration_ids: Iterable[int | None]) -> None:
        """These portals have new jobs: run their lanes now, without looking for others.

        Skipping the look-up saves a database round trip between a commit and the request it
        implies: the register of a ringing call.
        """
        ids = {integration_id for integration_id in integration_ids if integration_id}
        if not ids:
            self.wake()
            return
        self._nudged |= ids
        self._wakeup.set()

    def _jobs_committed(self, queued: Mapping[str, Collection[int | None]]) -> None:
        portals = queued.get(DISPATCHER_KIND)
        if portals:
            self.wake_threadsafe(portals)

    def wake_threadsafe(self, integration_ids: Iterable[int | None] | None = None) -> None:
        """:meth:`wake` (or :meth:`nudge`) from any thread (the commit hook runs anywhere)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if integration_ids is None:
            _run_on(loop, self.wake)
        else:
            _run_on(loop, self.nudge, list(integration_ids))

    def claim_before_commit(
        self, session: AsyncSession, keys: Mapping[int, Collection[str]]
    ) -> list[_HandOff]:
        """Claim the ready commands of these calls (by portal) in ``session``'s transaction.

        Called from the commit hook (synchronous, inside SQLAlchemy's greenlet) of a transaction
        that enqueued a register or show: what it claims is handed to the lanes by
        :meth:`receive` once the transaction commits, and is rolled back with it otherwise.
        Portals whose lane cannot take work now are left to the usual wake-up. A failure claims
        nothing: the commit goes on and the lane claims as usual.
        """
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return []
        if running is not self._loop or self._stopping:
            return []
        now = time.monotonic()
        wanted: list[tuple[int, _Lane, Collection[str]]] = []
        for integration_id, calls in sorted(keys.items()):
            lane = self._lanes.get(integration_id)
            if lane is None or lane.row is None or lane.reauth or lane.paused_until > now:
                continue
            if 2 * self._tuning(lane).max_batch - len(lane.held) > 0:
                wanted.append((integration_id, lane, calls))
        if not wanted:
            return []
        try:
            return await_(self._claim_for_hand_off(session, wanted))
        except Exception:
            logger.exception("dispatcher: cannot claim in the enqueuing transaction")
            return []

    async def _claim_for_hand_off(
        self, session: AsyncSession, lanes: Sequence[tuple[int, _Lane, Collection[str]]]
    ) -> list[_HandOff]:
        # Three statements on the webhook's path: the calls' pending jobs, the claim (only
        # while the integration is active) and what the plan needs to know about the calls.
        repo = DispatchRepository(session)
        handed: list[_HandOff] = []
        for integration_id, lane, calls in lanes:
            jobs = await self.queue.claim_keys(
                session,
                self.name,
                calls,
                kind=DISPATCHER_KIND,
                integration_id=integration_id,
                holding=list(lane.held),
                limit=2 * self._tuning(lane).max_batch - len(lane.held),
                only_if=repo.is_active(integration_id),
            )
            if jobs:
                context = await repo.call_context({j.call_id for j in jobs if j.call_id})
                handed.append(_HandOff(integration_id, jobs, context))
        return handed

    def receive(self, hand_offs: Sequence[_HandOff]) -> None:
        """Hold jobs claimed for us in a transaction that has just committed; run their lanes."""
        started: list[int] = []
        for hand_off in hand_offs:
            lane = self._lanes.setdefault(hand_off.integration_id, _Lane())
            self._hold(lane, hand_off.jobs, hand_off.context)
            started.append(hand_off.integration_id)
        self._start_lanes(started, claim=False)

    async def run(self) -> None:
        """Dispatch until cancelled; then let running requests finish and record them."""
        self._loop = self._mirrors.loop = asyncio.get_running_loop()
        _hook_commits()
        _listening.add(self)
        # The webhook intake's plain-SQL commits, which the hooks above do not see.
        unsubscribe = subscribe_to_commits(self._jobs_committed)
        # Every request of the process to a portal, for the lanes' bucket mirrors.
        unsubscribe_requests = subscribe_requests(self._mirrors)
        async with self._own_portals() as portals:
            self._portals = portals
            helpers = [
                asyncio.create_task(self._heartbeat(), name="dispatcher-heartbeat"),
                asyncio.create_task(self._warm_up(portals), name="dispatcher-warm-up"),
            ]
            if self.listen_url is not None:
                helpers.append(
                    asyncio.create_task(
                        listen_for_jobs(self.listen_url, self.wake), name="dispatcher-listener"
                    )
                )
            try:
                while not self._stopping:
                    self._wakeup.clear()
                    nudged, self._nudged = self._nudged, set()
                    rescan, self._rescan = self._rescan, False
                    if nudged:
                        self._start_lanes(sorted(nudged))
                    if rescan or not nudged:
                        await self._schedule()
                    # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
                    # arrives as the wake-up is set, and the dispatcher would never stop.
                    try:
                        async with asyncio.timeout(self.poll_interval):
                            await self._wakeup.wait()
                    except TimeoutError:
                        self._rescan = True
            finally:
                self._stopping = True
                _listening.discard(self)
                unsubscribe()
                unsubscribe_requests()
                for lane in self._lanes.values():
                    lane.event.set()  # lingering lanes give their commands back now
                # Shielded: a cancelled side task still lets requests in flight be recorded.
                await asyncio.shield(self._stop_lanes())
                for helper in helpers:
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)

    async def _warm_up(self, portals: Portals) -> None:
        """Get ready for the first call after a start: load every active integration's
        credentials and tokens, and run each one's lane once (then set :attr:`warmed`).

        A lane's first claim prepares its statements on the connection (and SQLAlchemy's
        compiled cache), sends whatever was left ready, and makes the lane known, so that a
        transaction enqueuing a register can hand it over from the first call on. Without it
        the first call paid for all of that between its commit and its register.
        """
        try:
            async with self.session_factory() as session:
                rows = await DispatchRepository(session).active_integrations()
        except Exception:
            logger.exception("dispatcher: cannot read the integrations to warm up; going on")
            self.warmed.set()
            return
        await portals.warm_up(rows)
        self._start_lanes(row.id for row in rows)
        lanes = {self._lanes[row.id].task for row in rows} - {None}
        if lanes:
            # wait, not gather: cancelling the warm-up must not cancel the lanes.
            await asyncio.wait([task for task in lanes if task is not None])
        self.warmed.set()

    async def wait_idle(self) -> None:
        """Return once no command job is queued or running (tests and benchmarks)."""
        while True:
            async with self.session_factory() as session:
                queued = await list_jobs(session, status="queued", kind=DISPATCHER_KIND, limit=1)
                running = await list_jobs(session, status="running", kind=DISPATCHER_KIND, limit=1)
            if not queued and not running and not self._in_flight:
                return
            self.wake()
            await asyncio.sleep(0.02)

    # -- scheduling ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _own_portals(self) -> AsyncIterator[Portals]:
        if self._given_portals is not None:
            yield self._given_portals
            return
        timeout = httpx.Timeout(
            self.settings.http_timeout_seconds, connect=min(5.0, self.settings.http_timeout_seconds)
        )
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http,
            running_portals(
                self.settings, self.session_factory, http, SecretBox(self.settings.fernet_keys())
            ) as portals,
        ):
            yield portals

    async def _schedule(self) -> None:
        try:
            async with self.session_factory() as session:
                ready = await DispatchRepository(session).portals_with_due_jobs(
                    DISPATCHER_KIND, self.queue.now()
                )
        except Exception:
            logger.exception("dispatcher: cannot look for ready jobs; trying again")
            return
        self._start_lanes(ready)

    def _start_lanes(self, integration_ids: Iterable[int], *, claim: bool = True) -> None:
        """Run (or kick) the lane of each of these portals, unless it is paused.

        ``claim=False``: the lanes were handed their new jobs already; they decide at once.
        """
        now = time.monotonic()
        for integration_id in integration_ids:
            lane = self._lanes.setdefault(integration_id, _Lane())
            if lane.paused_until > now:
                continue
            if lane.task is not None and not lane.task.done():
                lane.kick = lane.kick or claim
                lane.event.set()
                continue
            lane.kick = False
            lane.task = asyncio.create_task(
                self._run_lane(integration_id, lane, claim=claim or lane.row is None),
                name=f"dispatch portal {integration_id}",
            )

    async def _stop_lanes(self) -> None:
        tasks = [lane.task for lane in self._lanes.values() if lane.task and not lane.task.done()]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout or None)
        for task in pending:
            task.cancel()  # its jobs' leases run out and another worker sends them again
        await asyncio.gather(*pending, return_exceptions=True)

    async def _run_lane(self, integration_id: int, lane: _Lane, *, claim: bool = True) -> None:
        try:
            await self._drive(integration_id, lane, claim=claim)
        except Exception:
            logger.exception("dispatcher: portal %s failed; pausing it briefly", integration_id)
            lane.paused_until = time.monotonic() + 5.0
            with contextlib.suppress(Exception):
                await self._release(lane, list(lane.held), "dispatcher error", delay=5.0)
        finally:
            if self._stopping and lane.held:
                with contextlib.suppress(Exception):
                    await self._release(lane, list(lane.held), "the dispatcher stopped")
            # Whatever it finished may unblock the next job of a call (or another portal's).
            self.wake()

    # -- one lane ------------------------------------------------------------------------------

    async def _drive(self, integration_id: int, lane: _Lane, *, claim: bool = True) -> None:
        """Claim, hold and send a portal's commands until nothing is ready or held."""
        row: Bitrix24Integration | None = None if claim else lane.row
        claim = claim or row is None
        #: A critical command was sent without claiming first; the next round claims.
        skipped = False
        while not self._stopping:
            now = time.monotonic()
            if lane.paused_until > now:
                await self._release(
                    lane, list(lane.held), "portal paused", delay=lane.paused_until - now
                )
                return
            if claim or lane.kick:
                claim = lane.kick = False
                lane.event.clear()
                row = await self._claim_into(integration_id, lane)
                if row is None:
                    await self._release(lane, list(lane.held), "the integration is not active")
                    return
            if not lane.held:
                return
            assert row is not None  # read by the first claim
            portals = self._portals_for(row, lane)
            credentials = portals.credentials_for(row)
            decision = self._decide(lane, credentials, time.monotonic())
            if decision.release:
                await self._release_paused(lane, decision.release)
            if not decision.send:
                if not lane.held:
                    claim = True
                    continue
                timeout = None
                if decision.wake_at is not None:
                    timeout = max(0.0, decision.wake_at - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await lane.event.wait()
                # Whatever set it is seen by the next decision. Left set (a hand-off sets it
                # without a kick), the wait above would return at once, and the lane would
                # spin without yielding until its bulk commands were due.
                lane.event.clear()
                continue
            if await self._send_decided(integration_id, row, portals, credentials, lane, decision):
                claim = skipped = False  # claimed with the write-back
                continue
            # A register or show handed over while that request went goes next, before the
            # claim that looks for what else became ready (at most one round in a row).
            claim = skipped or not any(is_critical(h.kind) for _job, h in lane.held.values())
            skipped = not claim

    def _tuning(self, lane: _Lane) -> Tuning:
        if not self.batching or lane.isolate_rounds > 0:
            return replace(self.tuning, max_batch=1)
        return self.tuning

    def _decide(self, lane: _Lane, credentials: Credentials, now: float) -> Decision:
        mirror = self._mirrors.get(credentials.key, credentials.plan)
        tuning = self._tuning(lane)
        return decide(
            [held for _job, held in lane.held.values()],
            now,
            mirror.free(now),
            tuning,
            lane.paused_methods,
            refill_at=now + mirror.time_until_free(tuning.reserve, now),
        )

    async def _claim_into(self, integration_id: int, lane: _Lane) -> Bitrix24Integration | None:
        """Claim what is ready (after what the lane holds) and hold it; None if not active."""
        # Room for one request's worth beyond a full one: a register that turns up while bulk
        # commands wait for the reserve still gets claimed.
        room = 2 * self._tuning(lane).max_batch - len(lane.held)
        row, jobs, context = await self._claim(integration_id, room, list(lane.held))
        lane.row = row
        if row is None:
            return None
        self._hold(lane, jobs, context)
        return row

    def _hold(self, lane: _Lane, jobs: Sequence[ClaimedJob], context: CallContext) -> None:
        """Hold claimed jobs in the lane, with what their claim told about their calls."""
        now = time.monotonic()
        for job in jobs:
            command = job.payload.get("command") or {}
            kind = str(command.get("kind") or "")
            method = _METHODS.get(kind, kind)
            key = job.ordering_key or f"job:{job.id}"
            lane.held[job.id] = (job, Held(job.id, key, kind, method, now))
            self._in_flight[job.id] = job
        lane.known.update(context.call_ids)
        lane.numbers.update(context.enterprise_numbers)

    async def _send_decided(
        self,
        integration_id: int,
        row: Bitrix24Integration,
        portals: Portals,
        credentials: Credentials,
        lane: _Lane,
        decision: Decision,
    ) -> bool:
        """Take a slot, send the decided commands as one request, record the outcome.

        Returns whether the lane claimed what became ready in the transaction that recorded it.
        """
        # The slot is announced to the bucket mirror (see _Mirrors), as every request's is.
        waited = await portals.limiter.acquire(credentials.key, credentials.plan)
        if decision.critical and waited > _TOPUP_AFTER_WAIT:
            # The request could not go at once: take along what became ready meanwhile.
            if await self._claim_into(integration_id, lane) is None:
                return False
            again = self._decide(lane, credentials, time.monotonic())
            if again.release:
                await self._release_paused(lane, again.release)
            if again.send:
                decision = again
        send = [job_id for job_id in decision.send if job_id in lane.held]
        jobs = [lane.held.pop(job_id)[0] for job_id in send]
        try:
            plans = self._plan(jobs, lane.known, lane.numbers)
            client = self._client(portals, credentials)
            client.operating_reset_at.update(lane.operating_reset_at)
            outcomes = await self._send(client, plans, lane)
            lane.operating_reset_at.update(client.operating_reset_at)
            for plan in plans:
                outcome = outcomes[plan.job.id]
                result = outcome.result or {}
                if (
                    isinstance(plan.command, RegisterCall)
                    and outcome.fate is _Fate.DONE
                    and result.get("CALL_ID")
                ):
                    lane.known[(plan.call_row_id, plan.command.leg)] = str(result["CALL_ID"])
            claimed = await self._record(integration_id, row, lane, plans, outcomes)
        finally:
            for job in jobs:
                self._in_flight.pop(job.id, None)
        # A command that did not get through is back in the queue (or dead): the later commands
        # of its call wait behind it there, never here, where they could overtake it.
        stuck = {job.ordering_key for job in jobs if outcomes[job.id].fate is not _Fate.DONE}
        followers = [job_id for job_id, (_job, held) in lane.held.items() if held.key in stuck]
        if followers:
            await self._release(lane, followers, "waiting behind an earlier command of its call")
        if lane.isolate_rounds > 0:
            lane.isolate_rounds -= 1
        # Forget what no held command needs any more.
        calls = {job.call_id for job, _held in lane.held.values()}
        lane.known = {k: v for k, v in lane.known.items() if k[0] in calls}
        lane.numbers = {k: v for k, v in lane.numbers.items() if k in calls}
        return claimed

    async def _release_paused(self, lane: _Lane, job_ids: Sequence[int]) -> None:
        """Give back commands whose method is paused (and the later ones of their calls)."""
        now = time.monotonic()
        by_delay: dict[float, list[int]] = {}
        for job_id in job_ids:
            entry = lane.held.get(job_id)
            if entry is None:
                continue
            until = lane.paused_methods.get(entry[1].method.lower(), now)
            # The later commands of a paused call wait behind it in the queue anyway.
            by_delay.setdefault(max(0.0, until - now), []).append(job_id)
        for delay, ids in by_delay.items():
            await self._release(
                lane, ids, "waiting: its method is blocked (OPERATION_TIME_LIMIT)", delay=delay
            )

    async def _release(
        self, lane: _Lane, job_ids: Sequence[int], note: str, *, delay: float = 0.0
    ) -> None:
        """Give held commands back to the queue without spending an attempt."""
        jobs = [lane.held.pop(job_id)[0] for job_id in job_ids if job_id in lane.held]
        if not jobs:
            return
        retry_at = self.queue.now() + timedelta(seconds=max(0.0, delay))
        try:
            try:
                async with self.session_factory() as session:
                    for job in jobs:
                        await self.queue.fail(
                            session, job, note, retry_at=retry_at, spend_attempt=False
                        )
                    await session.commit()
            except LeaseLostError:
                # One lease was taken over: give the others back one by one.
                for job in jobs:
                    try:
                        async with self.session_factory() as session:
                            await self.queue.fail(
                                session, job, note, retry_at=retry_at, spend_attempt=False
                            )
                            await session.commit()
                    except LeaseLostError as err:
                        logger.warning("dispatcher: %s; not given back", err)
        finally:
            for job in jobs:
                self._in_flight.pop(job.id, None)

    def _portals_for(self, row: Bitrix24Integration, lane: _Lane) -> Portals:
        portals = self._portals
        assert portals is not None, "the dispatcher is not running"
        if lane.reauth:
            # Reconnected: the cached credentials still hold the refused tokens.
            portals = Portals(
                portals.settings,
                portals.session_factory,
                portals.http,
                portals.box,
                limiter=portals.limiter,
                api_log=portals.api_log,
            )
            self._portals = portals
            lane.reauth = False
        return portals

    def _client(self, portals: Portals, credentials: Credentials) -> Bitrix24Client:
        return Bitrix24Client(
            portals.http,
            credentials,
            _Prepaid(portals.limiter),
            api_log=portals.api_log,
            timeout=self.settings.http_timeout_seconds,
        )

    async def _claim(
        self, integration_id: int, limit: int, holding: Sequence[int]
    ) -> tuple[Bitrix24Integration | None, list[ClaimedJob], CallContext]:
        """The integration (None unless active) and its ready jobs, in one transaction."""
        async with self.session_factory() as session:
            # Nothing else is written: a claim lost to a server crash is a lease run out.
            claimed = await self._claim_in(session, integration_id, limit, holding, durable=False)
            await session.commit()
        return claimed

    async def _claim_in(
        self,
        session: AsyncSession,
        integration_id: int,
        limit: int,
        holding: Sequence[int],
        *,
        durable: bool = True,
    ) -> tuple[Bitrix24Integration | None, list[ClaimedJob], CallContext]:
        """:meth:`_claim` in the caller's transaction (``durable``: see ``claim_chains``)."""
        repo = DispatchRepository(session)
        # Read afresh each time: another process may have paused it.
        row = await repo.integration(integration_id)
        if row is None or row.status != IntegrationStatus.ACTIVE.value:
            return None, [], CallContext({}, {})
        if limit <= 0:
            return row, [], CallContext({}, {})
        jobs = await self.queue.claim_chains(
            session,
            self.name,
            limit=limit,
            kinds=[DISPATCHER_KIND],
            integration_id=integration_id,
            holding=holding,
            durable=durable,
        )
        call_rows = {job.call_id for job in jobs if job.call_id is not None}
        return row, jobs, await repo.call_context(call_rows)

    def _plan(
        self,
        jobs: Sequence[ClaimedJob],
        known: Mapping[tuple[int, int], str],
        numbers: Mapping[int, str],
    ) -> list[_Planned]:
        plans: list[_Planned] = []
        registers: dict[tuple[int, int], str] = {}
        for job in jobs:
            payload = job.payload
            call_row_id = int(payload.get("call_id") or job.call_id or 0)
            external_call_id = str(payload.get("external_call_id") or "")
            number = numbers.get(call_row_id)
            if number and external_call_id:
                external_call_id = portal_external_call_id(number, external_call_id)
            plan = _Planned(
                job=job,
                name=f"j{job.id}",
                call_row_id=call_row_id,
                enterprise_id=int(payload.get("enterprise_id") or 0),
                linkedid=str(payload.get("linkedid") or ""),
                leg=int(payload.get("leg") or 0),
                external_call_id=external_call_id,
            )
            plans.append(plan)
            try:
                command = command_from_dict(payload.get("command") or {})
            except CallStateError as err:
                plan.error = err
                continue
            plan.command = command
            key = (plan.call_row_id, command.leg)
            plan.params = command.to_params()
            if isinstance(command, RegisterCall):
                # Unique across the enterprises sharing the portal (see portal_external_call_id).
                plan.params["EXTERNAL_CALL_ID"] = plan.external_call_id or command.external_call_id
                if key in known:
                    # Never register a leg twice: its CALL_ID is already stored.
                    plan.ready = {"CALL_ID": known[key], "already_registered": True}
                else:
                    registers[key] = plan.name
                continue
            if isinstance(command, AttachRecord) and not command.url:
                # A file on the PBX is uploaded by a job of its own kind (worker.uploads).
                plan.error = CallStateError(
                    "attach_record without a URL is no command of the dispatcher"
                )
                continue
            if key in known:
                plan.params["CALL_ID"] = known[key]
            elif key in registers:
                plan.refers_to = registers[key]
                plan.params["CALL_ID"] = f"$result[{plan.refers_to}][CALL_ID]"
            else:
                plan.error = LegNotRegisteredError(
                    f"leg {command.leg} of call {plan.linkedid} has no Bitrix24 CALL_ID "
                    "(its register was cancelled or failed)"
                )
        return plans

    async def _send(
        self, client: Bitrix24Client, plans: Sequence[_Planned], lane: _Lane
    ) -> dict[int, _Outcome]:
        outcomes: dict[int, _Outcome] = {}
        for plan in plans:
            if plan.ready is not None:
                outcomes[plan.job.id] = _Outcome(_Fate.DONE, plan.ready)
            elif plan.error is not None:
                outcomes[plan.job.id] = _Outcome(_Fate.FAILED, error=plan.error)
        sendable = [plan for plan in plans if plan.sendable]
        if sendable:
            await self._send_request(client, sendable, lane, outcomes)
        return outcomes

    async def _send_request(
        self,
        client: Bitrix24Client,
        sendable: Sequence[_Planned],
        lane: _Lane,
        outcomes: dict[int, _Outcome],
    ) -> None:
        """Send these commands as one request (one alone, several as a batch)."""
        self.requests += 1
        self.commands += len(sendable)
        try:
            if len(sendable) == 1:
                (plan,) = sendable
                assert plan.command is not None
                try:
                    value = await client.call(plan.command.method, plan.params)
                except (CallNotFound, OperationTimeLimit) as err:
                    outcomes[plan.job.id] = self._command_failed(plan, err, lane)
                else:
                    outcomes[plan.job.id] = _Outcome(_Fate.DONE, _as_result(value))
            else:
                batch = await client.batch(
                    {
                        plan.name: (plan.command.method, plan.params)
                        for plan in sendable
                        if plan.command is not None
                    },
                    halt=True,
                )
                for plan in sendable:
                    if plan.name in batch.errors:
                        outcomes[plan.job.id] = self._command_failed(
                            plan, batch.errors[plan.name], lane
                        )
                    elif plan.name in batch.results:
                        outcomes[plan.job.id] = _Outcome(
                            _Fate.DONE, _as_result(batch.results[plan.name])
                        )
                    else:
                        outcomes[plan.job.id] = _Outcome(
                            _Fate.NOT_RUN, note="not run: an earlier command of its batch failed"
                        )
        except Exception as err:  # noqa: BLE001 - every failure is classified below
            outcomes.update(self._request_failed(err, sendable, lane))
            return
        lane.failures = 0

    def _command_failed(self, plan: _Planned, err: Exception, lane: _Lane) -> _Outcome:
        """The fate of one command Bitrix24 refused (alone or in a batch)."""
        if isinstance(plan.command, FinishCall) and isinstance(err, CallNotFound):
            # Its CALL_ID is one Bitrix24 gave us, and only a finish consumes a registration:
            # an earlier try of this finish got through and its answer was lost (at-least-once
            # delivery). The call is finished; retrying cannot change that.
            logger.info(
                "dispatcher: job %d: Bitrix24 has call %s finished already",
                plan.job.id,
                plan.params.get("CALL_ID"),
            )
            return _Outcome(_Fate.DONE, {"already_finished": True})
        if isinstance(err, OperationTimeLimit) and plan.command is not None:
            # Only this method is blocked for this app (spec §5.2): pause it, not the portal.
            method = plan.command.method.lower()
            delay = self._operating_delay(err, method, lane)
            lane.paused_methods[method] = time.monotonic() + delay
            logger.warning(
                "dispatcher: %s is blocked (OPERATION_TIME_LIMIT); pausing it %.0fs",
                plan.command.method,
                delay,
            )
            return _Outcome(_Fate.NOT_RUN, error=err, delay=delay, note=f"method paused: {err}")
        return _Outcome(_Fate.FAILED, error=err)

    @staticmethod
    def _operating_delay(err: OperationTimeLimit, method: str, lane: _Lane) -> float:
        reset_at = err.reset_at or lane.operating_reset_at.get(method)
        if reset_at is not None:
            return max(1.0, reset_at - time.time())
        return max(1.0, err.retry_after or OperationTimeLimit.default_retry_after or 60.0)

    def _request_failed(
        self, err: Exception, sendable: Sequence[_Planned], lane: _Lane
    ) -> dict[int, _Outcome]:
        """The fate of a request's jobs when the whole request failed."""

        def every(outcome: _Outcome) -> dict[int, _Outcome]:
            return {plan.job.id: outcome for plan in sendable}

        now = time.monotonic()
        if isinstance(err, ReauthRequired):
            lane.reauth = True
            return every(
                _Outcome(_Fate.NOT_RUN, error=err, note=f"paused: needs re-authorisation: {err}")
            )
        if isinstance(err, PortalGone):
            return every(_Outcome(_Fate.FAILED, error=err))
        if isinstance(err, RetryLater):
            delay = max(err.retry_after or 0.0, 0.5)
            # On QUERY_LIMIT_EXCEEDED the client penalised the limiter, which filled the mirror.
            lane.paused_until = now + delay
            return every(
                _Outcome(_Fate.NOT_RUN, error=err, delay=delay, note=f"backing off: {err}")
            )
        if isinstance(err, BackOff):
            lane.failures += 1
            delay = min(MAX_PORTAL_BACKOFF, 2.0 ** (lane.failures - 1))
            lane.paused_until = now + delay
            if lane.failures >= PROBE_AFTER_FAILURES:
                lane.isolate_rounds = max(lane.isolate_rounds, 1)
            logger.warning(
                "dispatcher: portal request failed (%s); pausing the portal %.0fs", err, delay
            )
            return every(
                _Outcome(_Fate.NOT_RUN, error=err, delay=delay, note=f"portal unavailable: {err}")
            )
        if isinstance(err, Permanent) and len(sendable) > 1:
            # Refused as a whole: send them one by one, so that only the culprit dies.
            lane.isolate_rounds = ISOLATION_ROUNDS
            return every(_Outcome(_Fate.NOT_RUN, error=err, note=f"batch refused: {err}"))
        return every(_Outcome(_Fate.FAILED, error=err))

    # -- recording -----------------------------------------------------------------------------

    async def _record(
        self,
        integration_id: int,
        row: Bitrix24Integration,
        lane: _Lane,
        plans: Sequence[_Planned],
        outcomes: Mapping[int, _Outcome],
    ) -> bool:
        """Write the outcomes back; while the portal is fine, claim what is ready too.

        Claiming in the same transaction saves one per round (a ``BEGIN IMMEDIATE`` and the
        wait for the connection on SQLite). Returns whether it claimed (and held) anything.
        """
        pause: tuple[str, str] | None = None
        for outcome in outcomes.values():
            if isinstance(outcome.error, ReauthRequired):
                pause = (IntegrationStatus.NEEDS_REAUTH.value, str(outcome.error))
            elif isinstance(outcome.error, PortalGone) and outcome.fate is _Fate.FAILED:
                pause = (IntegrationStatus.PORTAL_DELETED.value, str(outcome.error))
        claim = (
            pause is None
            and not lane.reauth
            and lane.paused_until <= time.monotonic()
            and not self._stopping
        )
        claimed = False
        try:
            async with self.session_factory() as session:
                await self._write(session, integration_id, plans, outcomes, pause)
                if claim:
                    room = 2 * self._tuning(lane).max_batch - len(lane.held)
                    active, jobs, context = await self._claim_in(
                        session, integration_id, room, list(lane.held)
                    )
                await session.commit()
            if claim and active is not None:
                lane.row = active
                self._hold(lane, jobs, context)
                claimed = True
        except LeaseLostError:
            # One job's lease was taken over: record the others one by one.
            for plan in plans:
                try:
                    async with self.session_factory() as session:
                        await self._write(session, integration_id, [plan], outcomes, pause)
                        await session.commit()
                except LeaseLostError as err:
                    logger.warning("dispatcher: %s; its outcome is dropped", err)
        if pause is not None:
            logger.error(
                "dispatcher: Bitrix24 portal %s paused (%s): %s", row.domain, pause[0], pause[1]
            )
        return claimed

    async def _write(
        self,
        session: AsyncSession,
        integration_id: int,
        plans: Sequence[_Planned],
        outcomes: Mapping[int, _Outcome],
        pause: tuple[str, str] | None,
    ) -> None:
        repo = DispatchRepository(session)
        if pause is not None:
            await repo.pause_integration(integration_id, *pause)
        done = [plan for plan in plans if outcomes[plan.job.id].fate is _Fate.DONE]
        registered: dict[str, str] = {}  # plan name → CALL_ID, for finishes in the same batch
        calls = CallRepository(session)
        # Calls in a fixed order, as call tracking locks them: no deadlock between the two.
        for plan in sorted(done, key=lambda p: (p.enterprise_id, p.linkedid, p.job.id)):
            result = outcomes[plan.job.id].result or {}
            if isinstance(plan.command, RegisterCall) and result.get("CALL_ID"):
                registered[plan.name] = str(result["CALL_ID"])
                if result.get("already_registered"):
                    continue
                call = await calls.load_locked(plan.enterprise_id, plan.linkedid)
                if call is None:
                    continue
                call.leg_registered(
                    plan.leg,
                    str(result["CALL_ID"]),
                    crm_entity_type=_str_or_none(result.get("CRM_ENTITY_TYPE")),
                    crm_entity_id=_int_or_none(result.get("CRM_ENTITY_ID")),
                )
                await calls.save(plan.enterprise_id, call)
        updates: list[LegUpdate] = []
        now = self.queue.now()
        for plan in done:
            command = plan.command
            if isinstance(command, RegisterCall):
                call_id = registered.get(plan.name)
                updates.append(
                    LegUpdate(
                        plan.call_row_id,
                        integration_id,
                        plan.leg,
                        plan.external_call_id,
                        bitrix24_call_id=call_id,
                        user_id=command.user_id,
                        status="registered",
                    )
                )
            elif isinstance(command, FinishCall):
                call_id = plan.params.get("CALL_ID")
                if plan.refers_to is not None:
                    call_id = registered.get(plan.refers_to)
                updates.append(
                    LegUpdate(
                        plan.call_row_id,
                        integration_id,
                        plan.leg,
                        plan.external_call_id,
                        bitrix24_call_id=str(call_id) if call_id else None,
                        user_id=command.user_id,
                        status="finished",
                        status_code=command.status_code,
                        duration=command.duration,
                        finished_at=now,
                    )
                )
        await repo.save_legs(updates)
        for plan in plans:
            await self._settle(session, plan.job, outcomes[plan.job.id])

    async def _settle(self, session: AsyncSession, job: ClaimedJob, outcome: _Outcome) -> None:
        if outcome.fate is _Fate.DONE:
            await self.queue.complete(session, job, outcome.result)
            return
        now = self.queue.now()
        if outcome.fate is _Fate.NOT_RUN:
            error = outcome.note or "not run"
            await self.queue.fail(
                session,
                job,
                error,
                retry_at=now + timedelta(seconds=outcome.delay),
                spend_attempt=False,
            )
            return
        assert outcome.error is not None
        decision = self.retry_policy.decide(outcome.error, job.attempts, job.max_attempts)
        retry_at = now + timedelta(seconds=decision.delay) if decision.retry else None
        (logger.warning if decision.retry else logger.error)(
            "dispatcher: job %d (%s) failed: %s; %s",
            job.id,
            (job.payload.get("command") or {}).get("kind"),
            outcome.error,
            f"retry in {decision.delay:.1f}s" if decision.retry else "dead",
        )
        await self.queue.fail(
            session,
            job,
            f"{type(outcome.error).__name__}: {outcome.error}",
            retry_at=retry_at,
            spend_attempt=decision.spend_attempt,
        )

    # -- leases --------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.queue.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            jobs = list(self._in_flight.values())
            if not jobs:
                continue
            try:
                async with self.session_factory() as session:
                    await self.queue.extend_leases(session, self.name, jobs)
                    await session.commit()
            except Exception:
                logger.exception("dispatcher: lease heartbeat failed")


def _as_result(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {"result": value}


def _str_or_none(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
