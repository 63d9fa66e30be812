"""Outgoing POSTs from the portal to apps: install calls and bound events (spec §2.2, §3.6).

Every delivery is form-encoded with PHP bracket keys and string values, sent once (Bitrix24 does
not retry), and recorded for the inspection API.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from typing import Any
from urllib.parse import parse_qsl

import httpx

from bitrix24_emulator.clock import Clock
from bitrix24_emulator.encoding import encode_form

USER_AGENT = "Bitrix24 Webhook Engine"


class Deliveries:
    """Sends form POSTs and remembers each one (event, URL, body, outcome)."""

    def __init__(self, clock: Clock, size: int) -> None:
        self.clock = clock
        self.log: deque[dict[str, Any]] = deque(maxlen=size)
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def post(
        self,
        http: httpx.AsyncClient,
        url: str,
        payload: Mapping[str, Any],
        *,
        kind: str,
        client_id: str | None,
        timeout_s: float,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST ``payload`` form-encoded to ``url`` once and record the outcome."""
        body = encode_form(payload)
        record: dict[str, Any] = {
            "id": next(self._ids),
            "time": self.clock.now(),
            "kind": kind,
            "event": payload.get("event"),
            "url": url,
            "query": dict(query or {}),
            "client_id": client_id,
            "body": body,
            "fields": dict(parse_qsl(body, keep_blank_values=True)),
            "status": None,
            "error": None,
            "duration_ms": None,
        }
        self.log.append(record)
        started = time.perf_counter()
        try:
            response = await http.post(
                url,
                params=dict(query) if query else None,
                content=body.encode(),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "User-Agent": USER_AGENT,
                },
                timeout=timeout_s,
            )
            record["status"] = response.status_code
            if response.status_code >= 400:
                record["error"] = f"HTTP {response.status_code}"
        except Exception as exc:  # noqa: BLE001 - a broken handler must never break the portal
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return record

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a delivery in the background (events fired by REST methods)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_idle(self) -> None:
        """Wait until every background delivery is done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def clear(self) -> None:
        """Forget the log."""
        self.log.clear()
