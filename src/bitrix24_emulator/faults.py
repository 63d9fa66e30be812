"""Injected faults: added latency, random errors, an outage window, and hung requests (issue #3)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

FaultKind = Literal["500", "502", "503", "reset", "timeout"]
FAULT_KINDS: tuple[FaultKind, ...] = ("500", "502", "503", "reset", "timeout")
LatencyMode = Literal["none", "fixed", "uniform", "normal"]


@dataclass
class FaultConfig:
    """What goes wrong with REST and OAuth requests (the control API and UI are never faulted)."""

    latency_mode: LatencyMode = "none"
    latency_ms: float = 0.0  # fixed value, or the mean of "normal"
    latency_min_ms: float = 0.0  # uniform bounds
    latency_max_ms: float = 0.0
    latency_stddev_ms: float = 0.0  # normal spread (negative draws are clipped to 0)
    error_rate: float = 0.0  # share of requests that fail, 0..1
    error_kinds: list[FaultKind] = field(default_factory=lambda: ["500"])
    outage_start: float | None = None  # unix time; both None: no outage
    outage_end: float | None = None
    outage_kind: FaultKind = "503"
    hang_seconds: float = (
        65.0  # "timeout": hold the request past the cloud's 60-s limit, then drop it
    )
    paths: tuple[str, ...] = ("/rest", "/oauth")


@dataclass(frozen=True)
class FaultDecision:
    """What to do to one request."""

    delay: float = 0.0
    kind: FaultKind | None = None


class FaultInjector:
    """Decides, per request, the added delay and the failure (if any)."""

    def __init__(self, config: FaultConfig | None = None, seed: int | None = None) -> None:
        self.config = config or FaultConfig()
        self._random = random.Random(seed)

    def applies(self, path: str) -> bool:
        """Whether requests to ``path`` are subject to faults."""
        return path.startswith(self.config.paths)

    def in_outage(self, now: float) -> bool:
        """Whether ``now`` falls inside the outage window."""
        start, end = self.config.outage_start, self.config.outage_end
        if start is None and end is None:
            return False
        return (start is None or now >= start) and (end is None or now < end)

    def delay(self) -> float:
        """Added latency in seconds, drawn from the configured distribution."""
        c = self.config
        if c.latency_mode == "fixed":
            ms = c.latency_ms
        elif c.latency_mode == "uniform":
            ms = self._random.uniform(c.latency_min_ms, max(c.latency_min_ms, c.latency_max_ms))
        elif c.latency_mode == "normal":
            ms = self._random.gauss(c.latency_ms, c.latency_stddev_ms)
        else:
            ms = 0.0
        return max(0.0, ms) / 1000.0 if math.isfinite(ms) else 0.0

    def decide(self, now: float) -> FaultDecision:
        """The fault for a request arriving at ``now``."""
        delay = self.delay()
        if self.in_outage(now):
            return FaultDecision(delay, self.config.outage_kind)
        kinds = self.config.error_kinds
        if kinds and self.config.error_rate > 0 and self._random.random() < self.config.error_rate:
            return FaultDecision(delay, self._random.choice(kinds))
        return FaultDecision(delay, None)
