"""Retry policy as data: an exception and an attempt count in, a :class:`RetryDecision` out.

The decision follows the exception's *class* (see ``callbridge.domain.errors``), never its text:

- :class:`Permanent` → dead at once;
- :class:`RetryLater` → again after its ``retry_after``, without spending an attempt (rate limits
  and "come back later" answers must back off, never drop the job);
- :class:`Retryable` with ``retry_after`` → again after that many seconds, spending an attempt;
- anything else → exponential backoff with jitter, until ``max_attempts`` runs are used up.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from callbridge.domain.errors import Permanent, Retryable, RetryLater


@dataclass(frozen=True)
class RetryDecision:
    """What to do with a failed job: run again after ``delay`` seconds, or give up (dead)."""

    retry: bool
    delay: float = 0.0
    spend_attempt: bool = True
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: ``base_delay * 2**(attempt-1)``, capped at ``max_delay``.

    ``jitter`` is the fraction by which a delay may be shortened at random, so that jobs that
    failed together (a portal outage) do not all come back in the same second.
    ``max_attempts`` is the default for new jobs; a job's own ``max_attempts`` wins.
    """

    max_attempts: int = 10
    base_delay: float = 2.0
    max_delay: float = 600.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError("need max_attempts >= 1 and 0 <= base_delay <= max_delay")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter is a fraction between 0 and 1")

    def backoff(self, attempts: int, random_fraction: float) -> float:
        """Seconds to wait after ``attempts`` failed runs; ``random_fraction`` is in [0, 1)."""
        exponent = min(max(attempts - 1, 0), 64)  # 2**64 seconds is already "never"
        delay = min(self.max_delay, self.base_delay * 2.0**exponent)
        return delay * (1.0 - self.jitter * random_fraction)

    def decide(
        self,
        error: BaseException,
        attempts: int,
        max_attempts: int | None = None,
        *,
        rand: Callable[[], float] = random.random,
    ) -> RetryDecision:
        """The fate of a job whose run number ``attempts`` raised ``error``."""
        limit = max_attempts if max_attempts is not None else self.max_attempts
        if isinstance(error, Permanent):
            return RetryDecision(False, reason="permanent error")
        if isinstance(error, RetryLater):
            return RetryDecision(
                True, max(error.retry_after or 0.0, 0.0), spend_attempt=False, reason="retry later"
            )
        if attempts >= limit:
            return RetryDecision(False, reason=f"gave up after {attempts} attempts")
        if isinstance(error, Retryable) and error.retry_after is not None:
            return RetryDecision(True, max(error.retry_after, 0.0), reason="retry after")
        return RetryDecision(True, self.backoff(attempts, rand()), reason="backoff")
