"""The two cloud limits (spec §5): the request-rate leaky bucket and the operating-time budget."""

from __future__ import annotations

from dataclasses import dataclass, field

from bitrix24_emulator.config import PLAN_LIMITS


@dataclass
class LeakyBucket:
    """A counter that each request raises by one and that drains at ``rate`` per second."""

    capacity: int
    rate: float
    level: float = 0.0
    updated: float | None = None

    def current(self, now: float) -> float:
        """The level after draining up to ``now``."""
        if self.updated is None:
            return self.level
        return max(0.0, self.level - (now - self.updated) * self.rate)

    def try_acquire(self, now: float) -> bool:
        """Count one request, or refuse it (without counting) when the bucket is full."""
        level = self.current(now)
        self.updated = now
        # A refused request does not raise the level: otherwise a client retrying at the drain
        # rate would never get through, and the spec's "after 0.5 s one more succeeds" fails.
        if level + 1 > self.capacity + 1e-9:
            self.level = level
            return False
        self.level = level + 1
        return True


class RateLimiter:
    """Leaky buckets per portal (and per source IP when configured) for the plan in force."""

    def __init__(self, plan: str, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.plan = plan
        self._buckets: dict[str, LeakyBucket] = {}

    def set_plan(self, plan: str) -> None:
        """Switch plan; buckets start empty."""
        self.plan = plan
        self._buckets.clear()

    def reset(self) -> None:
        """Empty every bucket."""
        self._buckets.clear()

    def allow(self, key: str, now: float) -> bool:
        """Count a request under ``key``; False means answer QUERY_LIMIT_EXCEEDED."""
        if not self.enabled or self.plan not in PLAN_LIMITS:
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            capacity, rate = PLAN_LIMITS[self.plan]
            bucket = self._buckets[key] = LeakyBucket(capacity, rate)
        return bucket.try_acquire(now)

    def levels(self, now: float) -> dict[str, float]:
        """Current bucket levels, for the inspection API."""
        return {key: round(b.current(now), 3) for key, b in self._buckets.items()}


@dataclass
class _Slot:
    started: float
    seconds: float = 0.0


@dataclass
class _Account:
    slots: list[_Slot] = field(default_factory=list)


class OperatingBudget:
    """Execution seconds per (app, method) over a sliding window of ten one-minute slots (§5.2)."""

    def __init__(
        self, limit: float = 480.0, window: float = 600.0, *, enabled: bool = True
    ) -> None:
        self.limit = limit
        self.window = window
        self.enabled = enabled
        self._accounts: dict[tuple[str, str], _Account] = {}

    def reset(self) -> None:
        """Forget all spent time."""
        self._accounts.clear()

    def _live(self, key: tuple[str, str], now: float) -> _Account:
        account = self._accounts.setdefault(key, _Account())
        account.slots = [s for s in account.slots if s.started + self.window > now]
        return account

    def operating(self, app: str, method: str, now: float) -> float:
        """Seconds spent by ``app`` on ``method`` inside the window."""
        return sum(s.seconds for s in self._live((app, method.lower()), now).slots)

    def reset_at(self, app: str, method: str, now: float) -> int:
        """When the oldest slot expires (unix seconds); ``now`` when nothing is counted."""
        slots = self._live((app, method.lower()), now).slots
        return int(slots[0].started + self.window) if slots else int(now)

    def blocked(self, app: str, method: str, now: float) -> bool:
        """Whether the next call gets OPERATION_TIME_LIMIT (the spent time exceeds the limit)."""
        return self.enabled and self.operating(app, method, now) > self.limit

    def charge(self, app: str, method: str, now: float, seconds: float) -> None:
        """Add execution time to the current one-minute slot."""
        account = self._live((app, method.lower()), now)
        # A slot lives ten minutes from its first call; a new one opens each minute.
        if not account.slots or now - account.slots[-1].started >= self.window / 10:
            account.slots.append(_Slot(now))
        account.slots[-1].seconds += seconds

    def snapshot(self, now: float) -> dict[str, dict[str, float]]:
        """Spent seconds by app and method, for the inspection API."""
        out: dict[str, dict[str, float]] = {}
        for app, method in list(self._accounts):
            spent = self.operating(app, method, now)
            if spent:
                out.setdefault(app, {})[method] = round(spent, 6)
        return out
