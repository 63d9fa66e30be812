"""Per-portal request budget: a client-side leaky bucket that mirrors the portal's plan (spec §5.1).

Bitrix24 counts requests per portal in a bucket of ``capacity`` that drains ``rate`` per second
and answers HTTP 503 ``QUERY_LIMIT_EXCEEDED`` when it overflows. We keep the same bucket on our
side, as GCRA (the "generic cell rate algorithm"): one number per portal, the *theoretical arrival
time* ``tat`` of the next request. A request may go at ``max(tat, now) - burst_window``; taking
it moves ``tat`` one interval on. Reserving is one arithmetic step, so on PostgreSQL it is one
atomic ``UPDATE … RETURNING`` on a per-portal row shared by every process
(:class:`SharedRateLimiter` over a :class:`RateBudgetStore`); in a single process (SQLite) it is
a dict (:class:`InMemoryRateLimiter`).

We aim a little under the plan (:data:`HEADROOM`): requests from several processes reach the
portal in a slightly different order and spacing than we reserved them, and the portal counts
per source IP too. When the portal still answers ``QUERY_LIMIT_EXCEEDED`` the limiter is
*penalised*: it assumes the portal's bucket is full and drains slower (times ``SLOWDOWN_FACTOR``,
at least ``MIN_SLOWDOWN``), recovering linearly over ``RECOVERY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

SLOWDOWN_FACTOR = 0.8  # the JS SDK's adaptive step (-20 %)
MIN_SLOWDOWN = 0.25
RECOVERY_SECONDS = 30.0  # from the minimum back to the full rate


@dataclass(frozen=True)
class Headroom:
    """How far under the portal's plan we aim: a smaller burst and a slower drain.

    Requests reserved in order by several processes reach the portal a few milliseconds apart
    from their slots, sometimes bunched; a 10 % smaller burst absorbs a bunch of 5 on the
    standard plan, and a 5 % slower drain empties the portal's bucket over time. A run of
    1,000 calls then takes about 5 % longer than the plan's minimum.
    """

    burst_fraction: float = 0.1
    rate_factor: float = 0.95


HEADROOM = Headroom()


@dataclass(frozen=True)
class RatePlan:
    """A portal's bucket: ``capacity`` requests at once, draining ``rate`` per second.

    Parameters
    ----------
    capacity
        Requests the portal accepts in a burst (X in the docs: 50 standard, 250 enterprise).
    rate
        Requests per second the bucket drains (Y: 2 standard, 5 enterprise).
    """

    capacity: int
    rate: float

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.rate <= 0:
            raise ValueError("a rate plan needs capacity >= 1 and rate > 0")

    def client_side(self, headroom: Headroom = HEADROOM) -> RatePlan:
        """The plan we aim for: slightly under the portal's."""
        spare = round(self.capacity * headroom.burst_fraction)
        return RatePlan(max(1, self.capacity - spare), self.rate * headroom.rate_factor)

    @property
    def interval(self) -> float:
        """Seconds between requests once the burst is spent."""
        return 1.0 / self.rate

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> RatePlan:
        """The plan named in an integration's settings (``rate_plan``): a name or a mapping."""
        value = (settings or {}).get("rate_plan", "standard")
        if isinstance(value, Mapping):
            return cls(int(value["capacity"]), float(value["rate"]))
        try:
            return PLANS[str(value)]
        except KeyError:
            raise ValueError(
                f"unknown rate plan {value!r}; use one of {sorted(PLANS)} "
                "or {'capacity': N, 'rate': R}"
            ) from None


PLANS: dict[str, RatePlan] = {
    "standard": RatePlan(50, 2.0),
    "enterprise": RatePlan(250, 5.0),
}


def effective_slowdown(slowdown: float, penalised_at: float, now: float) -> float:
    """The drain-rate multiplier at ``now``: back to 1 linearly after a penalty."""
    recovered = max(0.0, now - penalised_at) * (1.0 - MIN_SLOWDOWN) / RECOVERY_SECONDS
    return min(1.0, slowdown + recovered)


