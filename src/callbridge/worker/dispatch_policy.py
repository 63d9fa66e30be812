"""When a portal's claimed commands go, and which go together: the dispatcher's pure policy.

A portal's rate budget (bucket 50, 2 requests/s on the standard plan) is smaller than what a
busy PBX asks for when every command goes alone, and a full bucket makes *every* request wait.
So commands are of two kinds:

* **latency-critical**: ``register`` and ``show``, which the employee sees while the phone
  rings. One goes at once, in a request of its own if need be, and may use the whole bucket;
* **bulk**: ``hide``, ``finish``, ``attachRecord``. They *linger* (up to :attr:`Tuning.linger`
  seconds after they became ready) so that they ride in a batch with others, and they go only
  while the bucket keeps more than :attr:`Tuning.reserve` free slots for critical commands.
  A request that goes for a critical command takes every bulk command along (*riders*, after
  the critical ones): they cost no extra request.

Order within a call is never changed: a command that goes takes every earlier held command of
its call (ordering key) along, before it, and a command held back (its method paused by
``OPERATION_TIME_LIMIT``) holds back the later commands of its call.

Everything here is a pure function of its inputs and a clock reading (monotonic seconds), so
it is tested with a fake clock; :class:`BucketMirror` is the dispatcher's view of the bucket.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CRITICAL_COMMANDS",
    "BucketMirror",
    "Decision",
    "Held",
    "Tuning",
    "decide",
    "is_critical",
]

#: Command kinds (``domain.commands`` names) that go at once.
CRITICAL_COMMANDS: Final = frozenset({"register", "show"})


def is_critical(kind: str | None) -> bool:
    """Whether a command of this kind is latency-critical."""
    return kind in CRITICAL_COMMANDS


@dataclass(frozen=True)
class Tuning:
    """The policy's knobs.

    Parameters
    ----------
    linger
        Seconds a bulk command may wait for company before it goes anyway (bounded delay).
    reserve
        Bucket slots kept free for critical commands: bulk requests go only while more are free.
    max_batch
        Commands in one request (Bitrix24 allows 50 per ``batch``).
    """

    linger: float = 1.0
    reserve: int = 10
    max_batch: int = 50

    def __post_init__(self) -> None:
        if self.linger < 0 or self.reserve < 0 or self.max_batch < 1:
            raise ValueError("need linger >= 0, reserve >= 0 and max_batch >= 1")


@dataclass(frozen=True)
class Held:
    """A claimed command waiting in the lane."""

    job_id: int
    key: str  # the ordering key (one call); commands of one key keep their order
    kind: str  # the command's kind (``register``, ``finish``, ...)
    method: str  # the Bitrix24 method it calls
    since: float  # monotonic seconds when the lane first held it


@dataclass(frozen=True)
class Decision:
    """What the lane does now.

    ``send`` (job ids, in the order they go) is empty when nothing goes now; ``critical`` says
    whether the request may take the last free slots; ``release`` are held commands to give back
    to the queue (their method is paused); ``wake_at`` is when to decide again if nothing else
    happens (None: only when new work arrives).
    """

    send: tuple[int, ...] = ()
    critical: bool = False
    release: tuple[int, ...] = ()
    wake_at: float | None = None


def decide(
    held: Sequence[Held],
    now: float,
    free_slots: float,
    tuning: Tuning,
    paused_methods: Mapping[str, float] | None = None,
    *,
    refill_at: float | None = None,
) -> Decision:
    """The next step for a lane holding ``held`` at ``now`` with ``free_slots`` in its bucket.

    ``paused_methods`` maps a lower-cased method to the monotonic time it may run again;
    ``refill_at`` is when the bucket will next have more than ``tuning.reserve`` free slots
    (for the wake-up of lingering bulk commands that found the bucket too full).
    """
    paused = {m: t for m, t in (paused_methods or {}).items() if t > now}
    ordered = sorted(held, key=lambda h: h.job_id)
    blocked_keys: set[str] = set()
    release: list[int] = []
    free: list[Held] = []
    for item in ordered:
        if item.key in blocked_keys or item.method.lower() in paused:
            blocked_keys.add(item.key)
            release.append(item.job_id)
        else:
            free.append(item)
    if not free:
        return Decision(release=tuple(release))

    by_key: dict[str, list[Held]] = {}
    for item in free:
        by_key.setdefault(item.key, []).append(item)
    critical_keys = [
        key for key, items in by_key.items() if any(is_critical(h.kind) for h in items)
    ]
    if critical_keys:
        # Critical calls first (each with its earlier commands), then the riders.
        chosen = _take(by_key, critical_keys, tuning.max_batch)
        riders = [key for key in by_key if key not in critical_keys]
        chosen += _take(by_key, riders, tuning.max_batch - len(chosen))
        return Decision(send=tuple(chosen), critical=True, release=tuple(release))

    oldest = min(item.since for item in free)
    due_at = oldest + tuning.linger
    if now < due_at and len(free) < tuning.max_batch:
        return Decision(release=tuple(release), wake_at=due_at)
    if free_slots < tuning.reserve + 1:
        # Keep the reserve for the next register: wait until the bucket has drained a little.
        return Decision(release=tuple(release), wake_at=refill_at)
    chosen = _take(by_key, list(by_key), tuning.max_batch)
    return Decision(send=tuple(chosen), release=tuple(release))


def _take(by_key: Mapping[str, Sequence[Held]], keys: Sequence[str], room: int) -> list[int]:
    """Job ids of these keys' held commands, key by key in order, up to ``room``."""
    chosen: list[int] = []
    for key in sorted(keys, key=lambda k: by_key[k][0].job_id):
        items = by_key[key]
        if room - len(chosen) <= 0:
            break
        # A prefix of a key's commands keeps its order; the rest waits for the next request.
        chosen.extend(item.job_id for item in items[: room - len(chosen)])
    return chosen


@dataclass
class BucketMirror:
    """The lane's view of the portal's bucket (GCRA, like the rate limiter), for the reserve.

    The rate limiter still decides when a request may go (across processes on PostgreSQL); the
    mirror only tells the policy how many slots this process's requests to the portal (the
    lane's and every other sender's: the dispatcher feeds it) have left free, so that bulk
    commands stay out of the reserve.
    """

    capacity: int
    rate: float
    tat: float = 0.0

    def free(self, now: float) -> float:
        """Slots free at ``now`` (``capacity`` when idle)."""
        used = max(0.0, self.tat - now) * self.rate
        return max(0.0, self.capacity - used)

    def take(self, now: float) -> None:
        """Count one request sent at ``now``."""
        self.tat = max(self.tat, now) + 1.0 / self.rate

    def fill(self, now: float) -> None:
        """The portal said its bucket is full (QUERY_LIMIT_EXCEEDED)."""
        self.tat = max(self.tat, now + self.capacity / self.rate)

    def time_until_free(self, reserve: int, now: float) -> float:
        """Seconds until one request can go and still leave ``reserve`` slots free."""
        missing = reserve + 1 - self.free(now)
        return max(0.0, missing / self.rate)