def reserve(tat: float, now: float, plan: RatePlan, slowdown: float) -> tuple[float, float]:
    """GCRA: ``(new_tat, wait)`` for one request at ``now``.

    A slowdown stretches the spacing of requests but never the burst window (``capacity``
    plan intervals): a slower drain must not let more requests through at once.
    """
    new_tat = max(tat, now) + plan.interval / slowdown
    # The first ``capacity`` requests of an idle bucket go at once.
    wait = max(0.0, new_tat - plan.capacity * plan.interval - now)
    return new_tat, wait


def penalise(tat: float, now: float, plan: RatePlan, slowdown: float) -> tuple[float, float]:
    """After QUERY_LIMIT_EXCEEDED: ``(new_tat, new_slowdown)`` assuming the portal's bucket full."""
    new_slowdown = max(MIN_SLOWDOWN, slowdown * SLOWDOWN_FACTOR)
    return max(tat, now + plan.capacity * plan.interval), new_slowdown


class RateLimiter(Protocol):
    """Waits until a request to a portal fits its budget."""

    async def acquire(self, key: str, plan: RatePlan) -> float:
        """Wait for a slot for one request to ``key``; returns the seconds waited."""
        ...

    async def penalise(self, key: str, plan: RatePlan) -> None:
        """The portal answered QUERY_LIMIT_EXCEEDED: slow down."""
        ...


class NoRateLimit:
    """No budget at all (for benchmarks and on-premise portals without limits)."""

    async def acquire(self, key: str, plan: RatePlan) -> float:
        """Never waits."""
        return 0.0

    async def penalise(self, key: str, plan: RatePlan) -> None:
        """Ignores the portal's complaint."""


@dataclass
class _Budget:
    tat: float = 0.0
    slowdown: float = 1.0
    penalised_at: float = 0.0


@dataclass
class InMemoryRateLimiter:
    """The budget of every portal in this process (enough for one process on SQLite)."""

    headroom: Headroom = HEADROOM
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _budgets: dict[str, _Budget] = field(default_factory=dict)

    async def acquire(self, key: str, plan: RatePlan) -> float:
        """Reserve a slot (no await between read and write, so no lock is needed)."""
        budget = self._budgets.setdefault(key, _Budget())
        now = self.clock()
        slowdown = effective_slowdown(budget.slowdown, budget.penalised_at, now)
        budget.tat, wait = reserve(budget.tat, now, plan.client_side(self.headroom), slowdown)
        if wait > 0:
            await self.sleep(wait)
        return wait

    async def penalise(self, key: str, plan: RatePlan) -> None:
        """Assume the portal's bucket is full and drain slower for a while."""
        budget = self._budgets.setdefault(key, _Budget())
        now = self.clock()
        slowdown = effective_slowdown(budget.slowdown, budget.penalised_at, now)
        budget.tat, budget.slowdown = penalise(
            budget.tat, now, plan.client_side(self.headroom), slowdown
        )
        budget.penalised_at = now


RECOVERY_PER_SECOND = (1.0 - MIN_SLOWDOWN) / RECOVERY_SECONDS


class RateBudgetStore(Protocol):
    """Shared budgets (a database row per portal); both steps are single atomic statements.

    They compute what :func:`reserve`, :func:`penalise` and :func:`effective_slowdown` compute,
    with the constants passed in, so the arithmetic has one definition here.
    """

    async def reserve(self, key: str, capacity: int, rate: float, recovery: float) -> float:
        """Take one slot; returns the seconds to wait before sending."""
        ...

    async def penalise(
        self, key: str, capacity: int, rate: float, factor: float, floor: float, recovery: float
    ) -> None:
        """Mark the portal's bucket full and slow its drain."""
        ...


@dataclass
class SharedRateLimiter:
    """The budget shared by every process, kept by a :class:`RateBudgetStore`."""

    store: RateBudgetStore
    headroom: Headroom = HEADROOM
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def acquire(self, key: str, plan: RatePlan) -> float:
        """Reserve a slot in the shared row, then wait for it."""
        target = plan.client_side(self.headroom)
        wait = await self.store.reserve(key, target.capacity, target.rate, RECOVERY_PER_SECOND)
        if wait > 0:
            await self.sleep(wait)
        return wait

    async def penalise(self, key: str, plan: RatePlan) -> None:
        """Slow every process down for this portal."""
        target = plan.client_side(self.headroom)
        await self.store.penalise(
            key, target.capacity, target.rate, SLOWDOWN_FACTOR, MIN_SLOWDOWN, RECOVERY_PER_SECOND
        )
